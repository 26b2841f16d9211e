"""The star-schema marts over several uploads: counts, keys, latest upload wins, idempotence, privacy, checks."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthea_pipeline.runs import run_upload
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import FOREIGN_KEYS, IDENTIFIER_COLUMNS, MARTS
from synthea_pipeline_tests.conftest import SAMPLES, read_rows

ORDER = ["2.7", "3.0", "3.3-3.4"]


def distinct_ids(release, table, column="Id"):
    path = SAMPLES[release] / f"{table}.csv"
    header, rows = read_rows(path)
    return {r[header.index(column)] for r in rows}


def mart(lake, name):
    return pq.read_table(lake.uri("marts", name)).sort_by(MARTS[name].key)


@pytest.fixture(scope="module")
def lake(instance, tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    for release in ORDER:
        report = run_upload(str(SAMPLES[release]), lake.root, f"m{release}", instance=instance)
        assert report.success and not report.errors, report.errors
    return lake


@pytest.fixture(scope="module")
def last_report(instance, lake):
    return run_upload(str(SAMPLES["3.3-3.4"]), lake.root, "m3.3-3.4", instance=instance)


def test_row_counts_span_every_upload(lake):
    for name, table in (("patient_fact", "patients"), ("encounter_dim", "encounters"),
                        ("provider_dim", "providers"), ("organization_dim", "organizations"),
                        ("payer_dim", "payers")):
        expected = set().union(*(distinct_ids(r, table) for r in ORDER))
        assert mart(lake, name).num_rows == len(expected), name
    staged = sum(pq.read_table(lake.staging_path(f"m{r}", "conditions")).num_rows for r in ORDER)
    assert mart(lake, "condition_dim").num_rows == staged


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


def test_date_dim_covers_every_date_used(lake):
    dates = set(mart(lake, "date_dim").column("date_key").to_pylist())
    assert set(mart(lake, "patient_fact").column("birth_date").to_pylist()) <= dates
    assert set(mart(lake, "condition_dim").column("start_date").to_pylist()) <= dates


def test_no_identifiers_by_default(lake):
    for name in MARTS:
        assert not set(mart(lake, name).column_names) & set(IDENTIFIER_COLUMNS + ("provider_name",)), name


def test_rerun_leaves_marts_unchanged(instance, lake, last_report):
    before = {name: mart(lake, name) for name in MARTS}
    again = run_upload(str(SAMPLES["2.7"]), lake.root, "m2.7", instance=instance)
    assert again.success
    for name in MARTS:
        assert mart(lake, name).equals(before[name]), name


def test_latest_upload_wins_for_a_corrected_reupload(instance, lake, tmp_path, last_report):
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
    before = mart(lake, "encounter_dim").num_rows
    report = run_upload(str(corrected), lake.root, "m2.7-corrected", instance=instance)
    assert report.success and not report.errors, report.errors
    fact = {r["patient_key"]: r for r in mart(lake, "patient_fact").to_pylist()}
    assert fact[patient]["marital_status"] == "W" and fact[patient]["upload_id"] == "m2.7-corrected"
    encounter_keys = set(mart(lake, "encounter_dim").column("encounter_key").to_pylist())
    assert dropped[0] not in encounter_keys
    assert mart(lake, "encounter_dim").num_rows == before - 1
    assert mart(lake, "patient_fact").num_rows == len(fact) == 48


def test_identifiers_on_request(instance, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    report = run_upload(str(SAMPLES["2.7"]), lake.root, "ids", instance=instance, include_identifiers=True)
    assert report.success
    names = mart(lake, "patient_fact").column_names
    assert {"ssn", "first_name", "last_name", "address"} <= set(names)


def test_failing_blocking_check_stops_the_marts(instance, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(SAMPLES["2.7"], export)
    header, rows = read_rows(export / "conditions.csv")
    rows[0][header.index("PATIENT")] = ""
    (export / "conditions.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    lake = Lake(str(tmp_path / "lake"))
    report = run_upload(str(export), lake.root, "blocked", instance=instance)
    assert not report.success
    assert report.checks["staging/conditions:required_not_null"] is False
    assert any("staging/conditions:required_not_null" in e and "'patient': 1" in e for e in report.errors)
    assert not report.marts
    assert not (tmp_path / "lake" / "marts").exists()
    assert not Path(lake.staging_path("blocked", "conditions")).exists()
    assert Path(lake.staging_path("blocked", "patients")).is_dir()


def test_mart_failing_a_blocking_check_is_not_published(instance, lake, tmp_path):
    orphaned = tmp_path / "orphaned"
    shutil.copytree(SAMPLES["2.7"], orphaned)
    header, encounters = read_rows(orphaned / "encounters.csv")
    procedures = (orphaned / "procedures.csv").read_text()
    dropped = next(r for r in encounters if r[0] in procedures)
    (orphaned / "encounters.csv").write_text(
        "\n".join(",".join(r) for r in [header, *encounters] if r is not dropped) + "\n")
    before = {name: mart(lake, name) for name in MARTS}
    report = run_upload(str(orphaned), lake.root, "m2.7-orphaned", instance=instance)
    assert not report.success
    assert any("procedure_dim:foreign_keys_resolve" in e for e in report.errors), report.errors
    for name in MARTS:
        assert mart(lake, name).equals(before[name]), name
