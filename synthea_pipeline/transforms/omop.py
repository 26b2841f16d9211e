"""OMOP CDM 5.4 from every committed upload's staging tables (plain PySpark), following OHDSI's ETL-Synthea and
dbt-synthea conventions (the deviations are listed in the README).

The rows are the marts' rows: the latest upload that holds a patient owns the patient's history. Codes map through
the vocabulary: a source code (SNOMED, RxNorm, LOINC, CVX, ...) finds its source concept, which reaches standard
concepts through `Maps to`; each row lands in the table of its standard concept's domain (a SNOMED condition code
whose standard concept is an Observation lands in `observation`), once per standard concept. A code that reaches no
standard concept keeps its row, at concept 0 with its source value and source concept, in the table its Synthea
table stands for. Nothing is left out for lack of a mapping; rows whose patient is in no upload cannot have a
person and are counted instead.

Identifiers are integers, as the CDM declares them: numbered in the order of the Synthea ids (patients,
providers, organizations, encounters) or of the row's person, date and content, so a build over the same uploads
numbers the same rows alike."""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from synthea_pipeline.transforms.cdm import CDM_VERSION, cdm_table
from synthea_pipeline.transforms.checks import Check
from synthea_pipeline.transforms.dqd import DqdResult, concept_checks, field_checks, reference_checks, table_rows
from synthea_pipeline.transforms.iceberg import (
    BUILD_PARTITIONING,
    OMOP_LAYER,
    CommitLog,
    IcebergTables,
    UploadLog,
    now,
)
from synthea_pipeline.transforms.marts import BuildPlan, latest_per_key, owners_of, patient_scoped, read_staging
from synthea_pipeline.transforms.vocabulary import (
    LOAD_COLUMN,
    VOCABULARY_TABLES,
    VocabularyFiles,
    load_vocabulary,
    vocabulary_rows,
)

GENDER_CONCEPTS = {"M": 8507, "F": 8532}
RACE_CONCEPTS = {"white": 8527, "black": 8516, "asian": 8515, "native": 8657, "hawaiian": 8557}
ETHNICITY_CONCEPTS = {"hispanic": 38003563, "nonhispanic": 38003564}
VISIT_CONCEPTS = {
    "ambulatory": 9202,
    "wellness": 9202,
    "outpatient": 9202,
    "emergency": 9203,
    "urgentcare": 9203,
    "inpatient": 9201,
}
"""Synthea's encounter classes as visit concepts (outpatient, emergency room, inpatient); other classes are 0."""
EHR = 32817
EHR_ENCOUNTER_RECORD = 32827
EHR_PRESCRIPTION = 32838
PAYER_ENROLLMENT_PERIOD = 32882
ADJUDICATED_CLAIM = 32814
DEATH_CERTIFICATION = "308646001"
"""Synthea's death certification encounter: its reason is the cause of death."""
US_DOLLAR = 44818668
CDM_VERSION_CONCEPT = 756265
ERA_GAP_DAYS = 30
"""Exposures or conditions of one concept closer than this many days join one era (OHDSI's persistence window)."""
UNKNOWN_CONCEPT = 0

DOMAIN_TABLES = {
    "Condition": "condition_occurrence",
    "Procedure": "procedure_occurrence",
    "Drug": "drug_exposure",
    "Measurement": "measurement",
    "Observation": "observation",
    "Device": "device_exposure",
}
"""The CDM event table of each domain a standard concept can route a row to."""
DOMAIN_TYPE_CONCEPTS = {
    "Condition": EHR_ENCOUNTER_RECORD,
    "Procedure": EHR_ENCOUNTER_RECORD,
    "Measurement": EHR_ENCOUNTER_RECORD,
    "Observation": EHR,
    "Device": EHR_ENCOUNTER_RECORD,
}
"""The type concept of a row by the table it lands in (dbt-synthea's); a drug's is its source's (`EventSource`)."""
SYSTEM_VOCABULARIES = (
    ("snomed", "SNOMED"),
    ("rxnorm", "RxNorm"),
    ("loinc", "LOINC"),
    ("cvx", "CVX"),
    ("icd-10", "ICD10CM"),
    ("icd10", "ICD10CM"),
)
"""Synthea's `system` values (`SNOMED-CT`, `http://snomed.info/sct`, `RxNorm`, ...) as OMOP vocabulary ids, by a
case-insensitive part of the value."""


@dataclass(frozen=True)
class EventSource:
    """A Synthea table whose codes become clinical events: the vocabulary of its codes (unless its `system`
    column says otherwise), the domain an unmapped code keeps, and its type concept as a drug (a prescription, or
    an immunization recorded at an encounter)."""

    table: str
    vocabulary: str
    domain: str
    type_concept: int
    start: str
    stop: str | None = None


ALLERGIES = "allergies"
"""An allergy is an observation whatever its code maps to: an allergen that maps to a drug is the observation's
value (`value_as_concept_id`), not an exposure to the drug."""
EVENT_SOURCES = (
    EventSource("conditions", "SNOMED", "Condition", EHR_ENCOUNTER_RECORD, "start", "stop"),
    EventSource("procedures", "SNOMED", "Procedure", EHR_ENCOUNTER_RECORD, "start", "stop"),
    EventSource("medications", "RxNorm", "Drug", EHR_PRESCRIPTION, "start", "stop"),
    EventSource("immunizations", "CVX", "Drug", EHR_ENCOUNTER_RECORD, "date"),
    EventSource("observations", "LOINC", "Measurement", EHR_ENCOUNTER_RECORD, "date"),
    EventSource(ALLERGIES, "SNOMED", "Observation", EHR_ENCOUNTER_RECORD, "start", "stop"),
    EventSource("devices", "SNOMED", "Device", EHR_ENCOUNTER_RECORD, "start", "stop"),
)
OMOP_READS = (
    "patients",
    "encounters",
    "providers",
    "organizations",
    "payers",
    "payer_transitions",
    *[s.table for s in EVENT_SOURCES],
)
"""The staging tables the OMOP build reads."""

CLINICAL_TABLES = (
    "location",
    "care_site",
    "provider",
    "person",
    "observation_period",
    "visit_occurrence",
    *DOMAIN_TABLES.values(),
    "death",
    "payer_plan_period",
    "cost",
    "condition_era",
    "drug_era",
    "cdm_source",
)
"""The CDM tables a build writes (the vocabulary tables are loaded apart, once per download)."""


def _ids(frame: DataFrame, name: str, *order: str | Column) -> DataFrame:
    """`frame` with an integer id numbered 1.. in `order` (which must make rows unique, so numbering repeats).
    Rows ordered by person first are numbered within each person, plus the rows of the persons before: only the
    per-person counts go through one ordered partition, not every row."""
    if order[0] != "person_id":
        return frame.withColumn(name, F.row_number().over(Window.orderBy(*order)))
    numbered = frame.withColumn("_n", F.row_number().over(Window.partitionBy("person_id").orderBy(*order)))
    before = Window.orderBy("person_id").rowsBetween(Window.unboundedPreceding, -1)
    offsets = (
        numbered.groupBy("person_id")
        .agg(F.max("_n").alias("_rows"))
        .select("person_id", F.coalesce(F.sum("_rows").over(before), F.lit(0)).alias("_offset"))
    )
    return (
        numbered.join(offsets, "person_id")
        .withColumn(name, (F.col("_offset") + F.col("_n")).cast("int"))
        .drop("_n", "_offset")
    )


def _lookup(column: Column, values: dict[str, int], default: int | None = UNKNOWN_CONCEPT) -> Column:
    """A text value's concept by a case-insensitive lookup, `default` when it is not there."""
    text = F.lower(F.trim(column))
    result = F.lit(default).cast("int")
    for key, concept in values.items():
        result = F.when(text == key.lower(), F.lit(concept)).otherwise(result)
    return result


def cdm_select(table: str, frame: DataFrame, expressions: dict[str, Column | str]) -> DataFrame:
    """The CDM table's fields in its order and types: each from `expressions` (a column or a column name), null
    where not given. A name that is not a field of the table is a bug, refused here."""
    spec = cdm_table(table)
    if unknown := set(expressions) - {f.name for f in spec.fields}:
        raise ValueError(f"{table}: {sorted(unknown)} are not CDM {CDM_VERSION} fields")
    columns = []
    for field in spec.fields:
        value = expressions.get(field.name)
        value = F.col(value) if isinstance(value, str) else value
        columns.append((F.lit(None) if value is None else value).cast(field.spark_type).alias(field.name))
    return frame.select(*columns)


VOCABULARY_MAPPING_TABLES = ("concept", "concept_relationship", "concept_ancestor", "source_to_concept_map")


@dataclass
class Vocabulary:
    """The loaded vocabulary tables one build maps with."""

    concept: DataFrame
    concept_relationship: DataFrame
    concept_ancestor: DataFrame
    source_to_concept_map: DataFrame
    vocabulary: DataFrame

    def standard_maps(self) -> DataFrame:
        """(vocabulary, code) -> source_concept_id, and each standard concept it maps to with its domain."""
        concept = self.concept
        source = concept.select(
            F.col("vocabulary_id").alias("_vocabulary"),
            F.col("concept_code").alias("_code"),
            F.col("concept_id").alias("source_concept_id"),
        ).dropDuplicates(["_vocabulary", "_code"])
        standard = concept.where("standard_concept = 'S' AND invalid_reason IS NULL").select(
            F.col("concept_id").alias("mapped_concept_id"), F.col("domain_id").alias("mapped_domain")
        )
        maps = (
            self.concept_relationship.where("relationship_id = 'Maps to' AND invalid_reason IS NULL")
            .select(F.col("concept_id_1").alias("source_concept_id"), F.col("concept_id_2").alias("mapped_concept_id"))
            .join(standard, "mapped_concept_id")
            .dropDuplicates(["source_concept_id", "mapped_concept_id"])
        )
        return source.join(maps, "source_concept_id", "left")

    def units(self) -> DataFrame:
        """unit text -> unit concept: a UCUM concept of that code, else the source-to-concept map's target."""
        ucum = self.concept.where("vocabulary_id = 'UCUM' AND standard_concept = 'S'").select(
            F.col("concept_code").alias("_unit"), F.col("concept_id").alias("_unit_concept"), F.lit(0).alias("_rank")
        )
        mapped = self.source_to_concept_map.select(
            F.col("source_code").alias("_unit"),
            F.col("target_concept_id").alias("_unit_concept"),
            F.lit(1).alias("_rank"),
        )
        window = Window.partitionBy("_unit").orderBy("_rank", "_unit_concept")
        both = ucum.unionByName(mapped).withColumn("_n", F.row_number().over(window))
        return both.where("_n = 1").drop("_n", "_rank")

    def ingredients(self) -> DataFrame:
        """drug concept -> each of its RxNorm ingredients (the drug itself when it is one), for drug eras: a
        combination drug has one era per ingredient."""
        ingredient = self.concept.where(
            "concept_class_id = 'Ingredient' AND standard_concept = 'S' "
            "AND vocabulary_id IN ('RxNorm', 'RxNorm Extension')"
        ).select(F.col("concept_id").alias("ingredient_concept_id"))
        return (
            self.concept_ancestor.select(
                F.col("descendant_concept_id").alias("drug_concept_id"),
                F.col("ancestor_concept_id").alias("ingredient_concept_id"),
            )
            .join(ingredient, "ingredient_concept_id")
            .dropDuplicates(["drug_concept_id", "ingredient_concept_id"])
        )


def _vocabulary_of(source: EventSource, frame: DataFrame) -> Column:
    if "system" not in frame.columns:
        return F.lit(source.vocabulary)
    system = F.lower(F.col("system"))
    result = F.lit(source.vocabulary)
    for part, vocabulary in reversed(SYSTEM_VOCABULARIES):
        result = F.when(system.contains(part), F.lit(vocabulary)).otherwise(result)
    return result


def _events(source: EventSource, frame: DataFrame) -> DataFrame:
    """A Synthea table's rows in one shape for mapping and routing."""
    start = F.col(source.start)
    stop = F.col(source.stop) if source.stop else F.lit(None)
    has = set(frame.columns)
    numeric = F.col("value").cast("double") if "value" in has else F.lit(None).cast("double")
    is_text = (F.col("type") == "text") if source.table == "observations" else F.lit(False)
    return frame.select(
        F.lit(source.table).alias("source_table"),
        F.col("patient"),
        F.col("encounter"),
        F.col("row_key"),
        _vocabulary_of(source, frame).alias("_vocabulary"),
        F.col("code").alias("_code"),
        F.col("description").alias("source_description"),
        start.cast("timestamp").alias("start_datetime"),
        stop.cast("timestamp").alias("end_datetime"),
        F.when(is_text, None).otherwise(numeric).alias("value_as_number"),
        (F.col("value") if "value" in has else F.lit(None)).cast("string").alias("value_source_value"),
        (F.col("units") if "units" in has else F.lit(None)).cast("string").alias("unit_source_value"),
        (F.col("dispenses") if "dispenses" in has else F.lit(None)).cast("double").alias("quantity"),
        F.lit(source.type_concept).alias("type_concept_id"),
        F.when(is_text, F.lit("Observation")).otherwise(F.lit(source.domain)).alias("default_domain"),
    )


@dataclass
class OmopBuild:
    """A build's tables (by CDM name) and the mapping report: per source table and vocabulary, rows in, rows
    mapped, rows at concept 0, rows without a person, and the most frequent unmapped codes."""

    tables: dict[str, DataFrame]
    mapped: DataFrame


def scratch_folder(lake: IcebergTables, build_id: str) -> str:
    """Where a build keeps its intermediate results until it ends (`build_omop`'s `scratch`)."""
    return lake.layout.uri(OMOP_LAYER, "_scratch", build_id)


def build_omop(
    spark: SparkSession,
    lake: IcebergTables,
    loads: DataFrame,
    vocabulary: Vocabulary,
    cdm_source: dict,
    scratch: str,
) -> OmopBuild:
    """Every CDM table of `CLINICAL_TABLES` from the committed loads (`marts.current_loads`). The mapped events,
    which six tables and the mapping report read, are written once as Parquet under `scratch` (the caller deletes
    it), so the Synthea tables are read and mapped once, not once per reader."""
    plan = BuildPlan.full("OMOP builds are full builds")

    def read(table: str) -> DataFrame:
        return read_staging(spark, lake, table, loads)

    owners = owners_of(spark, lake, loads, plan)
    patients = latest_per_key(read("patients"), "id")
    providers = latest_per_key(read("providers"), "id")
    organizations = latest_per_key(read("organizations"), "id")

    places = reduce(
        lambda a, b: a.unionByName(b),
        [
            frame.select(
                F.col("city"),
                F.col("state"),
                F.col("zip"),
                (F.col("county") if "county" in frame.columns else F.lit(None)).cast("string").alias("county"),
            )
            for frame in (patients, providers, organizations)
        ],
    )
    place_key = F.concat_ws("|", *[F.coalesce(F.col(c).cast("string"), F.lit("")) for c in ("city", "state", "zip")])
    distinct_places = (
        places.withColumn("location_source_value", place_key)
        .groupBy("location_source_value")
        .agg(*[F.max(c).alias(c) for c in ("city", "state", "zip", "county")])
    )  # a place is a city, state and postcode; its county is the patients' (providers' rows have none)
    locations = _ids(distinct_places, "location_id", "location_source_value")
    location_ids = locations.select("location_source_value", "location_id")

    def located(frame: DataFrame) -> DataFrame:
        return frame.withColumn("location_source_value", place_key).join(location_ids, "location_source_value", "left")

    care_sites = _ids(located(organizations), "care_site_id", "id")
    care_site_ids = care_sites.select(F.col("id").alias("organization"), "care_site_id")
    provider_rows = _ids(located(providers), "provider_id", "id").join(care_site_ids, "organization", "left")
    provider_ids = provider_rows.select(F.col("id").alias("provider"), "provider_id")
    people = _ids(located(patients), "person_id", "id")
    person_ids = people.select(F.col("id").alias("patient"), "person_id")

    encounters = (
        patient_scoped(read("encounters"), owners, "id")
        .join(person_ids, "patient")
        .join(provider_ids, "provider", "left")
        .join(care_site_ids, "organization", "left")
    )
    visits = _ids(encounters, "visit_occurrence_id", "person_id", "start", "id")
    visit_ids = visits.select(F.col("id").alias("encounter"), "visit_occurrence_id", "provider_id")

    maps = vocabulary.standard_maps()
    staged = {s.table: patient_scoped(read(s.table), owners, "row_key") for s in EVENT_SOURCES}
    events = reduce(lambda a, b: a.unionByName(b), [_events(s, staged[s.table]) for s in EVENT_SOURCES])
    units = vocabulary.units()
    routed_domain = (
        F.when(F.col("source_table") == ALLERGIES, F.col("default_domain"))
        .when(F.col("mapped_domain").isin(list(DOMAIN_TABLES)), F.col("mapped_domain"))
        .otherwise(F.col("default_domain"))
    )
    mapped = (
        events.join(maps, ["_vocabulary", "_code"], "left")
        .withColumn("source_concept_id", F.coalesce("source_concept_id", F.lit(UNKNOWN_CONCEPT)))
        .withColumn("domain", routed_domain)
        .withColumn(
            "value_as_concept_id",
            F.when(
                (F.col("source_table") == ALLERGIES) & (F.col("mapped_domain") != F.col("domain")),
                F.col("mapped_concept_id"),
            ).cast("int"),
        )
        .withColumn(
            "concept_id",
            F.when(F.col("mapped_domain") == F.col("domain"), F.col("mapped_concept_id")).otherwise(
                F.lit(UNKNOWN_CONCEPT)
            ),
        )
        .join(person_ids, "patient", "left")
        .join(visit_ids, "encounter", "left")
        .join(units, F.col("unit_source_value") == F.col("_unit"), "left")
        .withColumn(
            "unit_concept_id",
            F.when(F.col("unit_source_value").isNotNull(), F.coalesce("_unit_concept", F.lit(UNKNOWN_CONCEPT))),
        )
        .withColumn("start_date", F.to_date("start_datetime"))
        .withColumn("end_date", F.to_date("end_datetime"))
    )
    mapped.write.mode("overwrite").parquet(f"{scratch}/events")
    mapped = spark.read.schema(mapped.schema).parquet(f"{scratch}/events")  # no files when there are no events
    placed_events = mapped.where(F.col("person_id").isNotNull())

    def routed(domain: str) -> DataFrame:
        rows = placed_events.where(F.col("domain") == domain)
        if domain in DOMAIN_TYPE_CONCEPTS:
            rows = rows.withColumn("type_concept_id", F.lit(DOMAIN_TYPE_CONCEPTS[domain]))
        table = DOMAIN_TABLES[domain]
        return _ids(rows, f"{table}_id", "person_id", "start_datetime", "source_table", "row_key", "concept_id")

    tables = {
        "location": cdm_select(
            "location",
            locations,
            {
                "location_id": "location_id",
                "city": "city",
                "state": "state",
                "zip": "zip",
                "county": "county",
                "location_source_value": "location_source_value",
            },
        ),
        "care_site": cdm_select(
            "care_site",
            care_sites,
            {
                "care_site_id": "care_site_id",
                "care_site_name": "name",
                "location_id": "location_id",
                "care_site_source_value": "id",
            },
        ),
        "provider": cdm_select(
            "provider",
            provider_rows,
            {
                "provider_id": "provider_id",
                "provider_name": "name",
                "npi": "npi",
                "care_site_id": "care_site_id",
                "gender_concept_id": _lookup(F.col("gender"), GENDER_CONCEPTS),
                "provider_source_value": "id",
                "specialty_source_value": "speciality",
                "gender_source_value": "gender",
            },
        ),
        "person": cdm_select(
            "person",
            people,
            {
                "person_id": "person_id",
                "gender_concept_id": _lookup(F.col("gender"), GENDER_CONCEPTS),
                "year_of_birth": F.year("birthdate"),
                "month_of_birth": F.month("birthdate"),
                "day_of_birth": F.dayofmonth("birthdate"),
                "birth_datetime": F.col("birthdate").cast("timestamp"),
                "race_concept_id": _lookup(F.col("race"), RACE_CONCEPTS),
                "ethnicity_concept_id": _lookup(F.col("ethnicity"), ETHNICITY_CONCEPTS),
                "location_id": "location_id",
                "person_source_value": "id",
                "gender_source_value": "gender",
                "gender_source_concept_id": F.lit(UNKNOWN_CONCEPT),
                "race_source_value": "race",
                "race_source_concept_id": F.lit(UNKNOWN_CONCEPT),
                "ethnicity_source_value": "ethnicity",
                "ethnicity_source_concept_id": F.lit(UNKNOWN_CONCEPT),
            },
        ),
        "visit_occurrence": cdm_select(
            "visit_occurrence",
            visits,
            {
                "visit_occurrence_id": "visit_occurrence_id",
                "person_id": "person_id",
                "visit_concept_id": _lookup(F.col("encounterclass"), VISIT_CONCEPTS),
                "visit_start_date": F.to_date("start"),
                "visit_start_datetime": "start",
                "visit_end_date": F.to_date(F.coalesce("stop", "start")),
                "visit_end_datetime": F.coalesce("stop", "start"),
                "visit_type_concept_id": F.lit(EHR_ENCOUNTER_RECORD),
                "provider_id": "provider_id",
                "care_site_id": "care_site_id",
                "visit_source_value": "id",
                "visit_source_concept_id": F.lit(UNKNOWN_CONCEPT),
            },
        ),
    }
    common = {
        "person_id": "person_id",
        "provider_id": "provider_id",
        "visit_occurrence_id": "visit_occurrence_id",
    }
    end_date = F.coalesce("end_date", "start_date")
    conditions = routed("Condition")
    tables["condition_occurrence"] = cdm_select(
        "condition_occurrence",
        conditions,
        {
            **common,
            "condition_occurrence_id": "condition_occurrence_id",
            "condition_concept_id": "concept_id",
            "condition_start_date": "start_date",
            "condition_start_datetime": "start_datetime",
            "condition_end_date": "end_date",
            "condition_end_datetime": "end_datetime",
            "condition_type_concept_id": "type_concept_id",
            "condition_source_value": "_code",
            "condition_source_concept_id": "source_concept_id",
        },
    )
    drugs = routed("Drug")
    tables["drug_exposure"] = cdm_select(
        "drug_exposure",
        drugs,
        {
            **common,
            "drug_exposure_id": "drug_exposure_id",
            "drug_concept_id": "concept_id",
            "drug_exposure_start_date": "start_date",
            "drug_exposure_start_datetime": "start_datetime",
            "drug_exposure_end_date": end_date,
            "drug_exposure_end_datetime": F.coalesce("end_datetime", "start_datetime"),
            "verbatim_end_date": "end_date",
            "drug_type_concept_id": "type_concept_id",
            "quantity": "quantity",
            "days_supply": F.when(F.col("end_date").isNotNull(), F.datediff("end_date", "start_date") + 1),
            "drug_source_value": "_code",
            "drug_source_concept_id": "source_concept_id",
        },
    )
    procedures = routed("Procedure")
    tables["procedure_occurrence"] = cdm_select(
        "procedure_occurrence",
        procedures,
        {
            **common,
            "procedure_occurrence_id": "procedure_occurrence_id",
            "procedure_concept_id": "concept_id",
            "procedure_date": "start_date",
            "procedure_datetime": "start_datetime",
            "procedure_end_date": "end_date",
            "procedure_end_datetime": "end_datetime",
            "procedure_type_concept_id": "type_concept_id",
            "procedure_source_value": "_code",
            "procedure_source_concept_id": "source_concept_id",
        },
    )
    tables["measurement"] = cdm_select(
        "measurement",
        routed("Measurement"),
        {
            **common,
            "measurement_id": "measurement_id",
            "measurement_concept_id": "concept_id",
            "measurement_date": "start_date",
            "measurement_datetime": "start_datetime",
            "measurement_type_concept_id": "type_concept_id",
            "value_as_number": "value_as_number",
            "unit_concept_id": "unit_concept_id",
            "measurement_source_value": "_code",
            "measurement_source_concept_id": "source_concept_id",
            "unit_source_value": "unit_source_value",
            "value_source_value": "value_source_value",
        },
    )
    tables["observation"] = cdm_select(
        "observation",
        routed("Observation"),
        {
            **common,
            "observation_id": "observation_id",
            "observation_concept_id": "concept_id",
            "observation_date": "start_date",
            "observation_datetime": "start_datetime",
            "observation_type_concept_id": "type_concept_id",
            "value_as_number": "value_as_number",
            "value_as_string": F.when(F.col("value_as_number").isNull(), F.col("value_source_value")),
            "value_as_concept_id": "value_as_concept_id",
            "unit_concept_id": "unit_concept_id",
            "observation_source_value": "_code",
            "observation_source_concept_id": "source_concept_id",
            "unit_source_value": "unit_source_value",
            "value_source_value": "value_source_value",
        },
    )
    tables["device_exposure"] = cdm_select(
        "device_exposure",
        routed("Device"),
        {
            **common,
            "device_exposure_id": "device_exposure_id",
            "device_concept_id": "concept_id",
            "device_exposure_start_date": "start_date",
            "device_exposure_start_datetime": "start_datetime",
            "device_exposure_end_date": "end_date",
            "device_exposure_end_datetime": "end_datetime",
            "device_type_concept_id": "type_concept_id",
            "device_source_value": "_code",
            "device_source_concept_id": "source_concept_id",
        },
    )
    causes = (
        encounters.where(F.col("code") == DEATH_CERTIFICATION)
        .select("person_id", F.lit("SNOMED").alias("_vocabulary"), F.col("reasoncode").alias("_code"))
        .join(maps, ["_vocabulary", "_code"], "left")
        .groupBy("person_id")
        .agg(
            F.min("_code").alias("cause_source_value"),
            F.min("source_concept_id").alias("cause_source_concept_id"),
            F.min("mapped_concept_id").alias("cause_concept_id"),
        )
    )
    dead = people.where(F.col("deathdate").isNotNull()).join(causes, "person_id", "left")
    tables["death"] = cdm_select(
        "death",
        dead,
        {
            "person_id": "person_id",
            "death_date": "deathdate",
            "death_datetime": F.col("deathdate").cast("timestamp"),
            "death_type_concept_id": F.lit(EHR),
            "cause_concept_id": F.coalesce("cause_concept_id", F.lit(UNKNOWN_CONCEPT)),
            "cause_source_value": "cause_source_value",
            "cause_source_concept_id": F.coalesce("cause_source_concept_id", F.lit(UNKNOWN_CONCEPT)),
        },
    )
    spans = (
        visits.select(
            "person_id", F.to_date("start").alias("first"), F.to_date(F.coalesce("stop", "start")).alias("last")
        )
        .unionByName(
            placed_events.select("person_id", F.col("start_date").alias("first"), F.col("start_date").alias("last"))
        )
        .groupBy("person_id")
        .agg(F.min("first").alias("first"), F.max("last").alias("last"))
    )  # every record starts within it: Synthea's event dates are local, its visit times UTC (a day apart)
    tables["observation_period"] = cdm_select(
        "observation_period",
        _ids(spans, "observation_period_id", "person_id"),
        {
            "observation_period_id": "observation_period_id",
            "person_id": "person_id",
            "observation_period_start_date": "first",
            "observation_period_end_date": "last",
            "period_type_concept_id": F.lit(PAYER_ENROLLMENT_PERIOD),
        },
    )
    enrolments = patient_scoped(read("payer_transitions"), owners, "row_key").join(person_ids, "patient")
    tables["payer_plan_period"] = cdm_select(
        "payer_plan_period",
        _ids(enrolments, "payer_plan_period_id", "person_id", "start_date", "row_key"),
        {
            "payer_plan_period_id": "payer_plan_period_id",
            "person_id": "person_id",
            "payer_plan_period_start_date": F.to_date("start_date"),
            "payer_plan_period_end_date": F.to_date(F.coalesce("end_date", "start_date")),
            "payer_concept_id": F.lit(UNKNOWN_CONCEPT),
            "payer_source_value": "payer",
            "plan_source_value": "plan_ownership",
        },
    )
    tables["cost"] = _costs(visits)
    tables["condition_era"] = condition_eras(tables["condition_occurrence"])
    tables["drug_era"] = drug_eras(tables["drug_exposure"], vocabulary.ingredients())
    tables["cdm_source"] = cdm_select("cdm_source", spark.range(1), {k: F.lit(v) for k, v in cdm_source.items()})
    return OmopBuild(tables, mapped)


def _costs(visits: DataFrame) -> DataFrame:
    """A visit's cost: Synthea's encounter cost, its claim and what the payer covered, in US dollars."""
    rows = _ids(visits.where(F.col("total_claim_cost").isNotNull()), "cost_id", "visit_occurrence_id")
    return cdm_select(
        "cost",
        rows,
        {
            "cost_id": "cost_id",
            "cost_event_id": "visit_occurrence_id",
            "cost_domain_id": F.lit("Visit"),
            "cost_type_concept_id": F.lit(ADJUDICATED_CLAIM),
            "currency_concept_id": F.lit(US_DOLLAR),
            "total_charge": "total_claim_cost",
            "total_cost": "base_encounter_cost",
            "total_paid": "total_claim_cost",
            "paid_by_payer": "payer_coverage",
            "paid_by_patient": F.col("total_claim_cost") - F.coalesce("payer_coverage", F.lit(0)),
        },
    )


def _eras(exposures: DataFrame, concept: str, gap_days: int = ERA_GAP_DAYS) -> DataFrame:
    """Eras set-wise: a person's exposures of one concept, ordered by start, begin a new era when they start more
    than `gap_days` after every earlier one ended; returns (person_id, concept, era start, end, count, covered
    days)."""
    ordered = Window.partitionBy("person_id", concept).orderBy("start", "end")
    earlier = ordered.rowsBetween(Window.unboundedPreceding, -1)
    marked = exposures.withColumn("_reach", F.max(F.date_add("end", gap_days)).over(earlier)).withColumn(
        "_new", F.when(F.col("_reach").isNull() | (F.col("start") > F.col("_reach")), 1).otherwise(0)
    )
    grouped = marked.withColumn("_era", F.sum("_new").over(ordered.rowsBetween(Window.unboundedPreceding, 0)))
    return grouped.groupBy("person_id", concept, "_era").agg(
        F.min("start").alias("era_start"),
        F.max("end").alias("era_end"),
        F.count(F.lit(1)).alias("occurrences"),
        F.sum(F.datediff("end", "start")).alias("exposed_days"),
    )


def condition_eras(conditions: DataFrame) -> DataFrame:
    exposures = conditions.where(F.col("condition_concept_id") != UNKNOWN_CONCEPT).select(
        "person_id",
        "condition_concept_id",
        F.col("condition_start_date").alias("start"),
        F.coalesce("condition_end_date", F.date_add("condition_start_date", 1)).alias("end"),
    )
    eras = _ids(
        _eras(exposures, "condition_concept_id"), "condition_era_id", "person_id", "condition_concept_id", "era_start"
    )
    return cdm_select(
        "condition_era",
        eras,
        {
            "condition_era_id": "condition_era_id",
            "person_id": "person_id",
            "condition_concept_id": "condition_concept_id",
            "condition_era_start_date": "era_start",
            "condition_era_end_date": "era_end",
            "condition_occurrence_count": "occurrences",
        },
    )


def drug_eras(drugs: DataFrame, ingredients: DataFrame) -> DataFrame:
    exposures = drugs.join(ingredients, "drug_concept_id").select(
        "person_id",
        "ingredient_concept_id",
        F.col("drug_exposure_start_date").alias("start"),
        F.coalesce(
            F.when(
                F.col("drug_exposure_end_date") > F.col("drug_exposure_start_date"), F.col("drug_exposure_end_date")
            ),
            F.date_add("drug_exposure_start_date", 1),
        ).alias("end"),
    )
    eras = _ids(
        _eras(exposures, "ingredient_concept_id"), "drug_era_id", "person_id", "ingredient_concept_id", "era_start"
    )
    return cdm_select(
        "drug_era",
        eras,
        {
            "drug_era_id": "drug_era_id",
            "person_id": "person_id",
            "drug_concept_id": "ingredient_concept_id",
            "drug_era_start_date": "era_start",
            "drug_era_end_date": "era_end",
            "drug_exposure_count": "occurrences",
            "gap_days": F.greatest(F.datediff("era_end", "era_start") - F.col("exposed_days"), F.lit(0)),
        },
    )


def mapping_report(mapped: DataFrame, top: int = 10) -> list[dict]:
    """Per CDM table, source table and vocabulary: source rows, rows mapped to a standard concept, rows at
    concept 0, rows without a person (their patient is in no upload, so not written), rows written (a code that
    maps to two standard concepts writes two) and the most frequent unmapped codes."""
    rows = (
        mapped.groupBy("domain", "source_table", "_vocabulary")
        .agg(
            F.countDistinct("row_key").alias("rows"),
            F.countDistinct(F.when(F.col("concept_id") != UNKNOWN_CONCEPT, F.col("row_key"))).alias("mapped"),
            F.sum(F.when(F.col("concept_id") == UNKNOWN_CONCEPT, 1).otherwise(0)).alias("concept_0"),
            F.countDistinct(F.when(F.col("person_id").isNull(), F.col("row_key"))).alias("without_person"),
            F.sum(F.when(F.col("person_id").isNotNull(), 1).otherwise(0)).alias("written"),
        )
        .collect()
    )
    unmapped = (
        mapped.where(F.col("concept_id") == UNKNOWN_CONCEPT)
        .groupBy("domain", "source_table", "_vocabulary", "_code")
        .agg(F.count(F.lit(1)).alias("n"), F.first("source_description").alias("description"))
        .collect()
    )
    report = []
    group = ("domain", "source_table", "_vocabulary")
    for row in sorted(rows, key=lambda r: tuple(r[g] for g in group)):
        codes = sorted(
            (u for u in unmapped if all(u[g] == row[g] for g in group)),
            key=lambda u: (-u["n"], u["_code"]),
        )
        report.append(
            {
                "domain_table": DOMAIN_TABLES[row["domain"]],
                "source_table": row["source_table"],
                "vocabulary": row["_vocabulary"],
                "rows": row["rows"],
                "mapped": row["mapped"],
                "concept_0": row["concept_0"],
                "without_person": row["without_person"],
                "written": row["written"],
                "top_unmapped": [
                    {"code": u["_code"], "description": u["description"], "rows": u["n"]} for u in codes[:top]
                ],
            }
        )
    return report


BUILD_VOCABULARY = "build_vocabulary"
"""Which vocabulary load each build maps with (build_id, vocabulary_load): readers see the vocabulary rows of the
committed build's load, so a new download switches with the build that first uses it."""
BUILD_VOCABULARY_COLUMNS = f"{LOAD_COLUMN} string, vocabulary_source string, build_id string"
VOCABULARY_LOADS = "vocabulary_loads"
VOCABULARY_LOADS_COLUMNS = f"{LOAD_COLUMN} string, vocabulary_source string, logged_at timestamp, counts string"
"""The log of complete vocabulary loads: a load's rows are used only once its record is there."""
PARALLEL_WRITES = 4


def write_omop(spark: SparkSession, lake: IcebergTables, tables: dict[str, DataFrame], build_id: str) -> dict[str, str]:
    """Append every table under the build (two at a time), each sorted by its key; returns their identifiers."""

    def write(item: tuple[str, DataFrame]) -> tuple[str, str]:
        name, frame = item
        spec = cdm_table(name)
        identifier = lake.ensure(spark, OMOP_LAYER, name, f"{spec.columns}, build_id string", BUILD_PARTITIONING)
        ordered = frame.orderBy(spec.primary_key) if spec.primary_key else frame
        lake.append(ordered.withColumn("build_id", F.lit(build_id)), identifier)
        return name, identifier

    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
        return dict(pool.map(write, tables.items()))


def record_vocabulary(spark: SparkSession, lake: IcebergTables, files: VocabularyFiles, build_id: str) -> None:
    identifier = lake.ensure(spark, OMOP_LAYER, BUILD_VOCABULARY, BUILD_VOCABULARY_COLUMNS, BUILD_PARTITIONING)
    row = spark.createDataFrame([(files.load_id, files.location, build_id)], BUILD_VOCABULARY_COLUMNS)
    lake.append(row, identifier)


def committed_vocabulary_load(spark: SparkSession, lake: IcebergTables, commits: CommitLog) -> str | None:
    """The vocabulary load the committed build maps with, None before the first build."""
    current = commits.builds(OMOP_LAYER).current().get(OMOP_LAYER)
    used = lake.open(spark, OMOP_LAYER, BUILD_VOCABULARY)
    if current is None or used is None:
        return None
    rows = spark.table(used).where(F.col("build_id") == current.load_id).select(LOAD_COLUMN).collect()
    return rows[0][LOAD_COLUMN] if rows else None


def loaded_vocabulary(spark: SparkSession, lake: IcebergTables, load_id: str) -> dict | None:
    """The counts of a complete load of the vocabulary, None when it was never completed."""
    identifier = lake.ensure(spark, OMOP_LAYER, VOCABULARY_LOADS, VOCABULARY_LOADS_COLUMNS)
    rows = spark.table(identifier).where(F.col(LOAD_COLUMN) == load_id).limit(1).collect()
    return json.loads(rows[0]["counts"]) if rows else None


def ensure_vocabulary(spark: SparkSession, lake: IcebergTables, files: VocabularyFiles) -> tuple[dict, bool]:
    """The download's vocabulary in the lake: loaded now (rows of an interrupted earlier attempt deleted first) or
    found complete from an earlier build; returns its counts and whether it was loaded now. Builds of a local lake
    load one at a time (a lock), so two never write or delete the same load together."""
    with lake.commit_lock(f"{OMOP_LAYER}.vocabulary_load"):
        return _ensure_vocabulary(spark, lake, files)


def _ensure_vocabulary(spark: SparkSession, lake: IcebergTables, files: VocabularyFiles) -> tuple[dict, bool]:
    counts = loaded_vocabulary(spark, lake, files.load_id)
    if counts is not None:
        return counts, False
    discard_vocabulary(spark, lake, files.load_id)
    counts = load_vocabulary(spark, lake, files)
    record = spark.createDataFrame(
        [(files.load_id, files.location, now(), json.dumps(counts))], VOCABULARY_LOADS_COLUMNS
    )
    lake.append(record, lake.ensure(spark, OMOP_LAYER, VOCABULARY_LOADS, VOCABULARY_LOADS_COLUMNS))
    return counts, True


def discard_vocabulary(spark: SparkSession, lake: IcebergTables, load_id: str) -> None:
    lake.delete_everywhere(spark, OMOP_LAYER, (*VOCABULARY_TABLES, VOCABULARY_LOADS), LOAD_COLUMN, load_id)


def discard_omop_build(spark: SparkSession, lake: IcebergTables, build_id: str) -> None:
    """Delete one build's rows from every OMOP table."""
    lake.delete_everywhere(spark, OMOP_LAYER, (*CLINICAL_TABLES, BUILD_VOCABULARY), "build_id", build_id)


def discard_stale_omop_builds(
    spark: SparkSession, lake: IcebergTables, commits: CommitLog, abandoned_before: dt.datetime
) -> list[str]:
    """Delete the builds that are neither the committed one nor the one before it, or were begun before
    `abandoned_before` and never committed, and the vocabulary loads neither of those two maps with that were
    completed before `abandoned_before` (a later one may belong to a build still running)."""
    builds = commits.builds(OMOP_LAYER)
    stale = [build for _, build in builds.stale(abandoned_before, OMOP_LAYER)]
    for build in stale:
        discard_omop_build(spark, lake, build)
        commits.record_build(build, "discarded", False, OMOP_LAYER)
    current = builds.current().get(OMOP_LAYER)
    shown = [b for b in (current and current.load_id, builds.previous(OMOP_LAYER)) if b]
    used = lake.open(spark, OMOP_LAYER, BUILD_VOCABULARY)
    loads = lake.open(spark, OMOP_LAYER, VOCABULARY_LOADS)
    if used and loads and shown:
        kept = {r[LOAD_COLUMN] for r in spark.table(used).where(F.col("build_id").isin(shown)).collect()}
        settled = spark.table(loads).where(F.col("logged_at") < F.lit(abandoned_before))
        for row in settled.select(LOAD_COLUMN).distinct().collect():
            if row[LOAD_COLUMN] not in kept:
                discard_vocabulary(spark, lake, row[LOAD_COLUMN])
    return stale


def vocabulary_for(spark: SparkSession, lake: IcebergTables, load_id: str) -> Vocabulary:
    return Vocabulary(
        *[vocabulary_rows(spark, lake, t, load_id) for t in VOCABULARY_MAPPING_TABLES],
        vocabulary_rows(spark, lake, "vocabulary", load_id),
    )


def cdm_source_row(vocabulary: Vocabulary, uploads: UploadLog, files: VocabularyFiles) -> dict:
    """The build's CDM_SOURCE row: what the data is, when its latest upload was committed, the vocabulary's
    release (Athena's `None` vocabulary row holds it)."""
    release = vocabulary.vocabulary.where("vocabulary_id = 'None'").select("vocabulary_version").limit(1).collect()
    committed = [record.logged_at for record in uploads.current().values()]
    return {
        "cdm_source_name": "Synthea synthetic patients (synthea-pipeline)",
        "cdm_source_abbreviation": "Synthea",
        "cdm_holder": "synthea-pipeline",
        "source_description": f"Synthea CSV exports of {len(committed)} uploads, latest upload of a patient wins",
        "source_documentation_reference": "https://github.com/synthetichealth/synthea/wiki/CSV-File-Data-Dictionary",
        "cdm_etl_reference": "synthea_pipeline/transforms/omop.py (ETL-Synthea / dbt-synthea conventions)",
        "source_release_date": max(committed).date() if committed else None,
        "cdm_release_date": now().date(),
        "cdm_version": f"v{CDM_VERSION}",
        "cdm_version_concept_id": CDM_VERSION_CONCEPT,
        "vocabulary_version": release[0]["vocabulary_version"] if release else files.load_id,
    }


def build_rows(spark: SparkSession, identifier: str, build_id: str) -> DataFrame:
    return spark.table(identifier).where(F.col("build_id") == build_id).drop("build_id")


def omop_checks(spark: SparkSession, written: dict[str, str], build_id: str, vocabulary: Vocabulary) -> list[DqdResult]:
    """Every DQD field check of every written table, over the build's rows (two tables at a time)."""
    rows = {name: build_rows(spark, identifier, build_id) for name, identifier in written.items()}
    persons = (
        rows["person"]
        .select("person_id", F.to_date("birth_datetime").alias("_birth"))
        .join(rows["death"].select("person_id", F.col("death_date").alias("_death")), "person_id", "left")
    )
    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
        per_table = list(pool.map(lambda item: field_checks(item[0], item[1], persons), rows.items()))
    results = [result for table_results in per_table for result in table_results]
    genders = rows["person"].select("person_id", F.col("gender_concept_id").alias("_gender"))
    return results + reference_checks(rows, table_rows(results), vocabulary.concept) + concept_checks(rows, genders)


OMOP_PRIMARY_KEY = Check(
    "primary_key",
    "DQD isPrimaryKey: the key is unique (blocking: the build is not committed otherwise).",
    OMOP_LAYER,
    tuple(t for t in CLINICAL_TABLES if cdm_table(t).primary_key),
    blocking=True,
)
OMOP_FOREIGN_KEYS = Check(
    "foreign_keys",
    "DQD isForeignKey between the build's own tables (person, visit, provider, care site, location): every "
    "reference resolves (blocking).",
    OMOP_LAYER,
    tuple(t for t in CLINICAL_TABLES if any(f.foreign_table in CLINICAL_TABLES for f in cdm_table(t).fields)),
    blocking=True,
)
OMOP_DQD = Check(
    "dqd",
    "OHDSI Data Quality Dashboard field checks with DQD's thresholds (required fields, concept and source value "
    "completeness, concepts in the vocabulary, plausible values and dates): warns when one fails.",
    OMOP_LAYER,
    CLINICAL_TABLES,
)
OMOP_CHECKS = (OMOP_PRIMARY_KEY, OMOP_FOREIGN_KEYS, OMOP_DQD)
