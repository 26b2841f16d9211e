"""Raw cleaning of bad input, on corrupted copies of the shipped samples (no Spark needed)."""

import shutil

import pyarrow.parquet as pq
import pytest

from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.raw import TableError, clean_table, find_source_files, load_manifest
from synthea_pipeline_tests.conftest import SAMPLES

SAMPLE = SAMPLES["3.0"]


@pytest.fixture
def upload(tmp_path):
    source = tmp_path / "lake" / "source" / "u1"
    shutil.copytree(SAMPLE, source)
    return source


def clean(upload, table):
    lake = Lake(str(upload.parent.parent))
    files, _ = find_source_files(str(upload))
    raw_uri = lake.partition("raw", table, "u1")
    result = clean_table(
        TABLES[table], str(upload), files.get(table, []), raw_uri, lake.partition("quarantine", table, "u1")
    )
    assert load_manifest(raw_uri) == result
    return result, lake


def raw_text(lake, table, file=None):
    return (lake.partition("raw", table, "u1") + "/" + (file or f"{table}.csv"))


def quarantine(lake, table):
    return pq.read_table(lake.partition("quarantine", table, "u1")).to_pylist()


def test_clean_file_passes_through_unchanged(upload):
    result, lake = clean(upload, "encounters")
    original = (SAMPLE / "encounters.csv").read_bytes()
    assert open(raw_text(lake, "encounters"), "rb").read() == original
    assert (result.rows_in, result.rows_out, result.quarantined) == (original.count(b"\n") - 1,) * 2 + (0,)


def test_bom_and_crlf_are_removed(upload):
    original = (SAMPLE / "patients.csv").read_bytes()
    (upload / "patients.csv").write_bytes(b"\xef\xbb\xbf" + original.replace(b"\n", b"\r\n"))
    result, lake = clean(upload, "patients")
    assert open(raw_text(lake, "patients"), "rb").read() == original
    assert result.rows_out == 27 and result.quarantined == 0


def test_row_with_extra_comma_is_quarantined_with_line_and_reason(upload):
    lines = (SAMPLE / "conditions.csv").read_text().splitlines(keepends=True)
    lines[5] = lines[5].rstrip("\n") + ",extra\n"
    (upload / "conditions.csv").write_text("".join(lines))
    result, lake = clean(upload, "conditions")
    assert (result.rows_in, result.rows_out, result.quarantined) == (438, 437, 1)
    [row] = quarantine(lake, "conditions")
    assert row["line_number"] == 6 and row["file"] == "conditions.csv"
    assert row["reason"] == "field count: expected 6 fields, found 7"
    assert row["text"] == lines[5].rstrip("\n")


def test_truncated_last_line_is_quarantined(upload):
    data = (SAMPLE / "observations.csv").read_bytes()
    (upload / "observations.csv").write_bytes(data[: data.rstrip(b"\n").rfind(b",")])
    result, lake = clean(upload, "observations")
    assert (result.rows_in, result.rows_out, result.quarantined) == (990, 989, 1)
    [row] = quarantine(lake, "observations")
    assert row["line_number"] == 991 and row["reason"].startswith("truncated last line")


def test_unnamed_index_and_blank_trailing_columns_are_dropped(upload):
    header, *rows = (SAMPLE / "payers.csv").read_text().splitlines()
    (upload / "payers.csv").write_text(
        "\n".join([f"Unnamed: 0,{header},"] + [f"{i},{row}," for i, row in enumerate(rows)]) + "\n"
    )
    result, lake = clean(upload, "payers")
    assert result.dropped_columns == ["Unnamed: 0", "<blank column 23>"]
    assert open(raw_text(lake, "payers")).read() == (SAMPLE / "payers.csv").read_text()


def test_unknown_column_is_kept_and_reported(upload):
    header, *rows = (SAMPLE / "organizations.csv").read_text().splitlines()
    (upload / "organizations.csv").write_text("\n".join([f"{header},NPI2"] + [f"{r},x" for r in rows]) + "\n")
    result, lake = clean(upload, "organizations")
    assert result.unknown_columns == ["NPI2"]
    assert any("NPI2" in w for w in result.warnings)
    assert open(raw_text(lake, "organizations")).readline().strip().endswith(",NPI2")


def test_missing_required_column_names_table_file_and_column(upload):
    text = (SAMPLE / "patients.csv").read_text().replace("BIRTHDATE", "BIRTH_DAY", 1)
    (upload / "patients.csv").write_text(text)
    with pytest.raises(TableError, match=r"table patients: patients.csv, line 1: missing required column\(s\) BIRTHDATE"):
        clean(upload, "patients")


def test_non_synthea_csv_is_refused(upload):
    (upload / "patients.csv").write_text("name,age\nann,3\n")
    with pytest.raises(TableError, match=r"missing required column\(s\) Id, BIRTHDATE \(no known column\)"):
        clean(upload, "patients")


def test_binary_garbage_is_refused(upload):
    (upload / "devices.csv").write_bytes(bytes(range(256)) * 64)
    with pytest.raises(TableError, match=r"table devices: devices.csv, line 1: header contains NUL bytes: binary"):
        clean(upload, "devices")
    (upload / "devices.csv").write_bytes(bytes(range(128, 256)) * 64)
    with pytest.raises(TableError, match=r"table devices: devices.csv, line 1: header is not UTF-8 text"):
        clean(upload, "devices")


def test_latin1_file_rows_are_quarantined(upload):
    header = (SAMPLE / "supplies.csv").read_text().splitlines()[0]
    row = "2020-01-01,p1,e1,1234,Gaze stérile,3"
    (upload / "supplies.csv").write_bytes(f"{header}\n{row}\n".encode("latin-1"))
    result, lake = clean(upload, "supplies")
    assert (result.rows_in, result.rows_out, result.quarantined) == (1, 0, 1)
    assert quarantine(lake, "supplies")[0]["reason"] == "invalid UTF-8: the line is not UTF-8 text"


def test_empty_header_only_and_absent_files(upload):
    (upload / "devices.csv").write_bytes(b"")
    (upload / "supplies.csv").write_text("DATE,PATIENT,ENCOUNTER,CODE,DESCRIPTION,QUANTITY\n")
    (upload / "allergies.csv").unlink()
    for table in ("devices", "supplies", "allergies"):
        result, _ = clean(upload, table)
        assert (result.rows_in, result.rows_out, result.quarantined) == (0, 0, 0)
    assert clean(upload, "devices")[0].warnings == ["devices.csv is empty (no header): read as a table with no rows"]
    assert clean(upload, "allergies")[0].files == []


def test_split_files_are_cleaned_together(upload):
    header, *rows = (SAMPLE / "claims.csv").read_text().splitlines()
    (upload / "claims.csv").unlink()
    (upload / "claims-1.csv").write_text("\n".join([header] + rows[:600]) + "\n")
    (upload / "claims-2.csv").write_text("\n".join([header] + rows[600:]) + "\n")
    result, _ = clean(upload, "claims")
    assert result.files == ["claims-1.csv", "claims-2.csv"]
    assert result.rows_out == len(rows) == 1267


def test_rerun_replaces_quarantine(upload):
    lines = (SAMPLE / "conditions.csv").read_text().splitlines(keepends=True)
    (upload / "conditions.csv").write_text("".join(lines[:5] + ["broken\n"] + lines[5:]))
    _, lake = clean(upload, "conditions")
    assert len(quarantine(lake, "conditions")) == 1
    shutil.copy(SAMPLE / "conditions.csv", upload / "conditions.csv")
    result, _ = clean(upload, "conditions")
    assert result.quarantined == 0
    with pytest.raises(FileNotFoundError):
        quarantine(lake, "conditions")


def test_blank_lines_before_the_header_and_all_blank_files(upload):
    original = (SAMPLE / "careplans.csv").read_text()
    (upload / "careplans.csv").write_text("\n\r\n" + original)
    (upload / "devices.csv").write_text("\n\r\n\n")
    result, lake = clean(upload, "careplans")
    assert (result.rows_out, result.quarantined) == (49, 0)
    assert open(raw_text(lake, "careplans")).read() == original
    assert clean(upload, "devices")[0].rows_in == 0


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
    [row] = quarantine(lake, "allergies")
    assert row["line_number"] == 5 and row["reason"].startswith("stray carriage return")
    assert "\r" not in open(raw_text(lake, "allergies"), newline="").read()
