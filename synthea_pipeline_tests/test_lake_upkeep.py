"""Taking an upload out of the lake, reading the marts as they were, and the lake's upkeep (stale loads, expired
snapshots, orphan files), on real Sail, real Iceberg tables and a real Dagster instance."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterRunStatus, RunsFilter, build_run_status_sensor_context

from synthea_pipeline.definitions import defs
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.runs import maintain, remove, run_upload
from synthea_pipeline.sensors import rebuild_marts_after_removal
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.iceberg import LoadRecord, UploadLog, now
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.upkeep import expire
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows, fresh_instance, mart, staged


def all_rows(lake: Lake, table: str, upload_id: str) -> int:
    """Rows of an upload in a staging table whatever their load, committed or not."""
    return (
        catalog_rows(lake, f"SELECT count(*) AS n FROM synthea_staging_iceberg.{table} WHERE upload_id = '{upload_id}'")
        .column("n")[0]
        .as_py()
    )


def snapshots(lake: Lake, layer: str, table: str) -> list[int]:
    folder = Path(lake.uri(layer, table)) / "metadata"
    version = (folder / "version-hint.text").read_text().strip()
    metadata = json.loads((folder / f"v{version}.metadata.json").read_text())
    return [s["snapshot-id"] for s in metadata["snapshots"]]


@pytest.fixture(scope="module")
def removal(spark, tmp_path_factory):
    """A lake of two uploads, `keep` and `wrong`, after `wrong` was removed, with a Dagster instance of its own: the
    tests that take it read the instance's partitions and runs, which the other tests' runs would add to."""
    lake = Lake(str(tmp_path_factory.mktemp("removal") / "lake"))
    with fresh_instance() as instance:
        assert run_upload(str(SAMPLES["2.7"]), lake.root, "keep", instance=instance, spark=spark).success
        assert run_upload(str(SAMPLES["3.0"]), lake.root, "wrong", instance=instance, spark=spark).success
        kept_patients = staged(lake, "keep", "patients").num_rows
        assert all_rows(lake, "encounters", "wrong") > 0
        report = remove("wrong", lake.root, instance=instance, purge_source=True)
        yield lake, instance, report, kept_patients


@pytest.mark.slow
def test_remove_takes_an_upload_out_of_every_layer_and_rebuilds_the_marts(removal):
    lake, instance, report, kept_patients = removal
    assert report.success, report.errors
    assert report.marts["patient_fact"] == kept_patients + 1  # and the unknown member
    assert catalog_rows(lake, "SELECT upload_id FROM synthea_staging.uploads").column("upload_id").to_pylist() == [
        "keep"
    ]
    for table in (*TABLES, "quarantine"):
        assert all_rows(lake, table, "wrong") == 0, table
    assert set(mart(lake, "patient_fact").column("upload_id").to_pylist()) == {"keep", None}
    assert instance.get_dynamic_partitions("uploads") == ["keep"]
    assert not os.path.exists(lake.source("wrong")) and not os.path.exists(f"{lake.uri('source')}/wrong.manifest.json")
    assert not any(os.path.exists(lake.raw(t, "wrong")) for t in TABLES)
    assert os.path.exists(lake.source("keep"))
    run = instance.get_runs(RunsFilter(job_name="remove_upload"), limit=1)[0]
    assert run.status == DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == "wrong"


@pytest.mark.slow
def test_remove_command_refuses_an_unknown_upload(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    result = subprocess.run(
        [sys.executable, "-m", "synthea_pipeline.cli", "remove", "nope", "--lake", str(tmp_path / "lake")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "upload nope is not in the lake (in the lake: none)" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_successful_removal_triggers_the_marts_rebuild(removal):
    _, instance, _, _ = removal
    removals = instance.get_runs(RunsFilter(job_name="remove_upload"))
    context = build_run_status_sensor_context(
        sensor_name=rebuild_marts_after_removal.name,
        dagster_instance=instance,
        dagster_run=removals[0],
        dagster_event=instance.get_records_for_run(removals[0].run_id).records[-1].event_log_entry.dagster_event,
    )
    request = rebuild_marts_after_removal(context)
    assert request.run_key == removals[0].run_id and request.tags["synthea/removed_upload"] == "wrong"
    assert rebuild_marts_after_removal.job_name == "rebuild_marts"
    assert {"remove_upload", "rebuild_marts", "maintain_lake"} <= {j.name for j in defs.jobs}


@pytest.mark.slow
def test_query_as_of_reads_the_marts_as_they_were(instance, spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    assert run_upload(str(SAMPLES["2.7"]), lake.root, "first", instance=instance, spark=spark).success
    between = now()
    assert run_upload(str(SAMPLES["3.0"]), lake.root, "second", instance=instance, spark=spark).success
    catalog = CatalogResource()
    count = "SELECT count(*), count(DISTINCT upload_id) FROM patient_fact WHERE upload_id IS NOT NULL"
    first = staged(lake, "first", "patients").num_rows
    second = staged(lake, "second", "patients").num_rows
    assert catalog.query(lake, count)[1] == [[first + second, 2]]
    assert catalog.query(lake, count, as_of=between)[1] == [[first, 1]]
    uploads = "SELECT upload_id FROM synthea_staging.uploads ORDER BY 1"
    assert catalog.query(lake, uploads, as_of=between)[1] == [["first"]]
    with pytest.raises(ValueError, match="the lake has no marts as of"):
        catalog.query(lake, count, as_of=between - dt.timedelta(days=1))

    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    command = [sys.executable, "-m", "synthea_pipeline.cli", "query", count, "--lake", lake.root, "--format", "csv"]
    result = subprocess.run(
        [*command, "--as-of", between.isoformat()], env=env, check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == f"{first},1"
    wrong = subprocess.run(
        [*command, "--as-of", "yesterday"], env=env, check=False, capture_output=True, text=True, timeout=120
    )
    assert wrong.returncode == 2 and "not a timestamp: 'yesterday'" in wrong.stderr


@pytest.mark.slow
def test_maintain_expires_snapshots_and_deletes_what_no_snapshot_needs(instance, spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    for _ in range(2):
        assert run_upload(str(SAMPLES["3.3-3.4"]), lake.root, "u", instance=instance, spark=spark).success
    marts_before = {name: mart(lake, name) for name in ("patient_fact", "encounter_dim")}
    staged_before = staged(lake, "u", "encounters").sort_by("id")
    assert len(snapshots(lake, "staging", "encounters")) == 2
    data = Path(lake.uri("staging", "encounters")) / "data"
    orphan = data / "upload_id=u" / "load_id=died" / "part-orphan.parquet"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"written by a run that died")
    files_before = sum(1 for p in data.rglob("*") if p.is_file())

    summary = maintain(lake.root, older_than_days=0, instance=instance)

    assert summary["snapshots_expired"] > 0 and summary["files_deleted"] > 0
    assert len(snapshots(lake, "staging", "encounters")) == 1
    assert not orphan.exists()
    assert sum(1 for p in data.rglob("*") if p.is_file()) < files_before
    for name, rows in marts_before.items():
        assert mart(lake, name).equals(rows), name
    assert staged(lake, "u", "encounters").sort_by("id").equals(staged_before)

    again = run_upload(str(SAMPLES["3.3-3.4"]), lake.root, "u", instance=instance, spark=spark)
    assert again.success, again.errors
    assert staged(lake, "u", "encounters").sort_by("id").equals(staged_before)


@pytest.mark.slow
def test_maintain_keeps_what_is_younger_than_the_retention(instance, spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    assert run_upload(str(SAMPLES["3.3-3.4"]), lake.root, "u", instance=instance, spark=spark).success
    kept = snapshots(lake, "staging", "encounters")
    orphan = Path(lake.uri("staging", "encounters")) / "data" / "part-being-written.parquet"
    orphan.write_bytes(b"a run is still writing this")

    summary = maintain(lake.root, older_than_days=7, instance=instance)

    assert summary["snapshots_expired"] == 0 and summary["files_deleted"] == 0
    assert snapshots(lake, "staging", "encounters") == kept and orphan.exists()


@pytest.mark.unit
def test_cleanup_spares_the_loads_of_runs_that_may_still_be_writing():
    start = now()
    log = UploadLog(
        [
            LoadRecord("u", "dead", "begun", start - dt.timedelta(days=2)),
            LoadRecord("u", "old", "begun", start - dt.timedelta(hours=3)),
            LoadRecord("u", "old", "committed", start - dt.timedelta(hours=2), start - dt.timedelta(hours=2)),
            LoadRecord("u", "replaced", "begun", start - dt.timedelta(hours=2)),
            LoadRecord("u", "replaced", "committed", start - dt.timedelta(hours=1), start - dt.timedelta(hours=2)),
            LoadRecord("u", "current", "begun", start - dt.timedelta(minutes=30)),
            LoadRecord("u", "current", "committed", start - dt.timedelta(minutes=20), start - dt.timedelta(hours=2)),
            LoadRecord("u", "running", "begun", start - dt.timedelta(minutes=5)),
        ]
    )
    assert log.current()["u"].load_id == "current" and log.previous("u") == "replaced"
    assert sorted(log.stale(abandoned_before=start - dt.timedelta(days=1))) == [("u", "dead"), ("u", "old")]
    assert sorted(log.stale(abandoned_before=start)) == [("u", "dead"), ("u", "old"), ("u", "running")]


@pytest.mark.unit
def test_expiry_keeps_what_time_travel_after_the_cutoff_needs():
    def snapshot(sid, ms):
        return {"snapshot-id": sid, "timestamp-ms": ms, "manifest-list": f"/t/metadata/snap-{sid}.avro"}

    content = {
        "current-snapshot-id": 4,
        "last-updated-ms": 400,
        "refs": {"main": {"snapshot-id": 4, "type": "branch"}},
        "snapshots": [snapshot(1, 100), snapshot(2, 200), snapshot(3, 300), snapshot(4, 400)],
        "snapshot-log": [{"snapshot-id": s, "timestamp-ms": s * 100} for s in range(1, 5)],
        "metadata-log": [
            {"timestamp-ms": 150, "metadata-file": "/t/metadata/v1.metadata.json"},
            {"timestamp-ms": 350, "metadata-file": "/t/metadata/v3.metadata.json"},
        ],
    }
    expired, dropped = expire(content, "/t/metadata/v4.metadata.json", cutoff_ms=250)
    assert dropped == 1 and [s["snapshot-id"] for s in expired["snapshots"]] == [2, 3, 4]
    assert [e["snapshot-id"] for e in expired["snapshot-log"]] == [2, 3, 4]
    assert [e["metadata-file"] for e in expired["metadata-log"]] == [
        "/t/metadata/v3.metadata.json",
        "/t/metadata/v4.metadata.json",
    ]
    assert expire(content, "/t/metadata/v4.metadata.json", cutoff_ms=150) == (content, 0)
