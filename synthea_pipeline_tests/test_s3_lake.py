"""The whole pipeline with the lake on S3 (a moto server over HTTP; Sail reads and writes s3:// itself and commits
Iceberg tables through the Glue Data Catalog at moto's endpoint), and the catalog views registered in Glue."""

import base64
import json
import re

import boto3
import pytest
import sqlglot

from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.runs import SAMPLE_DIR, catalog_from_environment, run_upload
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.bi import BI_VIEWS
from synthea_pipeline.transforms.catalog import iceberg_sources, omop_views
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import MARTS, PARTS
from synthea_pipeline.transforms.omop import CLINICAL_TABLES
from synthea_pipeline_tests.conftest import fresh_instance

pytestmark = [pytest.mark.slow, pytest.mark.omop]  # S3 lakes on moto, JVM Spark (the OMOP tables too)

_ENGINES: dict[tuple, object] = {}


def committed(lake: Lake, sql: str) -> list[tuple]:
    """What a reader of the lake's catalog gets, sorted. An S3 lake's embedded catalog reads the metadata files Glue
    named when it was opened, so one is opened again only when Glue names others."""
    catalog = catalog_from_environment()
    iceberg = catalog.databases().iceberg_tables(lake.root, "glue" if lake.on_s3 else "path")
    sources = iceberg_sources(iceberg, boto3.client("glue") if lake.on_s3 else None)
    key = (lake.root, catalog.databases(), tuple(sorted(sources.items())))
    if key not in _ENGINES:
        _ENGINES[key] = catalog.open(lake)
    return sorted((tuple(row) for row in _ENGINES[key].execute(sql).fetchall()), key=repr)


@pytest.fixture(scope="module")
def lakes(moto_endpoint, tmp_path_factory):
    boto3.client("s3").create_bucket(Bucket="s3-lake")
    local, on_s3 = Lake(str(tmp_path_factory.mktemp("local") / "lake")), Lake("s3://s3-lake/lake")
    with fresh_instance() as instance:
        reports = [run_upload(str(SAMPLE_DIR), lake.root, "u1", instance=instance) for lake in (local, on_s3)]
        reports.append(run_upload(str(SAMPLE_DIR), on_s3.root, "u1", instance=instance))
    for report in reports:
        assert report.success and not report.errors, report.errors
    return local, on_s3, reports


def test_lake_on_s3_matches_the_local_folder_run(lakes):
    local, on_s3, (local_report, first, _) = lakes
    assert [(t.table, t.rows_out) for t in first.tables] == [(t.table, t.rows_out) for t in local_report.tables]
    assert first.marts == local_report.marts
    for table in TABLES:
        sql = f"SELECT * EXCLUDE (load_id) FROM synthea_staging.{table}"
        assert committed(on_s3, sql) == committed(local, sql), table
    for mart in MARTS:
        assert committed(on_s3, f"SELECT * FROM synthea_marts.{mart}") == committed(
            local, f"SELECT * FROM synthea_marts.{mart}"
        ), mart


def test_a_rerun_commits_a_new_load_and_leaves_no_temporary_objects(lakes):
    _, on_s3, (_, first, again) = lakes
    assert committed(on_s3, "SELECT upload_id, load_id FROM synthea_staging.uploads") == [("u1", again.run_id)]
    assert committed(on_s3, "SELECT DISTINCT load_id FROM synthea_staging_iceberg.patients") == sorted(
        [(first.run_id,), (again.run_id,)]
    )
    keys = [
        o["Key"]
        for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket="s3-lake")
        for o in page.get("Contents", [])
    ]
    assert "lake/source/u1.manifest.json" in keys
    assert not [k for k in keys if "_tmp_" in k]


def test_the_iceberg_tables_are_in_glue_as_athena_reads_them(lakes):
    glue = boto3.client("glue")
    patients = glue.get_table(DatabaseName="synthea_staging_iceberg", Name="patients")["Table"]
    assert patients["Parameters"]["table_type"].upper() == "ICEBERG"
    location = patients["Parameters"]["metadata_location"]
    assert location.startswith("s3://s3-lake/lake/staging/patients/metadata/") and location.endswith(".metadata.json")
    metadata = json.loads(
        boto3.client("s3").get_object(Bucket="s3-lake", Key=location[len("s3://s3-lake/") :])["Body"].read()
    )
    assert metadata["format-version"] == 2
    assert [f["name"] for f in metadata["partition-specs"][0]["fields"]] == ["upload_id", "load_id"]
    names = {t["Name"] for t in glue.get_tables(DatabaseName="synthea_marts_iceberg")["TableList"]}
    assert names == {*MARTS, PARTS, "builds"}


def test_the_catalog_views_are_athena_views_and_registering_again_changes_nothing(lakes):
    _, on_s3, _ = lakes
    glue = boto3.client("glue")
    staging_views = {t["Name"]: t for t in glue.get_tables(DatabaseName="synthea_staging")["TableList"]}
    assert set(staging_views) == {*TABLES, "quarantine", "uploads", "upload_states"}
    assert {t["TableType"] for t in staging_views.values()} == {"VIRTUAL_VIEW"}
    view = glue.get_table(DatabaseName="synthea_marts", Name="bi_medication_insights")["Table"]
    encoded = re.fullmatch(r"/\* Presto View: (.+) \*/", view["ViewOriginalText"]).group(1)
    presto = json.loads(base64.b64decode(encoded))
    assert sqlglot.parse_one(presto["originalSql"], read="trino").find(sqlglot.exp.Table).name == "medication_dim"
    assert {"name": "total_cost", "type": "decimal(38,2)"} in presto["columns"]
    fact = glue.get_table(DatabaseName="synthea_marts", Name="patient_fact")["Table"]["StorageDescriptor"]["Columns"]
    assert {"Name": "total_claim_cost", "Type": "decimal(18,2)"} in fact and "ssn" not in {c["Name"] for c in fact}

    def snapshot():
        return [
            glue.get_tables(DatabaseName=d)["TableList"] for d in ("synthea_staging", "synthea_marts", "synthea_omop")
        ]

    before = snapshot()
    catalog = CatalogResource()
    with catalog.registered(on_s3) as (_, again):
        pass
    staging_views = (*TABLES, "quarantine", "uploads", "upload_states")
    marts_views = (*MARTS, "current_build", "current_parts", *BI_VIEWS)
    omop = omop_views(catalog.databases())
    assert set(again.values()) == {"unchanged"} and len(again) == len(staging_views) + len(marts_views) + len(omop)
    assert snapshot() == before


def test_jvm_spark_stands_in_for_glue_5_with_identical_tables(lakes, monkeypatch):
    """JVM Spark 3.5 with Iceberg 1.7.1 (what Glue 5.0 runs) writes the same lake through Iceberg's GlueCatalog
    and S3FileIO at moto's endpoint, and reads the raw Parquet through hadoop-aws. It gets its own Glue databases.
    moto's Glue keeps the tables, their parameters and versions, but runs no job and checks no permission: the
    job roles of the stack are not exercised."""
    _, on_s3, _ = lakes
    monkeypatch.setenv("SYNTHEA_STAGING_DATABASE", "jvm_staging")
    monkeypatch.setenv("SYNTHEA_MARTS_DATABASE", "jvm_marts")
    monkeypatch.setenv("SYNTHEA_OMOP_DATABASE", "jvm_omop")
    jvm = Lake("s3://s3-lake/jvm-lake")
    with fresh_instance() as instance:
        report = run_upload(str(SAMPLE_DIR), jvm.root, "u1", engine="local-jvm", instance=instance)
    assert report.success, report.errors
    glue = boto3.client("glue")
    table = glue.get_table(DatabaseName="jvm_staging_iceberg", Name="patients")["Table"]
    assert table["Parameters"]["table_type"].upper() == "ICEBERG"
    assert table["Parameters"]["metadata_location"].startswith("s3://s3-lake/jvm-lake/staging/patients/metadata/")
    jvm_rows = {}
    for table in TABLES:
        jvm_rows[table] = committed(jvm, f"SELECT * EXCLUDE (load_id) FROM jvm_staging.{table}")
    for mart in MARTS:
        jvm_rows[mart] = committed(jvm, f"SELECT * FROM jvm_marts.{mart}")
    compared = [t for t in CLINICAL_TABLES if t != "cdm_source"]  # its release dates are the runs'
    for table in compared:
        jvm_rows[f"omop.{table}"] = committed(jvm, f"SELECT * FROM jvm_omop.{table}")
    for name in ("SYNTHEA_STAGING_DATABASE", "SYNTHEA_MARTS_DATABASE", "SYNTHEA_OMOP_DATABASE"):
        monkeypatch.delenv(name)
    for table in TABLES:
        assert jvm_rows[table] == committed(on_s3, f"SELECT * EXCLUDE (load_id) FROM synthea_staging.{table}"), table
    for mart in MARTS:
        assert jvm_rows[mart] == committed(on_s3, f"SELECT * FROM synthea_marts.{mart}"), mart
    for table in compared:
        assert jvm_rows[f"omop.{table}"] == committed(on_s3, f"SELECT * FROM synthea_omop.{table}"), table
