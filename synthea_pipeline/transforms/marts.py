"""Marts: a star schema over every upload's staging tables (plain PySpark).

Latest upload wins, deterministically: uploads are ranked in the order they were registered. A patient belongs
to the latest upload that contains them, and every patient-scoped row (encounters, conditions, ...) comes from that
upload only, so a corrected re-upload replaces a patient's history instead of adding to it. Providers,
organizations and payers recur in every Synthea run: the latest upload's row of each id wins.

Unknown members (the Kimball convention): every mart that other marts reference has one row with the key
`unknown` (UNKNOWN_KEY) standing for "referenced but absent from the lake". A foreign key whose row is absent,
e.g. a condition whose encounter is not in a partial export, points to it instead of being dropped or left
dangling, so every foreign key resolves and rows are never lost; the `references_known` warning counts such
rows per upload. Patient-scoped rows whose patient is in no upload's patients.csv are kept once, attributed to
the unknown patient. A null reference (an encounter without a payer) stays null.

Dates and timestamps: Synthea writes dates (birth, conditions) in the generating machine's local time zone and
timestamps (encounters, procedures, medications) in UTC. Marts keep both as written; `*_date` columns derived from a
timestamp are its UTC date, so a condition's `start_date` can be a day off its encounter's `start_date`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from synthea_pipeline.tables import TABLES, UNKNOWN_MEMBER_KEY
from synthea_pipeline.transforms.checks import Check
from synthea_pipeline.transforms.iceberg import (
    BUILD_PARTITIONING,
    LOAD_PARTITIONING,
    MARTS_LAYER,
    MARTS_SUBJECT,
    STAGING_LAYER,
    CommitLog,
    IcebergTables,
    UploadLog,
)
from synthea_pipeline.transforms.staging import staging_schema

PATIENT_IDENTIFIERS = {
    "ssn": "ssn",
    "drivers": "drivers",
    "passport": "passport",
    "prefix": "prefix",
    "first_name": "first",
    "middle_name": "middle",
    "last_name": "last",
    "suffix": "suffix",
    "maiden_name": "maiden",
    "address": "address",
}
"""Direct identifiers of patient_fact (mart column: staging column), left out unless asked for."""
IDENTIFIER_COLUMNS = tuple(PATIENT_IDENTIFIERS)
MART_IDENTIFIERS = {
    "patient_fact": IDENTIFIER_COLUMNS,
    "provider_dim": ("provider_name", "address"),
    "organization_dim": ("address",),
}
"""Columns of each mart that are direct identifiers: null, and hidden by the catalog views, unless asked for."""

PARALLEL_WRITES = 2
UNKNOWN_KEY = UNKNOWN_MEMBER_KEY
UNKNOWN_NAME = "Unknown"

AGE_BANDS = ((18, "0-17"), (35, "18-34"), (50, "35-49"), (65, "50-64"), (80, "65-79"))
"""(first age not in the band, band); older is "80+"."""
AGE_BAND = (
    "CASE WHEN age IS NULL THEN NULL "
    + " ".join(f"WHEN age < {limit} THEN '{band}'" for limit, band in AGE_BANDS)
    + " ELSE '80+' END"
)
"""patient_fact's age_band, in Spark SQL over its age."""


@dataclass(frozen=True)
class MartColumn:
    """One column of a mart as its table holds it; `type` is the Spark SQL simple type string (`simpleString`).
    `expression` computes it, in Spark SQL over the mart's source frame (a string, so it is declared at import time
    and runs on every engine); by default the source column of the same name."""

    name: str
    type: str
    description: str
    expression: str | None = None

    def of(self, expression: str) -> MartColumn:
        """The same column computed from another expression (a shared key, taken from a mart's own id)."""
        return replace(self, expression=expression)

    def value(self, hidden: bool) -> Column:
        """The column computed and cast to its type; null when `hidden` (an identifier the build leaves out)."""
        computed = F.lit(None) if hidden else F.expr(self.expression or f"`{self.name}`")
        return computed.cast(self.type).alias(self.name)


@dataclass(frozen=True)
class Mart:
    """One mart. `columns` is its schema, declared so it is known before the first build and verified against
    every written build; `reads` are the staging tables its rows and its checks depend on, including through the
    marts it is computed from."""

    name: str
    key: str
    grain: str
    reads: tuple[str, ...]
    columns: tuple[MartColumn, ...]

    def __post_init__(self):
        if self.key not in self.column_names:
            raise ValueError(f"{self.name}: key column {self.key} is not declared")
        if unknown := set(self.reads) - set(TABLES):
            raise ValueError(f"{self.name}: reads unknown staging tables {sorted(unknown)}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def select(self, source: DataFrame, include_identifiers: bool = False) -> DataFrame:
        """The mart's declared columns, in order and cast to their types, from its source frame; identifiers null
        unless included. `is_unknown` is taken from a source that has its unknown member already (patient_fact),
        else added with the member (`with_unknown_member`)."""
        hidden = () if include_identifiers else MART_IDENTIFIERS.get(self.name, ())
        return source.select(
            *[
                c.value(c.name in hidden)
                for c in self.columns
                if c.name != IS_UNKNOWN.name or IS_UNKNOWN.name in source.columns
            ]
        )


def _inputs(*tables: str) -> tuple[str, ...]:
    """Staging tables in the contract's order, each once; a name the contract lacks is kept (last), so `Mart`
    rejects it."""
    order = {name: position for position, name in enumerate(TABLES)}
    return tuple(sorted(set(tables), key=lambda name: (order.get(name, len(order)), name)))


_ENCOUNTER_INPUTS = ("encounters", "patients", "providers", "organizations", "payers")
"""An encounter comes from the upload owning its patient; its provider, organization and payer resolve or point to
the unknown member."""
_CONDITION_INPUTS = ("conditions", "patients", "encounters")
_PROCEDURE_INPUTS = ("procedures", "patients", "encounters")
_MEDICATION_INPUTS = ("medications", "patients", "encounters", "payers")
_FACT_INPUTS = (
    "patients",
    "immunizations",
    *_ENCOUNTER_INPUTS,
    *_CONDITION_INPUTS,
    *_PROCEDURE_INPUTS,
    *_MEDICATION_INPUTS,
)
"""patient_fact aggregates the written encounter, condition, medication and procedure dimensions."""

M = MartColumn
UNKNOWN_MEMBER_NOTE = "`unknown`: the unknown member (referenced, absent from the lake)."


def _identifier(name: str, description: str, expression: str | None = None) -> MartColumn:
    """A direct identifier: always a column, so the table keeps one schema, null unless asked for."""
    return M(name, "string", f"{description} Null unless the build includes identifiers.", expression)


def _patient_count(column: str, type: str, description: str) -> MartColumn:
    """A per-patient count, zero for a patient without such rows."""
    return M(column, type, description, f"coalesce(`{column}`, 0)")


def _patient_total(column: str, description: str) -> MartColumn:
    """A per-patient sum of money (decimal(28,2) from Spark's sum), zero for a patient without such rows."""
    return M(column, MONEY, description, f"coalesce(`{column}`, CAST(0 AS DECIMAL(28,2)))")


# Shared keys are computed from the foreign-key column of the source; the mart they identify takes its own `id`.
PATIENT_KEY = M("patient_key", "string", f"Patient id (Synthea patients.Id); {UNKNOWN_MEMBER_NOTE}", "patient")
ENCOUNTER_KEY = M(
    "encounter_key", "string", f"Encounter id (Synthea encounters.Id); {UNKNOWN_MEMBER_NOTE}", "encounter"
)
PROVIDER_KEY = M("provider_key", "string", f"Provider id; {UNKNOWN_MEMBER_NOTE}", "provider")
ORGANIZATION_KEY = M("organization_key", "string", f"Organization id; {UNKNOWN_MEMBER_NOTE}", "organization")
PAYER_KEY = M("payer_key", "string", f"Payer id; {UNKNOWN_MEMBER_NOTE}", "payer")
LOCATION_KEY = M(
    "location_key", "string", f"MD5 of city|county|state|zip|fips; joins location_dim; {UNKNOWN_MEMBER_NOTE}"
)
UPLOAD_ID = M(
    "upload_id", "string", "The upload this row was taken from (the latest that contains it); null on unknown members."
)
START_TS = M("start_ts", "timestamp", "Start (UTC timestamp).", "start")
STOP_TS = M("stop_ts", "timestamp", "End (UTC timestamp).", "stop")
START_DATE = M("start_date", "date", "Start date (UTC date of start_ts).", "to_date(start)")
CODE_SYSTEM = M("code_system", "string", "Code system (SNOMED-CT, RxNorm, ...), when the release writes it.", "system")
REASON = (
    M("reason_code", "string", "Code of the condition that caused this event.", "reasoncode"),
    M("reason_description", "string", "Display text of the reason code.", "reasondescription"),
)
IS_UNKNOWN = M(
    "is_unknown",
    "boolean",
    "True on the unknown member, the row that stands for references absent "
    "from the lake (its key and foreign keys are `unknown`); count real members with `NOT is_unknown`.",
)
MONEY = "decimal(18,2)"
LATITUDE = M("lat", "double", "Latitude (decimal degrees).")
LONGITUDE = M("lon", "double", "Longitude (decimal degrees).")

MARTS = {
    m.name: m
    for m in (
        Mart(
            "patient_fact",
            "patient_key",
            "one row per patient",
            _inputs(*_FACT_INPUTS),
            (
                PATIENT_KEY.of("id"),
                *(
                    _identifier(column, TABLES["patients"].column_index[staged].description, staged)
                    for column, staged in PATIENT_IDENTIFIERS.items()
                ),
                M("birth_date", "date", "Date of birth (local date, as Synthea writes it).", "birthdate"),
                M("death_date", "date", "Date of death, null while alive.", "deathdate"),
                M("is_deceased", "boolean", "True when a death date is recorded.", "deathdate IS NOT NULL"),
                M(
                    "age",
                    "int",
                    "Whole years at death, else at the latest encounter date of the patient's upload (its export's"
                    " 'today').",
                ),
                M("age_band", "string", "0-17, 18-34, 35-49, 50-64, 65-79 or 80+.", AGE_BAND),
                M("gender", "string", "M or F."),
                M("race", "string", "Race, lower case: white, black, asian, native, hawaiian or other."),
                M("ethnicity", "string", "hispanic or nonhispanic."),
                M("marital_status", "string", "M, S, D, W or null.", "marital"),
                LOCATION_KEY,
                M("income", "int", "Annual household income (Synthea 3.1+)."),
                M("healthcare_expenses", MONEY, "Lifetime cost of care paid by the patient."),
                M("healthcare_coverage", MONEY, "Lifetime cost of care paid by payers."),
                _patient_count("encounter_count", "bigint", "Number of encounters."),
                _patient_count("condition_count", "bigint", "Number of condition occurrences."),
                _patient_count("active_condition_count", "int", "Conditions without a stop date."),
                _patient_count("medication_count", "bigint", "Number of medication orders."),
                _patient_count("procedure_count", "bigint", "Number of procedures."),
                _patient_count("immunization_count", "bigint", "Number of immunizations."),
                _patient_total("total_claim_cost", "Sum of claim costs."),
                _patient_total("total_payer_coverage", "Sum of what payers covered."),
                M("first_encounter_date", "date", "UTC date of the first encounter."),
                M("last_encounter_date", "date", "UTC date of the latest encounter."),
                UPLOAD_ID,
                IS_UNKNOWN,
            ),
        ),
        # observations: read by the observations_without_encounter check
        Mart(
            "encounter_dim",
            "encounter_key",
            "one row per encounter",
            _inputs(*_ENCOUNTER_INPUTS, "observations"),
            (
                ENCOUNTER_KEY.of("id"),
                PATIENT_KEY,
                PROVIDER_KEY,
                ORGANIZATION_KEY,
                PAYER_KEY,
                M(
                    "encounter_class",
                    "string",
                    "ambulatory, wellness, outpatient, emergency, inpatient, urgentcare, ...",
                    "encounterclass",
                ),
                M("encounter_code", "string", "SNOMED-CT code of the encounter type.", "code"),
                M("encounter_description", "string", "Display text of the encounter code.", "description"),
                START_TS,
                STOP_TS,
                START_DATE,
                M(
                    "duration_minutes",
                    "int",
                    "stop_ts - start_ts in minutes.",
                    "(unix_timestamp(stop) - unix_timestamp(start)) / 60",
                ),
                M("base_encounter_cost", MONEY, "Cost of the encounter itself, without its line items."),
                M("total_claim_cost", MONEY, "Total cost of the encounter's claim, line items included."),
                M("payer_coverage", MONEY, "Part of the claim cost the payer covered."),
                *REASON,
                UPLOAD_ID,
                IS_UNKNOWN,
            ),
        ),
        Mart(
            "condition_dim",
            "condition_key",
            "one row per diagnosed condition occurrence",
            _inputs(*_CONDITION_INPUTS),
            (
                M("condition_key", "string", "Content hash of the staged condition row (row_key).", "row_key"),
                PATIENT_KEY,
                ENCOUNTER_KEY,
                CODE_SYSTEM,
                M("condition_code", "string", "Code of the condition (SNOMED-CT).", "code"),
                M("condition_description", "string", "Display text of the condition code.", "description"),
                M("icd10_code", "string", "ICD-10 code of the condition, when the Synthea build writes one."),
                M("start_date", "date", "Onset date (local date, as Synthea writes it).", "start"),
                M("stop_date", "date", "End date (local date), null while active.", "stop"),
                M("is_active", "boolean", "True when the condition has no stop date.", "stop IS NULL"),
                UPLOAD_ID,
            ),
        ),
        Mart(
            "procedure_dim",
            "procedure_key",
            "one row per procedure occurrence",
            _inputs(*_PROCEDURE_INPUTS),
            (
                M("procedure_key", "string", "Content hash of the staged procedure row (row_key).", "row_key"),
                PATIENT_KEY,
                ENCOUNTER_KEY,
                CODE_SYSTEM,
                M("procedure_code", "string", "Code of the procedure (mostly SNOMED-CT).", "code"),
                M("procedure_description", "string", "Display text of the procedure code.", "description"),
                START_TS,
                STOP_TS,
                START_DATE,
                M("base_cost", MONEY, "Cost before coverage."),
                *REASON,
                UPLOAD_ID,
            ),
        ),
        Mart(
            "medication_dim",
            "medication_key",
            "one row per medication order",
            _inputs(*_MEDICATION_INPUTS),
            (
                M("medication_key", "string", "Content hash of the staged medication row (row_key).", "row_key"),
                PATIENT_KEY,
                ENCOUNTER_KEY,
                PAYER_KEY,
                M("medication_code", "string", "RxNorm code of the medication.", "code"),
                M("medication_description", "string", "Display text of the medication code.", "description"),
                START_TS,
                STOP_TS,
                START_DATE,
                M("dispenses", "int", "Number of times dispensed."),
                M("base_cost", MONEY, "Cost of one dispense before coverage."),
                M("payer_coverage", MONEY, "Part of the cost the payer covered."),
                M("total_cost", MONEY, "Total cost of all dispenses.", "totalcost"),
                *REASON,
                UPLOAD_ID,
            ),
        ),
        Mart(
            "provider_dim",
            "provider_key",
            "one row per provider",
            _inputs("providers", "organizations"),
            (
                PROVIDER_KEY.of("id"),
                ORGANIZATION_KEY,
                _identifier("provider_name", "Name of the clinician (direct identifier).", "name"),
                _identifier("address", "Street address of the provider (direct identifier)."),
                M("gender", "string", "M or F."),
                M("specialty", "string", "Specialty, e.g. GENERAL PRACTICE (Synthea's SPECIALITY).", "speciality"),
                LOCATION_KEY,
                LATITUDE,
                LONGITUDE,
                M("utilization", "int", "Number of encounters performed (Synthea up to 3.1; null later)."),
                M(
                    "encounter_count",
                    "int",
                    "Number of encounters performed (Synthea 3.2+; null before).",
                    "encounters",
                ),
                M(
                    "procedure_count",
                    "int",
                    "Number of procedures performed (Synthea 3.2+; null before).",
                    "procedures",
                ),
                UPLOAD_ID,
                IS_UNKNOWN,
            ),
        ),
        Mart(
            "organization_dim",
            "organization_key",
            "one row per organization",
            _inputs("organizations"),
            (
                ORGANIZATION_KEY.of("id"),
                M("organization_name", "string", "Name of the organization; `Unknown` on the unknown member.", "name"),
                _identifier("address", "Street address of the organization (direct identifier)."),
                LOCATION_KEY,
                LATITUDE,
                LONGITUDE,
                M("phone", "string", "Phone number as written."),
                M("revenue", MONEY, "Revenue of the organization over the whole simulation."),
                M("utilization", "int", "Number of encounters the organization performed."),
                UPLOAD_ID,
                IS_UNKNOWN,
            ),
        ),
        Mart(
            "payer_dim",
            "payer_key",
            "one row per payer",
            _inputs("payers"),
            (
                PAYER_KEY.of("id"),
                M(
                    "payer_name",
                    "string",
                    "Name of the payer (NO_INSURANCE for none); `Unknown` on the unknown member.",
                    "name",
                ),
                M("ownership", "string", "GOVERNMENT, PRIVATE or NO_INSURANCE (Synthea 3.2+)."),
                M("amount_covered", MONEY, "Amount the payer paid to organizations."),
                M("amount_uncovered", MONEY, "Amount the payer did not cover, paid by patients."),
                M("revenue", MONEY, "Revenue of the payer over the whole simulation."),
                M("unique_customers", "int", "Number of distinct patients enrolled with the payer."),
                M("member_months", "int", "Total months patients were enrolled with the payer."),
                UPLOAD_ID,
                IS_UNKNOWN,
            ),
        ),
        Mart(
            "location_dim",
            "location_key",
            "one row per distinct place (city, county, state, zip, FIPS)",
            _inputs("patients", "providers", "organizations"),
            (
                LOCATION_KEY,
                M("city", "string", "City."),
                M("county", "string", "County; null for the places of providers and organizations."),
                M("state", "string", "State."),
                M("zip", "string", "ZIP code as text."),
                M("fips", "string", "County FIPS code; null for the places of providers and organizations."),
                IS_UNKNOWN,
            ),
        ),
        # date_dim spans the dates of patient_fact and of the dimensions patient_fact aggregates
        Mart(
            "date_dim",
            "date_key",
            "one row per calendar day from the earliest to the latest date used",
            _inputs(*_FACT_INPUTS),
            (
                M("date_key", "date", "Calendar date."),
                M("year", "int", "Calendar year.", "year(date_key)"),
                M("quarter", "int", "Quarter of the year, 1-4.", "quarter(date_key)"),
                M("month", "int", "Month of the year, 1-12.", "month(date_key)"),
                M("month_name", "string", "English month name, January to December.", "date_format(date_key, 'MMMM')"),
                M("year_month", "string", "Year and month as yyyy-MM.", "date_format(date_key, 'yyyy-MM')"),
                M("day_of_month", "int", "Day of the month, 1-31.", "dayofmonth(date_key)"),
                M("day_of_week", "int", "Day of the week, 1 (Sunday) to 7 (Saturday).", "dayofweek(date_key)"),
                M("day_name", "string", "English day name, Monday to Sunday.", "date_format(date_key, 'EEEE')"),
                M("is_weekend", "boolean", "True on Saturday and Sunday.", "dayofweek(date_key) IN (1, 7)"),
            ),
        ),
    )
}


RECONCILED_MARTS = {
    "patient_fact": "patients",
    "encounter_dim": "encounters",
    "provider_dim": "providers",
    "organization_dim": "organizations",
    "payer_dim": "payers",
}
"""Marts whose rows are the distinct current ids of a staging table plus the unknown member (`rows_reconcile`);
encounters count only those of the patients in `patient_fact`."""
FOREIGN_KEYS = {
    "patient_fact": {"location_key": "location_dim"},
    "encounter_dim": {
        "patient_key": "patient_fact",
        "provider_key": "provider_dim",
        "organization_key": "organization_dim",
        "payer_key": "payer_dim",
    },
    "condition_dim": {"patient_key": "patient_fact", "encounter_key": "encounter_dim"},
    "procedure_dim": {"patient_key": "patient_fact", "encounter_key": "encounter_dim"},
    "medication_dim": {"patient_key": "patient_fact", "encounter_key": "encounter_dim", "payer_key": "payer_dim"},
    "provider_dim": {"organization_key": "organization_dim", "location_key": "location_dim"},
    "organization_dim": {"location_key": "location_dim"},
}
"""Every foreign key of the star and the mart it must resolve in."""


def current_loads(spark: SparkSession, uploads: UploadLog) -> DataFrame:
    """The committed load of every upload in the lake with its rank (higher is later), as the uploads log says
    at the moment of the call: a build reads exactly these, whatever commits meanwhile."""
    current = uploads.current()
    rows = [(upload, current[upload].load_id, rank) for rank, upload in enumerate(uploads.order())]
    return spark.createDataFrame(rows, "upload_id string, load_id string, upload_rank int")


def read_staging(
    spark: SparkSession, lake: IcebergTables, table: str, loads: DataFrame, uploads: list[str] | None = None
) -> DataFrame:
    """The committed rows of one staging table, with their upload's rank; only those of `uploads` when given (a
    filter on the partition column, so the other uploads' files are not read)."""
    identifier = lake.ensure(spark, STAGING_LAYER, table, staging_schema(TABLES[table]), LOAD_PARTITIONING)
    rows = spark.table(identifier)
    if uploads is not None:
        rows = rows.where(F.col("upload_id").isin(uploads))
    return rows.join(F.broadcast(loads), ["upload_id", "load_id"]).drop("load_id")


PATIENT_SCOPED = ("encounters", "conditions", "procedures", "medications", "immunizations", "observations")
"""The staging tables whose rows come from the upload owning their patient."""


def owners_of(spark: SparkSession, lake: IcebergTables, loads: DataFrame, plan: BuildPlan) -> DataFrame:
    """(patient, upload_id): the upload each patient of the rewritten uploads belongs to (the latest that holds
    them), and, with a null upload, the kept uploads' patients that rewritten rows name, so such a row is neither
    owned nor an orphan. The plan rewrites every upload that shares a patient with a kept one, so the kept uploads'
    patients need no window, and only those the rewritten rows name are looked up, once."""
    rewritten = latest_per_key(read_staging(spark, lake, "patients", loads, plan.rewritten), "id")
    owners = rewritten.select(F.col("id").alias("patient"), "upload_id")
    if not plan.kept:
        return owners
    named = reduce(
        lambda a, b: a.unionByName(b),
        [read_staging(spark, lake, t, loads, plan.rewritten).select("patient") for t in PATIENT_SCOPED],
    )
    kept = read_staging(spark, lake, "patients", loads, plan.kept).select(F.col("id").alias("patient"))
    taken = [(row["patient"], None) for row in named.distinct().join(kept, "patient", "left_semi").collect()]
    return owners.unionByName(spark.createDataFrame(taken, "patient string, upload_id string"))


def patient_scoped(frame: DataFrame, owners: DataFrame, key: str) -> DataFrame:
    """The current rows of a patient-scoped table: those from the upload owning their patient (`owners`:
    patient, upload_id), plus, once per `key` (latest upload wins), those whose patient is in no upload, with
    the unknown patient. A content-hash `key` (row_key) covers the patient, so owned rows are unique already; an
    id such as an encounter's can be given to patients of two uploads (edited exports): latest upload wins."""
    owned = frame.join(owners, ["patient", "upload_id"], "left_semi")
    orphans = latest_per_key(frame.join(owners.select("patient"), "patient", "left_anti"), key)
    current = owned.unionByName(orphans.withColumn("patient", F.lit(UNKNOWN_KEY)))
    return current if key == "row_key" else latest_per_key(current, key)


def latest_per_key(frame: DataFrame, key: str) -> DataFrame:
    window = Window.partitionBy(key).orderBy(F.col("upload_rank").desc())
    return frame.withColumn("_n", F.row_number().over(window)).where("_n = 1").drop("_n")


def known_or_unknown(frame: DataFrame, column: str, keys: DataFrame) -> DataFrame:
    """`column` unchanged where `keys` (one column, the referenced mart's keys) holds its value, the unknown
    member's key where it does not, null where it is null."""
    known = keys.select(F.col(keys.columns[0]).alias("_known")).distinct()
    joined = frame.join(known, frame[column] == known["_known"], "left")
    value = (
        F.when(F.col(column).isNull(), None).when(F.col("_known").isNull(), F.lit(UNKNOWN_KEY)).otherwise(F.col(column))
    )
    return joined.withColumn(column, value).drop("_known")


def with_unknown_member(
    spark: SparkSession, frame: DataFrame, key: str, name_column: str | None = None, references: tuple[str, ...] = ()
) -> DataFrame:
    """`frame` plus its unknown member, conformed: key `unknown`, name `Unknown`, every foreign key in
    `references` pointing to the referenced mart's unknown member (so every join of the star keeps it), every
    other column null; `is_unknown` tells it from the real members."""
    member = [
        (
            F.lit(UNKNOWN_KEY)
            if f.name == key or f.name in references
            else F.lit(UNKNOWN_NAME)
            if f.name == name_column
            else F.lit(None)
        )
        .cast(f.dataType)
        .alias(f.name)
        for f in frame.schema
    ]
    return frame.withColumn(IS_UNKNOWN.name, F.lit(False)).unionByName(
        spark.range(1).select(*member, F.lit(True).alias(IS_UNKNOWN.name))
    )


def location_key(*parts: Column) -> Column:
    text = F.concat_ws("|", *[F.coalesce(p, F.lit("")) for p in parts])
    return F.when(F.coalesce(*parts).isNull(), None).otherwise(F.md5(text))


def _place_parts(county: bool) -> list[Column]:
    """city, county, state, zip, fips; providers and organizations have no county or FIPS."""
    absent = F.lit(None).cast("string")
    return [
        F.col("city"),
        (F.col("county") if county else absent).alias("county"),
        F.col("state"),
        F.col("zip"),
        (F.col("fips") if county else absent).alias("fips"),
    ]


def _place(frame: DataFrame, county: bool) -> DataFrame:
    parts = _place_parts(county)
    return frame.select(*parts, location_key(*parts).alias("location_key"))


PARTITIONED_MARTS = ("patient_fact", "encounter_dim", "condition_dim", "procedure_dim", "medication_dim")
"""The patient-scoped marts: a build writes them per upload and keeps the rows an earlier build wrote for an upload
that did not change. The other marts are small and written whole by every build."""
PARTS = "build_parts"
"""The builds' part maps: for each build and upload, the build whose rows of the partitioned marts it shows, and
what the next build needs to know without reading those rows (date bounds, the unknown patient's counts, the
references the upload's rows could not resolve, what the checks counted)."""
PART_KEYS = (
    "build_id string, upload_id string, load_id string, part_build string, contract string, unresolved string, "
    "measures string"
)
"""The part map's columns that say what a part is (the others, written from the build's frames, hold its counts)."""
PATIENT_AGGREGATES = (
    ("encounter_dim", "encounter_count", "count(1)", "sum"),
    ("encounter_dim", "total_claim_cost", "sum(total_claim_cost)", "sum"),
    ("encounter_dim", "total_payer_coverage", "sum(payer_coverage)", "sum"),
    ("encounter_dim", "first_encounter_date", "min(start_date)", "min"),
    ("encounter_dim", "last_encounter_date", "max(start_date)", "max"),
    ("condition_dim", "condition_count", "count(1)", "sum"),
    ("condition_dim", "active_condition_count", "sum(cast(is_active AS int))", "sum"),
    ("medication_dim", "medication_count", "count(1)", "sum"),
    ("procedure_dim", "procedure_count", "count(1)", "sum"),
    ("immunizations", "immunization_count", "count(1)", "sum"),
)
"""patient_fact's counts: (source, column, aggregate per patient and upload, how the per-upload parts combine)."""
USED_DATES = (
    ("patient_fact", "birth_date"),
    ("patient_fact", "death_date"),
    ("encounter_dim", "to_date(stop_ts)"),
    ("encounter_dim", "start_date"),
    ("condition_dim", "start_date"),
    ("condition_dim", "stop_date"),
    ("procedure_dim", "start_date"),
    ("medication_dim", "start_date"),
    ("medication_dim", "to_date(stop_ts)"),
)
"""The dates date_dim spans: those of patient_fact and of the dimensions it aggregates."""


def contract(marts: dict[str, Mart]) -> str:
    """A fingerprint of every declaration a build's rows depend on (not of descriptions): a build of another
    contract is rebuilt, never continued."""
    declared = [(m.name, m.key, [(c.name, c.type, c.expression) for c in m.columns]) for m in marts.values()]
    return hashlib.md5(repr((declared, PATIENT_AGGREGATES, USED_DATES)).encode()).hexdigest()


CONTRACT = contract(MARTS)


@dataclass(frozen=True)
class BuildPlan:
    """Which uploads a build writes: every one (`rewritten` None), or only those whose committed load changed since
    the previous build (`rewritten`), the `kept` ones showing the rows the previous build's part map names."""

    reason: str
    previous_build: str | None = None
    kept: list[str] = field(default_factory=list)
    replaced: tuple[str, ...] = ()
    unresolved_in_kept: frozenset[tuple[str, str]] = frozenset()
    rewritten: list[str] | None = None

    @classmethod
    def full(cls, reason: str) -> BuildPlan:
        return cls(f"full rebuild: {reason}")

    @property
    def previous(self) -> Build:
        """The committed build this one continues (whose part map names the kept uploads' rows)."""
        return Build(self.previous_build or "", self)


@dataclass(frozen=True)
class Build:
    """One build of the marts and where its rows are: a shared mart's rows carry its id, a partitioned mart's rows
    are each upload's rows of the build its part map names, plus the unknown members this build wrote."""

    build_id: str
    plan: BuildPlan = field(default_factory=lambda: BuildPlan.full("new"))
    tables: dict[str, str] = field(default_factory=dict)

    def parts(self, spark: SparkSession, lake: IcebergTables) -> DataFrame:
        table = lake.open(spark, MARTS_LAYER, PARTS)
        if table is None:
            return spark.createDataFrame([], PART_KEYS)
        return spark.table(table).where(F.col("build_id") == self.build_id)

    def rows(self, spark: SparkSession, lake: IcebergTables, name: str, uploads: list[str] | None = None) -> DataFrame:
        """The build's rows of one mart, without the build column: a shared mart's all, a partitioned mart's rows of
        `uploads` (of every upload of the part map when None; its unknown members are not an upload's)."""
        table = spark.table(
            self.tables.get(name) or lake.open(spark, MARTS_LAYER, name) or lake.identifier(MARTS_LAYER, name)
        )
        if name not in PARTITIONED_MARTS:
            return table.where(F.col("build_id") == self.build_id).drop("build_id")
        parts = self.parts(spark, lake).select("upload_id", "part_build")
        if uploads is not None:
            parts = parts.where(F.col("upload_id").isin(uploads))
        by_build: dict[str, list[str]] = {}
        for row in parts.collect():
            by_build.setdefault(row["part_build"], []).append(row["upload_id"])
        return table.where(_in_parts(by_build)).drop("build_id")


def _in_parts(uploads_by_build: dict[str, list[str]]) -> Column:
    """Rows of the named uploads in the named builds, as a filter on the partition columns: Sail prunes the other
    partitions (a semi join with the part map read every row of the mart, 0.3-1 s for 2.2M encounters)."""
    return reduce(
        lambda a, b: a | b,
        [
            (F.col("build_id") == build) & F.col("upload_id").isin(sorted(uploads))
            for build, uploads in sorted(uploads_by_build.items())
        ],
        F.lit(False),
    )


def plan_build(
    spark: SparkSession,
    lake: IcebergTables,
    commits: CommitLog,
    loads: dict[str, str],
    include_identifiers: bool,
    full_rebuild: bool = False,
) -> BuildPlan:
    """What a build over the committed `loads` (upload: load) must write, from the committed build's part map."""
    if full_rebuild:
        return BuildPlan.full("asked for")
    committed = commits.builds().current().get(MARTS_SUBJECT)
    if committed is None:
        return BuildPlan.full("the lake's first build")
    if commits.identifiers_included() != include_identifiers:
        return BuildPlan.full("identifiers are asked for differently from the committed build")
    previous = {row["upload_id"]: row for row in Build(committed.load_id).parts(spark, lake).collect()}
    if loads and not previous:
        return BuildPlan.full("the committed build has no part map (it was written before incremental builds)")
    if any(row["contract"] != CONTRACT for row in previous.values()):
        return BuildPlan.full("the marts' declarations changed since the committed build")
    if removed := sorted(set(previous) - set(loads)):
        return BuildPlan.full(f"uploads left the lake: {', '.join(removed)}")
    kept = sorted(u for u, row in previous.items() if loads[u] == row["load_id"])
    waiting = {
        tuple(line.split("\t", 1)) for upload in kept for line in (previous[upload]["unresolved"] or "").splitlines()
    }
    return BuildPlan(
        f"rewrites {len(loads) - len(kept)} of {len(loads)} uploads, keeps the others' rows",
        committed.load_id,
        kept,
        tuple(sorted(u for u in loads if u in previous and u not in kept)),
        frozenset(waiting),
        sorted(u for u in loads if u not in kept),
    )


def write_marts(
    spark: SparkSession,
    lake: IcebergTables,
    loads: DataFrame,
    build_id: str,
    include_identifiers: bool = False,
    plan: BuildPlan | None = None,
) -> Build:
    """Write a build of every mart from the committed loads (`current_loads`) under `build_id` (readers see it once
    it is committed). The shared marts are written whole; the partitioned ones only for the uploads the `plan`
    rewrites, the others keeping the rows an earlier build wrote for them. When the data ties a rewritten upload to
    a kept one (an id in both, a reference that resolves differently now), the build rewrites every upload instead,
    so a build always equals a full rebuild. Identifier columns are always there, null unless asked for."""
    plan = plan or BuildPlan.full("no earlier build to continue")
    tables, tie = _write_build(spark, lake, loads, build_id, include_identifiers, plan)
    if tie:
        plan = BuildPlan.full(tie)
        tables, _ = _write_build(spark, lake, loads, build_id, include_identifiers, plan)
    return Build(build_id, plan, tables)


def _write_build(
    spark: SparkSession,
    lake: IcebergTables,
    loads: DataFrame,
    build_id: str,
    include_identifiers: bool,
    plan: BuildPlan,
) -> tuple[dict[str, str], str | None]:
    """One attempt at `write_marts`: the written tables, or (having written nothing) why the plan's kept uploads
    must be rewritten too. The dimensions are written first; the patient fact, the part map and the date dimension
    are then computed from the written dimensions, so no dimension's lineage is computed twice."""
    kept = plan.kept
    previous = plan.previous

    def read(table: str) -> DataFrame:
        return read_staging(spark, lake, table, loads)

    def read_rewritten(table: str) -> DataFrame:
        return read_staging(spark, lake, table, loads, plan.rewritten)

    all_patients = latest_per_key(read("patients"), "id")
    owners = owners_of(spark, lake, loads, plan)
    patients = latest_per_key(read_rewritten("patients"), "id")
    providers = latest_per_key(read("providers"), "id")
    organizations = latest_per_key(read("organizations"), "id")
    payers = latest_per_key(read("payers"), "id")
    provider_ids, organization_ids, payer_ids = (read(t).select("id") for t in ("providers", "organizations", "payers"))
    patient_ids = read("patients").select("id")

    def current(table: str, key: str = "row_key") -> DataFrame:
        return patient_scoped(read_rewritten(table), owners, key)

    encounters = current("encounters", "id")
    scoped = {t: current(t) for t in ("conditions", "procedures", "medications", "immunizations")}
    staged = {t: read_rewritten(t) for t in REFERENCE_COLUMNS}
    known = {"patient": patient_ids, "provider": provider_ids, "organization": organization_ids, "payer": payer_ids}
    if kept:
        tie = _tie_to_kept(
            spark,
            lake,
            plan,
            read("patients"),
            encounters,
            (providers, organizations, payers),
            unresolved_references(staged, known).where(F.col("reference") == "patient"),
        )
        if tie:
            return {}, tie
    kept_encounters = referenced_kept_encounters(spark, lake, plan, encounters, read_rewritten)
    encounter_ids = encounters.select("id").unionByName(kept_encounters.select(F.col("encounter_key").alias("id")))
    # from the staged rows: a few more values than the marts point to the unknown member, never fewer
    references = unresolved_references(staged, {**known, "encounter": encounter_ids})
    encounters = known_or_unknown(encounters, "provider", provider_ids)
    encounters = known_or_unknown(encounters, "organization", organization_ids)
    encounters = known_or_unknown(encounters, "payer", payer_ids)
    conditions = known_or_unknown(scoped["conditions"], "encounter", encounter_ids)
    procedures = known_or_unknown(scoped["procedures"], "encounter", encounter_ids)
    medications = known_or_unknown(
        known_or_unknown(scoped["medications"], "encounter", encounter_ids), "payer", payer_ids
    )
    providers = known_or_unknown(providers, "organization", organization_ids)

    def select(name: str, source: DataFrame) -> DataFrame:
        return MARTS[name].select(source, include_identifiers)

    places = (
        _place(all_patients, county=True)
        .unionByName(_place(providers, county=False))
        .unionByName(_place(organizations, county=False))
        .where(F.col("location_key").isNotNull())
    )
    location_dim = select("location_dim", places.dropDuplicates(["location_key"]))

    def placed(frame: DataFrame) -> DataFrame:
        return frame.withColumn("location_key", location_key(*_place_parts(county=False)))

    def conformed(name: str, frame: DataFrame, name_column: str | None = None) -> DataFrame:
        mart = MARTS[name]
        member = with_unknown_member(spark, frame, mart.key, name_column, tuple(FOREIGN_KEYS.get(name, ())))
        return member.select(*mart.column_names)

    dimensions = {
        "encounter_dim": conformed("encounter_dim", select("encounter_dim", encounters)),
        "condition_dim": select("condition_dim", conditions),
        "procedure_dim": select("procedure_dim", procedures),
        "medication_dim": select("medication_dim", medications),
        "provider_dim": conformed("provider_dim", select("provider_dim", placed(providers))),
        "organization_dim": conformed(
            "organization_dim", select("organization_dim", placed(organizations)), "organization_name"
        ),
        "payer_dim": conformed("payer_dim", select("payer_dim", payers), "payer_name"),
        "location_dim": conformed("location_dim", location_dim),
    }
    written = _write_each(spark, lake, dimensions, build_id)

    def this_build(name: str) -> DataFrame:
        return spark.table(written[name]).where(F.col("build_id") == build_id).drop("build_id")

    dims = {name: this_build(name) for name in dimensions}
    immunizations = scoped["immunizations"].withColumnRenamed("patient", "patient_key")
    partials = patient_partials(dims, immunizations)
    unknown_parts = partials.where(F.col("patient_key") == UNKNOWN_KEY).drop("upload_id")
    if kept:
        recorded = previous.parts(spark, lake).where(F.col("upload_id").isin(kept))
        unknown_parts = unknown_parts.unionByName(
            recorded.select(
                F.lit(UNKNOWN_KEY).alias("patient_key"),
                *[F.col(f"unknown_{c}").alias(c) for _, c, *_ in PATIENT_AGGREGATES],
            )
        )
    counts = _combined(partials.where(F.col("patient_key") != UNKNOWN_KEY).drop("upload_id").unionByName(unknown_parts))
    fact = patient_fact(with_unknown_member(spark, patients, "id"), dims, counts, include_identifiers)
    written |= _write_each(spark, lake, {"patient_fact": fact}, build_id)
    dims["patient_fact"] = this_build("patient_fact")
    observations = read_rewritten("observations").join(owners, ["patient", "upload_id"], "left_semi")
    written[PARTS] = write_parts(
        spark, lake, plan, loads, build_id, dims, partials, references, observations, kept_encounters
    )
    bounds = (
        spark.table(written[PARTS])
        .where(F.col("build_id") == build_id)
        .agg(F.min("first_date").alias("first"), F.max("last_date").alias("last"))
    )
    date_dim = MARTS["date_dim"].select(bounds.select(F.explode(F.sequence("first", "last")).alias("date_key")))
    written |= _write_each(spark, lake, {"date_dim": date_dim}, build_id)
    return written, None


def referenced_kept_encounters(
    spark: SparkSession, lake: IcebergTables, plan: BuildPlan, encounters: DataFrame, staged: Callable[[str], DataFrame]
) -> DataFrame:
    """The (encounter_key, start_date) of the kept uploads' encounters that rewritten conditions, procedures or
    medications (`staged`: their rewritten staging rows) reference: none without kept uploads, and the kept rows are
    read only when such a reference exists (an edited export), so a build of new uploads does not read the lake's
    encounters for it."""
    empty = spark.createDataFrame([], "encounter_key string, start_date date")
    if not plan.kept:
        return empty
    named = reduce(
        lambda a, b: a.unionByName(b),
        [staged(t).select(F.col("encounter").alias("id")) for t in ("conditions", "procedures", "medications")],
    )
    foreign = named.where(F.col("id").isNotNull()).distinct().join(encounters.select("id"), "id", "left_anti")
    wanted = [(row["id"],) for row in foreign.collect()]
    if not wanted:
        return empty
    rows = plan.previous.rows(spark, lake, "encounter_dim", plan.kept)
    wanted_keys = spark.createDataFrame(wanted, "encounter_key string")
    return rows.join(wanted_keys, "encounter_key", "left_semi").select("encounter_key", "start_date")


REFERENCE_COLUMNS = {
    "encounters": ("patient", "provider", "organization", "payer"),
    "conditions": ("patient", "encounter"),
    "procedures": ("patient", "encounter"),
    "medications": ("patient", "encounter", "payer"),
    "immunizations": ("patient",),
}
"""The columns of the patient-scoped staging tables that name a row of another table, by the table named."""


def unresolved_references(staged: dict[str, DataFrame], known: dict[str, DataFrame]) -> DataFrame:
    """(upload_id, reference, value): the values of `REFERENCE_COLUMNS` in `staged` rows that no row of `known`
    (reference: one-column frame of ids) holds, i.e. what the marts point to the unknown member."""
    named = reduce(
        lambda a, b: a.unionByName(b),
        [
            staged[table]
            .select(
                "upload_id",
                F.explode(
                    F.array(*[F.struct(F.lit(c).alias("reference"), F.col(c).alias("value")) for c in columns])
                ).alias("named"),
            )
            .select("upload_id", "named.reference", "named.value")
            for table, columns in REFERENCE_COLUMNS.items()
            if table in staged
        ],
    )
    ids = reduce(
        lambda a, b: a.unionByName(b),
        [
            frame.select(F.lit(kind).alias("reference"), F.col(frame.columns[0]).alias("value"))
            for kind, frame in known.items()
        ],
    )
    return named.where(F.col("value").isNotNull()).join(ids, ["reference", "value"], "left_anti")


def _tie_to_kept(
    spark: SparkSession,
    lake: IcebergTables,
    plan: BuildPlan,
    patients: DataFrame,
    encounters: DataFrame,
    shared: tuple[DataFrame, DataFrame, DataFrame],
    orphans: DataFrame,
) -> str | None:
    """Why the uploads a build rewrites change the rows of an upload it keeps, or None: a patient or encounter id
    in both; an id the kept uploads' rows could resolve that is gone; a reference a kept upload could not resolve
    that resolves now; a patient absent from the lake whose rows are in both (such rows are kept once)."""
    providers, organizations, payers = shared

    def any_row(frame: DataFrame) -> bool:
        return not frame.limit(1).isEmpty()

    kept = plan.kept
    in_kept = F.col("upload_id").isin(kept)
    if any_row(patients.where(in_kept).select("id").join(patients.where(~in_kept).select("id"), "id")):
        return "a patient id is in an upload the build rewrites and in one it keeps"
    previous = plan.previous
    kept_encounters = previous.rows(spark, lake, "encounter_dim", kept).select(F.col("encounter_key").alias("id"))
    if any_row(encounters.select("id").join(kept_encounters, "id")):
        return "an encounter id is in an upload the build rewrites and in one it keeps"
    shared = {"provider_dim": providers, "organization_dim": organizations, "payer_dim": payers}

    def tagged(frames: dict[str, DataFrame]) -> DataFrame:
        return reduce(
            lambda a, b: a.unionByName(b), [f.select(F.lit(n).alias("mart"), "id") for n, f in frames.items()]
        )

    before = {
        name: previous.rows(spark, lake, name).where(~F.col(IS_UNKNOWN.name)).withColumnRenamed(MARTS[name].key, "id")
        for name in shared
    }
    gone = tagged(before).join(tagged(shared), ["mart", "id"], "left_anti").select("mart").limit(1).collect()
    if gone:
        return f"an id of {gone[0]['mart']} that kept uploads may reference is gone"
    replaced = list(plan.replaced)
    for name, key, now in (
        ("patient_fact", "patient_key", patients.where(~in_kept)),
        ("encounter_dim", "encounter_key", encounters),
    ):
        if replaced:
            before = previous.rows(spark, lake, name, replaced).select(F.col(key).alias("id"))
            if any_row(before.join(now.select("id"), "id", "left_anti")):
                return f"a {key} of a replaced upload is gone"
    if not plan.unresolved_in_kept:
        return None
    now_known = {
        "patient": patients.where(~in_kept).select("id"),
        "encounter": encounters.select("id"),
        "provider": providers.select("id"),
        "organization": organizations.select("id"),
        "payer": payers.select("id"),
    }
    waiting = spark.createDataFrame(sorted(plan.unresolved_in_kept), "reference string, id string")
    missing_patients = waiting.where(F.col("reference") == "patient").select("id")
    if any_row(missing_patients.join(orphans.select(F.col("value").alias("id")), "id", "left_semi")):
        return "a patient absent from the lake has rows in an upload the build rewrites and in one it keeps"
    for reference, ids in now_known.items():
        if any_row(waiting.where(F.col("reference") == reference).join(ids, "id", "left_semi")):
            return f"a {reference} that a kept upload references without finding it is in the lake now"
    return None


def patient_partials(dims: dict[str, DataFrame], immunizations: DataFrame) -> DataFrame:
    """patient_fact's counts per (patient, upload): one part per patient (its rows are its upload's), one per upload
    for the unknown patient, whose rows come from every upload."""
    sources = {**dims, "immunizations": immunizations}
    sources["encounter_dim"] = dims["encounter_dim"].where(F.col("encounter_key") != UNKNOWN_KEY)
    frames = [
        sources[source]
        .groupBy("patient_key", "upload_id")
        .agg(*[F.expr(a).alias(c) for s, c, a, _ in PATIENT_AGGREGATES if s == source])
        for source in dict.fromkeys(s for s, *_ in PATIENT_AGGREGATES)
    ]
    return reduce(lambda a, b: a.join(b, ["patient_key", "upload_id"], "full"), frames)


def _combined(partials: DataFrame) -> DataFrame:
    """Per-(patient, upload) counts combined per patient."""
    return partials.groupBy("patient_key").agg(
        *[getattr(F, combine)(column).alias(column) for _, column, _, combine in PATIENT_AGGREGATES]
    )


def patient_fact(
    patients: DataFrame, dims: dict[str, DataFrame], counts: DataFrame, include_identifiers: bool
) -> DataFrame:
    """One row per patient of the rewritten uploads and the unknown patient, with demographics and counts. A
    living patient's age is taken at the latest encounter of their upload (its export's 'today')."""
    encounters = dims["encounter_dim"].where(F.col("encounter_key") != UNKNOWN_KEY)
    as_of = encounters.groupBy("upload_id").agg(F.max("start_date").alias("as_of_date"))
    fact = patients.join(F.broadcast(as_of), "upload_id", "left").join(
        counts.withColumnRenamed("patient_key", "id"), "id", "left"
    )
    end = F.coalesce(F.col("deathdate"), F.col("as_of_date"))
    age = F.floor(F.months_between(end, F.col("birthdate")) / 12).cast("int")
    # cast: Sail types a CASE of a literal and an MD5 as a string view, which the table's string column refuses
    location = (
        F.when(F.col(IS_UNKNOWN.name), F.lit(UNKNOWN_KEY))
        .otherwise(location_key(*_place_parts(county=True)))
        .cast("string")
    )
    return MARTS["patient_fact"].select(
        fact.withColumn("age", age).withColumn("location_key", location), include_identifiers
    )


def part_measures(
    spark: SparkSession, rows: dict[str, DataFrame], observations: DataFrame, kept_encounters: DataFrame
) -> DataFrame:
    """What the checks count in each rewritten upload's rows of the partitioned marts, as (upload_id, measures: JSON),
    so a later build that keeps the upload reports its counts without reading its rows again: rows per mart, rows
    pointing to an unknown member per mart and foreign key, and the Synthea oddities."""

    def counted(frame: DataFrame, path: str, value: Column) -> DataFrame:
        return frame.select("upload_id", F.lit(path).alias("measure"), value.cast("long").alias("value"))

    parts = []
    for name in PARTITIONED_MARTS:
        parts.append(counted(rows[name], f"rows/{name}", F.lit(1)))
        members = rows[name].where(~F.col(IS_UNKNOWN.name)) if IS_UNKNOWN.name in rows[name].columns else rows[name]
        parts += [
            counted(members, f"references_unknown/{name}/{column}", F.col(column) == UNKNOWN_KEY)
            for column in FOREIGN_KEYS.get(name, ())
        ]
    parts += [
        counted(frame, measure, F.lit(1)) for measure, frame in oddity_rows(rows, observations, kept_encounters).items()
    ]
    totals = (
        reduce(lambda a, b: a.unionByName(b), parts)
        .where(F.col("upload_id").isNotNull())
        .groupBy("upload_id", "measure")
        .agg(F.sum("value").alias("value"))
        .collect()
    )
    measures: dict[str, dict] = {}
    for row in totals:
        *path, leaf = row["measure"].split("/")
        target = measures.setdefault(row["upload_id"], {})
        for key in path:
            target = target.setdefault(key, {})
        target[leaf] = int(row["value"] or 0)
    return spark.createDataFrame(
        [(upload, json.dumps(values, sort_keys=True)) for upload, values in sorted(measures.items())],
        "upload_id string, measures string",
    )


def oddity_rows(
    marts: dict[str, DataFrame], observations: DataFrame, kept_encounters: DataFrame
) -> dict[str, DataFrame]:
    """The rows each Synthea oddity check counts, by its measure (`kept_encounters`: the encounters of kept uploads
    that the rewritten rows reference)."""
    encounter_dates = (
        marts["encounter_dim"]
        .select("encounter_key", "start_date")
        .unionByName(kept_encounters)
        .select("encounter_key", F.col("start_date").alias("encounter_date"))
    )
    return {
        "medications_stopping_before_start": marts["medication_dim"].where(F.col("stop_ts") < F.col("start_ts")),
        "observations_without_encounter": observations.where(F.col("encounter").isNull()),
        "conditions_dated_off_their_encounter": marts["condition_dim"]
        .join(encounter_dates, "encounter_key")
        .where(F.col("start_date") != F.col("encounter_date")),
    }


def write_parts(
    spark: SparkSession,
    lake: IcebergTables,
    plan: BuildPlan,
    loads: DataFrame,
    build_id: str,
    rows: dict[str, DataFrame],
    partials: DataFrame,
    references: DataFrame,
    observations: DataFrame,
    kept_encounters: DataFrame,
) -> str:
    """Append the build's part map: a new part for each rewritten upload (its date bounds, the unknown patient's
    counts from its rows, the references it could not resolve, its `measures`), the previous build's part for each
    kept one."""
    kept = plan.kept
    measured = part_measures(spark, rows, observations, kept_encounters)
    dates = reduce(
        lambda a, b: a.unionByName(b),
        [rows[mart].select("upload_id", F.expr(date).alias("d")) for mart, date in USED_DATES],
    )
    bounds = dates.groupBy("upload_id").agg(F.min("d").alias("first_date"), F.max("d").alias("last_date"))
    unknown = partials.where(F.col("patient_key") == UNKNOWN_KEY).select(
        "upload_id", *[F.col(c).alias(f"unknown_{c}") for _, c, *_ in PATIENT_AGGREGATES]
    )
    waiting = (
        references.select("upload_id", F.concat_ws("\t", "reference", "value").alias("reference"))
        .groupBy("upload_id")
        .agg(F.concat_ws("\n", F.sort_array(F.collect_set("reference"))).alias("unresolved"))
    )
    rewritten = loads.where(~F.col("upload_id").isin(kept)) if kept else loads
    new = (
        rewritten.select("upload_id", "load_id")
        .join(bounds, "upload_id", "left")
        .join(unknown, "upload_id", "left")
        .join(waiting, "upload_id", "left")
        .join(measured, "upload_id", "left")
        .select(
            F.lit(build_id).alias("build_id"),
            "upload_id",
            "load_id",
            F.lit(build_id).alias("part_build"),
            F.lit(CONTRACT).alias("contract"),
            "first_date",
            "last_date",
            "unresolved",
            "measures",
            *[f"unknown_{c}" for _, c, *_ in PATIENT_AGGREGATES],
        )
    )
    columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in new.schema)
    table = lake.ensure(spark, MARTS_LAYER, PARTS, columns, BUILD_PARTITIONING)
    if kept:
        carried = plan.previous.parts(spark, lake).where(F.col("upload_id").isin(kept))
        new = new.unionByName(carried.withColumn("build_id", F.lit(build_id)).select(*new.columns))
    lake.append(new, table)
    return table


def _write_each(
    spark: SparkSession, lake: IcebergTables, frames: dict[str, DataFrame], build_id: str
) -> dict[str, str]:
    """Append marts under a build two at a time (their many small queries overlap), each sorted by its key."""

    def write(item: tuple[str, DataFrame]) -> tuple[str, str]:
        name, frame = item
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in frame.schema)
        table = lake.ensure(spark, MARTS_LAYER, name, f"{columns}, build_id string", BUILD_PARTITIONING)
        lake.append(frame.orderBy(MARTS[name].key).withColumn("build_id", F.lit(build_id)), table)
        return name, table

    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
        return dict(pool.map(write, frames.items()))


def discard_build(spark: SparkSession, lake: IcebergTables, build_id: str) -> None:
    """Delete one build's rows from every mart and its part map."""
    lake.delete_everywhere(spark, MARTS_LAYER, (*MARTS, PARTS), "build_id", build_id)


def discard_stale_builds(
    spark: SparkSession, lake: IcebergTables, commits: CommitLog, abandoned_before: dt.datetime
) -> list[str]:
    """Delete the builds that are neither the committed one nor the one before it (kept for readers that started
    before the switch), or were begun before `abandoned_before` and never committed, unless the part map of one of
    those two still shows rows they wrote; returns their ids."""
    builds = commits.builds()
    current = builds.current().get(MARTS_SUBJECT)
    shown = set()
    for build in filter(None, (current and current.load_id, builds.previous(MARTS_SUBJECT))):
        shown |= {
            row["part_build"] for row in Build(build).parts(spark, lake).select("part_build").distinct().collect()
        }
    stale = [build for _, build in builds.stale(abandoned_before, MARTS_SUBJECT) if build not in shown]
    for build in stale:
        discard_build(spark, lake, build)
        commits.record_build(build, "discarded", False)
    return stale


PRIMARY_KEY = Check("primary_key", "The key is unique and never null.", MARTS_LAYER, tuple(MARTS), blocking=True)
FOREIGN_KEYS_RESOLVE = Check(
    "foreign_keys_resolve",
    "Every foreign key finds its row in the referenced mart "
    "(references absent from the lake point to its unknown member).",
    MARTS_LAYER,
    tuple(FOREIGN_KEYS),
    blocking=True,
)
ROWS_RECONCILE = Check(
    "rows_reconcile",
    "Row count equals the distinct current ids in staging, plus the unknown member.",
    MARTS_LAYER,
    tuple(RECONCILED_MARTS),
    blocking=True,
)
REFERENCES_KNOWN = Check(
    "references_known",
    "Source data: rows whose reference is absent from the lake and points "
    "to the unknown member, counted per upload (warning; e.g. a partial export without "
    "encounters.csv).",
    MARTS_LAYER,
    tuple(FOREIGN_KEYS),
)
STOPS_BEFORE_START = Check(
    "stops_before_start",
    "Synthea oddity: medications that stop before they start (warning).",
    MARTS_LAYER,
    ("medication_dim",),
)
OBSERVATIONS_WITHOUT_ENCOUNTER = Check(
    "observations_without_encounter",
    "Synthea oddity: yearly QALY/DALY/QOLS observations have no encounter (warning).",
    MARTS_LAYER,
    ("encounter_dim",),
)
DATED_LIKE_ENCOUNTER = Check(
    "dated_like_encounter",
    "Synthea oddity: condition dates (local) a day off their encounter (UTC) (warning).",
    MARTS_LAYER,
    ("condition_dim",),
)
MART_CHECKS = (
    PRIMARY_KEY,
    FOREIGN_KEYS_RESOLVE,
    ROWS_RECONCILE,
    REFERENCES_KNOWN,
    STOPS_BEFORE_START,
    OBSERVATIONS_WITHOUT_ENCOUNTER,
    DATED_LIKE_ENCOUNTER,
)
"""Every check of a build, computed by `check_marts`."""


@dataclass(frozen=True)
class MartCheck:
    """One declared check's result on one mart."""

    check: Check
    mart: str
    passed: bool
    metadata: dict

    def __post_init__(self):
        self.check.on(self.mart)

    @property
    def name(self) -> str:
        return self.check.name

    @property
    def blocking(self) -> bool:
        return self.check.blocking


def _count(frame: DataFrame) -> int:
    return int(frame.count())


def check_marts(spark: SparkSession, lake: IcebergTables, build: Build, loads: DataFrame) -> list[MartCheck]:
    """Judge a written build: keys, foreign keys, row counts against the staging loads it was built from, and
    known Synthea oddities. The rows this build wrote are checked; a kept upload's rows passed these checks when
    they were written, and the plan rewrites every upload whose rows the others could change, so its counts come
    from its part's measures."""
    written = {
        name: spark.table(t).where(F.col("build_id") == build.build_id).drop("build_id")
        for name, t in build.tables.items()
        if name in MARTS
    }
    parts = build.parts(spark, lake).select("upload_id", "part_build", "measures").collect()
    kept = [json.loads(row["measures"] or "{}") for row in parts if row["part_build"] != build.build_id]
    measures = {row["upload_id"]: json.loads(row["measures"] or "{}") for row in parts}

    def kept_rows(name: str) -> int:
        return sum(m.get("rows", {}).get(name, 0) for m in kept)

    checks = []
    for name, mart in MARTS.items():
        frame = written[name]
        rows, distinct = _count(frame) + kept_rows(name), _count(frame.select(mart.key).distinct()) + kept_rows(name)
        nulls = _count(frame.where(F.col(mart.key).isNull()))
        checks.append(
            MartCheck(
                PRIMARY_KEY,
                name,
                rows == distinct and not nulls,
                {"rows": rows, "distinct_keys": distinct, "null_keys": nulls, "rows_checked": _count(frame)},
            )
        )
    kept_keys: dict[str, DataFrame] = {}
    for name, references in FOREIGN_KEYS.items():
        orphans = {}
        for column, target in references.items():
            keys = written[target].select(F.col(MARTS[target].key).alias(column))
            dangling = written[name].where(F.col(column).isNotNull()).join(keys, column, "left_anti")
            if build.plan.kept and target in PARTITIONED_MARTS:
                values = [r[column] for r in dangling.select(column).distinct().collect()]
                if values:
                    if target not in kept_keys:
                        kept_keys[target] = build.rows(spark, lake, target, build.plan.kept).select(MARTS[target].key)
                    found = kept_keys[target].join(
                        spark.createDataFrame([(v,) for v in values], f"{MARTS[target].key} string"),
                        MARTS[target].key,
                        "left_semi",
                    )
                    dangling = dangling.join(found.select(F.col(MARTS[target].key).alias(column)), column, "left_anti")
            orphans[column] = _count(dangling)
        checks.append(MartCheck(FOREIGN_KEYS_RESOLVE, name, not any(orphans.values()), {"orphans": orphans}))

    checks += references_known(written, measures)
    for mart_name, table in RECONCILED_MARTS.items():
        if mart_name == "encounter_dim":  # reconciled below, against the encounters of the patients' uploads
            continue
        scope = build.plan.rewritten if mart_name in PARTITIONED_MARTS else None
        staged_ids = read_staging(spark, lake, table, loads, scope).select("id").distinct()
        expected = _count(staged_ids) + 1 + kept_rows(mart_name)
        actual = _count(written[mart_name]) + kept_rows(mart_name)
        checks.append(
            MartCheck(
                ROWS_RECONCILE,
                mart_name,
                expected == actual,
                {"distinct_ids_in_staging_and_unknown_member": expected, "rows": actual},
            )
        )
    owners = owners_of(spark, lake, loads, build.plan)
    staged = read_staging(spark, lake, RECONCILED_MARTS["encounter_dim"], loads, build.plan.rewritten)
    encounters = patient_scoped(staged, owners, "id")
    expected = _count(encounters.select("id").distinct()) + 1 + kept_rows("encounter_dim")
    actual = _count(written["encounter_dim"]) + kept_rows("encounter_dim")
    checks.append(
        MartCheck(
            ROWS_RECONCILE,
            "encounter_dim",
            expected == actual,
            {"distinct_current_encounters_and_unknown_member": expected, "rows": actual},
        )
    )
    for check, mart_name, measure, notes in (
        (STOPS_BEFORE_START, "medication_dim", "medications_stopping_before_start", {}),
        (OBSERVATIONS_WITHOUT_ENCOUNTER, "encounter_dim", "observations_without_encounter", {}),
        (
            DATED_LIKE_ENCOUNTER,
            "condition_dim",
            "conditions_dated_off_their_encounter",
            {"why": "condition dates are local, encounter dates UTC"},
        ),
    ):
        by_upload = {u: m[measure] for u, m in sorted(measures.items()) if m.get(measure)}
        total = sum(by_upload.values())
        checks.append(MartCheck(check, mart_name, total == 0, {measure: total, "by_upload": by_upload, **notes}))
    return checks


def references_known(written: dict[str, DataFrame], measures: dict[str, dict]) -> list[MartCheck]:
    """Warnings: per mart, how many rows of each upload point to an unknown member (their reference is absent
    from the lake, e.g. encounters missing from a partial export); the unknown members' own references are not
    counted. The partitioned marts' counts are their parts' measures, the shared marts' are counted."""
    checks = []
    for name, references in FOREIGN_KEYS.items():
        if name in PARTITIONED_MARTS:
            counted = {u: m.get("references_unknown", {}).get(name, {}) for u, m in measures.items()}
        else:
            unknown = [F.sum((F.col(c) == UNKNOWN_KEY).cast("int")).alias(c) for c in references]
            members = written[name].where(~F.col(IS_UNKNOWN.name))
            counted = {
                row["upload_id"]: {c: int(row[c] or 0) for c in references}
                for row in members.groupBy("upload_id").agg(*unknown).collect()
            }
        by_upload = {
            upload: {c: n for c, n in counts.items() if n}
            for upload, counts in sorted(counted.items(), key=lambda i: str(i[0]))
            if any(counts.values())
        }
        total = sum(sum(counts.values()) for counts in by_upload.values())
        checks.append(
            MartCheck(REFERENCES_KNOWN, name, total == 0, {"rows_pointing_to_unknown": total, "by_upload": by_upload})
        )
    return checks
