"""`kill -9` at several moments of a re-upload whose content differs from the stored one: every reader sees one
whole version of the upload and one whole build of the marts after each kill, the next run converges to the new
version, and no run is left STARTED."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline_tests.conftest import SAMPLES

pytestmark = pytest.mark.slow  # pipeline subprocesses killed and run again

UPLOAD = "ward"
STAGING_TABLES = ("patients", "encounters", "conditions", "observations", "claims")
MARTS = ("patient_fact", "encounter_dim", "condition_dim")
WAIT_SECONDS = 300
SCALE_SAMPLE = Path(__file__).parents[1] / "benchmarks" / "scale_sample.py"


def folders(path: Path, prefix: str) -> set[str]:
    return {p.name for p in path.glob(f"{prefix}*")} if path.exists() else set()


def files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.exists() else set()


def moments(lake: Lake) -> dict[str, Callable[[], Callable[[], bool]]]:
    """Moments to kill a run at, each as: take stock now, then tell when the run has got there."""
    raw = Path(lake.raw("encounters", UPLOAD))
    staging = Path(lake.uri("staging", "encounters")) / "data" / f"upload_id={UPLOAD}"
    builds = Path(lake.uri("marts", "builds")) / "metadata"
    mart_data = Path(lake.uri("marts", "patient_fact")) / "data"

    def appears(list_now: Callable[[], set[str]]) -> Callable[[], Callable[[], bool]]:
        def arm():
            before = list_now()
            return lambda: bool(list_now() - before)

        return arm

    return {
        "writing raw": appears(lambda: folders(raw, "load_id=")),
        "writing staging": appears(lambda: folders(staging, "load_id=")),
        "beginning a build": appears(lambda: files(builds)),
        "writing the marts": appears(lambda: folders(mart_data, "build_id=")),
    }


def pipeline(source: Path, lake: Lake, home: Path) -> subprocess.Popen:
    """A corrected re-upload of the upload: `--replace`, as the copies have other patients than the first."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synthea_pipeline.cli",
            "run",
            str(source),
            "--lake",
            lake.root,
            "--upload-id",
            UPLOAD,
            "--replace",
        ],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def kill_when(process: subprocess.Popen, reached: Callable[[], bool]) -> None:
    """Polls the lake until the run gets to the moment, then kills its whole process group."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not reached():
        assert process.poll() is None, f"the run ended before the moment: {process.stdout.read()}"
        assert time.monotonic() < deadline, "the run never got to the moment"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def seen(lake: Lake) -> tuple[dict, dict]:
    """What a reader of the catalog sees of the upload (rows per staging table) and of the marts (rows per mart)."""
    with CatalogResource().open(lake) as engine:
        staging = {
            t: engine.sql(f"SELECT count(*) FROM synthea_staging.{t} WHERE upload_id = '{UPLOAD}'").fetchone()[0]
            for t in STAGING_TABLES
        }
        marts = {m: engine.sql(f"SELECT count(*) FROM synthea_marts.{m}").fetchone()[0] for m in MARTS}
    return staging, marts


def test_killed_runs_leave_one_version_and_the_next_run_converges(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    bigger = tmp_path / "ward_twice"
    subprocess.run([sys.executable, str(SCALE_SAMPLE), str(SAMPLES["3.3-3.4"]), "22", str(bigger)], check=True)

    first = pipeline(SAMPLES["3.3-3.4"], lake, home)
    assert first.wait(timeout=WAIT_SECONDS) == 0, first.stdout.read()
    before = seen(lake)

    observed = {}
    for moment, arm in moments(lake).items():
        reached = arm()
        kill_when(pipeline(bigger, lake, home), reached)
        observed[moment] = seen(lake)

    last = pipeline(bigger, lake, home)
    assert last.wait(timeout=WAIT_SECONDS) == 0, last.stdout.read()
    after = seen(lake)

    assert after[0] != before[0] and after[1] != before[1]
    new_upload_old_marts = (after[0], before[1])  # the staging commit precedes the build; the build's commit is last
    assert observed == {
        "writing raw": before,
        "writing staging": before,
        "beginning a build": new_upload_old_marts,
        "writing the marts": new_upload_old_marts,
    }

    instance = DagsterInstance.from_config(str(home))
    runs = instance.get_runs(RunsFilter(job_name="ingest_upload"))
    assert [r.status for r in runs].count(DagsterRunStatus.FAILURE) == len(observed)
    assert not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))
    with CatalogResource().open(lake) as engine:
        loads = engine.sql("SELECT DISTINCT load_id FROM synthea_staging_iceberg.encounters").fetchall()
    assert len(loads) <= 2, loads  # the current load and the one before it: the killed runs' rows are deleted
    assert not list(Path(lake.root).rglob("_tmp*"))
