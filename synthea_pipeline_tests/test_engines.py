"""The same transforms on Sail and on JVM Spark give the same staging tables, quarantine and marts, row for row,
on an export with row-level defects (key conflicts, bad required values, a repeated header, split files)."""

import pytest

from synthea_pipeline.runs import run_upload
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows, defective_export, mart, staged

pytestmark = pytest.mark.slow  # JVM Spark


@pytest.fixture(scope="module")
def lakes(instance, tmp_path_factory):
    export = tmp_path_factory.mktemp("export") / "defects"
    defective_export(SAMPLES["3.0"], export)
    lakes = {}
    for engine in ("sail", "local-jvm"):
        lake = Lake(str(tmp_path_factory.mktemp(engine)))
        report = run_upload(str(export), lake.root, "engines", engine=engine, instance=instance)
        assert report.success and not report.errors, report.errors
        lakes[engine] = lake
    return lakes


def sorted_rows(lake: Lake, table: str, layer: str = "staging"):
    if layer == "marts":
        frame = mart(lake, table)
    elif layer == "staging":
        frame = staged(lake, "engines", table)
    else:
        frame = catalog_rows(
            lake, f"SELECT * EXCLUDE (load_id) FROM synthea_staging.quarantine WHERE table_name = '{table}'"
        )
    return frame.schema, frame.sort_by([(c, "ascending") for c in frame.column_names]).to_pylist()


@pytest.mark.parametrize("layer", ["staging", "quarantine"])
@pytest.mark.parametrize("table", TABLES)
def test_sail_and_jvm_spark_stage_identical_rows(lakes, table, layer):
    sail_schema, sail_rows = sorted_rows(lakes["sail"], table, layer)
    jvm_schema, jvm_rows = sorted_rows(lakes["local-jvm"], table, layer)
    assert [(f.name, str(f.type)) for f in sail_schema] == [(f.name, str(f.type)) for f in jvm_schema]
    assert sail_rows == jvm_rows
    if layer == "staging":
        assert sail_rows  # the export has rows in every table, devices and imaging studies included
    else:
        assert len(sail_rows) == {"providers": 4, "encounters": 3}.get(table, 0)


@pytest.mark.parametrize("mart", MARTS)
def test_sail_and_jvm_spark_build_identical_marts(lakes, mart):
    sail_schema, sail_rows = sorted_rows(lakes["sail"], mart, "marts")
    jvm_schema, jvm_rows = sorted_rows(lakes["local-jvm"], mart, "marts")
    assert [(f.name, str(f.type)) for f in sail_schema] == [(f.name, str(f.type)) for f in jvm_schema]
    assert sail_rows == jvm_rows and sail_rows
