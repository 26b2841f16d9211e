"""Many uploads landing at once under a real `dagster dev`: every one processed by the upload sensor without a
failed run, and the marts rebuilt far fewer times than there are uploads.

Writes N exports of about P patients each (re-keyed copies of the 3.0 sample, so each upload holds different
patients) with their manifests into a holding folder beside the lake, starts `dagster dev` with the repository's
dagster.yaml, and once the upload sensor has ticked moves them all into `LAKE/source/` at once. Waits until
every sensor run has finished and the marts automation has settled (a tick after the last run that requested
nothing), then prints the runs, the failed runs, the marts builds, the patients in the marts and the time from
the drop to fresh marts (the end of the last run that built them).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from synthea_pipeline.assets.batch import batch_uploads
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.run_tags import AUTOMATION_TAG
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.storage import storage_for
from synthea_pipeline.transforms.uploads import upload_export

HERE = Path(__file__).parent
REPOSITORY = HERE.parent
SAMPLE = REPOSITORY / "synthea_pipeline_tests" / "fixtures" / "v3.0.0_27p"
TIMEOUT_SECONDS = 3600


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, what: str, server: subprocess.Popen):
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not (result := condition()):
        if server.poll() is not None:
            raise SystemExit("dagster dev exited")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1)
    return result


def prepare(count: int, patients: int, holding: Path, work: Path) -> tuple[list[str], int]:
    """Exports with disjoint copy numbers, uploaded with their manifests into `holding`; the uploads and how
    many patients they hold in all."""
    sys.path.insert(0, str(HERE))
    from scale_sample import scale

    with open(SAMPLE / "patients.csv", "rb") as lines:
        copies = math.ceil(patients / (sum(1 for _ in lines) - 1))
    uploads = [f"ward-{n:03d}" for n in range(count)]
    total = 0
    for n, upload_id in enumerate(uploads):
        export = work / "exports" / upload_id
        total += scale(SAMPLE, patients, export, first_copy=n * copies)
        upload_export(str(export), storage_for(str(holding)), upload_id, replace=True)
    return uploads, total


def ticks(instance: DagsterInstance, sensor: str, after: float) -> list:
    states = [s for s in instance.all_instigator_state() if s.instigator_name == sensor]
    return [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, after=after)]


def settled(instance: DagsterInstance, uploads: list[str]):
    """The run records once every upload's run has finished, no run is queued or going, and a tick of the marts
    automation that began after the last run ended has requested nothing."""
    records = instance.get_run_records()
    staged = [r.dagster_run for r in records if r.dagster_run.job_name == "stage_upload"]
    covered = {u for run in staged for u in batch_uploads(run.tags) or [run.tags.get("dagster/partition")]}
    if not covered >= set(uploads) or not all(r.dagster_run.is_finished for r in records):
        return None
    last_end = max(r.end_time for r in records)
    quiet = [t for t in ticks(instance, "marts_automation", last_end) if t.is_completed and not t.run_ids]
    return records if quiet else None


def measure(instance: DagsterInstance, lake: Path, records: list, dropped: float) -> dict:
    builds = [r for r in records if AUTOMATION_TAG in r.dagster_run.tags]
    with CatalogResource().open(Lake(str(lake))) as engine:
        in_marts = engine.sql(
            "SELECT count(*) FROM synthea_marts.patient_fact WHERE patient_key <> 'unknown'"
        ).fetchone()[0]
    return {
        "runs": len(records),
        "stage_upload runs": sum(r.dagster_run.job_name == "stage_upload" for r in records),
        "runs by marts_automation": len(builds),
        "failed runs": sum(r.dagster_run.status != DagsterRunStatus.SUCCESS for r in records),
        "marts builds": len(instance.fetch_materializations(AssetKey(["marts", "patient_fact"]), limit=1000).records),
        "patients in the marts": in_marts,
        "stage_upload run seconds": sorted(
            round(r.end_time - r.start_time, 1) for r in records if r.dagster_run.job_name == "stage_upload"
        ),
        "marts build seconds": sorted(round(r.end_time - r.start_time, 1) for r in builds),
        "drop to first run start s": round(min(r.start_time for r in records if r.start_time) - dropped, 1),
        "drop to fresh marts s": round(max(r.end_time for r in builds) - dropped, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--patients", type=int, default=100, help="patients per upload (at least)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        home, lake, holding = work / "home", work / "lake", work / "holding"
        uploads, patients = prepare(args.uploads, args.patients, holding, work)
        home.mkdir()
        (lake / "source").mkdir(parents=True)
        config = (REPOSITORY / "dagster.yaml").read_text().replace("base_dir: .dagster", f"base_dir: {home}/storage")
        (home / "dagster.yaml").write_text(config)
        env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "DAGSTER_HOME": str(home), "SYNTHEA_LAKE_ROOT": str(lake)}
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-m", "synthea_pipeline.definitions", "-p", str(free_port())],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            instance = DagsterInstance.from_config(str(home))
            wait_for(lambda: ticks(instance, "upload_sensor", 0.0), "the upload sensor's first tick", server)
            dropped = time.time()
            for entry in sorted(holding.iterdir(), key=lambda p: p.suffix == ".json"):  # folders, then manifests
                entry.rename(lake / "source" / entry.name)
            records = wait_for(lambda: settled(instance, uploads), "the runs and the marts automation", server)
            outcome = measure(instance, lake, records, dropped)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=60)
    print(f"{len(uploads)} uploads of {args.patients}+ patients dropped at once ({patients} patients in all)")
    for name, value in outcome.items():
        print(f"{name:>28} {value}")


if __name__ == "__main__":
    main()
