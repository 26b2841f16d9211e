"""Catalog, BI views and dashboard: the views' numbers against counts made straight from the sample CSVs, the
same Athena SQL on a second engine (Spark SQL on Sail), Glue Data Catalog registration on a moto server, the
`query` command, and the dashboard in a real headless Chromium without network."""

import base64
import json
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
import sqlglot
from dagster import AssetKey

from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.runs import SAMPLE_DIR, run_upload
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.bi import BI_VIEWS, view_sql
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline_tests.conftest import read_rows


def csv_rows(name: str) -> list[dict]:
    header, rows = read_rows(SAMPLE_DIR / f"{name}.csv")
    return [dict(zip(header, row)) for row in {tuple(r) for r in rows}]


@pytest.fixture(scope="module")
def lake(instance, tmp_path_factory):
    root = tmp_path_factory.mktemp("bi") / "lake"
    report = run_upload(str(SAMPLE_DIR), str(root), "u1", instance=instance)
    assert report.success and not report.errors, report.errors
    assert report.dashboard == str(root / "reports" / "dashboard.html")
    return Lake(str(root))


@pytest.fixture(scope="module")
def views(lake):
    catalog = CatalogResource()
    with catalog.open(lake) as engine:
        return catalog.view_rows(engine)


def test_demographics_count_patients_by_gender_and_deaths(views):
    patients = csv_rows("patients")
    by_gender = Counter(p["GENDER"] for p in patients)
    rows = views["bi_demographics"]
    assert {g: sum(r["patients"] for r in rows if r["gender"] == g) for g in by_gender} == dict(by_gender)
    assert sum(r["deceased"] for r in rows) == sum(1 for p in patients if p["DEATHDATE"])


def test_encounter_trends_count_encounters_by_class_and_month(views):
    encounters = csv_rows("encounters")
    by_class = Counter(e["ENCOUNTERCLASS"] for e in encounters)
    rows = views["bi_encounter_trends"]
    assert {c: sum(r["encounters"] for r in rows if r["encounter_class"] == c) for c in by_class} == dict(by_class)
    busiest = Counter((e["ENCOUNTERCLASS"], e["START"][:7]) for e in encounters).most_common(1)[0]
    (encounter_class, month), count = busiest
    [row] = [r for r in rows if r["encounter_class"] == encounter_class and r["month"].isoformat()[:7] == month]
    assert row["encounters"] == count


def test_diagnosis_breakdown_ranks_conditions_by_patients(views):
    patients_by_code = defaultdict(set)
    for condition in csv_rows("conditions"):
        patients_by_code[condition["CODE"]].add(condition["PATIENT"])
    expected = sorted(patients_by_code, key=lambda code: (-len(patients_by_code[code]), code))[:25]
    rows = views["bi_diagnosis_breakdown"]
    ranks = {r["condition_code"]: r["condition_rank"] for r in rows}
    assert [code for code, _ in sorted(ranks.items(), key=lambda item: item[1])] == expected
    top = expected[0]
    assert sum(r["patients"] for r in rows if r["condition_code"] == top) == len(patients_by_code[top])


def test_medication_insights_total_costs_and_coverage(views):
    cost, covered = defaultdict(Decimal), defaultdict(Decimal)
    for medication in csv_rows("medications"):
        cost[medication["CODE"]] += Decimal(medication["TOTALCOST"])
        covered[medication["CODE"]] += Decimal(medication["PAYER_COVERAGE"])
    rows = {r["medication_code"]: r for r in views["bi_medication_insights"]}
    assert {code: rows[code]["total_cost"] for code in cost} == dict(cost)
    top = max(cost, key=lambda code: (cost[code], code))
    assert rows[top]["cost_rank"] == 1
    assert rows[top]["coverage_ratio"] == pytest.approx(float(covered[top] / cost[top]))


def test_views_give_identical_results_on_spark_sql(lake, views):
    """The same Athena SQL, transpiled to Spark SQL and run on Sail over the mart Parquet."""
    from synthea_pipeline.resources.spark import SparkResource

    spark_resource = SparkResource(engine="sail")
    spark = spark_resource.get_session()
    try:
        for mart in MARTS:
            spark.read.parquet(lake.uri("marts", mart)).createOrReplaceTempView(mart)
        for view in BI_VIEWS:
            sql = sqlglot.transpile(view_sql(view).replace("synthea_marts.", ""), read="trino", write="spark")[0]
            on_spark = [tuple(row) for row in spark.sql(sql).collect()]
            on_duckdb = [tuple(row.values()) for row in views[view]]
            normalize = lambda rows: sorted((tuple(float(v) if isinstance(v, Decimal) else v for v in r)
                                             for r in rows), key=repr)
            assert normalize(on_spark) == normalize(on_duckdb), view
    finally:
        spark_resource.teardown_after_execution(None)


def test_bi_assets_show_a_preview_and_a_chart(instance, lake):
    event = instance.get_latest_materialization_event(AssetKey(["bi", "bi_demographics"]))
    metadata = event.asset_materialization.metadata
    assert metadata["preview"].value.records and "patients" in metadata["preview"].value.records[0].data
    assert "█" in metadata["chart"].value
    assert "FROM synthea_marts.patient_fact" in metadata["athena_sql"].value


def test_query_command_reads_the_local_catalog(lake):
    command = [sys.executable, "-m", "synthea_pipeline.cli", "query", "--lake", lake.root, "--format", "csv"]
    result = subprocess.run(command + ["SELECT gender, SUM(patients) AS n FROM bi_demographics GROUP BY 1 ORDER BY 1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = Counter(p["GENDER"] for p in csv_rows("patients"))
    assert result.stdout.splitlines() == ["gender,n"] + [f"{g},{expected[g]}" for g in sorted(expected)]
    staged = subprocess.run(command + ["SELECT COUNT(*) FROM synthea_staging.observations"],
                            capture_output=True, text=True, timeout=120)
    assert staged.stdout.splitlines()[1] == "4258"
    bad = subprocess.run(command + ["SELECT nope FROM bi_demographics"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_glue_catalog_registration_is_typed_partitioned_and_idempotent(lake, moto_endpoint):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="catalog-lake")
    s3_lake = Lake("s3://catalog-lake/lake")
    for layer in ("staging", "quarantine", "marts"):
        for path in Path(lake.uri(layer)).rglob("*.parquet"):
            s3.upload_file(str(path), "catalog-lake", f"lake/{path.relative_to(lake.root).as_posix()}")
    catalog, glue = CatalogResource(), boto3.client("glue")
    engine = catalog.open(s3_lake)
    first = catalog.register(s3_lake, engine)
    assert set(first.values()) == {"created"} and len(first) == len(TABLES) + 1 + len(MARTS) + len(BI_VIEWS)

    patients = glue.get_table(DatabaseName="synthea_staging", Name="patients")["Table"]
    columns = {c["Name"]: c["Type"] for c in patients["StorageDescriptor"]["Columns"]}
    assert columns == {c.name: c.spark_type for c in TABLES["patients"].columns}
    assert patients["PartitionKeys"] == [{"Name": "upload_id", "Type": "string"}]
    [partition] = glue.get_partitions(DatabaseName="synthea_staging", TableName="patients")["Partitions"]
    assert partition["Values"] == ["u1"]
    assert partition["StorageDescriptor"]["Location"] == "s3://catalog-lake/lake/staging/patients/upload_id=u1/"
    assert partition["StorageDescriptor"]["Columns"] == patients["StorageDescriptor"]["Columns"]
    quarantine = glue.get_table(DatabaseName="synthea_staging", Name="quarantine")["Table"]
    assert [k["Name"] for k in quarantine["PartitionKeys"]] == ["table_name", "upload_id"]
    assert [c["Name"] for c in quarantine["StorageDescriptor"]["Columns"]] == ["file", "line_number", "reason", "text"]
    partitions = glue.get_partitions(DatabaseName="synthea_staging", TableName="quarantine")["Partitions"]
    assert sorted(p["Values"][0] for p in partitions) == sorted(TABLES)
    assert {p["StorageDescriptor"]["Location"] for p in partitions if p["Values"] == ["encounters", "u1"]} == {
        "s3://catalog-lake/lake/quarantine/encounters/upload_id=u1/"}
    fact = glue.get_table(DatabaseName="synthea_marts", Name="patient_fact")["Table"]["StorageDescriptor"]["Columns"]
    assert {"Name": "total_claim_cost", "Type": "decimal(18,2)"} in fact and {"Name": "age", "Type": "int"} in fact

    view = glue.get_table(DatabaseName="synthea_marts", Name="bi_medication_insights")["Table"]
    assert view["TableType"] == "VIRTUAL_VIEW"
    encoded = re.fullmatch(r"/\* Presto View: (.+) \*/", view["ViewOriginalText"]).group(1)
    presto = json.loads(base64.b64decode(encoded))
    assert sqlglot.parse_one(presto["originalSql"], read="trino").find(sqlglot.exp.Table).name == "medication_dim"
    assert {"name": "total_cost", "type": "decimal(38,2)"} in presto["columns"]

    snapshot = lambda: (glue.get_tables(DatabaseName="synthea_marts")["TableList"],
                        glue.get_tables(DatabaseName="synthea_staging")["TableList"],
                        glue.get_partitions(DatabaseName="synthea_staging", TableName="patients")["Partitions"],
                        glue.get_partitions(DatabaseName="synthea_staging", TableName="quarantine")["Partitions"])
    before = snapshot()
    again = catalog.register(s3_lake, engine)
    assert set(again.values()) == {"unchanged"}
    assert snapshot() == before


def test_every_view_is_valid_athena_sql_over_the_marts(lake):
    """Each view parses as Trino SQL and every column it names exists in the marts it reads."""
    from sqlglot.optimizer.qualify import qualify

    from synthea_pipeline.transforms.catalog import hive_type, mart_schema

    schema = {"synthea_marts": {m: {f.name: hive_type(f.type) for f in mart_schema(lake, m)} for m in MARTS}}
    for view in BI_VIEWS:
        qualify(sqlglot.parse_one(view_sql(view), read="trino"), schema=schema, dialect="trino",
                validate_qualify_columns=True)
    with pytest.raises(sqlglot.errors.OptimizeError, match="Unknown column: sex"):
        qualify(sqlglot.parse_one(view_sql("bi_demographics").replace("p.gender", "p.sex", 1), read="trino"),
                schema=schema, dialect="trino", validate_qualify_columns=True)


def test_dashboard_renders_four_charts_offline_in_chromium(lake, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by .ci/run (apt-get install chromium)"
    page = lake.uri("reports", "dashboard.html")
    text = open(page, encoding="utf-8").read()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    flags = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={tmp_path / 'profile'}"]
    result = subprocess.run(flags + ["--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", result.stdout).group(1)
    assert 'data-charts="4"' in body and 'data-charts-with-data="4"' in body, body
    assert 'data-errors=""' in body
    assert not [line for line in result.stderr.splitlines() if "CONSOLE" in line and "rror" in line]
    shot = tmp_path / "dashboard.png"
    subprocess.run(flags + ["--window-size=1400,1500", f"--screenshot={shot}", f"file://{page}"],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000


def test_orchestrator_policy_covers_every_folder_a_run_writes(lake):
    import yaml

    from synthea_pipeline_tests.test_infra import TEMPLATE, CloudFormationLoader, object_prefixes

    policy = yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)["Resources"]["OrchestratorPolicy"]
    granted = object_prefixes(policy, {"s3:PutObject"})
    written = {f"{path.name}/*" for path in Path(lake.root).iterdir() if path.is_dir()}
    assert written >= {"source/*", "raw/*", "staging/*", "marts/*", "reports/*"}
    assert written <= granted
