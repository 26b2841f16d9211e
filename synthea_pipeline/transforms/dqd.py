"""OHDSI Data Quality Dashboard (DQD) checks over a build's OMOP tables, with DQD's own thresholds (its field-level
specification, `cdm`), computed set-wise in Spark, and their results in DQD's results JSON, which DQD's viewer
opens. A failed DQD check warns; a broken primary key, or a reference between the build's own tables that does not
resolve, blocks the build's commit."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import pkgutil
import re
from dataclasses import dataclass, field
from functools import cache, reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from synthea_pipeline.transforms.cdm import CdmField, cdm_table

UNKNOWN_CONCEPT = 0
CHECK_DESCRIPTIONS_FILE = "DQD_OMOP_CDMv5.4_Check_Descriptions.csv"
CONCEPT_LEVEL_FILE = "DQD_OMOP_CDMv5.4_Concept_Level.csv"
GENDERS = {"Male": 8507, "Female": 8532}
DQD_VERSION = "2.8.4"
"""The DQD release whose specification (`cdm.DQD_FIELD_LEVEL_FILE`) and check descriptions are shipped."""
DQD_RESULTS_FILE = "omop_dqd_results.json"
"""The results file of the committed OMOP build, under the lake's reports/ (DQD's viewer opens it)."""


@cache
def check_descriptions() -> dict[str, dict[str, str]]:
    """DQD's description of each check type by name: level, description template, Kahn context, category and
    subcategory, SQL file."""
    return {row["checkName"]: row for row in _csv_rows(CHECK_DESCRIPTIONS_FILE)}


@dataclass(frozen=True)
class DqdResult:
    """One check of one field, as DQD reports it; `blocking` marks our own keys."""

    check_name: str
    table: str
    field: str
    violated: int
    denominator: int
    threshold: float
    blocking: bool = False
    details: dict = field(default_factory=dict)
    concept_id: int | None = None

    @property
    def percent(self) -> float:
        return self.violated / self.denominator if self.denominator else 0.0

    @property
    def failed(self) -> bool:
        return self.percent * 100 > self.threshold

    @property
    def check_id(self) -> str:
        """DQD's check id: level, check, table and field, in lower case."""
        parts = (self.description["checkLevel"], self.check_name, self.table, self.field, self.concept_id)
        return "_".join(str(part) for part in parts if part is not None).lower()

    @property
    def description(self) -> dict[str, str]:
        return check_descriptions()[self.check_name]

    def as_json(self) -> dict:
        """The result as a DQD results file holds it: the description rendered as DQD renders it (parameters in
        upper case), the check id as DQD forms it, pass or fail against the threshold."""
        described = self.description
        parameters = {
            "cdmTableName": self.table,
            "cdmFieldName": self.field.upper(),
            "conceptId": self.concept_id,
            **self.details,
        }
        text = described["checkDescription"].strip()
        for name, value in sorted(parameters.items(), key=lambda item: -len(item[0])):
            text = text.replace(f"@{name}", str(value).upper())
        return {
            "numViolatedRows": self.violated,
            "pctViolatedRows": round(self.percent, 6),
            "numDenominatorRows": self.denominator,
            "executionTime": "0 secs",
            "queryText": "",
            "checkName": self.check_name,
            "checkLevel": described["checkLevel"],
            "checkDescription": text,
            "cdmTableName": self.table.upper(),
            "cdmFieldName": self.field.upper(),
            "conceptId": self.concept_id,
            "unitConceptId": None,
            "sqlFile": described["sqlFile"],
            "category": described["kahnCategory"],
            "subcategory": described["kahnSubcategory"] or None,
            "context": described["kahnContext"],
            "warning": None,
            "error": None,
            "checkId": self.check_id,
            "failed": int(self.failed),
            "passed": int(not self.failed),
            "isError": 0,
            "notApplicable": 0,
            "notApplicableReason": None,
            "thresholdValue": self.threshold,
            "notesValue": None,
        }


def _csv_rows(file: str) -> list[dict[str, str]]:
    text = pkgutil.get_data(__name__.rsplit(".", 1)[0], file).decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


@cache
def concept_level() -> list[dict[str, str]]:
    """DQD's concept-level specification: per table, field and concept, its plausible gender and units."""
    return _csv_rows(CONCEPT_LEVEL_FILE)


def _bound(text: str) -> Column:
    """A DQD plausible value: a number, a quoted `'YYYYMMDD'` date, `DATEADD(dd,1,GETDATE())` (tomorrow) or
    `YEAR(GETDATE())+1` (next year)."""
    if text.upper() == "DATEADD(DD,1,GETDATE())":
        return F.date_add(F.current_date(), 1)
    if text.upper() == "YEAR(GETDATE())+1":
        return F.year(F.current_date()) + 1
    text = text.strip("'")
    if re.fullmatch(r"[0-9]{8}", text):
        return F.to_date(F.lit(text), "yyyyMMdd")
    return F.lit(float(text))


def _threshold(spec: CdmField, check: str) -> float:
    value = spec.check(f"{check}Threshold")
    return float(value) if value else 0.0


def field_checks(table: str, rows: DataFrame, persons: DataFrame | None) -> list[DqdResult]:
    """The DQD field checks of one table, but its references (`foreign_key_checks`), in one query: primary key
    (blocking), required fields, concept completeness, plausible values, start before end, and dates after birth
    and before death; `persons` is (person_id, _birth, _death) for the last two."""
    spec = cdm_table(table)
    counts: dict[str, object] = {"_rows": F.count(F.lit(1))}
    ratios: dict[str, tuple[Column, Column]] = {}
    """Checks whose denominator is not every row: (violated, denominator) expressions."""
    checked: list[tuple[str, CdmField, str]] = []

    def counted(name: str, check: str, spec_field: CdmField, condition, among: Column | None = None) -> None:
        """A check counting the rows that meet `condition` among all rows, or among those that meet `among`
        (DQD's denominator: the rows the check applies to)."""
        if among is None:
            counts[name] = F.sum(F.when(condition, 1).otherwise(0))
        else:
            ratios[name] = (F.sum(F.when(among & condition, 1).otherwise(0)), F.sum(F.when(among, 1).otherwise(0)))
        checked.append((name, spec_field, check))

    for column in spec.fields:
        value = F.col(column.name)
        if column.required:
            counted(f"req_{column.name}", "isRequired", column, value.isNull())
        if column.check("measureValueCompleteness") and not column.required:
            counted(f"mvc_{column.name}", "measureValueCompleteness", column, value.isNull())
        if column.check("standardConceptRecordCompleteness"):
            counted(f"scc_{column.name}", "standardConceptRecordCompleteness", column, value == UNKNOWN_CONCEPT)
        if column.check("sourceConceptRecordCompleteness"):
            counted(f"src_{column.name}", "sourceConceptRecordCompleteness", column, value == UNKNOWN_CONCEPT)
        comparable = F.to_date(value) if column.spark_type in ("date", "timestamp") else value
        if low := column.check("plausibleValueLow"):
            counted(f"low_{column.name}", "plausibleValueLow", column, comparable < _bound(low), value.isNotNull())
        if high := column.check("plausibleValueHigh"):
            counted(f"high_{column.name}", "plausibleValueHigh", column, comparable > _bound(high), value.isNotNull())
        if column.check("sourceValueCompleteness") and (standard := column.check("standardConceptFieldName")):
            unmapped = F.when(F.col(standard.lower()) == UNKNOWN_CONCEPT, value)
            ratios[f"svc_{column.name}"] = (F.countDistinct(unmapped), F.countDistinct(value))
            checked.append((f"svc_{column.name}", column, "sourceValueCompleteness"))
        if (end := column.check("plausibleStartBeforeEndFieldName")) and end.lower() in rows.columns:
            later = F.to_date(value) > F.to_date(F.col(end.lower()))
            counted(f"sbe_{column.name}", "plausibleStartBeforeEnd", column, later, value.isNotNull())
    if spec.primary_key:
        counts["_distinct_key"] = F.countDistinct(spec.primary_key)
    temporal = [c for c in spec.fields if c.spark_type in ("date", "timestamp")]
    frame = rows
    if persons is not None and "person_id" in rows.columns and table != "person":
        frame = rows.join(persons, "person_id", "left")
        for column in temporal:
            value = F.col(column.name)
            if column.check("plausibleAfterBirth"):
                early = F.to_date(value) < F.col("_birth")
                counted(f"pab_{column.name}", "plausibleAfterBirth", column, early, value.isNotNull())
            if column.check("plausibleBeforeDeath"):  # DQD 2.x's; plausibleDuringLife, its predecessor, is left out
                late = F.to_date(value) > F.date_add(F.col("_death"), 60)
                counted(f"pbd_{column.name}", "plausibleBeforeDeath", column, late, F.col("_death").isNotNull())
    for name, (violated, denominator) in ratios.items():
        counts[name], counts[f"{name}_of"] = violated, denominator
    totals = frame.agg(*[expression.alias(name) for name, expression in counts.items()]).first()
    total = int(totals["_rows"])
    results = []
    for name, spec_field, check in checked:
        details = {}
        for parameter in ("plausibleValueLow", "plausibleValueHigh", "plausibleStartBeforeEndFieldName"):
            if check.startswith(parameter.removesuffix("FieldName")) and spec_field.check(parameter):
                details = {parameter: spec_field.check(parameter)}
        results.append(
            DqdResult(
                check,
                table,
                spec_field.name,
                int(totals[name] or 0),
                int(totals[f"{name}_of"] or 0) if name in ratios else total,
                _threshold(spec_field, check),
                details=details,
            )
        )
    if spec.primary_key:
        key = spec.field(spec.primary_key)
        duplicates = total - int(totals["_distinct_key"])
        results.append(
            DqdResult("isPrimaryKey", table, key.name, duplicates, total, _threshold(key, "isPrimaryKey"), True)
        )
    return results


def reference_checks(rows: dict[str, DataFrame], totals: dict[str, int], concept: DataFrame) -> list[DqdResult]:
    """DQD's checks of every reference of `rows`' tables, in one query (every reference as table, field, target and
    value, joined with every key): `isForeignKey` to another of those tables (blocking) or to a concept (concept 0,
    "no matching concept", is in every vocabulary download, so it counts as found); for concept fields DQD flags,
    `isStandardValidConcept` (a valid standard concept) and `fkDomain` (of the field's domain)."""
    references = [
        (table, column)
        for table in rows
        for column in cdm_table(table).fields
        if column.foreign_table == "concept"
        or (
            column.foreign_table in rows
            and column.foreign_table != table
            and cdm_table(column.foreign_table).primary_key
        )
    ]
    if not references:
        return []
    values = reduce(
        lambda a, b: a.unionByName(b),
        [
            rows[table].select(
                F.lit(table).alias("_table"),
                F.lit(column.name).alias("_field"),
                F.lit(column.foreign_table).alias("_target"),
                F.col(column.name).cast("bigint").alias("_value"),
                F.lit(column.check("fkDomain")).cast("string").alias("_domain"),
            )
            for table, column in references
        ],
    ).where(F.col("_value").isNotNull() & ~((F.col("_target") == "concept") & (F.col("_value") == UNKNOWN_CONCEPT)))
    targets = sorted({column.foreign_table for _, column in references} - {"concept"})
    known = reduce(
        lambda a, b: a.unionByName(b),
        [
            concept.select(
                F.lit("concept").alias("_target"),
                F.col("concept_id").cast("bigint").alias("_value"),
                ((F.col("standard_concept") == "S") & F.col("invalid_reason").isNull()).alias("_standard"),
                F.col("domain_id").alias("_domain_of"),
            ),
            *[
                rows[target].select(
                    F.lit(target).alias("_target"),
                    F.col(cdm_table(target).primary_key).cast("bigint").alias("_value"),
                    F.lit(True).alias("_standard"),
                    F.lit(None).cast("string").alias("_domain_of"),
                )
                for target in targets
            ],
        ],
    ).dropDuplicates(["_target", "_value"])
    found = F.col("_domain_of").isNotNull() | F.col("_standard").isNotNull()
    counted = (
        values.join(known, ["_target", "_value"], "left")
        .groupBy("_table", "_field")
        .agg(
            F.sum(F.when(~found, 1).otherwise(0)).alias("isForeignKey"),
            F.sum(F.when(found & ~F.col("_standard"), 1).otherwise(0)).alias("isStandardValidConcept"),
            F.sum(F.when(found & (F.col("_domain_of") != F.col("_domain")), 1).otherwise(0)).alias("fkDomain"),
        )
        .collect()
    )
    violated = {(row["_table"], row["_field"]): row for row in counted}
    results = []
    for table, column in references:
        counts = violated.get((table, column.name))
        internal = column.foreign_table != "concept"
        checks = [("isForeignKey", {"fkTableName": column.foreign_table.upper()})]
        if not internal and column.check("isStandardValidConcept"):
            checks.append(("isStandardValidConcept", {}))
        if not internal and column.check("fkDomain"):
            checks.append(("fkDomain", {"fkDomain": column.check("fkDomain")}))
        for check, details in checks:
            results.append(
                DqdResult(
                    check,
                    table,
                    column.name,
                    int(counts[check] or 0) if counts else 0,
                    totals[table],
                    _threshold(column, check),
                    internal,
                    details,
                )
            )
    return results


def concept_checks(rows: dict[str, DataFrame], people: DataFrame) -> list[DqdResult]:
    """DQD's concept-level checks with its thresholds, for the concepts the build holds: `plausibleGender` (a
    record of a sex-specific concept on a person of the other gender) and `plausibleUnitConceptIds` (a
    measurement of a concept in a unit DQD does not expect; 0 and no unit are left to the completeness checks).
    `people` is (person_id, _gender)."""
    results = []
    for check in ("plausibleGender", "plausibleUnitConceptIds"):
        specs = [s for s in concept_level() if s[check] and s["cdmTableName"].lower() in rows]
        for table in sorted({s["cdmTableName"].lower() for s in specs}):
            own = [s for s in specs if s["cdmTableName"].lower() == table]
            field_name = own[0]["cdmFieldName"].lower()
            by_concept = {int(s["conceptId"]): s for s in own}
            session = rows[table].sparkSession
            expected = session.createDataFrame(
                [(c, s[check]) for c, s in by_concept.items()], f"{field_name} int, _expected string"
            )
            frame = rows[table].join(expected, field_name)
            if check == "plausibleGender":
                genders = session.createDataFrame(list(GENDERS.items()), "_expected string, _expected_gender int")
                frame = frame.join(people, "person_id", "left").join(genders, "_expected", "left")
                violated = F.col("_gender") != F.col("_expected_gender")
            else:
                unit = F.col("unit_concept_id")
                listed = F.array_contains(F.split("_expected", ","), unit.cast("string"))
                violated = unit.isNotNull() & (unit != UNKNOWN_CONCEPT) & ((F.trim("_expected") == "-1") | ~listed)
            counted = frame.groupBy(field_name).agg(
                F.count(F.lit(1)).alias("_rows"), F.sum(F.when(violated, 1).otherwise(0)).alias("_violated")
            )
            for row in counted.collect():
                spec = by_concept[row[field_name]]
                threshold = spec[f"{check}Threshold"]
                results.append(
                    DqdResult(
                        check,
                        table,
                        field_name,
                        int(row["_violated"]),
                        int(row["_rows"]),
                        float(threshold) if threshold else 0.0,
                        details={"conceptName": spec["conceptName"], check: spec[check]},
                        concept_id=row[field_name],
                    )
                )
    return results


def table_rows(results: list[DqdResult]) -> dict[str, int]:
    """Each checked table's rows: the denominator of its required-field checks (every CDM table has one)."""
    return {r.table: r.denominator for r in results if r.check_name == "isRequired"}


def results_json(results: list[DqdResult], cdm_source: dict, started: dt.datetime, ended: dt.datetime) -> str:
    """DQD's results file: the check results, the CDM_SOURCE row (camel case, with the DQD version) as metadata and
    the overview DQD's viewer shows."""
    failed = [r for r in results if r.failed]
    overview: dict[str, object] = {
        "countTotal": len(results),
        "countPassed": len(results) - len(failed),
        "countErrorFailed": 0,
        "countThresholdFailed": len(failed),
        "countOverallFailed": len(failed),
        "percentPassed": round(100 * (len(results) - len(failed)) / len(results), 2) if results else 100,
        "percentFailed": round(100 * len(failed) / len(results), 2) if results else 0,
    }
    categories = ("Plausibility", "Conformance", "Completeness")
    for kind, chosen in (("Total", results), ("Failed", failed), ("Passed", [r for r in results if not r.failed])):
        for category in categories:
            overview[f"count{kind}{category}"] = sum(1 for r in chosen if r.description["kahnCategory"] == category)
    metadata = {_camel(key): value for key, value in cdm_source.items()}
    seconds = (ended - started).total_seconds()
    document = {
        "startTimestamp": started.strftime("%Y-%m-%d %H:%M:%S"),
        "endTimestamp": ended.strftime("%Y-%m-%d %H:%M:%S"),
        "executionTime": f"{seconds:.0f} secs",
        "executionTimeSeconds": round(seconds, 3),
        "CheckResults": [r.as_json() for r in results],
        "Metadata": [{**metadata, "dqdVersion": DQD_VERSION}],
        "Overview": overview,
    }
    return json.dumps(document, indent=1, default=str)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)
