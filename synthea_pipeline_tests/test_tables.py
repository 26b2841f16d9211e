"""The table contract against the CSV reference and the real samples."""

import re

import pytest

from synthea_pipeline.tables import (
    DEFAULT_TABLES,
    RELEASES,
    TABLES,
    detect_release,
    may_omit_empty_files,
    release_note,
)
from synthea_pipeline_tests.conftest import FIXTURES, SAMPLES, read_rows

pytestmark = pytest.mark.unit  # no engine, no server

REFERENCE_RELEASES = {
    "2.5.0": "2.5",
    "2.6.0": "2.6",
    "2.6.1": "2.6",
    "2.7.0": "2.7",
    "3.0.0": "3.0",
    "3.1.0": "3.1",
    "3.2.0": "3.2",
    "3.3.0": "3.3",
    "master@2026-05-27": "3.4",
}


def reference_headers():
    """(table, release, header) for every verbatim header line in CSV_SCHEMA.md section 2."""
    text = (FIXTURES / "CSV_SCHEMA.md").read_text()
    section = text.split("## 2.")[1].split("## 3.")[0]
    table = None
    for line in section.splitlines():
        if line.startswith("### "):
            table = line[4:].strip()
            continue
        match = re.match(r"- (\S+)(?: – (\S+))?: `([^`]+)`", line)  # noqa: RUF001 - the schema's dash
        if match and table:
            first, last, header = match.groups()
            lo = RELEASES.index(REFERENCE_RELEASES[first])
            hi = RELEASES.index(REFERENCE_RELEASES[last or first])
            for release in RELEASES[lo : hi + 1]:
                yield table, release, header.split(",")


CASES = list(reference_headers())


def test_reference_covers_every_table():
    assert {t for t, _, _ in CASES} == set(TABLES)
    assert len(DEFAULT_TABLES) == 18 and "patient_expenses" not in DEFAULT_TABLES


@pytest.mark.parametrize("table,release,header", CASES, ids=[f"{t}-{r}" for t, r, _ in CASES])
def test_contract_writes_the_reference_header(table, release, header):
    assert TABLES[table].header_at(release) == header
    assert release in TABLES[table].releases_matching(header)


def test_renamed_columns_map_to_the_newest_name():
    match = TABLES["payer_transitions"].match_header(["PATIENT", "START_YEAR", "END_YEAR", "PAYER", "OWNERSHIP"])
    assert match.mapping == {
        "PATIENT": "patient",
        "START_YEAR": "start_date",
        "END_YEAR": "end_date",
        "PAYER": "payer",
        "OWNERSHIP": "plan_ownership",
    }
    assert TABLES["procedures"].match_header(["DATE", "PATIENT", "ENCOUNTER", "CODE"]).mapping["DATE"] == "start"
    assert TABLES["payer_transitions"].match_header(["OWNERNAME"]).mapping == {"OWNERNAME": "owner_name"}


def test_unknown_and_missing_columns_are_reported():
    match = TABLES["patients"].match_header(["Id", "FIRST", "FAVOURITE_COLOUR"])
    assert match.unknown == ["FAVOURITE_COLOUR"]
    assert match.missing_required == ["BIRTHDATE"]


def test_keys_match_reality():
    assert TABLES["imaging_studies"].key == ("id", "series_uid", "instance_uid")
    assert TABLES["observations"].key == ("row_key",)
    assert TABLES["claims_transactions"].key == ("id",)


@pytest.mark.parametrize("release,folder", SAMPLES.items())
def test_release_detected_from_sample_headers(release, folder):
    headers = {p.stem: read_rows(p)[0] for p in folder.glob("*.csv")}
    assert detect_release(headers) == release


def test_optional_columns_are_mapped_and_do_not_change_the_release():
    header = [*TABLES["conditions"].header_at("3.3"), "ICD10_CODE", "ICD10_DESCRIPTION"]
    match = TABLES["conditions"].match_header(header)
    assert match.mapping["ICD10_CODE"] == "icd10_code" and not match.unknown
    assert TABLES["conditions"].releases_matching(header) == {"3.3", "3.4", "4.1"}


def test_an_unknown_release_says_which_tables_disagree():
    headers = {
        "patients": read_rows(SAMPLES["2.7"] / "patients.csv")[0],
        "encounters": read_rows(SAMPLES["2.7"] / "encounters.csv")[0],
        "providers": read_rows(SAMPLES["3.3-3.4"] / "providers.csv")[0],
    }
    assert detect_release(headers) == "unknown"
    assert release_note(headers) == (
        "the tables' headers match different Synthea releases: patients match 2.5-3.0; "
        "encounters match 2.6-4.1; providers match 3.2-3.4"
    )
    assert release_note({"patients": headers["patients"]}) == ""


def test_only_releases_from_3_4_may_leave_out_the_file_of_an_empty_table():
    assert [may_omit_empty_files(r) for r in ("2.7", "3.0", "3.3", "3.3-3.4", "3.4", "unknown")] == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]
