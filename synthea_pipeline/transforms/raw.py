"""Raw layer: minor cleaning of Synthea CSV files, streamed in bounded memory.

Synthea never quotes and turns commas inside text into spaces, so a well-formed line has exactly as many commas
as its header. Each file is read in blocks; the comma count of every line is checked with numpy, and a block
with nothing to repair is written through unchanged. The output is CSV again: UTF-8, LF, no BOM, trimmed header
names, no unnamed columns, one line per row with the header's field count. Rows that cannot be kept go to a
quarantine Parquet file with their line number, reason and original text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from synthea_pipeline.tables import TABLES, Table, detect_release
from synthea_pipeline.transforms.lake import files_in, filesystem_for, link_or_copy, publish, staging_area

BLOCK_BYTES = 32 * 1024 * 1024
BOM = b"\xef\xbb\xbf"
NEWLINE, COMMA = 10, 44
SOURCE_FILE = re.compile(r"^(?P<table>[A-Za-z_]+?)(?:-(?P<part>\d+))?\.csv$")
UNNAMED = re.compile(r"^(Unnamed: \d+.*)?$")
MANIFEST = "_manifest.json"
QUARANTINE_SCHEMA = pa.schema(
    [("file", pa.string()), ("line_number", pa.int64()), ("reason", pa.string()), ("text", pa.string())]
)


class TableError(Exception):
    """A table that cannot be processed at all; the message names the table, file, line and reason."""

    def __init__(self, table: str, file: str, line: int | None, reason: str):
        self.table, self.file, self.line, self.reason = table, file, line, reason
        where = f"{file}, line {line}" if line else file
        super().__init__(f"table {table}: {where}: {reason}")


@dataclass
class RawResult:
    """What the raw pass did to one table of one upload; saved beside the raw files for the staging step."""

    table: str
    files: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    unknown_columns: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)
    upload_release: str = "unknown"
    rows_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    blank_lines: int = 0
    bytes_in: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RawResult:
        return cls(**json.loads(text))


def find_source_files(source_uri: str) -> tuple[dict[str, list[str]], list[str]]:
    """Group an upload's CSV files by table (`name.csv` or 3.4+ parts `name-N.csv`); also list what is not
    a known table."""
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
    body = head[len(BOM) :] if head.startswith(BOM) else head
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
        raise TableError(table, file, number, "carriage returns (CR) inside the header line: old Mac line "
                         "breaks are not supported, convert the file to LF or CRLF")
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


def clean_table(
    table: Table, source_uri: str, files: list[str], raw_uri: str, quarantine_uri: str, release: str = "unknown"
) -> RawResult:
    """Write the cleaned files of one table to `raw_uri` and its rejected rows to `quarantine_uri`, replacing
    what an earlier run wrote there."""
    result = RawResult(table=table.name, upload_release=release)
    headers = [(file, *read_header(source_uri, file, table.name)) for file in files]
    kept_header: list[str] | None = None
    for file, names, _, number in headers:
        if not names:
            result.warnings.append(f"{file} is empty (no header): read as a table with no rows")
            continue
        keep = [i for i, n in enumerate(names) if not UNNAMED.match(n)]
        header = [names[i] for i in keep]
        if kept_header is None:
            kept_header = header
            match = table.match_header(header)
            if match.missing_required:
                known = "no known column" if not match.mapping else f"header {','.join(names)}"
                raise TableError(
                    table.name, file, number, f"missing required column(s) {', '.join(match.missing_required)} ({known})"
                )
            result.header, result.columns, result.unknown_columns = header, match.mapping, match.unknown
            result.dropped_columns = [names[i] or f"<blank column {i + 1}>" for i in range(len(names)) if i not in keep]
            result.releases = sorted(table.releases_matching(header))
            if match.unknown:
                result.warnings.append(f"unknown column(s) kept in raw, not staged: {', '.join(match.unknown)}")
        elif header != kept_header:
            raise TableError(table.name, file, number, f"header differs from {headers[0][0]}: {','.join(names)}")

    temp_raw, temp_quarantine = staging_area(raw_uri), staging_area(quarantine_uri)
    fs, raw_root = filesystem_for(temp_raw)
    fs.create_dir(raw_root)
    rejected: list[dict] = []
    for file, names, header_bytes, header_line_number in headers:
        if not names:
            continue
        keep = [i for i, n in enumerate(names) if not UNNAMED.match(n)]
        header_line = (",".join(kept_header) + "\n").encode()
        source = f"{source_uri}/{file}"
        cleaner = _FileCleaner(len(names), keep if len(keep) < len(names) else None, file, rejected)
        if header_bytes == len(header_line) and cleaner.scan(source, header_bytes, header_line):
            link_or_copy(source, f"{temp_raw}/{file}")
        else:
            cleaner = _FileCleaner(len(names), cleaner.keep, file, rejected, header_line_number)
            source_fs, source_path = filesystem_for(source)
            with source_fs.open_input_stream(source_path) as stream, fs.open_output_stream(f"{raw_root}/{file}") as out:
                out.write(header_line)
                stream.read(header_bytes)
                cleaner.run(stream, out)
        result.files.append(file)
        result.bytes_in += header_bytes + cleaner.bytes_in
        result.rows_in += cleaner.rows_in
        result.rows_out += cleaner.rows_out
        result.blank_lines += cleaner.blank_lines
    result.quarantined = len(rejected)
    result.quarantine_reasons = dict(Counter(r["reason"].split(":")[0] for r in rejected))
    with fs.open_output_stream(f"{raw_root}/{MANIFEST}") as out:
        out.write(result.to_json().encode())
    publish(temp_raw, raw_uri)
    _write_quarantine(rejected, temp_quarantine, quarantine_uri)
    return result


def load_manifest(raw_uri: str) -> RawResult:
    fs, path = filesystem_for(f"{raw_uri}/{MANIFEST}")
    with fs.open_input_stream(path) as stream:
        return RawResult.from_json(stream.read().decode())


def _write_quarantine(rejected: list[dict], temp_uri: str, final_uri: str) -> None:
    fs, final = filesystem_for(final_uri)
    if not rejected:
        if fs.get_file_info(final).type != pafs.FileType.NotFound:
            fs.delete_dir(final)
        return
    _, temp = filesystem_for(temp_uri)
    fs.create_dir(temp)
    with fs.open_output_stream(f"{temp}/quarantine.parquet") as out:
        pq.write_table(pa.Table.from_pylist(rejected, schema=QUARANTINE_SCHEMA), out, compression="zstd")
    publish(temp_uri, final_uri)


class _NeedsRewrite(Exception):
    pass


class _FileCleaner:
    """Streams the data lines of one file, keeping well-formed rows and collecting rejected ones. `scan` only
    checks whether the file can go to raw unchanged, stopping at the first thing to repair."""

    def __init__(self, fields: int, keep: list[int] | None, file: str, rejected: list[dict], header_line: int = 1):
        self.commas = fields - 1
        self.fields = fields
        self.keep = keep
        self.file = file
        self.rejected = rejected
        self.line_number = header_line
        self.bytes_in = self.rows_in = self.rows_out = self.blank_lines = 0

    def scan(self, source_uri: str, header_bytes: int, header_line: bytes) -> bool:
        fs, path = filesystem_for(source_uri)
        with fs.open_input_stream(path) as stream:
            if stream.read(header_bytes) != header_line:
                return False
            try:
                self.run(stream, None)
            except _NeedsRewrite:
                return False
        return True

    def run(self, stream, out) -> None:
        pending = b""
        while True:
            chunk = stream.read(BLOCK_BYTES)
            self.bytes_in += len(chunk)
            if not chunk:
                break
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            if cut:
                self._block(data[:cut], out)
        if pending.strip(b"\r"):
            if out is None:
                raise _NeedsRewrite
            self._block(pending + b"\n", out, last_line_unterminated=True)

    def _block(self, block: bytes, out, last_line_unterminated: bool = False) -> None:
        if b"\r" in block:
            if out is None:
                raise _NeedsRewrite
            block = block.replace(b"\r\n", b"\n")
        stray_cr = b"\r" in block
        arr = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(arr == NEWLINE)
        starts = np.concatenate(([0], ends[:-1] + 1))
        commas = np.add.reduceat((arr == COMMA).view(np.uint8), starts, dtype=np.int32)
        blank = ends == starts
        bad = (commas != self.commas) & ~blank
        ascii_only = not len(arr) or int(arr.max()) < 128
        clean = not bad.any() and not blank.any() and not stray_cr and self.keep is None
        if clean and (ascii_only or _is_utf8(block)):
            if out is not None:
                out.write(block)
            lines = len(ends)
            self.rows_in += lines
            self.rows_out += lines
            self.line_number += lines
            return
        if out is None:
            raise _NeedsRewrite
        kept = []
        for start, end, count, is_blank in zip(starts.tolist(), ends.tolist(), commas.tolist(), blank.tolist()):
            self.line_number += 1
            if is_blank:
                self.blank_lines += 1
                continue
            self.rows_in += 1
            line = block[start:end]
            reason = None
            if count != self.commas:
                reason = f"field count: expected {self.fields} fields, found {count + 1}"
                if last_line_unterminated:
                    reason = f"truncated last line: no line break at end of file, {reason}"
            elif not ascii_only and not _is_utf8(line):
                reason = "invalid UTF-8: the line is not UTF-8 text"
            elif stray_cr and b"\r" in line:
                reason = "stray carriage return: a CR inside the line would split it for CSV readers"
            if reason:
                self.rejected.append(
                    {
                        "file": self.file,
                        "line_number": self.line_number,
                        "reason": reason,
                        "text": line.decode("utf-8", errors="replace"),
                    }
                )
                continue
            if self.keep is not None:
                values = line.split(b",")
                line = b",".join(values[i] for i in self.keep)
            kept.append(line)
        if kept:
            out.write(b"\n".join(kept) + b"\n")
        self.rows_out += len(kept)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
