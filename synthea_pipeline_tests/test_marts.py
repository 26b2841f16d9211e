"""The star-schema marts over several uploads: counts, keys, latest upload wins, idempotence, privacy, checks."""

import shutil

import pyarrow.compute as pc
import pytest
from pyspark.sql import functions as F

from synthea_pipeline.runs import run_upload
from synthea_pipeline.transforms import layers
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import FOREIGN_KEYS, IDENTIFIER_COLUMNS, MARTS, UNKNOWN_KEY
from synthea_pipeline_tests.conftest import SAMPLES, mart, read_rows, staged

pytestmark = pytest.mark.slow  # three pipeline runs before the first test

ORDER = ["2.7", "3.0", "3.3-3.4"]
WITH_UNKNOWN_MEMBER = {"patient_fact", "encounter_dim", "provider_dim", "organization_dim", "payer_dim", "location_dim"}


def distinct_ids(release, table, column="Id"):
    path = SAMPLES[release] / f"{table}.csv"
    header, rows = read_rows(path)
    return {r[header.index(column)] for r in rows}


@pytest.fixture(scope="module")
def uploads(instance, tmp_path_factory):
    """The three samples uploaded in release order into one lake, and each run's report. The tests that take it
    only read it; those that change a lake build their own."""
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    reports = {}
    for release in ORDER:
        reports[release] = run_upload(str(SAMPLES[release]), lake.root, f"m{release}", instance=instance)
        assert reports[release].success and not reports[release].errors, reports[release].errors
    return lake, reports


@pytest.fixture(scope="module")
def lake(uploads):
    return uploads[0]


@pytest.fixture(scope="module")
def last_report(uploads):
    """The report of the run that built the marts over all three uploads."""
    return uploads[1][ORDER[-1]]


def known(table, key):
    return table.filter(pc.not_equal(table.column(key), UNKNOWN_KEY))


@pytest.fixture
def small_lake(instance, tmp_path):
    """A lake of its own holding the 2.7 sample, for tests that change what the lake holds, so no test depends on
    another's changes (Iceberg tables keep absolute paths, so a lake cannot be copied)."""
    lake = Lake(str(tmp_path / "small"))
    report = run_upload(str(SAMPLES["2.7"]), lake.root, "m2.7", instance=instance)
    assert report.success and not report.errors, report.errors
    return lake


def test_row_counts_span_every_upload(lake):
    for name, table in (
        ("patient_fact", "patients"),
        ("encounter_dim", "encounters"),
        ("provider_dim", "providers"),
        ("organization_dim", "organizations"),
        ("payer_dim", "payers"),
    ):
        expected = set().union(*(distinct_ids(r, table) for r in ORDER))
        keys = mart(lake, name).column(MARTS[name].key).to_pylist()
        assert len(keys) == len(expected) + 1 and set(keys) == expected | {UNKNOWN_KEY}, name
    staged_conditions = sum(staged(lake, f"m{r}", "conditions").num_rows for r in ORDER)
    assert mart(lake, "condition_dim").num_rows == staged_conditions


def test_every_check_passes_and_oddities_are_counted(last_report):
    assert last_report.success and not last_report.errors
    mart_checks = {k: v for k, v in last_report.checks.items() if k.startswith("marts/")}
    blocking = {k for k in mart_checks if k.split(":")[1] in ("primary_key", "foreign_keys_resolve", "rows_reconcile")}
    assert len(blocking) == len(MARTS) + len(FOREIGN_KEYS) + 5
    assert all(mart_checks[k] for k in blocking)
    assert mart_checks["marts/encounter_dim:observations_without_encounter"] is False


def test_keys_unique_and_foreign_keys_resolve(lake):
    for name, spec in MARTS.items():
        keys = mart(lake, name).column(spec.key).to_pylist()
        assert None not in keys and len(set(keys)) == len(keys), name
    for name, references in FOREIGN_KEYS.items():
        frame = mart(lake, name)
        for column, target in references.items():
            targets = set(mart(lake, target).column(MARTS[target].key).to_pylist())
            assert set(frame.column(column).drop_null().to_pylist()) <= targets, (name, column)


def test_every_referenced_mart_has_exactly_one_unknown_member(lake):
    for name, spec in MARTS.items():
        if name == "date_dim":
            continue
        members = mart(lake, name).filter(pc.equal(mart(lake, name).column(spec.key), UNKNOWN_KEY))
        assert members.num_rows == (1 if name in WITH_UNKNOWN_MEMBER else 0), name
        if "upload_id" in members.column_names:
            assert members.column("upload_id").to_pylist() == [None] * members.num_rows, name
    assert {target for references in FOREIGN_KEYS.values() for target in references.values()} == WITH_UNKNOWN_MEMBER


def test_clean_uploads_reference_no_unknown_member(last_report):
    assert all(last_report.checks[f"marts/{name}:references_known"] for name in FOREIGN_KEYS)


def test_date_dim_covers_every_date_used(lake):
    dates = set(mart(lake, "date_dim").column("date_key").to_pylist())
    assert set(known(mart(lake, "patient_fact"), "patient_key").column("birth_date").to_pylist()) <= dates
    assert set(mart(lake, "condition_dim").column("start_date").to_pylist()) <= dates


def test_no_identifiers_by_default(lake):
    for name in MARTS:
        assert not set(mart(lake, name).column_names) & {*IDENTIFIER_COLUMNS, "provider_name"}, name


def test_rerun_leaves_marts_unchanged(instance, small_lake):
    """Re-running an upload that a later one follows (3.0 holds the same payers as 2.7) keeps the later one's rows."""
    later = run_upload(str(SAMPLES["3.0"]), small_lake.root, "m3.0", instance=instance)
    assert later.success and not later.errors, later.errors
    before = {name: mart(small_lake, name) for name in MARTS}
    again = run_upload(str(SAMPLES["2.7"]), small_lake.root, "m2.7", instance=instance)
    assert again.success
    for name in MARTS:
        assert mart(small_lake, name).equals(before[name]), name


def test_latest_upload_wins_for_a_corrected_reupload(instance, small_lake, tmp_path):
    corrected = tmp_path / "corrected"
    shutil.copytree(SAMPLES["2.7"], corrected)
    header, rows = read_rows(corrected / "patients.csv")
    patient = rows[0][0]
    rows[0][header.index("MARITAL")] = "W"
    (corrected / "patients.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    enc_header, encounters = read_rows(corrected / "encounters.csv")
    dropped = next(r for r in encounters if r[enc_header.index("PATIENT")] == patient)
    for path in corrected.glob("*.csv"):
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if dropped[0] not in line))
    before = mart(small_lake, "encounter_dim").num_rows
    report = run_upload(str(corrected), small_lake.root, "m2.7-corrected", instance=instance)
    assert report.success and not report.errors, report.errors
    fact = {r["patient_key"]: r for r in mart(small_lake, "patient_fact").to_pylist()}
    assert fact[patient]["marital_status"] == "W" and fact[patient]["upload_id"] == "m2.7-corrected"
    encounter_keys = set(mart(small_lake, "encounter_dim").column("encounter_key").to_pylist())
    assert dropped[0] not in encounter_keys
    assert mart(small_lake, "encounter_dim").num_rows == before - 1
    assert len(fact) == 10 + 1


def test_identifiers_on_request(instance, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    report = run_upload(str(SAMPLES["2.7"]), lake.root, "ids", instance=instance, include_identifiers=True)
    assert report.success
    names = mart(lake, "patient_fact").column_names
    assert {"ssn", "first_name", "last_name", "address"} <= set(names)


def test_a_pipeline_bug_that_breaks_a_blocking_check_leaves_the_marts_unpublished(instance, small_lake, monkeypatch):
    """Blocking checks guard against the pipeline's own bugs: one is injected here (patient_fact appended twice)."""
    write = layers.write_marts

    def write_with_a_bug(spark, lake, loads, build_id, include_identifiers, plan):
        build = write(spark, lake, loads, build_id, include_identifiers, plan)
        fact = build.tables["patient_fact"]
        lake.append(spark.table(fact).where(F.col("build_id") == build_id), fact)
        return build

    monkeypatch.setattr(layers, "write_marts", write_with_a_bug)
    before = {name: mart(small_lake, name) for name in MARTS}
    report = run_upload(str(SAMPLES["2.7"]), small_lake.root, "m2.7", instance=instance)
    assert not report.success
    assert any("patient_fact:primary_key" in e and "patient_fact:rows_reconcile" in e for e in report.errors), (
        report.errors
    )
    assert report.checks["staging/patients:rows_reconcile"] is True
    for name in MARTS:
        assert mart(small_lake, name).equals(before[name]), name
