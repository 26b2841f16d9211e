"""Finding runs whose process died (`kill -9`, out of memory, a closed laptop lid), so they are marked failed
instead of staying STARTED forever and holding the per-upload run queue.

A run's worker is the process that wrote its RUN_START event: the run worker beside the code server for runs the
daemon launches, the `synthea-pipeline` process for the runs it executes in-process. Both run on the host named in
the run's `synthea/host` tag; a worker is dead when no such process is left on that host (or only its zombie, or
a later process that got its pid)."""

from __future__ import annotations

import os
import socket

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, LaunchRunContext, WorkerStatus

HOST_TAG = "synthea/host"
STARTTIME_FIELD = 19
"""Index of `starttime` (clock ticks after boot) among the fields of /proc/<pid>/stat after the command name."""
CLOCK_SLACK_SECONDS = 1.0


def run_worker(instance: DagsterInstance, run: DagsterRun) -> tuple[int, float] | None:
    """The pid of the process that started the run, and when it did (epoch seconds)."""
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START, limit=1).records
    event = records[0].event_log_entry if records else None
    if event is None or event.dagster_event is None or event.dagster_event.pid is None:
        return None
    return event.dagster_event.pid, event.timestamp


def process_alive(pid: int, started_by: float) -> bool:
    """Whether process `pid` runs (not as a zombie) and is the one that started by `started_by`: after a reboot
    the pid may belong to a later process. Without /proc (macOS) only whether the pid exists."""
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime "))
    except FileNotFoundError:
        return False
    started = boot + int(fields[STARTTIME_FIELD]) / os.sysconf("SC_CLK_TCK")
    return fields[0] != "Z" and started <= started_by + CLOCK_SLACK_SECONDS


def worker_status(instance: DagsterInstance, run: DagsterRun) -> CheckRunHealthResult:
    """RUNNING unless the run's worker process is known to be gone from this host."""
    if run.tags.get(HOST_TAG) != socket.gethostname():
        return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker is on another host")
    worker = run_worker(instance, run)
    if worker is None:
        return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker has not started yet")
    pid, started_by = worker
    if process_alive(pid, started_by):
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive")
    return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone (killed or crashed)")


def mark_dead_runs(instance: DagsterInstance) -> list[str]:
    """Marks failed every STARTED run of this host whose worker process is gone; returns their ids. What
    `synthea-pipeline` does on start for the in-process runs it finds, which no daemon monitors."""
    dead = []
    runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED], tags={HOST_TAG: socket.gethostname()}))
    for run in runs:
        status = worker_status(instance, run)
        if status.status == WorkerStatus.FAILED:
            instance.report_run_failed(run, f"{status.msg}: marked failed by synthea-pipeline")
            dead.append(run.run_id)
    return dead


class LocalRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (one worker process per run, beside the code server) with the health check
    run monitoring needs: the daemon then marks a run whose worker died failed, which frees its upload's queue."""

    def launch_run(self, context: LaunchRunContext) -> None:
        self._instance.add_run_tags(context.dagster_run.run_id, {HOST_TAG: socket.gethostname()})
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        return worker_status(self._instance, run)
