"""Reprocessing uploads after a fix: their partitions are recomputed and replaced, the marts rebuilt as if the
uploads had arrived in order."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
from dagster import AssetKey

from synthea_pipeline.runs import backfill, run_upload
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline_tests.conftest import SAMPLES


def rows(path: Path) -> list[tuple]:
    return sorted((tuple(r.values()) for r in ds.dataset(path, format="parquet").to_table().to_pylist()), key=repr)


def test_backfill_replaces_partitions_and_rebuilds_marts_in_upload_order(instance, tmp_path):
    lake = tmp_path / "lake"
    assert run_upload(str(SAMPLES["2.7"]), str(lake), "u1", instance=instance).success
    assert run_upload(str(SAMPLES["3.0"]), str(lake), "u2", instance=instance).success
    marts_in_order = {mart: rows(lake / "marts" / mart) for mart in MARTS}
    patients_u1 = lake / "staging" / "patients" / "upload_id=u1"
    staged_u1 = rows(patients_u1)
    files_before = sorted(p.name for p in patients_u1.iterdir())

    # What a buggy version might have left: a stray file in a partition and a mart missing.
    shutil.copy(next((lake / "staging" / "patients" / "upload_id=u2").glob("*.parquet")), patients_u1 / "stray.parquet")
    shutil.rmtree(lake / "marts" / "patient_fact")

    reports = backfill(["u2", "u1"], str(lake), instance=instance)
    assert [(r.upload_id, r.success, bool(r.marts)) for r in reports] == [("u1", True, False), ("u2", True, True)]
    files_after = sorted(p.name for p in patients_u1.iterdir())
    assert "stray.parquet" not in files_after and files_after != files_before
    assert rows(patients_u1) == staged_u1
    assert {mart: rows(lake / "marts" / mart) for mart in MARTS} == marts_in_order
    for upload in ("u1", "u2"):
        events = instance.fetch_materializations(AssetKey(["staging", "patients"]), limit=10).records
        assert sum(1 for e in events if e.partition_key == upload) == 2


def test_backfill_command_refuses_unknown_uploads(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    command = [sys.executable, "-m", "synthea_pipeline.cli", "backfill"]
    nothing = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2 and "name the uploads to recompute, or pass --all" in nothing.stderr
    unknown = subprocess.run(command + ["nope"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2
    assert "not registered uploads: nope (registered: none)" in unknown.stderr and "Traceback" not in unknown.stderr
