"""Stopping things leaves nothing behind: a `synthea-pipeline run` killed before its Dagster run started, one
interrupted by SIGTERM in the middle of staging, `dagster dev` started by a test and stopped by SIGTERM, and a test
run interrupted by SIGINT while one worker holds `dagster dev` and another a lake. Processes are found by a marker
in their environment, which every child inherits."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.runs import dagster_instance
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline_tests.conftest import SAMPLES, group_members, live_processes, zipped

pytestmark = pytest.mark.slow  # pipeline subprocesses, dagster dev, a pytest run of its own

REPOSITORY = Path(__file__).parents[1]
MARKER = "SYNTHEA_TEST_MARKER"
WAIT_SECONDS = 300


def marked(marker: str) -> list[int]:
    """The live processes whose environment carries the marker."""
    found = []
    for pid in live_processes():
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if f"{MARKER}={marker}".encode() in environ.read().split(b"\0"):
                    found.append(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def until(condition, what: str, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def files_under(folder: Path) -> list[Path]:
    """The files under a folder that processes are still writing and deleting (os.walk skips what vanishes)."""
    return [Path(root, name) for root, _, names in os.walk(folder) for name in names]


def environment(tmp_path: Path, marker: str) -> dict:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    return {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "TMPDIR": str(temporary),
        MARKER: marker,
        "PYTHONPATH": str(REPOSITORY),
    }


def test_a_run_killed_before_it_started_is_marked_failed_on_the_next_start(tmp_path, monkeypatch):
    """The command is killed the moment its Dagster run exists, before the run starts (NOT_STARTED)."""
    lake = tmp_path / "lake"
    killed_after_creating_the_run = (
        "import os, signal, sys\n"
        "from dagster import DagsterInstance\n"
        "create = DagsterInstance.create_run_for_job\n"
        "def create_then_die(self, *args, **kwargs):\n"
        "    create(self, *args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "DagsterInstance.create_run_for_job = create_then_die\n"
        "from synthea_pipeline.cli import main\n"
        f"sys.exit(main(['run', {str(SAMPLES['2.7'])!r}, '--lake', {str(lake)!r}]))\n"
    )
    env = environment(tmp_path, uuid.uuid4().hex)
    result = subprocess.run(
        [sys.executable, "-c", killed_after_creating_the_run],
        env=env,
        timeout=WAIT_SECONDS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    [run] = DagsterInstance.from_config(env["DAGSTER_HOME"]).get_runs()
    assert run.status == DagsterRunStatus.NOT_STARTED
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    restarted = dagster_instance()  # what every command does first
    assert restarted.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE


def test_sigterm_in_the_middle_of_a_run_leaves_no_process_no_temporary_data_and_nothing_committed(tmp_path):
    marker = uuid.uuid4().hex
    env = environment(tmp_path, marker)
    lake = Lake(str(tmp_path / "lake"))
    archive = zipped(SAMPLES["3.0"], tmp_path / "synthea_sample_data_csv.zip")
    process = subprocess.Popen(
        [sys.executable, "-m", "synthea_pipeline.cli", "run", str(archive), "--lake", lake.root],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    raw = Path(lake.uri("raw"))
    until(
        lambda: process.poll() is not None or list(raw.glob("*/upload_id=*/load_id=*/*.parquet")),
        "the run to write raw files",
    )
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 130, stdout + stderr
    assert "interrupted (SIGINT or SIGTERM): nothing of this run was committed" in stderr
    assert "Traceback" not in stderr
    until(lambda: not marked(marker), "the run's processes to end", 30)
    assert files_under(Path(env["TMPDIR"])) == []  # the zip's extracted files included
    [run] = DagsterInstance.from_config(env["DAGSTER_HOME"]).get_runs()
    assert run.status == DagsterRunStatus.FAILURE
    state = CatalogResource().upload_states(lake)["synthea_sample_data_csv"]
    assert (state["state"], state["last_run_note"]) == ("failed", "interrupted before its commit")
    assert list(raw.glob("*/upload_id=*/load_id=*")) == []
    with CatalogResource().open(lake) as engine:
        written = [
            name
            for (name,) in engine.sql(
                "SELECT view_name FROM duckdb_views() WHERE schema_name = "
                "'synthea_staging_iceberg' AND view_name <> 'uploads'"
            ).fetchall()
        ]
        assert "claims" in written  # the largest tables go first
        for table in written:
            assert engine.sql(f"SELECT count(*) FROM synthea_staging_iceberg.{table}").fetchone() == (0,), table
        assert engine.sql("SELECT count(*) FROM synthea_staging.uploads").fetchone() == (0,)


INNER_CONFTEST = "from synthea_pipeline_tests.conftest import pytest_configure, pytest_sessionfinish  # noqa: F401\n"
INNER_TESTS = """
import os
import sys
import threading

from dagster import DagsterInstance

from synthea_pipeline_tests.conftest import free_port, fresh_instance, server_process


def test_holding_dagster_dev(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\\n  enabled: false\\n")
    DagsterInstance.from_config(str(tmp_path)).dispose()  # the storage exists, see conftest.STORAGE_RACE
    command = [sys.executable, "-m", "dagster", "dev", "-m", "synthea_pipeline.definitions", "-p", str(free_port())]
    with server_process(command, tmp_path / "dagster-dev.log", env, tmp_path):
        threading.Event().wait()


def test_holding_a_lake(tmp_path):
    with fresh_instance():
        (tmp_path / "lake.bin").write_bytes(bytes(10_000_000))
        threading.Event().wait()
"""


def test_sigterm_of_dagster_dev_and_sigint_of_the_test_run_leave_no_process_and_no_data(tmp_path):
    marker = uuid.uuid4().hex
    env = environment(tmp_path, marker)
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(INNER_CONFTEST)
    (inner / "test_holding.py").write_text(INNER_TESTS)
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-n",
            "2",
            "--dist",
            "load",
            str(inner),
        ],
        cwd=inner,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def dagster_dev() -> int | None:
        for pid in marked(marker):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    command = cmdline.read()
            except (FileNotFoundError, ProcessLookupError):
                continue  # a short-lived child (a worker's helper) ended since it was listed
            if b"dagster\0dev" in command and len(group_members(pid)) >= 4:
                return pid
        return None

    server = until(lambda: dagster_dev() if run.poll() is None else "exited", "dagster dev and its children")
    assert server != "exited", run.stdout.read()
    until(
        lambda: (
            files_under(Path(env["TMPDIR"])) and any(p.name == "lake.bin" for p in files_under(Path(env["TMPDIR"])))
        ),
        "the other worker's lake",
    )
    os.kill(server, signal.SIGTERM)
    until(lambda: not group_members(server), "dagster dev and everything it started to stop", 60)

    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == pytest.ExitCode.INTERRUPTED, output
    until(lambda: not marked(marker), "every process of the test run to end", 30)
    assert files_under(Path(env["TMPDIR"])) == [], output
