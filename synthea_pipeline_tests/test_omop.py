"""OMOP CDM 5.4 from the sample exports with the shipped vocabulary subset: exact counts derived here from the
source files and the mapping rules, concept 0 for unmapped codes, domain routing, the CDM's columns, DQD's results
file, a broken key refusing the commit, a skipped build without a vocabulary, removal and time travel."""

import csv
import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from dagster import materialize
from duckcdm.achilles import available, run_achilles
from pyspark.sql import functions as F

from synthea_pipeline.assets.omop import build_omop_assets
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.runs import remove, run_upload
from synthea_pipeline.transforms import layers
from synthea_pipeline.transforms.cdm import cdm_table
from synthea_pipeline.transforms.iceberg import OMOP_LAYER, IcebergTables
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.omop import CLINICAL_TABLES, scratch_folder
from synthea_pipeline.transforms.vocabulary import sample_vocabulary
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows

pytestmark = [pytest.mark.slow, pytest.mark.omop]  # four pipeline runs

VOCABULARY = Path(sample_vocabulary())
EVENT_TABLES = {
    # Synthea table: (vocabulary of its codes, the CDM table an unmapped code stays in)
    "conditions": ("SNOMED", "condition_occurrence"),
    "procedures": ("SNOMED", "procedure_occurrence"),
    "medications": ("RxNorm", "drug_exposure"),
    "immunizations": ("CVX", "drug_exposure"),
    "observations": ("LOINC", "measurement"),
    "allergies": ("SNOMED", "observation"),
    "devices": ("SNOMED", "device_exposure"),
}
DOMAINS = {
    "Condition": "condition_occurrence",
    "Procedure": "procedure_occurrence",
    "Drug": "drug_exposure",
    "Measurement": "measurement",
    "Observation": "observation",
    "Device": "device_exposure",
}
DQD_RESULT_FIELDS = {
    # R/recordResult.R and R/evaluateThresholds.R of OHDSI/DataQualityDashboard 2.8.4
    "numViolatedRows",
    "pctViolatedRows",
    "numDenominatorRows",
    "executionTime",
    "queryText",
    "checkName",
    "checkLevel",
    "checkDescription",
    "cdmTableName",
    "cdmFieldName",
    "conceptId",
    "unitConceptId",
    "sqlFile",
    "category",
    "subcategory",
    "context",
    "warning",
    "error",
    "checkId",
    "failed",
    "passed",
    "isError",
    "notApplicable",
    "notApplicableReason",
    "thresholdValue",
    "notesValue",
}


def rows_of(path: Path) -> list[dict[str, str]]:
    """A CSV's distinct rows (staging drops exact duplicates), keyed by upper-case header."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip().upper() for h in next(reader)]
        return [dict(zip(header, row, strict=True)) for row in dict.fromkeys(tuple(r) for r in reader if r)]


def vocabulary_rows(table: str) -> list[dict[str, str]]:
    path = next(p for p in VOCABULARY.iterdir() if p.name.lower().removesuffix(".csv").removesuffix("_seed") == table)
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def mapping_rules():
    """(vocabulary, code) -> source concept, source concept -> valid standard targets, and each concept's row."""
    concepts = {row["concept_id"]: row for row in vocabulary_rows("concept")}
    codes = {(row["vocabulary_id"], row["concept_code"]): cid for cid, row in concepts.items()}
    targets = defaultdict(set)
    for row in vocabulary_rows("concept_relationship"):
        target = concepts.get(row["concept_id_2"])
        if (
            row["relationship_id"] == "Maps to"
            and not row["invalid_reason"]
            and target
            and target["standard_concept"] == "S"
            and not target["invalid_reason"]
        ):
            targets[row["concept_id_1"]].add(row["concept_id_2"])
    return codes, targets, concepts


def vocabulary_of(row: dict, default: str) -> str:
    system = row.get("SYSTEM", "").lower()
    for part, vocabulary in (("snomed", "SNOMED"), ("rxnorm", "RxNorm"), ("loinc", "LOINC"), ("cvx", "CVX")):
        if part in system:
            return vocabulary
    return default


def expected_counts(export: Path) -> Counter:
    """Each CDM table's rows for one export, from its files and the mapping rules alone: a row per standard
    concept its code reaches (in that concept's domain's table; an allergy stays an observation), or one at
    concept 0 in its own table."""
    codes, targets, concepts = mapping_rules()
    counts = Counter()
    patients = rows_of(export / "patients.csv")
    counts["person"] = len({p["ID"] for p in patients})
    counts["death"] = sum(1 for p in patients if p["DEATHDATE"])
    encounters = rows_of(export / "encounters.csv")
    counts["visit_occurrence"] = len({e["ID"] for e in encounters})
    counts["observation_period"] = len({e["PATIENT"] for e in encounters})
    counts["cost"] = sum(1 for e in encounters if e["TOTAL_CLAIM_COST"])
    counts["payer_plan_period"] = len(rows_of(export / "payer_transitions.csv"))
    for table, (default_vocabulary, default_table) in EVENT_TABLES.items():
        for row in rows_of(export / f"{table}.csv"):
            own_table = "observation" if table == "observations" and row["TYPE"] == "text" else default_table
            source = codes.get((vocabulary_of(row, default_vocabulary), row["CODE"]))
            reached = targets.get(source, set())
            for target in reached or [None]:
                routed = DOMAINS.get(concepts[target]["domain_id"], own_table) if target else own_table
                counts[own_table if table == "allergies" else routed] += 1
    return counts


def count(lake: Lake, table: str) -> int:
    return catalog_rows(lake, f"SELECT count(*) AS n FROM synthea_omop.{table}").column("n")[0].as_py()


@pytest.fixture(scope="module")
def lake(instance, spark, tmp_path_factory):
    """The 3.0.0 sample (the one the vocabulary subset was made for) alone in a lake."""
    lake = Lake(str(tmp_path_factory.mktemp("omop")))
    report = run_upload(str(SAMPLES["3.0"]), lake.root, "omop30", instance=instance, spark=spark)
    assert report.success, report.errors
    return lake


def test_counts_are_those_the_source_and_the_mapping_rules_give(lake):
    expected = expected_counts(SAMPLES["3.0"])
    for table in [*DOMAINS.values(), "person", "death", "visit_occurrence", "observation_period", "cost"]:
        assert count(lake, table) == expected[table], table
    assert count(lake, "payer_plan_period") == expected["payer_plan_period"]
    assert count(lake, "cdm_source") == 1


PARTIAL_EXPORT = ("patients", "encounters", "conditions", "medications", "allergies", "observations")


def test_a_partial_crlf_export_builds_the_tables_it_has_sources_for(instance, spark, tmp_path):
    """What users often have: some of the files, written with Windows line endings. The tables whose sources
    are missing are empty, the others hold what the files and the mapping rules give."""
    export = tmp_path / "partial"
    export.mkdir()
    for table in PARTIAL_EXPORT:
        (export / f"{table}.csv").write_bytes((SAMPLES["3.0"] / f"{table}.csv").read_bytes().replace(b"\n", b"\r\n"))
    lake = Lake(str(tmp_path / "lake"))
    report = run_upload(str(export), lake.root, "partial", instance=instance, spark=spark)
    assert report.success, report.errors
    expected = expected_counts(export)
    for table in [*DOMAINS.values(), "person", "death", "visit_occurrence", "observation_period", "cost"]:
        assert count(lake, table) == expected[table], table
    assert expected["condition_occurrence"] and expected["drug_exposure"] and expected["measurement"]
    assert count(lake, "payer_plan_period") == 0


def test_ohdsi_achilles_runs_over_the_omop_views_as_they_are(lake):
    """OHDSI's Achilles (duckcdm's port, running Achilles' own SQL on DuckDB) over the catalog's `synthea_omop`
    views, nothing adapted: every analysis runs (those over the tables no build writes too, on their empty views),
    and the counts are the source's."""
    patients = rows_of(SAMPLES["3.0"] / "patients.csv")
    expected = expected_counts(SAMPLES["3.0"])
    with CatalogResource().open(lake) as engine:
        every_analysis = available(range(10_000))
        ran, failed = run_achilles(
            engine,
            "synthea_omop",
            "achilles",
            cdm_version="5.4",
            analysis_ids=every_analysis,
            small_cell_count=0,
            log=lambda message: None,
        )
        results = engine.sql("SELECT analysis_id, stratum_1, count_value FROM achilles.achilles_results").fetchall()
    assert failed == [] and len(ran) == len(every_analysis) > 250
    by_analysis = defaultdict(dict)
    for analysis, stratum, value in results:
        by_analysis[analysis][stratum] = value
    assert by_analysis[1] == {None: len(patients)}  # persons
    genders = Counter({"8507": 0, "8532": 0}) + Counter({"M": "8507", "F": "8532"}[p["GENDER"]] for p in patients)
    assert by_analysis[2] == dict(genders)  # persons by gender concept
    assert sum(by_analysis[201].values()) == expected["visit_occurrence"]  # visits by visit concept
    assert sum(by_analysis[401].values()) == expected["condition_occurrence"]  # condition records by concept
    assert sum(by_analysis[701].values()) == expected["drug_exposure"]


def test_a_code_without_a_mapping_keeps_its_row_at_concept_0(lake):
    """CVX is not in the subset: every immunization stays, at concept 0, with its code as the source value."""
    immunizations = rows_of(SAMPLES["3.0"] / "immunizations.csv")
    rows = catalog_rows(
        lake,
        "SELECT drug_concept_id, drug_source_concept_id, drug_source_value, drug_type_concept_id "
        "FROM synthea_omop.drug_exposure WHERE drug_type_concept_id = 32827",
    ).to_pylist()
    assert len(rows) == len(immunizations) > 0
    assert {r["drug_concept_id"] for r in rows} == {0}
    assert {r["drug_source_concept_id"] for r in rows} == {0}
    assert Counter(r["drug_source_value"] for r in rows) == Counter(i["CODE"] for i in immunizations)


def test_a_condition_code_whose_standard_concept_is_an_observation_lands_in_observation(lake):
    codes, targets, concepts = mapping_rules()
    conditions = rows_of(SAMPLES["3.0"] / "conditions.csv")
    routed = {
        c["CODE"]: target
        for c in conditions
        for target in targets.get(codes.get(("SNOMED", c["CODE"])), ())
        if concepts[target]["domain_id"] == "Observation"
    }
    assert routed, "the sample has conditions whose standard concept is an observation"
    code, target = sorted(routed.items())[0]
    observed = catalog_rows(
        lake,
        f"SELECT observation_concept_id, observation_source_concept_id FROM synthea_omop.observation "
        f"WHERE observation_source_value = '{code}'",
    ).to_pylist()
    assert observed and {r["observation_concept_id"] for r in observed} == {int(target)}
    assert {r["observation_source_concept_id"] for r in observed} == {int(codes[("SNOMED", code)])}
    listed = catalog_rows(
        lake, f"SELECT count(*) AS n FROM synthea_omop.condition_occurrence WHERE condition_source_value = '{code}'"
    )
    assert listed.column("n")[0].as_py() == 0


def test_every_table_has_exactly_the_cdm_columns_and_types(lake):
    types = {"int": "INTEGER", "bigint": "BIGINT", "double": "DOUBLE", "date": "DATE", "string": "VARCHAR"}
    for table in CLINICAL_TABLES:
        described = catalog_rows(lake, f"DESCRIBE synthea_omop.{table}").to_pylist()
        fields = cdm_table(table).fields
        assert [d["column_name"] for d in described] == [f.name for f in fields], table
        for column, field in zip(described, fields, strict=True):
            assert column["column_type"].startswith(types.get(field.spark_type, "TIMESTAMP")), (table, field.name)


def test_keys_hold_and_eras_count_their_occurrences(lake):
    for table in CLINICAL_TABLES:
        key = cdm_table(table).primary_key
        if key:
            row = catalog_rows(lake, f"SELECT count(*) AS n, count(DISTINCT {key}) AS k FROM synthea_omop.{table}")
            assert row.column("n")[0].as_py() == row.column("k")[0].as_py(), table
    orphans = catalog_rows(
        lake,
        "SELECT count(*) AS n FROM synthea_omop.condition_occurrence c "
        "LEFT JOIN synthea_omop.person p USING (person_id) LEFT JOIN synthea_omop.visit_occurrence v "
        "USING (visit_occurrence_id) WHERE p.person_id IS NULL OR (c.visit_occurrence_id IS NOT NULL "
        "AND v.visit_occurrence_id IS NULL)",
    )
    assert orphans.column("n")[0].as_py() == 0
    eras = catalog_rows(lake, "SELECT sum(condition_occurrence_count) AS n FROM synthea_omop.condition_era")
    mapped = catalog_rows(
        lake, "SELECT count(*) AS n FROM synthea_omop.condition_occurrence WHERE condition_concept_id <> 0"
    )
    assert eras.column("n")[0].as_py() == mapped.column("n")[0].as_py() > 0


def test_dqd_results_file_has_dqds_fields_and_counts(lake):
    results = json.loads((Path(lake.root) / "reports" / "omop_dqd_results.json").read_text())
    assert {"startTimestamp", "endTimestamp", "executionTime", "CheckResults", "Metadata", "Overview"} <= set(results)
    checks = results["CheckResults"]
    assert checks and all(set(c) == DQD_RESULT_FIELDS for c in checks)
    assert results["Overview"]["countTotal"] == len(checks)
    assert results["Overview"]["countOverallFailed"] == sum(c["failed"] for c in checks)
    assert results["Metadata"][0]["cdmSourceAbbreviation"] == "Synthea"
    ids = [c["checkId"] for c in checks]
    assert len(ids) == len(set(ids))
    unmapped = next(
        c for c in checks if c["checkId"] == "field_standardconceptrecordcompleteness_drug_exposure_drug_concept_id"
    )
    immunizations = len(rows_of(SAMPLES["3.0"] / "immunizations.csv"))
    assert unmapped["numViolatedRows"] >= immunizations
    assert unmapped["numDenominatorRows"] == count(lake, "drug_exposure")


def test_a_broken_foreign_key_refuses_the_commit(lake, spark, monkeypatch):
    """A pipeline bug (conditions pointing at visits that do not exist) is caught by the blocking key checks: the
    build is discarded and readers keep the committed one."""
    before = catalog_rows(lake, "SELECT build_id FROM synthea_omop.current_build").column("build_id")[0].as_py()
    build = layers.build_omop

    def with_a_bug(*args, **kwargs):
        built = build(*args, **kwargs)
        conditions = built.tables["condition_occurrence"]
        built.tables["condition_occurrence"] = conditions.withColumn(
            "visit_occurrence_id", F.col("visit_occurrence_id") + 1_000_000
        )
        return built

    monkeypatch.setattr(layers, "build_omop", with_a_bug)
    session = spark.get_session(lake.root)
    with pytest.raises(layers.LayerFailed, match=r"condition_occurrence\.visit_occurrence_id isForeignKey"):
        layers.run_omop(session, logging.getLogger(__name__), lake.root, "broken-build", "sample")
    assert catalog_rows(lake, "SELECT build_id FROM synthea_omop.current_build").column("build_id")[0].as_py() == before
    table = IcebergTables(lake.root).open(session, OMOP_LAYER, "condition_occurrence")
    assert session.table(table).where(F.col("build_id") == "broken-build").count() == 0
    assert not Path(scratch_folder(IcebergTables(lake.root), "broken-build")).exists()


def test_without_a_vocabulary_the_omop_assets_are_skipped_with_a_hint(lake, spark, instance):
    resources = {
        "lake": LakeResource(root=lake.root, omop_vocabulary="none"),
        "spark": spark,
        "catalog": CatalogResource(),
    }
    result = materialize([build_omop_assets()], resources=resources, instance=instance)
    assert result.success
    assert result.get_asset_materialization_events() == []
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("skipped" in m and "athena.ohdsi.org" in m for m in messages)


def athena_download(folder: Path, extra_concepts: list[dict], extra_maps: list[tuple[str, str]]) -> Path:
    """The shipped subset rewritten as Athena writes a download (upper-case names, tab-separated, no quoting,
    `YYYYMMDD` dates), with some concepts and `Maps to` rows added."""
    folder.mkdir()
    for table in ("concept", "concept_relationship", "vocabulary", "concept_ancestor"):
        rows = vocabulary_rows(table)
        if table == "concept":
            rows += extra_concepts
        if table == "concept_relationship":
            rows += [
                {
                    "concept_id_1": a,
                    "concept_id_2": b,
                    "relationship_id": "Maps to",
                    "valid_start_date": "1970-01-01",
                    "valid_end_date": "2099-12-31",
                    "invalid_reason": "",
                }
                for a, b in extra_maps
            ]
        header = list(rows[0])
        lines = ["\t".join(header)]
        for row in rows:
            lines.append("\t".join(row[h].replace("-", "") if h.startswith("valid_") else row[h] for h in header))
        (folder / f"{table.upper()}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_a_new_athena_download_replaces_the_vocabulary(lake, spark, tmp_path):
    """Athena's own file format is read, and a new download is loaded and used by the next build: the influenza
    vaccine's CVX code (absent from the subset, so at concept 0 before) maps once the download has it."""
    flu = {
        "concept_id": "40213154",
        "concept_name": "influenza, seasonal, injectable, preservative free",
        "domain_id": "Drug",
        "vocabulary_id": "CVX",
        "concept_class_id": "CVX",
        "standard_concept": "S",
        "concept_code": "140",
        "valid_start_date": "2008-12-01",
        "valid_end_date": "2099-12-31",
        "invalid_reason": "",
    }
    download = athena_download(tmp_path / "athena", [flu], [("40213154", "40213154")])
    session = spark.get_session(lake.root)
    layers.run_omop(session, logging.getLogger(__name__), lake.root, "athena-build", str(download))
    shots = rows_of(SAMPLES["3.0"] / "immunizations.csv")
    mapped = catalog_rows(
        lake,
        "SELECT drug_concept_id, drug_source_concept_id FROM synthea_omop.drug_exposure "
        "WHERE drug_source_value = '140'",
    ).to_pylist()
    assert len(mapped) == sum(1 for s in shots if s["CODE"] == "140") > 0
    assert {(r["drug_concept_id"], r["drug_source_concept_id"]) for r in mapped} == {(40213154, 40213154)}
    assert count(lake, "concept") == len(vocabulary_rows("concept")) + 1
    used = catalog_rows(lake, "SELECT vocabulary_source FROM synthea_omop.current_vocabulary").to_pylist()
    assert used == [{"vocabulary_source": str(download)}]


def test_every_release_builds_and_a_removed_upload_leaves_the_omop_tables(lake, instance, spark):
    """Every shipped release builds OMOP into one lake; removing one takes its people out, and the tables as they
    were before the removal are still there to read."""
    for release, upload in (("2.7", "omop27"), ("3.3-3.4", "omop33")):
        report = run_upload(str(SAMPLES[release]), lake.root, upload, instance=instance, spark=spark)
        assert report.success, report.errors
        assert report.omop["person"] > 0
    people = {release: len({p["ID"] for p in rows_of(SAMPLES[release] / "patients.csv")}) for release in SAMPLES}
    assert count(lake, "person") == sum(people.values())
    before_removal = dt.datetime.now(dt.timezone.utc)
    report = remove("omop27", lake.root, instance=instance, spark=spark)
    assert report.success, report.errors
    assert count(lake, "person") == people["3.0"] + people["3.3-3.4"]
    catalog = CatalogResource()
    _, rows = catalog.query(lake, "SELECT count(*) FROM synthea_omop.person", as_of=before_removal)
    assert rows == [[sum(people.values())]]
