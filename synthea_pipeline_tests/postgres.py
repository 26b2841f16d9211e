"""A real PostgreSQL server for the tests of the production instance: Debian's `postgresql` package (`.ci/run`
installs it when missing), a throwaway cluster on a free loopback port with password authentication, as RDS
has it. Debian's server refuses to run as root, so under root the cluster belongs to the `postgres` user. And
PgBouncer in front of it in transaction mode (Debian's `pgbouncer`, which `scripts/provision` installs), as the
ECS tasks' sidecar is: it refuses to run as root too."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2

from synthea_pipeline_tests.conftest import free_port, wait_for

USER = "dagster"
PASSWORD = "test-only-password"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int

    def create_database(self, name: str) -> None:
        connection = psycopg2.connect(host=self.host, port=self.port, user=USER, password=PASSWORD, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()

    def query(self, database: str, sql: str) -> list[tuple]:
        with (
            psycopg2.connect(
                host=self.host, port=self.port, user=USER, password=PASSWORD, dbname=database
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)
            return cursor.fetchall()

    def environment(self, database: str) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads, as the task definitions set them."""
        return {
            "DAGSTER_POSTGRES_HOST": self.host,
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": USER,
            "DAGSTER_POSTGRES_PASSWORD": PASSWORD,
            "DAGSTER_POSTGRES_DB": database,
        }


@dataclass(frozen=True)
class PgBouncer(PostgresServer):
    """A PgBouncer in front of a PostgresServer: `environment` and `query` go through it; its admin console tells
    what it carried."""

    def stats(self) -> dict[str, dict[str, int]]:
        """SHOW STATS of the admin console, by database: total_xact_count, total_query_count and the rest."""
        connection = psycopg2.connect(host=self.host, port=self.port, user=USER, password=PASSWORD, dbname="pgbouncer")
        connection.autocommit = True  # the admin console takes no BEGIN
        try:
            with connection.cursor() as cursor:
                cursor.execute("SHOW STATS")
                names = [column.name for column in cursor.description]
                return {
                    row[0]: {n: int(v) for n, v in zip(names[1:], row[1:], strict=True)} for row in cursor.fetchall()
                }
        finally:
            connection.close()


def server_binaries() -> str:
    """The newest installed server's bin folder."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if not found:
        raise RuntimeError(
            "no PostgreSQL server found under /usr/lib/postgresql: apt-get install postgresql (.ci/run does)"
        )
    return os.path.dirname(found[-1])


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a cluster in a new temporary folder; stop it and remove the folder on exit."""
    binaries = server_binaries()
    as_owner: list[str] = []
    folder = tempfile.mkdtemp(prefix="postgres-")
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_owner = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    data, password_file = f"{folder}/data", f"{folder}/password"
    with open(password_file, "w") as out:
        out.write(PASSWORD)
    if as_owner:
        shutil.chown(password_file, "postgres")
    subprocess.run(
        [
            *as_owner,
            f"{binaries}/initdb",
            "-D",
            data,
            "-U",
            USER,
            "--pwfile",
            password_file,
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    subprocess.run(
        [
            *as_owner,
            f"{binaries}/pg_ctl",
            "-D",
            data,
            "-l",
            f"{folder}/server.log",
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer("127.0.0.1", port)
    finally:
        subprocess.run(
            [*as_owner, f"{binaries}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def pgbouncer(server: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of `server` (every database of it), on a free loopback port, for as
    long as the context lasts; USER is its admin too (SHOW STATS)."""
    program = shutil.which("pgbouncer")
    if program is None:
        raise RuntimeError("no pgbouncer on PATH: apt-get install pgbouncer (scripts/provision does)")
    folder = tempfile.mkdtemp(prefix="pgbouncer-")
    port = free_port()
    with open(f"{folder}/users.txt", "w") as out:
        out.write(f'"{USER}" "{PASSWORD}"\n')
    with open(f"{folder}/pgbouncer.ini", "w") as out:
        out.write(
            f"[databases]\n* = host={server.host} port={server.port}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = plain\nauth_file = {folder}/users.txt\npool_mode = transaction\nadmin_users = {USER}\n"
            "max_client_conn = 200\ndefault_pool_size = 20\nignore_startup_parameters = extra_float_digits,options\n"
        )
    as_owner: list[str] = []
    if os.geteuid() == 0:
        for path in (folder, f"{folder}/users.txt", f"{folder}/pgbouncer.ini"):
            shutil.chown(path, "postgres")
        as_owner = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    with open(f"{folder}/pgbouncer.log", "w") as log:
        process = subprocess.Popen(
            [*as_owner, program, f"{folder}/pgbouncer.ini"], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: _listening(port), "pgbouncer to listen", [process], timeout=30)
        yield PgBouncer("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
