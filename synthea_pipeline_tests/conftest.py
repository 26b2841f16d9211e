import csv
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
