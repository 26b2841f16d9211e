"""The source -> raw -> staging graph run through Dagster on Sail, on all three shipped samples."""

import datetime as dt
from pathlib import Path

import pytest
from dagster import AssetKey

from synthea_pipeline.runs import run_upload
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.checks import UPLOAD_CHECKS
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows, fresh_instance, read_rows, staged

pytestmark = pytest.mark.slow  # three pipeline runs before the first test

ARROW_TYPES = {
    "string": "string",
    "date": "date32[day]",
    "timestamp": "timestamp[us, tz=UTC]",
    "decimal(18,2)": "decimal128(18, 2)",
    "double": "double",
    "int": "int32",
}


def upload_id(release):
    return "sample-" + release.replace("-", "_")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return Lake(str(tmp_path_factory.mktemp("lake")))


@pytest.fixture(scope="module")
def reports(instance, lake):
    return {
        release: run_upload(str(folder), lake.root, upload_id(release), instance=instance)
        for release, folder in SAMPLES.items()
    }


def staged_sample(lake, release, table):
    return staged(lake, upload_id(release), table)


def expected_rows(folder: Path, table: str) -> int:
    """Distinct rows (by key, or by whole trimmed row) counted straight from the CSV file."""
    path = folder / f"{table}.csv"
    if not path.exists():
        return 0
    header, rows = read_rows(path)
    spec = TABLES[table]
    mapping = spec.match_header(header).mapping
    if spec.has_natural_key:
        positions = [header.index(h) for h, name in mapping.items() if name in spec.key]
        return len({tuple(r[i].strip() for i in positions) for r in rows})
    return len({tuple(v.strip() for v in r) for r in rows})


@pytest.mark.parametrize("release", SAMPLES)
def test_run_succeeds_and_detects_release(reports, release):
    report = reports[release]
    assert report.success and not report.errors
    assert report.release == release
    staging_and_raw = {k: v for k, v in report.checks.items() if k.startswith(("staging/", "raw/"))}
    assert all(staging_and_raw.values()) and len(staging_and_raw) == len(TABLES) * 5 + len(UPLOAD_CHECKS)


@pytest.mark.parametrize("release", SAMPLES)
def test_staging_row_counts_match_the_files(reports, lake, release):
    accounts = {t.table: t for t in reports[release].tables}
    assert set(accounts) == set(TABLES)
    for table in TABLES:
        expected = expected_rows(SAMPLES[release], table)
        assert staged_sample(lake, release, table).num_rows == accounts[table].rows_out == expected, table
        account = accounts[table]
        assert account.rows_in == account.rows_out + account.quarantined + account.duplicates_dropped


def test_known_duplicates_are_dropped(reports):
    accounts = {t.table: t for t in reports["3.3-3.4"].tables}
    assert accounts["observations"].duplicates_dropped == 14
    assert accounts["supplies"].duplicates_dropped == 1


@pytest.mark.parametrize("release", SAMPLES)
def test_schema_is_the_contract_for_every_release(reports, lake, release):
    for table in TABLES:
        schema = staged_sample(lake, release, table).schema
        spec = TABLES[table]
        assert schema.names == spec.column_names + ([] if spec.has_natural_key else ["row_key"]) + ["upload_id"]
        for column in spec.columns:
            assert str(schema.field(column.name).type) == ARROW_TYPES[column.spark_type], (table, column.name)


@pytest.mark.parametrize("release", SAMPLES)
def test_keys_are_unique(reports, lake, release):
    for table in TABLES:
        spec = TABLES[table]
        rows = staged_sample(lake, release, table).select(list(spec.key)).to_pylist()
        assert len({tuple(r.values()) for r in rows}) == len(rows), table


def test_harmonized_columns(reports, lake):
    procedures = staged_sample(lake, "2.7", "procedures")
    assert procedures.column("start").null_count == 0 and procedures.column("stop").null_count == procedures.num_rows
    transitions = staged_sample(lake, "2.7", "payer_transitions").to_pylist()
    _, source = read_rows(SAMPLES["2.7"] / "payer_transitions.csv")
    assert sorted(t["start_date"] for t in transitions) == sorted(
        dt.datetime(int(r[1]), 1, 1, tzinfo=dt.timezone.utc) for r in source
    )
    v30 = staged_sample(lake, "3.0", "payer_transitions")
    assert v30.column("start_date").null_count == 0 and v30.column("owner_name").null_count < v30.num_rows
    assert staged_sample(lake, "2.7", "patients").column("middle").null_count == 10
    claims = staged_sample(lake, "3.0", "claims").column("primarypatientinsuranceid").to_pylist()
    assert "0" not in claims and None in claims
    conditions = staged_sample(lake, "3.3-3.4", "conditions").column("system").to_pylist()
    assert set(conditions) == {"SNOMED-CT"}
    header, source = read_rows(SAMPLES["3.0"] / "payers.csv")
    qols = header.index("QOLS_AVG")
    payers = staged_sample(lake, "3.0", "payers")
    assert dict(zip(payers.column("id").to_pylist(), payers.column("qols_avg").to_pylist(), strict=False)) == {
        r[0]: None if r[qols] == "NaN" else float(r[qols]) for r in source
    }


def test_materializations_carry_account_and_schema(reports, instance):
    event = instance.get_latest_materialization_event(AssetKey(["staging", "observations"]))
    metadata = event.asset_materialization.metadata
    assert event.asset_materialization.partition == upload_id("3.3-3.4")
    assert metadata["duplicates_dropped"].value == 14
    assert metadata["synthea_release"].value == "3.3-3.4"
    assert [c.name for c in metadata["dagster/column_schema"].value.columns][:3] == ["date", "patient", "encounter"]


def test_rerun_replaces_an_upload_with_a_new_load(tmp_path):
    """On a lake and an instance of its own: the other tests read the module's lake and latest materializations."""
    lake = Lake(str(tmp_path / "lake"))
    releases = ("2.7", "3.0")

    def loads():
        return catalog_rows(lake, "SELECT upload_id, load_id FROM synthea_staging.uploads ORDER BY 1").to_pylist()

    with fresh_instance() as instance:
        for release in releases:
            report = run_upload(str(SAMPLES[release]), lake.root, upload_id(release), instance=instance)
            assert report.success and not report.errors, report.errors
        before = {t: staged_sample(lake, "3.0", t) for t in TABLES}
        first = loads()
        again = run_upload(str(SAMPLES["3.0"]), lake.root, upload_id("3.0"), instance=instance)
    assert again.success
    for table in TABLES:
        after = staged_sample(lake, "3.0", table)
        assert after.num_rows == before[table].num_rows
        assert after.sort_by([(c, "ascending") for c in after.column_names]).equals(
            before[table].sort_by([(c, "ascending") for c in after.column_names])
        )
    second = loads()
    assert [u["upload_id"] for u in second] == sorted(upload_id(r) for r in releases)
    changed = [(a["load_id"], b["load_id"]) for a, b in zip(first, second, strict=False) if a != b]
    assert changed == [(next(u["load_id"] for u in first if u["upload_id"] == upload_id("3.0")), again.run_id)]
    kept = (
        catalog_rows(
            lake,
            f"SELECT DISTINCT load_id FROM synthea_staging_iceberg.patients WHERE upload_id = '{upload_id('3.0')}'",
        )
        .column("load_id")
        .to_pylist()
    )
    assert sorted(kept) == sorted(changed[0])
