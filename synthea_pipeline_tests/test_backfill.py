"""Reprocessing uploads after a fix: their partitions are recomputed and replaced, the marts rebuilt as if the
uploads had arrived in order."""

import os
import subprocess
import sys

import pytest
from dagster import AssetKey

from synthea_pipeline.runs import backfill, run_upload
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows, fresh_instance, mart, staged


@pytest.mark.slow
def test_backfill_recomputes_uploads_into_new_loads_and_the_same_marts(instance, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    first = run_upload(str(SAMPLES["2.7"]), lake.root, "u1", instance=instance)
    second = run_upload(str(SAMPLES["3.0"]), lake.root, "u2", instance=instance)
    assert first.success and second.success
    marts_before = {name: mart(lake, name) for name in MARTS}
    staged_before = staged(lake, "u1", "patients").sort_by("id")

    reports = backfill(["u2", "u1"], lake.root, instance=instance)
    assert [(r.upload_id, r.success, bool(r.marts)) for r in reports] == [("u1", True, False), ("u2", True, True)]
    loads = catalog_rows(lake, "SELECT upload_id, load_id FROM synthea_staging.uploads ORDER BY registered_at")
    assert loads.to_pylist() == [
        {"upload_id": "u1", "load_id": reports[0].run_id},
        {"upload_id": "u2", "load_id": reports[1].run_id},
    ]
    assert staged(lake, "u1", "patients").sort_by("id").equals(staged_before)
    for name in MARTS:
        assert mart(lake, name).equals(marts_before[name]), name
    for upload in ("u1", "u2"):
        events = instance.fetch_materializations(AssetKey(["staging", "patients"]), limit=10).records
        assert sum(1 for e in events if e.partition_key == upload) == 2


@pytest.mark.slow
def test_the_lake_not_the_dagster_instance_decides_what_a_backfill_sees(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with fresh_instance() as instance:
        assert run_upload(str(SAMPLES["3.0"]), lake.root, "later", instance=instance).success
        assert run_upload(str(SAMPLES["2.7"]), lake.root, "earlier-name", instance=instance).success
    marts_before = {name: mart(lake, name) for name in MARTS}
    with fresh_instance() as new_instance:
        reports = backfill(None, lake.root, instance=new_instance)
        assert [r.upload_id for r in reports] == ["later", "earlier-name"] and all(r.success for r in reports)
        assert new_instance.get_dynamic_partitions("uploads") == ["later", "earlier-name"]
    for name in MARTS:
        assert mart(lake, name).equals(marts_before[name]), name


@pytest.mark.slow
def test_backfill_command_refuses_unknown_uploads(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    command = [sys.executable, "-m", "synthea_pipeline.cli", "backfill"]
    nothing = subprocess.run(command, env=env, cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2
    assert "name the uploads to recompute (`synthea-pipeline uploads` lists them), or pass --all" in nothing.stderr
    unknown = subprocess.run(
        [*command, "nope"], env=env, cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120
    )
    assert unknown.returncode == 2
    assert "upload nope is neither in the lake nor in " in unknown.stderr and "Traceback" not in unknown.stderr
    assert "(in the lake: none); upload it first: synthea-pipeline upload EXPORT --upload-id nope" in unknown.stderr
