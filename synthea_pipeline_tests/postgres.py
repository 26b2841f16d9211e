"""A real PostgreSQL server for the tests of the production instance: Debian's `postgresql` package (`.ci/run`
installs it when missing), a throwaway cluster on a free loopback port with password authentication, as RDS
has it. Debian's server refuses to run as root, so under root the cluster belongs to the `postgres` user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2

from synthea_pipeline_tests.conftest import free_port

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
