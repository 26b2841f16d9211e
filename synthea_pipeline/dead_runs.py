"""Finding runs whose process died (`kill -9`, out of memory, a closed laptop lid), so they are marked failed
instead of staying NOT_STARTED, STARTING or STARTED forever and holding the per-upload run queue.

A run's worker is the process that wrote its RUN_START event: the run worker beside the code server for runs
Dagster's default launcher starts, the `synthea-pipeline` process for the runs it executes in-process (tagged with
its host and, for a run killed before it started, its process). A worker is dead when no such process is left on
its host (or only its zombie, or a later process that got its pid). A run the default launcher launched whose
worker never wrote RUN_START is left to run monitoring's start timeout (`dagster.yaml`). The `dead_runs` sensor
checks every 15 s under `dagster dev`; `synthea-pipeline` checks on start."""

from __future__ import annotations

import os
import socket

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultRunLauncher,
    DefaultSensorStatus,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from synthea_pipeline.run_tags import HOST_TAG, PROCESS_TAG

STARTTIME_FIELD = 19
"""Index of `starttime` (clock ticks after boot) among the fields of /proc/<pid>/stat after the command name."""
CLOCK_SLACK_SECONDS = 1.0


def run_worker(instance: DagsterInstance, run: DagsterRun) -> tuple[int, float] | None:
    """The pid of the process that started the run, and a moment it was alive (epoch seconds): the one that wrote
    its RUN_START event, else, for a run `synthea-pipeline` created and never started, the one its process tag
    names."""
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START, limit=1).records
    event = records[0].event_log_entry if records else None
    if event is not None and event.dagster_event is not None and event.dagster_event.pid is not None:
        return event.dagster_event.pid, event.timestamp
    pid, _, alive_at = run.tags.get(PROCESS_TAG, "").partition(":")
    return (int(pid), float(alive_at)) if pid.isdigit() and alive_at else None


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


def on_this_host(instance: DagsterInstance, run: DagsterRun) -> bool:
    """Whether the run's worker runs here: its host tag says so, or it has none and Dagster's default launcher,
    which starts every worker beside this instance's code server, launched it."""
    host = run.tags.get(HOST_TAG)
    return host == socket.gethostname() if host else isinstance(instance.run_launcher, DefaultRunLauncher)


def worker_gone(instance: DagsterInstance, run: DagsterRun) -> str | None:
    """Why the run's worker is known to be gone from this host, or None (alive, elsewhere, or not started)."""
    if not on_this_host(instance, run):
        return None
    worker = run_worker(instance, run)
    if worker is None or process_alive(*worker):
        return None
    return f"run worker process {worker[0]} is gone (killed or crashed)"


UNFINISHED = (DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)
"""Statuses a run keeps when its process dies: created, launched, running. (A queued run has no process yet.)"""


def mark_dead_runs(instance: DagsterInstance) -> list[str]:
    """Marks failed every unfinished run of this host whose worker process is gone; returns their ids."""
    dead = []
    for run in instance.get_runs(RunsFilter(statuses=list(UNFINISHED))):
        reason = worker_gone(instance, run)
        if reason:
            instance.report_run_failed(run, f"{reason}: marked failed by synthea-pipeline")
            dead.append(run.run_id)
    return dead


@sensor(
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.RUNNING,
    description="Marks failed the runs whose worker process died (kill -9, out of memory), so none stays "
    "NOT_STARTED, STARTING or STARTED and holds its upload's run queue.",
)
def dead_runs(context: SensorEvaluationContext) -> SkipReason:
    marked = mark_dead_runs(context.instance)
    return SkipReason(f"marked failed: {', '.join(marked)}" if marked else "every started run's worker is alive")
