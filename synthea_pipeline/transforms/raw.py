"""Raw layer: every line of an upload's Synthea CSV files as text columns in Parquet, with its file and line.

Synthea never quotes and turns commas inside text into spaces, so a well-formed line has exactly as many commas
as its header. Each file is streamed in blocks: a block with nothing to repair is parsed by pyarrow's CSV reader
as it is; a block that needs repair (blank lines, stray carriage returns, a repeated header, a wrong field count,
bytes that are not UTF-8) is split line by line with numpy first. Every data line becomes one row of
`raw/<table>/upload_id=<id>/load_id=<run>/<file>.parquet`: the header's columns as text (unnamed columns dropped) plus
`_file` and `_line`, or, for a line that cannot be split into the header's fields, `_reason` and `_text` (the
line itself) instead of values. Staging reads these files, so each source CSV is read once, and it quarantines
the rejected lines together with its own.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from synthea_pipeline.tables import TABLES, Table, detect_release
from synthea_pipeline.transforms.lake import files_in, filesystem_for

BLOCK_BYTES = 16 * 1024 * 1024
BOM = b"\xef\xbb\xbf"
NEWLINE, COMMA, CARRIAGE_RETURN = 10, 44, 13
SOURCE_FILE = re.compile(r"^(?P<table>[A-Za-z_]+?)(?:-(?P<part>\d+))?\.csv$")
UNNAMED = re.compile(r"^(Unnamed: \d+.*)?$")
LINEAGE = (("_file", pa.string()), ("_line", pa.int64()), ("_reason", pa.string()), ("_text", pa.string()))
"""Columns every raw row carries besides the header's: where it came from, and why and what it was when it
could not be split into fields."""
REPEATED_HEADER = "repeated header: the file's header line again (concatenated files?)"


class TableError(Exception):
    """A table that cannot be processed at all; the message names the table, file, line and reason."""

    def __init__(self, table: str, file: str, line: int | None, reason: str):
        self.table, self.file, self.line, self.reason = table, file, line, reason
        where = f"{file}, line {line}" if line else file
        super().__init__(f"table {table}: {where}: {reason}")


@dataclass
class RawResult:
    """What the raw pass did to one table of one upload, handed to the staging step and reported.
    `columns` maps header names to canonical columns; `raw_columns` are the Parquet names of the kept header
    columns, in order (the header names, made unique)."""

    table: str
    files: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    raw_columns: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    unknown_columns: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)
    upload_release: str = "unknown"
    release_note: str = ""
    rows_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    blank_lines: int = 0
    bytes_in: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    filled: dict[str, int] = field(default_factory=dict)
    """Per raw column, the accepted rows whose value is not empty: staging compares it with the values its typed
    columns hold, so it looks for unparseable values only where some may be."""


def raw_file_name(source_file: str) -> str:
    return source_file[: -len(".csv")] + ".parquet"


def reason_category(reason: str) -> str:
    """The part of a reason before its details: `field count`, `unparseable START`, ..."""
    return reason.split(":", 1)[0]


def find_source_files(source_uri: str) -> tuple[dict[str, list[str]], list[str]]:
    """Group an upload's CSV files by table (`name.csv`, or the parts Synthea writes with max_lines_per_file:
    `name-1.csv` or zero-padded `name-0001.csv`); also list what is not a known table."""
    by_table: dict[str, list[tuple[int, str]]] = {}
    other: list[str] = []
    for name in files_in(source_uri):
        match = SOURCE_FILE.match(name)
        table = match and match["table"].lower()
        if table in TABLES:
            by_table.setdefault(table, []).append((int(match["part"] or 0), name))
        elif not name.startswith(("_", ".")):
            other.append(name)
    return {t: [n for _, n in sorted(parts)] for t, parts in by_table.items()}, other


def read_header(source_uri: str, file: str, table: str) -> tuple[list[str], int, int]:
    """The header names of a file, the bytes up to the end of the header line (BOM and blank lines before it
    included) and the header's line number. A file with nothing but blank lines has no header."""
    fs, path = filesystem_for(f"{source_uri}/{file}")
    with fs.open_input_stream(path) as stream:
        head = stream.read(1024 * 1024)
    body = head.removeprefix(BOM)
    stripped = body.lstrip(b"\r\n")
    if not stripped.strip():
        return [], 0, 0
    skipped = body[: len(body) - len(stripped)]
    end = stripped.find(b"\n")
    if end < 0 and len(head) == 1024 * 1024:
        raise TableError(table, file, 1, "no line break in the first MiB: not a CSV text file")
    line = stripped if end < 0 else stripped[: end + 1]
    number = skipped.count(b"\n") + 1
    if b"\r" in line.rstrip(b"\r\n"):
        raise TableError(
            table,
            file,
            number,
            "carriage returns (CR) inside the header line: old Mac line "
            "breaks are not supported, convert the file to LF or CRLF",
        )
    try:
        decoded = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise TableError(table, file, number, "header is not UTF-8 text (binary or non-UTF-8 file)") from None
    if "\x00" in decoded:
        raise TableError(table, file, number, "header contains NUL bytes: binary file, not a CSV")
    return [name.strip() for name in decoded.split(",")], len(head) - len(stripped) + len(line), number


def upload_release(source_uri: str) -> str:
    """The Synthea release(s) consistent with the headers of every readable table in an upload."""
    headers = {}
    for table, names in find_source_files(source_uri)[0].items():
        try:
            header, _, _ = read_header(source_uri, names[0], table)
        except TableError:
            continue
        headers[table] = header
    return detect_release(headers)


def unique_names(names: list[str]) -> list[str]:
    """Header names as Parquet column names: a name that repeats gets `__2`, `__3`, ..."""
    seen: Counter = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}__{seen[name]}")
    return unique


@dataclass
class RawPlan:
    """An upload's table with its headers read and judged: what the raw pass will write, before any data is
    read. `headers` holds, per file, its header names, the bytes up to the end of its header line and the
    header's line number."""

    table: Table
    source_uri: str
    result: RawResult
    headers: list[tuple[str, list[str], int, int]]


def plan_table(table: Table, source_uri: str, files: list[str], release: str = "unknown") -> RawPlan:
    """Read and judge the headers of one table's files; TableError when the table cannot be processed at all
    (a required column missing, files with different headers), so a run can fail before reading any data."""
    result = RawResult(table=table.name, upload_release=release)
    headers = [(file, *read_header(source_uri, file, table.name)) for file in files]
    kept_header: list[str] | None = None
    for file, names, _, number in headers:
        if not names:
            result.warnings.append(f"{file} is empty (no header): read as a table with no rows")
            continue
        header = [n for n in names if not UNNAMED.match(n)]
        if kept_header is None:
            kept_header = header
            match = table.match_header(header)
            if match.missing_required:
                known = "no known column" if not match.mapping else f"header {','.join(names)}"
                raise TableError(
                    table.name,
                    file,
                    number,
                    f"missing required column(s) {', '.join(match.missing_required)} ({known})",
                )
            result.header, result.columns, result.unknown_columns = header, match.mapping, match.unknown
            result.raw_columns = unique_names(header)
            result.dropped_columns = [n or f"<blank column {i + 1}>" for i, n in enumerate(names) if UNNAMED.match(n)]
            result.releases = sorted(table.releases_matching(header))
            if match.unknown:
                result.warnings.append(f"unknown column(s) kept in raw, not staged: {', '.join(match.unknown)}")
        elif header != kept_header:
            raise TableError(table.name, file, number, f"header differs from {headers[0][0]}: {','.join(names)}")
    return RawPlan(table, source_uri, result, headers)


def write_raw(plan: RawPlan, raw_uri: str) -> RawResult:
    """Write the raw Parquet of a planned table to `raw_uri`, a folder of this run's own (its load), replacing
    what a retry of the run wrote there, streaming each file in blocks."""
    result = plan.result
    fs, raw_root = filesystem_for(raw_uri)
    fs.create_dir(raw_root)
    fs.delete_dir_contents(raw_root, missing_dir_ok=True)
    reasons: Counter = Counter()
    filled: Counter = Counter()
    for file, names, header_bytes, header_line_number in plan.headers:
        if not names:
            continue
        source_fs, source_path = filesystem_for(f"{plan.source_uri}/{file}")
        with (
            source_fs.open_input_stream(source_path) as stream,
            fs.open_output_stream(f"{raw_root}/{raw_file_name(file)}") as out,
        ):
            header_line = stream.read(header_bytes)
            writer = _FileWriter(file, names, result.raw_columns, header_line, header_line_number, out)
            writer.run(stream)
        result.files.append(file)
        result.bytes_in += header_bytes + writer.bytes_in
        result.rows_in += writer.rows_in
        result.rows_out += writer.rows_out
        result.quarantined += writer.rejected
        result.blank_lines += writer.blank_lines
        reasons.update(writer.reasons)
        filled.update(writer.filled)
    result.quarantine_reasons = dict(reasons)
    result.filled = dict(filled)
    return result


class _FileWriter:
    """Streams the data lines of one file into one Parquet file: well-formed rows as text columns, the others
    with their reason and text. Counts what it saw."""

    def __init__(self, file: str, names: list[str], columns: list[str], header_line: bytes, header_number: int, out):
        self.file = file
        self.fields = len(names)
        self.positional = [f"f{i}" for i in range(len(names))]
        self.kept = [self.positional[i] for i, n in enumerate(names) if not UNNAMED.match(n)]
        self.columns = columns
        self.header = header_line.removeprefix(BOM).lstrip(b"\r\n").rstrip(b"\r\n")
        self.suspect_values = self._suspect_values()
        self.schema = pa.schema([(c, pa.string()) for c in columns] + list(LINEAGE))
        self.writer = pq.ParquetWriter(
            out, self.schema, compression="zstd", use_dictionary=["_file"], write_statistics=False
        )
        self.line_number = header_number
        self.bytes_in = self.rows_in = self.rows_out = self.rejected = self.blank_lines = 0
        self.reasons: Counter = Counter()
        self.filled: Counter = Counter()

    def run(self, stream) -> None:
        pending = b""
        while chunk := stream.read(BLOCK_BYTES):
            self.bytes_in += len(chunk)
            cut = chunk.rfind(b"\n") + 1
            if not cut:
                pending += chunk
                continue
            self._block(b"".join((pending, memoryview(chunk)[:cut])) if pending or cut < len(chunk) else chunk)
            pending = chunk[cut:]
        if pending.strip(b"\r"):
            self._block(pending + b"\n", last_line_unterminated=True)
        self.writer.close()

    def _parse(self, lines: bytes, count: int | None = None) -> pa.Table:
        """The lines' kept fields as text; `count`, when given, is the number of rows they must give. Each line
        ending in a newline is one row (no quotes, no CR, empty lines kept), so a block needs no count."""
        table = pacsv.read_csv(
            pa.py_buffer(lines),
            read_options=pacsv.ReadOptions(column_names=self.positional),
            parse_options=pacsv.ParseOptions(quote_char=False, newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in self.positional},
                include_columns=self.kept,
                strings_can_be_null=False,
            ),
        )
        if count is not None and table.num_rows != count:
            raise ValueError(f"{self.file}: parsed {table.num_rows} rows from {count} lines")
        return table.rename_columns(self.columns)

    def _write_rows(self, table: pa.Table, line_numbers: np.ndarray) -> None:
        count = table.num_rows
        lineage = [
            pa.array([self.file]).take(pa.array(np.zeros(count, dtype=np.int32))),
            pa.array(line_numbers),
            pa.nulls(count, pa.string()),
            pa.nulls(count, pa.string()),
        ]
        self.writer.write_table(pa.Table.from_arrays([*table.columns, *lineage], schema=self.schema))
        self.rows_out += count
        for name, values in zip(self.columns, table.columns, strict=True):
            self.filled[name] += pc.sum(pc.greater(pc.binary_length(values), 0)).as_py() or 0

    def _suspect_values(self) -> pa.Array:
        """What the first kept column holds on a line that may need repair: nothing (a blank line parses as a row
        of empty fields) or its own header name (the header line again). Any other value clears the block without
        searching its bytes for blank lines and headers."""
        first = self.positional.index(self.kept[0]) if self.kept else 0
        fields = self.header.decode("utf-8", errors="replace").split(",")
        name = fields[first] if first < len(fields) else ""
        return pa.array(["", name, *([BOM.decode() + name] if first == 0 else [])])

    def _has_header_line(self, block: bytes) -> bool:
        """Whether a line of the block is the header again, with or without a BOM (what `cat` of two files
        gives)."""
        return any(
            block.startswith(line) or block.find(b"\n" + line) >= 0
            for line in (self.header + b"\n", BOM + self.header + b"\n")
        )

    def _needs_repair(self, block: bytes, table: pa.Table) -> bool:
        """Whether a parsed block holds a blank line or a repeated header, searched for in its bytes only when a
        row's first kept value is suspect (one vectorized pass instead of three byte scans of every block)."""
        if table.num_columns and not pc.any(pc.is_in(table.column(0), value_set=self.suspect_values)).as_py():
            return False
        return block.startswith(b"\n") or b"\n\n" in block or self._has_header_line(block)

    def _block(self, block: bytes, last_line_unterminated: bool = False) -> None:
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        if not (last_line_unterminated or b"\r" in block):
            try:
                table = self._parse(block)
            except pa.ArrowInvalid:
                pass
            else:
                if not self._needs_repair(block, table):
                    first = self.line_number + 1
                    self.line_number += table.num_rows
                    self.rows_in += table.num_rows
                    self._write_rows(table, np.arange(first, first + table.num_rows, dtype=np.int64))
                    return
        self._repair(block, last_line_unterminated)

    def _repair(self, block: bytes, last_line_unterminated: bool) -> None:
        """Line by line: skip blank lines, keep well-formed ones, reject the rest with a reason."""
        arr = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(arr == NEWLINE)
        starts = np.concatenate(([0], ends[:-1] + 1))
        commas = np.add.reduceat((arr == COMMA).view(np.uint8), starts, dtype=np.int32)
        blank = ends == starts
        numbers = self.line_number + 1 + np.arange(len(ends), dtype=np.int64)
        self.line_number += len(ends)
        reasons: dict[int, str] = {}
        for i in np.flatnonzero((commas != self.fields - 1) & ~blank).tolist():
            reason = f"field count: expected {self.fields} fields, found {commas[i] + 1}"
            if last_line_unterminated:
                reason = f"truncated last line: no line break at end of file, {reason}"
            reasons[i] = reason
        for i in _lines_where(arr == CARRIAGE_RETURN, ends):
            reasons.setdefault(i, "stray carriage return: a CR inside the line would split it for CSV readers")
        if int(arr.max(initial=0)) >= 128:
            for i in _lines_where(arr >= 128, ends):
                if not _is_utf8(block[starts[i] : ends[i]]):
                    reasons.setdefault(i, "invalid UTF-8: the line is not UTF-8 text")
        lengths = ends - starts
        for i in np.flatnonzero(((lengths == len(self.header)) | (lengths == len(BOM + self.header))) & ~blank):
            if block[starts[i] : ends[i]].removeprefix(BOM) == self.header:
                reasons[int(i)] = REPEATED_HEADER
        keep = ~blank
        keep[list(reasons)] = False
        self.blank_lines += int(blank.sum())
        self.rows_in += int((~blank).sum())
        if keep.any():
            lines = arr[np.repeat(keep, ends - starts + 1)].tobytes()
            self._write_rows(self._parse(lines, int(keep.sum())), numbers[keep])
        if reasons:
            self._write_rejects(block, starts, ends, numbers, reasons)

    def _write_rejects(self, block: bytes, starts, ends, numbers, reasons: dict[int, str]) -> None:
        order = sorted(reasons)
        count = len(order)
        texts = [block[starts[i] : ends[i]].decode("utf-8", errors="replace") for i in order]
        columns = [pa.nulls(count, pa.string()) for _ in self.columns]
        lineage = [
            pa.array([self.file] * count),
            pa.array(numbers[order]),
            pa.array([reasons[i] for i in order]),
            pa.array(texts),
        ]
        self.writer.write_table(pa.Table.from_arrays([*columns, *lineage], schema=self.schema))
        self.rejected += count
        self.reasons.update(reason_category(reasons[i]) for i in order)


def _lines_where(byte_mask: np.ndarray, ends: np.ndarray) -> list[int]:
    """Indexes of the lines (ending at `ends`) that hold a byte selected by `byte_mask`."""
    return np.unique(np.searchsorted(ends, np.flatnonzero(byte_mask))).tolist()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
