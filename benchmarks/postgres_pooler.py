"""Dagster's per-event cost on its production storage, with and without a connection pooler: the floor run
(`dagster_floor.py`) on a disk SQLite instance, on PostgreSQL directly, and on the same PostgreSQL through
PgBouncer in transaction mode, alternated twice in one invocation. dagster-postgres opens a connection per storage
operation; a pooler in front of the server keeps those connections open. Needs Debian's `postgresql` and
`pgbouncer` packages (`apt-get install pgbouncer`).

    .venv/bin/python benchmarks/postgres_pooler.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster import DagsterInstance
from dagster_floor import floor_job, floorless_steps, run_floor

from synthea_pipeline_tests.postgres import PASSWORD, USER, pgbouncer, postgres_server


def per_event(label: str, home: str, job, overrides: dict | None = None) -> None:
    os.makedirs(home)
    instance = DagsterInstance.local_temp(home, overrides={"telemetry": {"enabled": False}, **(overrides or {})})
    seconds, events = run_floor(instance, job)
    instance.dispose()
    print(f"{label:22s} run {seconds:6.2f} s, {events} events, {seconds / events * 1000:5.1f} ms per event", flush=True)


def main() -> None:
    job = floor_job(floorless_steps())
    with postgres_server() as server, pgbouncer(server) as pooler, tempfile.TemporaryDirectory() as home:
        for round_ in (1, 2):
            per_event("sqlite (disk)", f"{home}/sqlite{round_}", job)
            for label, port in (("postgres", server.port), ("postgres via pgbouncer", pooler.port)):
                database = f"{label.split()[-1]}{round_}"
                server.create_database(database)
                storage = {
                    "postgres_db": {
                        "hostname": server.host,
                        "port": port,
                        "username": USER,
                        "password": PASSWORD,
                        "db_name": database,
                    }
                }
                overrides = {"storage": {"postgres": storage}}
                per_event(label, f"{home}/{database}", job, overrides)


if __name__ == "__main__":
    main()
