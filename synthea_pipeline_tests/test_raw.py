"""The raw pass on bad input, on corrupted copies of the shipped samples (no Spark needed): every source line
ends up as one raw row, with its file and line, split into the header's fields or rejected with a reason."""

import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms import raw as raw_module
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.raw import REPEATED_HEADER, TableError, find_source_files, plan_table, write_raw
from synthea_pipeline_tests.conftest import SAMPLES, read_rows

SAMPLE = SAMPLES["3.0"]


@pytest.fixture
def upload(tmp_path):
    source = tmp_path / "lake" / "source" / "u1"
    shutil.copytree(SAMPLE, source)
    return source


def clean(upload, table):
    lake = Lake(str(upload.parent.parent))
    files, _ = find_source_files(str(upload))
    raw_uri = lake.raw(table, "u1", "l1")
    return write_raw(plan_table(TABLES[table], str(upload), files.get(table, [])), raw_uri), lake


def raw_rows(lake, table):
    """Every raw row of the table, in file and line order."""
    rows = pq.read_table(lake.raw(table, "u1", "l1")).to_pylist()
    return sorted(rows, key=lambda r: (r["_file"], r["_line"]))


def values(rows, header):
    """The accepted rows' values in header order, as the csv module reads a file."""
    return [[r[h] for h in header] for r in rows if r["_reason"] is None]


def rejected(lake, table):
    return [r for r in raw_rows(lake, table) if r["_reason"] is not None]


@pytest.mark.unit
def test_clean_file_becomes_one_raw_row_per_line(upload):
    result, lake = clean(upload, "encounters")
    header, rows = read_rows(SAMPLE / "encounters.csv")
    raw = raw_rows(lake, "encounters")
    assert values(raw, header) == rows
    assert [r["_line"] for r in raw] == list(range(2, len(rows) + 2))
    assert {r["_file"] for r in raw} == {"encounters.csv"}
    assert (result.rows_in, result.rows_out, result.quarantined) == (len(rows), len(rows), 0)


@pytest.mark.unit
def test_bom_and_crlf_are_removed(upload):
    original = (SAMPLE / "patients.csv").read_bytes()
    (upload / "patients.csv").write_bytes(b"\xef\xbb\xbf" + original.replace(b"\n", b"\r\n"))
    result, lake = clean(upload, "patients")
    header, rows = read_rows(SAMPLE / "patients.csv")
    assert result.header == header and values(raw_rows(lake, "patients"), header) == rows
    assert result.rows_out == 27 and result.quarantined == 0


@pytest.mark.unit
def test_row_with_extra_comma_is_quarantined_with_line_and_reason(upload):
    lines = (SAMPLE / "conditions.csv").read_text().splitlines(keepends=True)
    lines[5] = lines[5].rstrip("\n") + ",extra\n"
    (upload / "conditions.csv").write_text("".join(lines))
    result, lake = clean(upload, "conditions")
    assert (result.rows_in, result.rows_out, result.quarantined) == (438, 437, 1)
    [row] = rejected(lake, "conditions")
    assert row["_line"] == 6 and row["_file"] == "conditions.csv" and row["START"] is None
    assert row["_reason"] == "field count: expected 6 fields, found 7"
    assert row["_text"] == lines[5].rstrip("\n")
    assert result.quarantine_reasons == {"field count": 1}


@pytest.mark.unit
def test_truncated_last_line_is_quarantined(upload):
    data = (SAMPLE / "observations.csv").read_bytes()
    (upload / "observations.csv").write_bytes(data[: data.rstrip(b"\n").rfind(b",")])
    result, lake = clean(upload, "observations")
    assert (result.rows_in, result.rows_out, result.quarantined) == (990, 989, 1)
    [row] = rejected(lake, "observations")
    assert row["_line"] == 991 and row["_reason"].startswith("truncated last line")


@pytest.mark.unit
def test_unnamed_index_and_blank_trailing_columns_are_dropped(upload):
    header, *rows = (SAMPLE / "payers.csv").read_text().splitlines()
    (upload / "payers.csv").write_text(
        "\n".join([f"Unnamed: 0,{header},"] + [f"{i},{row}," for i, row in enumerate(rows)]) + "\n"
    )
    result, lake = clean(upload, "payers")
    assert result.dropped_columns == ["Unnamed: 0", "<blank column 23>"]
    original_header, original_rows = read_rows(SAMPLE / "payers.csv")
    assert result.header == original_header and values(raw_rows(lake, "payers"), original_header) == original_rows


@pytest.mark.unit
def test_blank_lines_and_repeated_headers_in_a_file_whose_first_column_is_dropped(upload):
    """A clean-looking block is searched for blank lines and headers only when its first kept column holds an
    empty value or its header name: here that column is the second field, and the file has no CR to give it away."""
    header, *rows = (SAMPLE / "payers.csv").read_text().splitlines()
    indexed = [f"{i},{row}" for i, row in enumerate(rows)]
    original_header, original_rows = read_rows(SAMPLE / "payers.csv")
    repeated = [
        f"Unnamed: 0,{header}",
        *indexed[:3],
        f"Unnamed: 0,{header}",
        *indexed[3:],
        f"\ufeffUnnamed: 0,{header}",
    ]
    blank = [f"Unnamed: 0,{header}", *indexed[:3], "", *indexed[3:]]
    outcomes = []
    for lines in (repeated, blank):
        (upload / "payers.csv").write_text("\n".join(lines) + "\n")
        result, lake = clean(upload, "payers")
        assert values(raw_rows(lake, "payers"), original_header) == original_rows
        outcomes.append((result.rows_out, result.quarantined, result.blank_lines, rejected(lake, "payers")))
    assert [o[:3] for o in outcomes] == [(len(rows), 2, 0), (len(rows), 0, 1)]
    assert {r["_line"]: r["_reason"] for r in outcomes[0][3]} == {5: REPEATED_HEADER, len(rows) + 3: REPEATED_HEADER}


@pytest.mark.unit
def test_unknown_column_is_kept_and_reported(upload):
    header, *rows = (SAMPLE / "organizations.csv").read_text().splitlines()
    (upload / "organizations.csv").write_text("\n".join([f"{header},NPI2"] + [f"{r},x" for r in rows]) + "\n")
    result, lake = clean(upload, "organizations")
    assert result.unknown_columns == ["NPI2"]
    assert any("NPI2" in w for w in result.warnings)
    assert {r["NPI2"] for r in raw_rows(lake, "organizations")} == {"x"}


@pytest.mark.unit
def test_missing_required_column_names_table_file_and_column(upload):
    text = (SAMPLE / "patients.csv").read_text().replace("BIRTHDATE", "BIRTH_DAY", 1)
    (upload / "patients.csv").write_text(text)
    with pytest.raises(
        TableError, match=r"table patients: patients.csv, line 1: missing required column\(s\) BIRTHDATE"
    ):
        clean(upload, "patients")


@pytest.mark.unit
def test_non_synthea_csv_is_refused(upload):
    (upload / "patients.csv").write_text("name,age\nann,3\n")
    with pytest.raises(TableError, match=r"missing required column\(s\) Id, BIRTHDATE \(no known column\)"):
        clean(upload, "patients")


@pytest.mark.unit
def test_binary_garbage_is_refused(upload):
    (upload / "devices.csv").write_bytes(bytes(range(256)) * 64)
    with pytest.raises(TableError, match=r"table devices: devices.csv, line 1: header contains NUL bytes: binary"):
        clean(upload, "devices")
    (upload / "devices.csv").write_bytes(bytes(range(128, 256)) * 64)
    with pytest.raises(TableError, match=r"table devices: devices.csv, line 1: header is not UTF-8 text"):
        clean(upload, "devices")


@pytest.mark.unit
def test_latin1_file_rows_are_quarantined(upload):
    header = (SAMPLE / "supplies.csv").read_text().splitlines()[0]
    row = "2020-01-01,p1,e1,1234,Gaze stérile,3"
    (upload / "supplies.csv").write_bytes(f"{header}\n{row}\n".encode("latin-1"))
    result, lake = clean(upload, "supplies")
    assert (result.rows_in, result.rows_out, result.quarantined) == (1, 0, 1)
    [row] = rejected(lake, "supplies")
    assert row["_reason"] == "invalid UTF-8: the line is not UTF-8 text" and "Gaze st" in row["_text"]


@pytest.mark.unit
def test_empty_header_only_and_absent_files(upload):
    (upload / "devices.csv").write_bytes(b"")
    (upload / "supplies.csv").write_text("DATE,PATIENT,ENCOUNTER,CODE,DESCRIPTION,QUANTITY\n")
    (upload / "allergies.csv").unlink()
    for table in ("devices", "supplies", "allergies"):
        result, _ = clean(upload, table)
        assert (result.rows_in, result.rows_out, result.quarantined) == (0, 0, 0)
    assert clean(upload, "devices")[0].warnings == ["devices.csv is empty (no header): read as a table with no rows"]
    assert clean(upload, "allergies")[0].files == []


@pytest.mark.parametrize(
    "names",
    [("claims-1.csv", "claims-2.csv", "claims-10.csv"), ("claims-0001.csv", "claims-0002.csv", "claims-0010.csv")],
)
@pytest.mark.unit
def test_split_files_are_cleaned_together_in_part_order(upload, names):
    header, *rows = (SAMPLE / "claims.csv").read_text().splitlines()
    (upload / "claims.csv").unlink()
    parts = [rows[:600], rows[600:1000], rows[1000:]]
    for name, part in zip(reversed(names), reversed(parts), strict=False):
        (upload / name).write_text("\n".join([header, *part]) + "\n")
    result, lake = clean(upload, "claims")
    assert result.files == list(names)
    assert result.rows_out == len(rows) == 1267
    lines = {(r["_file"], r["_line"]) for r in raw_rows(lake, "claims")}
    assert (names[2], len(parts[2]) + 1) in lines and (names[0], 601) in lines


@pytest.mark.unit
def test_rerun_replaces_the_raw_partition(upload):
    lines = (SAMPLE / "conditions.csv").read_text().splitlines(keepends=True)
    (upload / "conditions.csv").write_text("".join([*lines[:5], "broken\n", *lines[5:]]))
    _, lake = clean(upload, "conditions")
    assert len(rejected(lake, "conditions")) == 1
    shutil.copy(SAMPLE / "conditions.csv", upload / "conditions.csv")
    result, _ = clean(upload, "conditions")
    assert result.quarantined == 0 and not rejected(lake, "conditions")
    assert len(raw_rows(lake, "conditions")) == len(lines) - 1


@pytest.mark.unit
def test_repeated_header_lines_are_rejected_not_read_as_data(upload):
    lines = (SAMPLE / "careplans.csv").read_text().splitlines(keepends=True)
    (upload / "careplans.csv").write_text("".join(lines + lines).replace("\n", "\r\n"))
    result, lake = clean(upload, "careplans")
    assert (result.rows_in, result.rows_out, result.quarantined) == (2 * len(lines) - 1, 2 * (len(lines) - 1), 1)
    [row] = rejected(lake, "careplans")
    assert (row["_line"], row["_reason"], row["_text"]) == (len(lines) + 1, REPEATED_HEADER, lines[0].strip())
    assert result.quarantine_reasons == {"repeated header": 1}


@pytest.mark.unit
def test_blank_lines_before_the_header_and_all_blank_files(upload):
    original = (SAMPLE / "careplans.csv").read_text()
    (upload / "careplans.csv").write_text("\n\r\n" + original)
    (upload / "devices.csv").write_text("\n\r\n\n")
    result, lake = clean(upload, "careplans")
    assert (result.rows_out, result.quarantined, result.blank_lines) == (49, 0, 0)
    header, rows = read_rows(SAMPLE / "careplans.csv")
    raw = raw_rows(lake, "careplans")
    assert values(raw, header) == rows and raw[0]["_line"] == 4
    assert clean(upload, "devices")[0].rows_in == 0


@pytest.mark.unit
def test_carriage_returns_that_are_not_line_ends(upload):
    original = (SAMPLE / "allergies.csv").read_text()
    (upload / "allergies.csv").write_text(original.replace("\n", "\r"))
    with pytest.raises(TableError, match=r"allergies.csv, line 1: carriage returns \(CR\) inside the header"):
        clean(upload, "allergies")
    lines = original.splitlines()
    lines[4] = lines[4].replace(",", "\r,", 1)
    (upload / "allergies.csv").write_text("\r\n".join(lines) + "\r\n")
    result, lake = clean(upload, "allergies")
    assert (result.rows_in, result.rows_out, result.quarantined) == (40, 39, 1)
    [row] = rejected(lake, "allergies")
    assert row["_line"] == 5 and row["_reason"].startswith("stray carriage return")
    assert not any(
        "\r" in (v or "")
        for r in raw_rows(lake, "allergies")
        if r["_reason"] is None
        for v in r.values()
        if isinstance(v, str)
    )


@pytest.mark.unit
def test_rows_and_line_numbers_do_not_depend_on_block_boundaries(upload, monkeypatch):
    header, *rows = (SAMPLE / "observations.csv").read_bytes().split(b"\n")[:-1]
    lines = [
        header,
        *rows[:100],
        b"",
        rows[100] + b",extra",
        b"\xef\xbb\xbf" + header,
        *rows[101:200],
        b"",
        rows[200].rsplit(b",", 2)[0],
    ]
    (upload / "observations.csv").write_bytes(b"\r\n".join(lines))
    expected = {3 + 100: "field count", 3 + 101: "repeated header", len(lines): "truncated last line"}
    results = []
    for block_bytes in (raw_module.BLOCK_BYTES, 97, 4096):
        monkeypatch.setattr(raw_module, "BLOCK_BYTES", block_bytes)
        result, lake = clean(upload, "observations")
        results.append(
            (result.rows_in, result.rows_out, result.quarantined, result.blank_lines, raw_rows(lake, "observations"))
        )
    assert results[0] == results[1] == results[2]
    rows_in, rows_out, quarantined, blank_lines, raw = results[0]
    assert (rows_in, rows_out, quarantined, blank_lines) == (202, 199, 3, 2)
    assert {r["_line"]: r["_reason"].split(":")[0] for r in raw if r["_reason"]} == expected
    accepted = [r["_line"] for r in raw if r["_reason"] is None]
    assert accepted == [*range(2, 102), *range(105, 204)]


STREAM_LIMIT_BYTES = 400 * 1024 * 1024
STREAMED_FILE_BYTES = 512 * 1024 * 1024
MEASURE_RAW_PASS = """
import re, sys
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.raw import plan_table, write_raw
result = write_raw(plan_table(TABLES["claims_transactions"], sys.argv[1], ["claims_transactions.csv"]), sys.argv[2])
peak_kib = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]
print(result.rows_in, result.rows_out, result.quarantined, int(peak_kib) * 1024)
"""
"""The peak is the process's own (VmHWM): `ru_maxrss` keeps the high-water mark of the pytest process that forked
it, across exec."""


@pytest.mark.slow
def test_the_raw_pass_streams_a_file_larger_than_its_memory_limit(tmp_path):
    """A 512 MiB file with a malformed line in every copy of the sample is read in a process whose peak memory
    stays under 400 MiB, bad lines and all: neither the file nor its quarantined lines are held in memory."""
    header, _, body = (SAMPLE / "claims_transactions.csv").read_bytes().partition(b"\n")
    copy = body + b"a,malformed,line\n"
    copies = STREAMED_FILE_BYTES // len(copy) + 1
    source = tmp_path / "source"
    source.mkdir()
    with open(source / "claims_transactions.csv", "wb") as out:
        out.write(header + b"\n")
        for _ in range(copies):
            out.write(copy)
    assert (source / "claims_transactions.csv").stat().st_size > STREAMED_FILE_BYTES > STREAM_LIMIT_BYTES
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_RAW_PASS, str(source), str(tmp_path / "raw")],
        capture_output=True,
        text=True,
        check=True,
    )
    (source / "claims_transactions.csv").unlink()
    rows_in, rows_out, quarantined, peak_bytes = map(int, result.stdout.split())
    lines_per_copy = copy.count(b"\n")
    assert (rows_in, rows_out, quarantined) == (copies * lines_per_copy, copies * (lines_per_copy - 1), copies)
    assert peak_bytes < STREAM_LIMIT_BYTES, f"peak RSS {peak_bytes / 2**20:.0f} MiB"
