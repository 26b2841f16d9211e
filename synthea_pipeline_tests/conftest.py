import csv
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import instance_for_test

from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.runs import SAMPLE_DIR
from synthea_pipeline.transforms.catalog import iceberg_sources
from synthea_pipeline.transforms.lake import Lake

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = {
    "2.7": FIXTURES / "v2.7.0_10p",
    "3.0": FIXTURES / "v3.0.0_27p",
    "3.3-3.4": SAMPLE_DIR,
}


BAD_START = "2020-13-45T99:00:00Z"
MEMORY_FILESYSTEM = Path("/dev/shm")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def pytest_configure(config):
    """Lakes, Dagster instances and `dagster dev` homes of the tests live on the machine's memory filesystem when
    it has one (and TMPDIR is not set): Dagster's SQLite storage commits every event to disk, which made each
    pipeline run about a quarter slower on these machines. Still real files, real SQLite.

    SIGINT and SIGTERM interrupt the run in the main process and in every xdist worker (processes started from
    some shells and CI inherit both ignored), so fixtures unwind: servers stopped, lakes and instances deleted."""
    if "TMPDIR" not in os.environ and MEMORY_FILESYSTEM.is_dir() and os.access(MEMORY_FILESYSTEM, os.W_OK):
        os.environ["TMPDIR"] = str(MEMORY_FILESYSTEM)
        tempfile.tempdir = None
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)


OMOP_OFF = "none"


@pytest.fixture(scope="module", autouse=True)
def omop_only_where_tested(request):
    """Pipeline runs build the OMOP tables only in modules and tests marked `omop`; the others, about the other
    layers, run with SYNTHEA_OMOP_VOCABULARY=none (the OMOP assets skipped, as a user without a vocabulary has
    them). The OMOP step doubled the suite's time while asserting nothing there. Module scope, so the modules'
    own module-scoped pipeline runs see it; subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        if request.node.get_closest_marker("omop") is None:
            patch.setenv("SYNTHEA_OMOP_VOCABULARY", OMOP_OFF)
        yield


@pytest.fixture(autouse=True)
def omop_for_marked_tests(request, monkeypatch):
    """A test marked `omop` in a module that is not builds them with the default vocabulary."""
    if request.node.get_closest_marker("omop") is not None and os.environ.get("SYNTHEA_OMOP_VOCABULARY") == OMOP_OFF:
        monkeypatch.delenv("SYNTHEA_OMOP_VOCABULARY")


def pytest_sessionfinish(session, exitstatus):
    """An interrupted run deletes its `tmp_path` folders too (a finished one keeps only the failed tests', see
    `tmp_path_retention_policy`): with the lakes on the memory filesystem they would hold memory until reboot."""
    if exitstatus == pytest.ExitCode.INTERRUPTED and not hasattr(session.config, "workerinput"):
        factory = session.config._tmp_path_factory
        if factory._basetemp is not None and factory._given_basetemp is None:
            shutil.rmtree(factory._basetemp, ignore_errors=True)


def live_processes() -> dict[int, list[str]]:
    """Every live (not zombie) process by pid, with the fields of its `/proc/<pid>/stat` after the command name
    (state, parent, process group, ...)."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z":
            found[int(entry)] = fields
    return found


def group_members(group: int) -> list[int]:
    """The live processes of a process group."""
    return [pid for pid, fields in live_processes().items() if int(fields[2]) == group]


def stop_group(process: subprocess.Popen, grace_seconds: float = 20) -> None:
    """SIGTERM to the process group a server leads, SIGKILL to what is left after the grace period."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_members(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def server_process(command: list[str], log: Path, env: dict, cwd: Path) -> Iterator[subprocess.Popen]:
    """A server (`dagster dev`, a daemon, a code server) in a process group of its own, logging to `log`; stopped
    with everything it started when the block ends, however it ends (an interrupted test run included). It takes
    SIGINT and SIGTERM by default: `pytest_configure` handles both here, and handled signals reset on exec (ignored
    ones would not)."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_group(process)


def wait_for(condition: Callable, what: str, processes: list[subprocess.Popen], timeout: float = 900):
    """Polls `condition` until it returns something true, failing when a server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert all(p.poll() is None for p in processes), f"a server exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return result


STORAGE_RACE = "https://github.com/dagster-io/dagster/issues/27390"
"""`dagster dev` on a home without storage: its processes create the SQLite storage at once, and one may fail
("alembic_version has more than one head present"; seen once here, under load). Tests start it on a home whose
storage exists, as a user's does after the first `synthea-pipeline run`."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def zipped(sample: Path, archive: Path, folder: str = "csv") -> Path:
    """A sample as the public Synthea data sets ship it: a zip with the CSV files in a folder (`csv/`)."""
    import zipfile

    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as out:
        for file in sorted(sample.glob("*.csv")):
            out.write(file, f"{folder}/{file.name}")
    return archive


def write_rows(path, header, rows):
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")


def defective_export(sample, folder):
    """A copy of a sample (3.0 or later) with row-level defects and the optional files and columns newer Synthea
    builds write. Providers: a changed copy of the first row appended (same completeness, later: it wins), an
    exact copy of the first row before it (a second line of the losing version), a copy of the second row with
    its city blank (less complete: it loses) and a line with an extra field. Encounters: an unparseable START, an
    empty PATIENT and the header repeated. The NO_INSURANCE payer and the last patient are left out, so rows
    point to them in vain. Conditions get ICD-10 columns, claims are split into zero-padded parts, and a
    patient_expenses.csv is added."""
    shutil.copytree(sample, folder)
    header, providers = read_rows(folder / "providers.csv")
    later = list(providers[0])
    later[header.index("SPECIALITY")] = "CARDIOLOGY"
    less_complete = list(providers[1])
    less_complete[header.index("CITY")] = ""
    extra_field = [*providers[2], "extra"]
    write_rows(folder / "providers.csv", header, [*providers, providers[0], later, less_complete, extra_field])

    header, encounters = read_rows(folder / "encounters.csv")
    encounters[3][header.index("START")] = BAD_START
    encounters[6][header.index("PATIENT")] = ""
    lines = [",".join(r) for r in [header, *encounters]]
    lines.insert(11, ",".join(header))
    (folder / "encounters.csv").write_text("\n".join(lines) + "\n")

    header, payers = read_rows(folder / "payers.csv")
    [uninsured] = [p for p in payers if p[header.index("NAME")] == "NO_INSURANCE"]
    write_rows(folder / "payers.csv", header, [p for p in payers if p is not uninsured])
    header, patients = read_rows(folder / "patients.csv")
    write_rows(folder / "patients.csv", header, patients[:-1])

    header, conditions = read_rows(folder / "conditions.csv")
    icd10 = [
        [*row, "J06.9" if i < 5 else "", "Acute upper respiratory infection" if i < 5 else ""]
        for i, row in enumerate(conditions)
    ]
    write_rows(folder / "conditions.csv", [*header, "ICD10_CODE", "ICD10_DESCRIPTION"], icd10)

    header, claims = read_rows(folder / "claims.csv")
    (folder / "claims.csv").unlink()
    write_rows(folder / "claims-0001.csv", header, claims[:400])
    write_rows(folder / "claims-0002.csv", header, claims[400:])

    expenses = [
        [p[0], f"{year}-01-01T00:00:00Z", payers[0][0], "100.5", "20.25", "80.0"]
        for p in patients[:-1]
        for year in (2020, 2021)
    ]
    write_rows(
        folder / "patient_expenses.csv",
        ["PATIENT_ID", "YEAR", "PAYER_ID", "HEALTHCARE_EXPENSES", "INSURANCE_COSTS", "COVERED_COSTS"],
        expenses,
    )
    return {
        "providers": providers,
        "encounters": encounters,
        "quarantined_encounters": (3, 6),
        "conditions": conditions,
        "claims": claims,
        "expenses": expenses,
        "removed_payer": uninsured[0],
        "removed_patient": patients[-1][0],
        "patients": patients[:-1],
    }


@contextmanager
def fresh_instance():
    """A real Dagster instance (SQLite storage) for one test or module. Its storage lives on /dev/shm when the
    machine has it: SQLite commits there cost a twentieth of a disk commit, a quarter of each run's time here."""
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=memory) as home, instance_for_test(temp_dir=home) as instance:
        yield instance


@pytest.fixture(scope="module")
def spark():
    """One Sail server for the module's runs (and for reading their tables back); torn down at the end."""
    resource = SparkResource(engine="sail")
    yield resource
    resource.teardown_after_execution(None)


@pytest.fixture(scope="module")
def instance():
    with fresh_instance() as instance:
        yield instance


_CATALOGS: dict[tuple, object] = {}


def catalog_rows(lake: Lake, sql: str) -> pa.Table:
    """What a reader of the catalog gets for `sql`: the committed rows, through the catalog views. The views
    read the tables' current state at each query, so one embedded catalog per lake (and set of tables) serves
    every test of a module."""
    catalog = CatalogResource()
    databases = catalog.databases()
    sources = iceberg_sources(databases.iceberg_tables(lake.root, "path"))
    key = (lake.root, tuple(sorted(sources)))
    if key not in _CATALOGS:
        _CATALOGS[key] = catalog.open(lake)
    return _CATALOGS[key].sql(sql).to_arrow_table()


def staged(lake: Lake, upload_id: str, table: str) -> pa.Table:
    """An upload's committed staging rows of one table (without the load id)."""
    return catalog_rows(
        lake, f"SELECT * EXCLUDE (load_id) FROM synthea_staging.{table} WHERE upload_id = '{upload_id}'"
    )


def quarantined(lake: Lake, upload_id: str, table: str) -> list[dict]:
    return catalog_rows(
        lake,
        f"SELECT * FROM synthea_staging.quarantine WHERE upload_id = '{upload_id}' "
        f"AND table_name = '{table}' ORDER BY line_number",
    ).to_pylist()


def mart(lake: Lake, name: str) -> pa.Table:
    """The committed build of one mart, sorted by its key."""
    from synthea_pipeline.transforms.marts import MARTS

    return catalog_rows(lake, f"SELECT * FROM synthea_marts.{name} ORDER BY {MARTS[name].key}")


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and data rows of a Synthea CSV, read with the csv module (independent of the pipeline)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto server on a free port, with the environment pointing boto3, pyarrow and Sail at it for the
    module's tests (dummy credentials, plain HTTP). moto keeps its state per process, not per server: it is
    reset, so no module sees another's buckets or Glue tables."""
    from moto.moto_api import _internal
    from moto.server import ThreadedMotoServer

    _internal.models.moto_api_backend.reset()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        yield endpoint
    server.stop()


@pytest.fixture
def bucket(moto_endpoint, request):
    """A fresh bucket per test."""
    import boto3

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


SLOW_SECONDS = 20
SERVER_PROGRAMS = {
    "dagster",
    "dagster-webserver",
    "dagster-daemon",
    "pg_ctl",
    "postgres",
    "chromium",
    "chromium-browser",
}


def _refuse(what: str) -> Callable:
    def refused(*args, **kwargs):
        pytest.fail(
            f"a test marked unit started {what}: drop its unit mark or keep it off engines and servers", pytrace=False
        )

    return refused


def _refuse_engines_and_servers(patch: pytest.MonkeyPatch) -> None:
    """Sail servers, Spark sessions (Sail's or the JVM's), moto servers and server processes (anything started in
    a session of its own, `dagster dev`, the daemon, PostgreSQL, Chromium) fail the test; short commands run."""
    from moto.server import ThreadedMotoServer
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession

    patch.setattr(SparkConnectServer, "start", _refuse("a Sail server"))
    patch.setattr(SparkSession.Builder, "getOrCreate", _refuse("a Spark session"))
    patch.setattr(ThreadedMotoServer, "start", _refuse("a moto server"))
    start_process = subprocess.Popen.__init__

    def refuse_servers(self, args, *rest, **options):
        words = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if options.get("start_new_session") or SERVER_PROGRAMS & {os.path.basename(str(w)) for w in words}:
            _refuse(f"the server {words}")()
        start_process(self, args, *rest, **options)

    patch.setattr(subprocess.Popen, "__init__", refuse_servers)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _unit_guard(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _unit_guard(item):
        yield


@contextmanager
def _unit_guard(item):
    with pytest.MonkeyPatch.context() as patch:
        if item.get_closest_marker("unit"):
            _refuse_engines_and_servers(patch)
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """The tiers keep their word: `-m unit` starts no engine and no server (`_refuse_engines_and_servers` fails a
    unit test that does, module fixtures included), and `-m "not slow"` holds nothing over SLOW_SECONDS: a test
    without the `slow` mark fails when its setup (the fixtures it was first to need, module-scoped ones included)
    and its call took longer. Mark with margin: three workers share two cores, so times vary by half."""
    report = (yield).get_result()
    if report.when == "setup":
        item.setup_seconds = report.duration
    elif report.when == "call" and report.passed and not item.get_closest_marker("slow"):
        seconds = item.setup_seconds + report.duration
        if seconds > SLOW_SECONDS:
            report.outcome = "failed"
            report.longrepr = (
                f"{item.nodeid} took {seconds:.0f} s (setup {item.setup_seconds:.0f} s, call "
                f"{report.duration:.0f} s), over {SLOW_SECONDS} s without the slow mark: mark it "
                f"@pytest.mark.slow, with every test of its module that shares the slow fixture"
            )


def pytest_collection_modifyitems(config, items):
    """`-m unit` stays under a minute only while no unit test is also slow."""
    if both := [item.nodeid for item in items if item.get_closest_marker("unit") and item.get_closest_marker("slow")]:
        raise pytest.UsageError(f"tests marked both unit and slow (a slow test is not a unit test): {both}")
