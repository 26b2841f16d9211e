"""Dagster's own cost for one upload: the `ingest_upload` job's steps with the same asset and check specs, each
step yielding every materialization and check result without touching data, on a fresh SQLite instance (like
`synthea-pipeline run`'s). What is left once the data work costs nothing: imports, the run and its planned
events, and the storage of every event. Prints seconds and events; compare with `run_benchmark.py`'s DuckDB
time at 1k patients.

    .venv/bin/python benchmarks/dagster_floor.py [--home DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time

started = time.perf_counter()

from dagster import (  # timed from before the imports
    AssetCheckResult,
    AssetsDefinition,
    DagsterInstance,
    Definitions,
    MaterializeResult,
    define_asset_job,
    in_process_executor,
    multi_asset,
)

from synthea_pipeline.definitions import defs
from synthea_pipeline.partitions import uploads_partitions

imported = time.perf_counter()


def without_work(step: AssetsDefinition) -> AssetsDefinition:
    """The step with its specs and check specs, reporting success for each without computing anything."""
    specs, checks = list(step.specs), list(step.check_specs)

    @multi_asset(name=step.node_def.name, specs=specs, check_specs=checks, can_subset=True)
    def _step():
        for spec in specs:
            yield MaterializeResult(asset_key=spec.key)
        for check in checks:
            yield AssetCheckResult(asset_key=check.asset_key, check_name=check.name, passed=True)

    return _step


def floorless_steps() -> list[AssetsDefinition]:
    """Every executable step of the project's graph, without its work."""
    return [without_work(a) for a in defs.resolve_asset_graph().assets_defs if a.is_executable]


def floor_job(steps: list[AssetsDefinition]):
    """The steps as one in-process job over the uploads partitions."""
    return Definitions(
        assets=steps,
        jobs=[define_asset_job("floor", partitions_def=uploads_partitions, executor_def=in_process_executor)],
    ).resolve_job_def("floor")


def run_floor(instance: DagsterInstance, job) -> tuple[float, int]:
    """Seconds of one floor run on `instance`, and the events it stored."""
    instance.add_dynamic_partitions(uploads_partitions.name, ["floor"])
    before_run = time.perf_counter()
    result = job.execute_in_process(  # console logging as quiet as `synthea-pipeline run`'s
        instance=instance,
        partition_key="floor",
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    return time.perf_counter() - before_run, len(instance.all_logs(result.run_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", help="DAGSTER_HOME for the instance (default: a new temporary folder)")
    args = parser.parse_args()
    steps = floorless_steps()
    job = floor_job(steps)
    with tempfile.TemporaryDirectory(dir=args.home) as home:
        instance = DagsterInstance.local_temp(home, overrides={"telemetry": {"enabled": False}})
        seconds, events = run_floor(instance, job)
    finished = time.perf_counter()
    print(
        f"steps {len(steps)}, assets {sum(len(s.specs) for s in steps)}, "
        f"checks {sum(len(s.check_specs) for s in steps)}, events {events}"
    )
    print(
        f"imports {imported - started:.2f} s, run {seconds:.2f} s, "
        f"total {finished - started:.2f} s ({seconds / events * 1000:.1f} ms per event)"
    )


if __name__ == "__main__":
    main()
