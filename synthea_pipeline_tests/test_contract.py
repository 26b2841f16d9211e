"""The declared contract: every staging and mart column is described, the declared schemas are what a real run
writes (and what the layers report), a mart written unlike its declaration stops the build, and each mart and BI
view names the inputs it reads."""

import dataclasses
import logging

import pytest
from dagster import AssetKey
from pyspark.sql import functions as F

from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.runs import run_upload
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms import layers
from synthea_pipeline.transforms import marts as mart_code
from synthea_pipeline.transforms.bi import BI_VIEW_READS, BI_VIEWS
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.layers import (
    SCHEMA_KEY,
    MartSchemaMismatch,
    mart_schema,
    schema_differences,
    table_schema,
)
from synthea_pipeline.transforms.marts import MART_IDENTIFIERS, MARTS
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows


@pytest.fixture(scope="module")
def lake(instance, spark, tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("contract") / "lake"))
    report = run_upload(str(SAMPLES["2.7"]), lake.root, "contract", instance=instance, spark=spark)
    assert report.success and not report.errors, report.errors
    return lake


def iceberg_columns(spark: SparkResource, lake: Lake, layer: str, table: str) -> list[tuple[str, str]]:
    """(name, Spark simple type) of every column of a lake table, read from its Iceberg metadata."""
    frame = spark.get_session(lake.root).read.format("iceberg").load(lake.uri(layer, table))
    return [(f.name, f.dataType.simpleString()) for f in frame.schema]


def declared(mart) -> list[tuple[str, str]]:
    return [(c.name, c.type) for c in mart.columns]


@pytest.mark.unit
def test_every_staging_column_is_described():
    for name, table in TABLES.items():
        undescribed = [c["name"] for c in table_schema(table)["columns"] if not (c["description"] or "").strip()]
        assert not undescribed, (name, undescribed)


@pytest.mark.unit
def test_every_mart_column_is_described_and_every_identifier_declared():
    for name, mart in MARTS.items():
        assert not [c.name for c in mart.columns if not c.description.strip()], name
        assert len(set(mart.column_names)) == len(mart.columns), name
        assert set(MART_IDENTIFIERS.get(name, ())) <= set(mart.column_names), name
        assert "build_id" not in mart.column_names, name
        assert [(c["name"], c["type"], c["description"]) for c in mart_schema(mart)["columns"]] == [
            (c.name, c.type, c.description) for c in mart.columns
        ], name


@pytest.mark.slow
def test_declared_schemas_are_what_a_real_run_writes(spark, lake):
    for name, mart in MARTS.items():
        written = [column for column in iceberg_columns(spark, lake, "marts", name) if column[0] != "build_id"]
        assert written == declared(mart), name
    for name, table in TABLES.items():
        reported = [(c["name"], c["type"]) for c in table_schema(table)["columns"]]
        assert iceberg_columns(spark, lake, "staging", name) == reported, name


@pytest.mark.slow
def test_the_layers_report_the_declared_schemas(instance, lake):
    for name, mart in MARTS.items():
        metadata = instance.get_latest_materialization_event(AssetKey(["marts", name])).asset_materialization.metadata
        reported = [(c.name, c.type, c.description) for c in metadata[SCHEMA_KEY].schema.columns]
        assert reported == [(c.name, c.type, c.description) for c in mart.columns], name
    for name, table in TABLES.items():
        metadata = instance.get_latest_materialization_event(AssetKey(["staging", name])).asset_materialization.metadata
        assert [c.name for c in metadata[SCHEMA_KEY].schema.columns] == [
            c["name"] for c in table_schema(table)["columns"]
        ], name


@pytest.mark.unit
def test_schema_differences_name_the_mart_the_column_and_both_types():
    fact = MARTS["patient_fact"]
    written = [(n, "bigint" if n == "age" else t) for n, t in declared(fact) if n != "income"] + [("extra", "int")]
    assert schema_differences(fact, written) == [
        "patient_fact.age is bigint in the written table but declared int",
        "patient_fact.income (declared int) is not in the written table",
        "patient_fact.extra (int) is written but not declared",
    ]
    reordered = declared(fact)[1:] + declared(fact)[:1]
    assert schema_differences(fact, reordered) == [
        f"patient_fact columns are written in the order {[n for n, _ in reordered]}, declared {fact.column_names}"
    ]
    assert schema_differences(fact, declared(fact)) == []


@pytest.mark.unit
def test_bi_views_read_only_marts_that_exist():
    assert BI_VIEW_READS["bi_demographics"] == ("patient_fact",)
    assert BI_VIEW_READS["bi_diagnosis_breakdown"] == ("condition_dim", "patient_fact")
    assert set(BI_VIEW_READS) == set(BI_VIEWS)
    for view, marts in BI_VIEW_READS.items():
        assert marts and set(marts) <= set(MARTS), view


@pytest.mark.unit
def test_marts_read_the_staging_tables_they_are_computed_from():
    for name, mart in MARTS.items():
        assert mart.reads and set(mart.reads) <= set(TABLES), name
    assert "patients" in MARTS["patient_fact"].reads
    assert "immunizations" in MARTS["patient_fact"].reads
    assert set(MARTS["provider_dim"].reads) == {"providers", "organizations"}
    assert "encounters" not in MARTS["provider_dim"].reads
    assert "observations" in MARTS["encounter_dim"].reads
    assert set(MARTS["location_dim"].reads) == {"patients", "providers", "organizations"}
    for dimension in ("encounter_dim", "condition_dim", "procedure_dim", "medication_dim"):
        computed_from = set(MARTS[dimension].reads) - {"observations"}
        assert computed_from <= set(MARTS["patient_fact"].reads) <= set(MARTS["date_dim"].reads), dimension


@pytest.mark.slow
def test_a_mart_written_unlike_its_declaration_stops_the_build(spark, lake, monkeypatch):
    """Marts written unlike their declaration (here a writer bug turning patient_fact.age into a bigint, which the
    table's evolution takes) are our bug: the marts layer raises, naming mart, column and both types, and the build
    is discarded, never committed."""
    declared = mart_code.patient_fact
    monkeypatch.setattr(
        mart_code, "patient_fact", lambda *args: declared(*args).withColumn("age", F.col("age").cast("bigint"))
    )
    committed = catalog_rows(lake, "SELECT build_id FROM synthea_marts.current_build").column("build_id").to_pylist()
    session = spark.get_session(lake.root)

    with pytest.raises(MartSchemaMismatch, match=r"patient_fact\.age is bigint in the written table but declared int"):
        layers.run_marts(session, logging.getLogger(__name__), lake.root, "mismatched")

    assert (
        catalog_rows(lake, "SELECT build_id FROM synthea_marts.current_build").column("build_id").to_pylist()
        == committed
    )
    for name in MARTS:
        table = session.read.format("iceberg").load(lake.uri("marts", name))
        assert table.where(F.col("build_id") == "mismatched").count() == 0, name


@pytest.mark.unit
def test_the_contract_fingerprint_follows_expressions_and_types_not_descriptions():
    fact = MARTS["patient_fact"]
    age = next(c for c in fact.columns if c.name == "age")

    def with_age(column):
        columns = tuple(column if c.name == "age" else c for c in fact.columns)
        return {**MARTS, "patient_fact": dataclasses.replace(fact, columns=columns)}

    assert mart_code.contract(MARTS) == mart_code.CONTRACT
    assert mart_code.contract(with_age(dataclasses.replace(age, description="Years."))) == mart_code.CONTRACT
    assert mart_code.contract(with_age(age.of("0"))) != mart_code.CONTRACT
    assert mart_code.contract(with_age(dataclasses.replace(age, type="bigint"))) != mart_code.CONTRACT
