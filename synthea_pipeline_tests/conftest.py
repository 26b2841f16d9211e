import csv
import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import instance_for_test

from synthea_pipeline.resources.catalog import CatalogResource
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


def pytest_configure(config):
    """Lakes, Dagster instances and `dagster dev` homes of the tests live on the machine's memory filesystem when
    it has one (and TMPDIR is not set): Dagster's SQLite storage commits every event to disk, which made each
    pipeline run about a quarter slower on these machines. Still real files, real SQLite."""
    if "TMPDIR" not in os.environ and MEMORY_FILESYSTEM.is_dir() and os.access(MEMORY_FILESYSTEM, os.W_OK):
        os.environ["TMPDIR"] = str(MEMORY_FILESYSTEM)
        tempfile.tempdir = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    icd10 = [[*row, "J06.9" if i < 5 else "", "Acute upper respiratory infection" if i < 5 else ""]
             for i, row in enumerate(conditions)]
    write_rows(folder / "conditions.csv", [*header, "ICD10_CODE", "ICD10_DESCRIPTION"], icd10)

    header, claims = read_rows(folder / "claims.csv")
    (folder / "claims.csv").unlink()
    write_rows(folder / "claims-0001.csv", header, claims[:400])
    write_rows(folder / "claims-0002.csv", header, claims[400:])

    expenses = [[p[0], f"{year}-01-01T00:00:00Z", payers[0][0], "100.5", "20.25", "80.0"]
                for p in patients[:-1] for year in (2020, 2021)]
    write_rows(folder / "patient_expenses.csv",
               ["PATIENT_ID", "YEAR", "PAYER_ID", "HEALTHCARE_EXPENSES", "INSURANCE_COSTS", "COVERED_COSTS"], expenses)
    return {"providers": providers, "encounters": encounters, "quarantined_encounters": (3, 6),
            "conditions": conditions, "claims": claims, "expenses": expenses, "removed_payer": uninsured[0],
            "removed_patient": patients[-1][0], "patients": patients[:-1]}


@contextmanager
def fresh_instance():
    """A real Dagster instance (SQLite storage) for one test or module. Its storage lives on /dev/shm when the
    machine has it: SQLite commits there cost a twentieth of a disk commit, a quarter of each run's time here."""
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=memory) as home, instance_for_test(temp_dir=home) as instance:
        yield instance


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
    sources = iceberg_sources(databases.iceberg_lake(lake.root, "path"))
    key = (lake.root, tuple(sorted(sources)))
    if key not in _CATALOGS:
        _CATALOGS[key] = catalog.open(lake)
    return _CATALOGS[key].sql(sql).to_arrow_table()


def staged(lake: Lake, upload_id: str, table: str) -> pa.Table:
    """An upload's committed staging rows of one table (without the load id)."""
    return catalog_rows(lake, f"SELECT * EXCLUDE (load_id) FROM synthea_staging.{table} WHERE upload_id = '{upload_id}'")


def quarantined(lake: Lake, upload_id: str, table: str) -> list[dict]:
    return catalog_rows(lake, f"SELECT * FROM synthea_staging.quarantine WHERE upload_id = '{upload_id}' "
                              f"AND table_name = '{table}' ORDER BY line_number").to_pylist()


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
