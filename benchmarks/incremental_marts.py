"""An upload's cost against the size of the lake it joins: the 11-patient 3.3 sample (re-keyed, so each round's
patients are new) processed into an empty lake and into a lake that holds a large scaled upload, in one
invocation, end to end (`synthea-pipeline run`'s `run_upload`) and for the marts step; beside them, a full rebuild
of the large lake's marts. The target (issue 24): the small upload costs at most 1.5x in the large lake what it
costs in the empty one.

    .venv/bin/python benchmarks/incremental_marts.py [--patients 100000] [--data benchmarks/data]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from dagster import AssetKey, DagsterEventType, instance_for_test
from scale_sample import scale

from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.runs import run_upload
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.layers import AssetReport, run_marts

HERE = Path(__file__).parent
SAMPLES = HERE.parent.parent / "shared" / "synthea" / "samples"
LARGE_SAMPLE = SAMPLES / "v3.0.0_27p"
SMALL_SAMPLE = SAMPLES / "v3.3_au_11p"


def marts_seconds(instance, run_id: str) -> float:
    """The marts step's duration, from the run's step events."""
    times = {
        entry.dagster_event.event_type: entry.timestamp
        for entry in instance.all_logs(run_id)
        if entry.dagster_event and entry.step_key == "marts"
    }
    return times[DagsterEventType.STEP_SUCCESS] - times[DagsterEventType.STEP_START]


def small_upload(instance, spark: SparkResource, lake: Lake, export: Path, upload_id: str) -> tuple[float, float, str]:
    """Wall seconds, marts-step seconds and the build plan of one run of a small export."""
    started = time.perf_counter()
    report = run_upload(str(export), lake.root, upload_id, instance=instance, spark=spark)
    wall = time.perf_counter() - started
    if not report.success:
        raise SystemExit(f"{upload_id}: {report.errors}")
    [run] = instance.get_runs(limit=1)
    event = instance.get_latest_materialization_event(AssetKey(["marts", "patient_fact"]))
    plan = event.asset_materialization.metadata["build_plan"].value
    return wall, marts_seconds(instance, run.run_id), plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    export = args.data / f"scaled-3.0-{args.patients}"
    if not (export / "patients.csv").exists():
        shutil.rmtree(export, ignore_errors=True)
        scale(LARGE_SAMPLE, args.patients, export)
    with tempfile.TemporaryDirectory() as home, instance_for_test(temp_dir=home) as instance:
        spark = SparkResource(engine="sail")
        try:
            large = Lake(str(Path(home) / "large"))
            started = time.perf_counter()
            report = run_upload(str(export), large.root, "large", instance=instance, spark=spark)
            assert report.success, report.errors
            print(f"large lake: {args.patients} patients loaded in {time.perf_counter() - started:.1f} s")
            rows = []
            for round_number in range(args.rounds):
                small = Path(home) / f"small-{round_number}"
                scale(SMALL_SAMPLE, 11, small, first_copy=10**6 + round_number)
                empty = Lake(str(Path(home) / f"empty-{round_number}"))
                rows.append(("empty lake", *small_upload(instance, spark, empty, small, "small")))
                rows.append(("large lake", *small_upload(instance, spark, large, small, f"small-{round_number}")))
            session = spark.get_session(large.root)
            started = time.perf_counter()
            reports = run_marts(session, _Quiet(), large.root, "full-rebuild", full_rebuild=True)
            full = time.perf_counter() - started
            assert any(isinstance(r, AssetReport) for r in reports)
        finally:
            spark.teardown_after_execution(None)
    print(f"{'lake':<12} {'run s':>7} {'marts s':>8}  plan")
    for lake_name, wall, marts, plan in rows:
        print(f"{lake_name:<12} {wall:>7.1f} {marts:>8.1f}  {plan}")
    empty_runs = [r for r in rows if r[0] == "empty lake"]
    large_runs = [r for r in rows if r[0] == "large lake"]
    best = {
        name: (min(r[1] for r in runs), min(r[2] for r in runs))
        for name, runs in (("empty", empty_runs), ("large", large_runs))
    }
    print(
        f"best of {args.rounds}: run {best['large'][0] / best['empty'][0]:.2f}x, marts step "
        f"{best['large'][1] / best['empty'][1]:.2f}x the empty lake's (target 1.5x); "
        f"a full rebuild of the large lake's marts: {full:.1f} s"
    )


class _Quiet:
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


if __name__ == "__main__":
    main()
