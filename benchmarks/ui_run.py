"""An upload processed by the upload sensor or from the UI against `synthea-pipeline run` on the same export.

Starts a real `dagster dev` (webserver, daemon, sensors, run queue) with the repository's dagster.yaml on a fresh
lake, uploads the export (the sensor starts its run to staging, the marts automation the marts run after it), then
launches the same upload again through the webserver's GraphQL API (`ingest_upload`, every layer in one run). The
sensor's time is from its run's creation (queued) to the end of the marts run that followed it; the UI run's from
its creation to its end, as the UI shows it; the command's is its wall time, start-up included. Target: both
ratios <= 1.5.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_graphql import DagsterGraphQLClient

from synthea_pipeline.run_tags import AUTOMATION_TAG

HERE = Path(__file__).parent
REPOSITORY = HERE.parent
SAMPLE = REPOSITORY / "synthea_pipeline" / "samples" / "v3.3_au_11p"
UPLOAD = "bench-upload"
TIMEOUT_SECONDS = 900
AUTOMATION_RUNS = RunsFilter(tags={AUTOMATION_TAG: "true"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, what: str):
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)
    return result


def command_seconds(source: Path, work: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "synthea_pipeline.cli",
            "run",
            str(source),
            "--lake",
            str(work / "cli-lake"),
            "--upload-id",
            UPLOAD,
        ],
        env={**env, "DAGSTER_HOME": str(work / "cli-home")},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def finished_record(instance: DagsterInstance, run_id: str):
    def finished():
        record = instance.get_run_record_by_id(run_id)
        return record if record.dagster_run.is_finished else None

    record = wait_for(finished, f"run {run_id}")
    if record.dagster_run.status != DagsterRunStatus.SUCCESS:
        raise SystemExit(f"run {run_id} ended {record.dagster_run.status}")
    return record


def run_seconds(instance: DagsterInstance, run_id: str) -> float:
    record = finished_record(instance, run_id)
    return record.end_time - record.create_timestamp.timestamp()


def sensor_seconds(instance: DagsterInstance) -> float:
    """From the creation of the sensor's run to the end of the marts automation's run after it."""
    [staged] = wait_for(lambda: instance.get_runs(RunsFilter(job_name="stage_upload")), "the sensor's run")
    start = finished_record(instance, staged.run_id).create_timestamp.timestamp()
    [marts] = wait_for(lambda: instance.get_runs(AUTOMATION_RUNS), "the marts automation's run")
    return finished_record(instance, marts.run_id).end_time - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", nargs="?", type=Path, default=SAMPLE, help="Synthea CSV folder")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        command = command_seconds(args.source, work, env)

        home, lake = work / "ui-home", work / "ui-lake"
        home.mkdir()
        config = (REPOSITORY / "dagster.yaml").read_text().replace("base_dir: .dagster", f"base_dir: {home}/storage")
        (home / "dagster.yaml").write_text(config)
        ui_env = {**env, "DAGSTER_HOME": str(home), "SYNTHEA_LAKE_ROOT": str(lake)}
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-m", "synthea_pipeline.definitions", "-p", str(port)],
            cwd=work,
            env=ui_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            instance = DagsterInstance.from_config(str(home))
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "synthea_pipeline.cli",
                    "upload",
                    str(args.source),
                    "--to",
                    str(lake / "source"),
                    "--upload-id",
                    UPLOAD,
                ],
                env=ui_env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            sensor = sensor_seconds(instance)
            client = DagsterGraphQLClient("127.0.0.1", port_number=port)
            ui_run = client.submit_job_execution("ingest_upload", tags={"dagster/partition": UPLOAD})
            ui = run_seconds(instance, ui_run)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'synthea-pipeline run s':>23}{'sensor runs s':>15}{'ratio':>7}{'UI run s':>10}{'ratio':>7}")
    print(f"{command:>23.1f}{sensor:>15.1f}{sensor / command:>7.2f}{ui:>10.1f}{ui / command:>7.2f}")


if __name__ == "__main__":
    main()
