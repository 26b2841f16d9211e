"""Dagster's per-event cost on its production storage, with and without a connection pooler: the floor run
(`dagster_floor.py`) on a disk SQLite instance, on PostgreSQL directly, and on the same PostgreSQL through
PgBouncer in transaction mode, alternated twice in one invocation. dagster-postgres opens a connection per storage
operation; a pooler in front of the server keeps those connections open. Needs Debian's `postgresql` and
`pgbouncer` packages (`apt-get install pgbouncer`).

    .venv/bin/python benchmarks/postgres_pooler.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster import DagsterInstance
from dagster_floor import floor_job, floorless_steps, run_floor

from synthea_pipeline_tests.conftest import free_port, wait_for
from synthea_pipeline_tests.postgres import PASSWORD, USER, PostgresServer, postgres_server


@contextmanager
def pgbouncer(server: PostgresServer) -> Iterator[int]:
    """PgBouncer in transaction mode in front of `server`, on a free port, for as long as the context lasts."""
    folder = tempfile.mkdtemp(prefix="pgbouncer-")
    port = free_port()
    Path(folder, "users.txt").write_text(f'"{USER}" "{PASSWORD}"\n')
    Path(folder, "pgbouncer.ini").write_text(
        f"[databases]\n* = host={server.host} port={server.port}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = plain\nauth_file = {folder}/users.txt\npool_mode = transaction\n"
        "max_client_conn = 200\ndefault_pool_size = 20\nignore_startup_parameters = extra_float_digits,options\n"
    )
    as_owner = []
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(folder, "postgres")
        for name in ("users.txt", "pgbouncer.ini"):
            shutil.chown(Path(folder, name), "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    process = subprocess.Popen(
        [*as_owner, "pgbouncer", f"{folder}/pgbouncer.ini"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: _listening(port), "pgbouncer to listen", [process], timeout=30)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def per_event(label: str, home: str, job, overrides: dict | None = None) -> None:
    os.makedirs(home)
    instance = DagsterInstance.local_temp(home, overrides={"telemetry": {"enabled": False}, **(overrides or {})})
    seconds, events = run_floor(instance, job)
    instance.dispose()
    print(f"{label:22s} run {seconds:6.2f} s, {events} events, {seconds / events * 1000:5.1f} ms per event", flush=True)


def main() -> None:
    job = floor_job(floorless_steps())
    with postgres_server() as server, pgbouncer(server) as pooler_port, tempfile.TemporaryDirectory() as home:
        for round_ in (1, 2):
            per_event("sqlite (disk)", f"{home}/sqlite{round_}", job)
            for label, port in (("postgres", server.port), ("postgres via pgbouncer", pooler_port)):
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
