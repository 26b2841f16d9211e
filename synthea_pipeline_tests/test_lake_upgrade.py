"""A lake written by an older contract (a column fewer, a type narrower) upgrades itself on the next run: Iceberg
schema evolution adds the column and widens the type in place, earlier uploads stay readable, and a query as of a
time before the upgrade still answers."""

import datetime as dt
import time
from dataclasses import replace

import boto3
import pytest

from synthea_pipeline import tables
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.runs import run_upload
from synthea_pipeline.transforms.iceberg import IcebergTables, SchemaConflict
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline_tests.conftest import SAMPLES, read_rows

pytestmark = pytest.mark.slow  # two pipeline runs on one Sail server

ADDED = ("careplans", "description")
"""The column the older contract lacked."""
WIDENED = ("patients", "lat")
"""A `double` column the older contract declared `float`."""
MART_WIDENED = ("provider_dim", "lat")
"""The same in a mart."""
PATIENTS_QUERY = "SELECT count(*) FROM patient_fact"


def older_contract(
    monkeypatch: pytest.MonkeyPatch, removed=(ADDED,), narrowed=((tables.TABLES, WIDENED), (MARTS, MART_WIDENED))
) -> None:
    """The contract before this version: care plans without their description and the patients' latitude a float
    in staging, the providers' latitude a float in the marts."""
    monkeypatch.setattr(tables, "TYPES", (*tables.TYPES, "float"))
    monkeypatch.setitem(tables.SPARK_TYPES, "float", "float")
    changes = [(tables.TABLES, name, column, lambda c: []) for name, column in removed]
    changes += [(specs, name, column, lambda c: [replace(c, type="float")]) for specs, (name, column) in narrowed]
    for specs, name, column, change in changes:
        spec = specs[name]
        monkeypatch.setitem(
            specs,
            name,
            replace(
                spec, columns=tuple(kept for c in spec.columns for kept in (change(c) if c.name == column else [c]))
            ),
        )


@pytest.fixture(scope="module")
def upgraded(spark, instance, tmp_path_factory):
    """A lake that got `old` (2.7) under the older contract, then `new` (3.0) under the current one; a moment
    between the two runs and what `PATIENTS_QUERY` answered then."""
    lake = Lake(str(tmp_path_factory.mktemp("upgraded") / "lake"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        older_contract(monkeypatch)
        assert run_upload(str(SAMPLES["2.7"]), lake.root, "old", instance=instance, spark=spark).success
    old_answer = CatalogResource().query(lake, PATIENTS_QUERY)
    time.sleep(1)
    before_upgrade = dt.datetime.now(dt.timezone.utc)
    time.sleep(1)
    assert run_upload(str(SAMPLES["3.0"]), lake.root, "new", instance=instance, spark=spark).success
    return lake, before_upgrade, old_answer


def per_upload(lake: Lake, sql: str) -> dict:
    with CatalogResource().open(lake) as engine:
        return dict(engine.sql(sql).fetchall())


def test_the_added_column_is_null_before_the_upgrade_and_filled_after(upgraded):
    lake, *_ = upgraded
    filled = per_upload(lake, f"SELECT upload_id, count({ADDED[1]}) FROM synthea_staging.{ADDED[0]} GROUP BY 1")
    rows = per_upload(lake, f"SELECT upload_id, count(*) FROM synthea_staging.{ADDED[0]} GROUP BY 1")
    assert filled["old"] == 0 and rows["old"] == len(read_rows(SAMPLES["2.7"] / f"{ADDED[0]}.csv")[1])
    assert filled["new"] == rows["new"] == len(read_rows(SAMPLES["3.0"] / f"{ADDED[0]}.csv")[1])


def test_the_narrow_column_is_widened_and_every_upload_is_readable(spark, upgraded):
    lake, *_ = upgraded
    session = spark.get_session(lake.root)
    iceberg = IcebergTables(lake.root)
    table = session.table(iceberg.open(session, "staging", WIDENED[0]))
    assert table.schema[WIDENED[1]].dataType.simpleString() == "double"
    added_to = session.table(iceberg.open(session, "staging", ADDED[0]))
    assert added_to.schema[ADDED[1]].dataType.simpleString() == "string"
    latitudes = per_upload(lake, f"SELECT upload_id, count({WIDENED[1]}) FROM synthea_staging.{WIDENED[0]} GROUP BY 1")
    assert latitudes["old"] == len(read_rows(SAMPLES["2.7"] / "patients.csv")[1])
    assert latitudes["new"] == len(read_rows(SAMPLES["3.0"] / "patients.csv")[1])


def test_a_mart_gets_the_wide_type(spark, upgraded):
    lake, *_ = upgraded
    session = spark.get_session(lake.root)
    widened = session.table(IcebergTables(lake.root).open(session, "marts", MART_WIDENED[0]))
    assert widened.schema[MART_WIDENED[1]].dataType.simpleString() == "double"
    _, [[located, providers]] = CatalogResource().query(
        lake, f"SELECT count({MART_WIDENED[1]}), count(*) FROM {MART_WIDENED[0]} WHERE NOT is_unknown"
    )
    assert located == providers > 0


def test_a_query_as_of_before_the_upgrade_answers_with_the_old_rows(upgraded):
    lake, before_upgrade, old_answer = upgraded
    assert CatalogResource().query(lake, PATIENTS_QUERY, before_upgrade) == old_answer
    assert CatalogResource().query(lake, PATIENTS_QUERY) != old_answer
    _, rows = CatalogResource().query(
        lake,
        f"SELECT upload_id, count({ADDED[1]}), count(*) FROM synthea_staging.{ADDED[0]} GROUP BY 1",
        before_upgrade,
    )
    assert rows == [["old", 0, len(read_rows(SAMPLES["2.7"] / f"{ADDED[0]}.csv")[1])]]


def test_a_narrowed_column_is_refused_in_one_line(spark, upgraded, instance):
    lake, *_ = upgraded
    session = spark.get_session(lake.root)
    iceberg = IcebergTables(lake.root)
    with pytest.raises(SchemaConflict) as refused:
        iceberg.ensure(session, "staging", WIDENED[0], f"{WIDENED[1]} float")
    message = str(refused.value)
    assert "\n" not in message
    assert all(word in message for word in ("patients", "lat", "double", "float", "reprocess"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        older_contract(monkeypatch, removed=(), narrowed=((tables.TABLES, WIDENED),))
        report = run_upload(str(SAMPLES["2.7"]), lake.root, "narrowed", instance=instance, spark=spark)
    assert not report.success
    assert any(message in error and "\n" not in error for error in report.errors), report.errors


@pytest.mark.parametrize(
    ("engine", "catalog"), [("sail", "path"), ("local-jvm", "hadoop"), ("sail", "glue"), ("local-jvm", "glue")]
)
def test_a_table_is_upgraded_on_every_engine_and_catalog(engine, catalog, request, tmp_path):
    """On Sail and on JVM Spark (the Glue 5 stand-in), locally and through the Glue Data Catalog (moto), whose
    table then shows the new columns too."""
    resource = SparkResource(engine=engine)
    try:
        root = f"s3://{request.getfixturevalue('bucket')}/lake" if catalog == "glue" else str(tmp_path / "lake")
        lake = IcebergTables(root, catalog)
        session = resource.get_session(lake.root)
        name = f"upgraded_on_{engine.replace('-', '_')}"  # the Glue catalog outlives a test
        older = lake.ensure(session, "staging", name, "id string, latitude float, visits int")
        session.createDataFrame([("old", 1.5, 2)], "id string, latitude float, visits int").writeTo(older).append()
        table = lake.ensure(session, "staging", name, "id string, latitude double, visits bigint, note string")
        assert sorted(map(tuple, session.table(table).collect())) == [("old", 1.5, 2, None)]
        assert session.table(table).schema.simpleString() == (
            "struct<id:string,latitude:double,visits:bigint,note:string>"
        )
        if catalog == "glue":
            columns = boto3.client("glue").get_table(DatabaseName=lake.database("staging"), Name=name)["Table"][
                "StorageDescriptor"
            ]["Columns"]
            assert [(c["Name"], c["Type"]) for c in columns] == [
                ("id", "string"),
                ("latitude", "double"),
                ("visits", "bigint"),
                ("note", "string"),
            ]
    finally:
        resource.teardown_after_execution(None)
