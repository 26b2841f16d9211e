"""Catalog, BI views and dashboard: the views' numbers against counts made straight from the sample CSVs, the
same Athena SQL on a second engine (Spark SQL on Sail), every catalog view validated as Athena SQL, the `query`
command, and the dashboard in a real headless Chromium without network. The Glue side is in test_s3_lake."""

import html
import json
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
import sqlglot
from dagster import AssetKey

from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.runs import SAMPLE_DIR, run_upload
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.bi import BI_VIEWS, view_sql
from synthea_pipeline.transforms.catalog import Databases, catalog_views, omop_views
from synthea_pipeline.transforms.dqd import DQD_RESULTS_FILE
from synthea_pipeline.transforms.iceberg import LOCKS_FOLDER
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline_tests.conftest import catalog_rows, read_rows

pytestmark = [pytest.mark.slow, pytest.mark.omop]  # a pipeline run before the first test (the dashboard has DQD)


def csv_rows(name: str) -> list[dict]:
    header, rows = read_rows(SAMPLE_DIR / f"{name}.csv")
    return [dict(zip(header, row, strict=False)) for row in {tuple(r) for r in rows}]


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
    """The same Athena SQL, transpiled to Spark SQL and run on Sail over the committed build of the mart tables."""
    from pyspark.sql import functions as F

    from synthea_pipeline.resources.spark import SparkResource

    [build] = catalog_rows(lake, "SELECT build_id FROM synthea_marts.current_build").column("build_id").to_pylist()
    spark_resource = SparkResource(engine="sail")
    spark = spark_resource.get_session(lake.root)
    try:
        for name in MARTS:
            table = spark.read.format("iceberg").load(lake.uri("marts", name))
            table.where(F.col("build_id") == build).drop("build_id").createOrReplaceTempView(name)
        for view in BI_VIEWS:
            sql = sqlglot.transpile(view_sql(view).replace("synthea_marts.", ""), read="trino", write="spark")[0]
            on_spark = [tuple(row) for row in spark.sql(sql).collect()]
            on_duckdb = [tuple(row.values()) for row in views[view]]

            def normalize(rows):
                return sorted((tuple(float(v) if isinstance(v, Decimal) else v for v in r) for r in rows), key=repr)

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
    result = subprocess.run(
        [*command, "SELECT gender, SUM(patients) AS n FROM bi_demographics GROUP BY 1 ORDER BY 1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = Counter(p["GENDER"] for p in csv_rows("patients"))
    assert result.stdout.splitlines() == ["gender,n"] + [f"{g},{expected[g]}" for g in sorted(expected)]
    staged = subprocess.run(
        [*command, "SELECT COUNT(*) FROM synthea_staging.observations"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert staged.stdout.splitlines()[1] == "4258"
    bad = subprocess.run(
        [*command, "SELECT nope FROM bi_demographics"], check=False, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_every_view_is_valid_athena_sql_over_the_tables_it_reads(lake):
    """Each catalog view (staging, marts, BI) parses as Trino SQL and every column it names exists in what it
    reads: the Iceberg tables' columns as the embedded engine sees them, and the views before it."""
    from sqlglot.optimizer.qualify import qualify

    databases = Databases()
    with CatalogResource().open(lake) as engine:
        schema = {}
        for database in (*map(databases.iceberg_of, ("staging", "marts", "omop")), *databases.views):
            for (name,) in engine.execute(
                "SELECT view_name FROM duckdb_views() WHERE schema_name = ?", [database]
            ).fetchall():
                schema.setdefault(database, {})[name] = {
                    column: "varchar" for column, *_ in engine.execute(f"DESCRIBE {database}.{name}").fetchall()
                }
        mart_columns = {m: list(schema[databases.marts_iceberg][m]) for m in MARTS}
    views = catalog_views(databases, mart_columns, includes_identifiers=False)
    single_views = ("uploads", "quarantine", "upload_states", "current_build", "current_parts")
    assert len(views) == len(single_views) + len(TABLES) + len(MARTS) + len(BI_VIEWS) + len(omop_views(databases))
    for sql in views.values():
        qualify(sqlglot.parse_one(sql, read="trino"), schema=schema, dialect="trino", validate_qualify_columns=True)
    with pytest.raises(sqlglot.errors.OptimizeError, match="Unknown column: sex"):
        qualify(
            sqlglot.parse_one(view_sql("bi_demographics").replace("p.gender", "p.sex", 1), read="trino"),
            schema=schema,
            dialect="trino",
            validate_qualify_columns=True,
        )


def test_dashboard_summarises_the_dqd_results_of_this_runs_omop_build(instance, lake):
    """The OMOP step runs before the BI step (step priorities, not a dependency), so the dashboard shows the DQD
    results of the build this run committed: the same numbers as the results file."""
    omop = instance.get_latest_materialization_event(AssetKey(["omop", "person"]))
    dashboard = instance.get_latest_materialization_event(AssetKey(["reports", "dashboard"]))
    assert omop.run_id == dashboard.run_id and omop.timestamp < dashboard.timestamp
    results = json.loads(Path(lake.uri("reports", DQD_RESULTS_FILE)).read_text())
    overview = results["Overview"]
    page = html.unescape(Path(lake.uri("reports", "dashboard.html")).read_text(encoding="utf-8"))
    assert f"build of {results['endTimestamp']}: {overview['countPassed']} of {overview['countTotal']} passed" in page
    assert f"<b>{overview['percentPassed']}%</b><span>OMOP DQD checks passed</span>" in page
    for category in ("Plausibility", "Conformance", "Completeness"):
        passed, failed = overview[f"countPassed{category}"], overview[f"countFailed{category}"]
        assert f"{category}: {passed} passed" in page and f"{category}: {failed} failed" in page
    failed = [r for r in results["CheckResults"] if r["failed"] == 1]
    worst = max(r["pctViolatedRows"] for r in failed)
    first_row = re.search(r"<th class=num>threshold</th></tr><tr><td>(\w+)</td><td>(\w+)\.(\w+)</td>", page)
    assert (first_row.group(1), first_row.group(2).upper(), first_row.group(3).upper()) in {
        (r["checkName"], r["cdmTableName"], r["cdmFieldName"]) for r in failed if r["pctViolatedRows"] == worst
    }
    preview = dashboard.asset_materialization.metadata["preview"].value
    assert f"| Conformance | {overview['countPassedConformance']} | {overview['countFailedConformance']} |" in preview


def test_dashboard_renders_five_charts_offline_in_chromium(lake, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by .ci/run (apt-get install chromium)"
    page = lake.uri("reports", "dashboard.html")
    text = Path(page).read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    flags = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    result = subprocess.run(
        [*flags, "--dump-dom", f"file://{page}"], check=False, capture_output=True, text=True, timeout=120
    )
    body = re.search(r"<body([^>]*)>", result.stdout).group(1)
    assert 'data-charts="5"' in body and 'data-charts-with-data="5"' in body, body  # four views and the DQD
    assert 'data-errors=""' in body
    assert not [line for line in result.stderr.splitlines() if "CONSOLE" in line and "rror" in line]
    shot = tmp_path / "dashboard.png"
    subprocess.run(
        [*flags, "--window-size=1400,1500", f"--screenshot={shot}", f"file://{page}"],
        check=False,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000


def test_orchestrator_policy_covers_every_folder_a_run_writes(lake):
    from synthea_pipeline_tests.cloudformation import load_template
    from synthea_pipeline_tests.test_infra import TEMPLATE, object_prefixes

    policy = load_template(TEMPLATE)["Resources"]["OrchestratorPolicy"]
    granted = object_prefixes(policy, {"s3:PutObject"})
    written = {
        f"{path.name}/*" for path in Path(lake.root).iterdir() if path.is_dir() and path.name != LOCKS_FOLDER
    }  # commit locks: local lakes only
    assert written >= {"source/*", "raw/*", "staging/*", "marts/*", "reports/*"}
    assert written <= granted
