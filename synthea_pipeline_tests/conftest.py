import csv
import logging
from pathlib import Path

import pytest
from dagster import instance_for_test

from synthea_pipeline.runs import SAMPLE_DIR

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = {
    "2.7": FIXTURES / "v2.7.0_10p",
    "3.0": FIXTURES / "v3.0.0_27p",
    "3.3-3.4": SAMPLE_DIR,
}


@pytest.fixture(scope="module")
def instance():
    with instance_for_test() as instance:
        yield instance


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and data rows of a Synthea CSV, read with the csv module (independent of the pipeline)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto server on a free port, with the environment pointing boto3, pyarrow and Sail at it for the
    module's tests (dummy credentials, plain HTTP)."""
    from moto.server import ThreadedMotoServer

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
