"""Staging layer: typed, trimmed, deduplicated rows in the canonical schema of `tables.py`, one Apache Iceberg table
per Synthea table.

Plain PySpark DataFrame code (runs on Sail, JVM Spark, Glue or EMR), reading the raw Parquet. Every raw row ends in
exactly one place: staged, quarantined with a reason, or dropped as an exact duplicate of a staged row.
- A value that does not parse in an optional column becomes null and is counted per column (`unparseable_values`).
- A row whose required value is missing or does not parse is quarantined (`unparseable START: '2020-13-45'`), as
  are the lines the raw pass could not split into fields.
- Rows that share a natural key but differ keep one row, the most complete (most non-null values); among equally
  complete rows the one written last in the upload (files in order, then lines), as a corrected line appended to
  an export comes after the line it corrects. The others are quarantined as key conflicts.
Tables without a natural key get the row's content hash as their key, `row_key`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from synthea_pipeline.tables import SPARK_TYPES, TABLES, UNKNOWN_MEMBER_KEY, Table
from synthea_pipeline.tables import Column as TableColumn
from synthea_pipeline.transforms.checks import Check
from synthea_pipeline.transforms.iceberg import (
    LOAD_PARTITIONING,
    QUARANTINE,
    QUARANTINE_COLUMNS,
    STAGING_LAYER,
    CommitLog,
    IcebergTables,
    LoadRecord,
    now,
    retry,
)
from synthea_pipeline.transforms.lake import delete_folder
from synthea_pipeline.transforms.raw import RawResult, raw_file_name
from synthea_pipeline.transforms.sql import literal, spark_identifier

SPARK_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.ansi.enabled": "false",
    "spark.sql.legacy.timeParserPolicy": "CORRECTED",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": "zstd",
}
"""Session settings every engine must share so outputs match (Spark 4 turns ANSI on by default)."""

TIMESTAMP_FORMAT = "yyyy-MM-dd'T'HH:mm:ss'Z'"
NUMERIC_TYPES = {"money", "double", "int"}
CODE_SYSTEMS = {
    "http://snomed.info/sct": "SNOMED-CT",
    "snomed-ct": "SNOMED-CT",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "rxnorm": "RxNorm",
    "http://loinc.org": "LOINC",
    "loinc": "LOINC",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "cvx": "CVX",
}
KEY_SEPARATOR = "\x1f"
NULL_MARK = "\x00"


KEY_CONFLICT = "key conflict with kept row"
LINE_SPAN = 10**12
"""Positions in an upload are file index x LINE_SPAN + line number: one number orders every row."""


@dataclass
class StagingResult:
    """The row account of one staged table: rows_read = rows_out + quarantined + duplicates_dropped."""

    table: str
    rows_read: int
    rows_out: int
    quarantined: int = 0
    duplicates_dropped: int = 0
    unparseable_values: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class StagingProfile:
    """Facts about a written staging partition that the asset checks judge."""

    rows: int
    key_duplicates: int
    null_required: dict[str, int]
    filled: dict[str, int] = field(default_factory=dict)
    """Per parsed column, the staged rows that hold a value."""


def configure(spark: SparkSession) -> None:
    for key, value in SPARK_CONF.items():
        spark.conf.set(key, value)


def _normalized(raw: Column, table: Table, name: str) -> Column:
    """Trimmed text with empty strings (and `NaN` in numeric columns, declared tokens) as null. Nested `nullif`
    trims once: `CASE WHEN trim(x) IN (...)` trims twice and makes a scan of every text column a third slower."""
    column = table.column_index[name]
    tokens = ["", *column.null_tokens] + (["NaN"] if column.type in NUMERIC_TYPES else [])
    return reduce(lambda value, token: F.nullif(value, F.lit(token)), tokens, F.trim(raw))


def _typed(value: Column, column_type: str, sql_name: str) -> Column:
    if column_type == "string":
        return value
    if column_type == "code_system":
        lowered = F.lower(value)
        mapped = reduce(lambda acc, kv: acc.when(lowered == kv[0], kv[1]), CODE_SYSTEMS.items(), F)
        return mapped.otherwise(value)
    if column_type == "date":
        return F.to_date(value, "yyyy-MM-dd")
    if column_type == "double":
        return F.expr(f"try_cast({sql_name} as double)") + F.lit(0.0)
    if column_type == "timestamp":
        return F.coalesce(F.to_timestamp(value, TIMESTAMP_FORMAT), F.to_timestamp(value, "yyyy-MM-dd"))
    if column_type == "year_or_timestamp":
        return F.when(value.rlike(r"^\d{4}$"), F.to_timestamp(value, "yyyy")).otherwise(
            _typed(value, "timestamp", sql_name)
        )
    return F.expr(f"try_cast({sql_name} as {SPARK_TYPES[column_type]})")


def source_columns(table: Table, raw: RawResult) -> dict[str, str]:
    """The raw Parquet column each canonical column of the table is read from (absent ones left out)."""
    by_name = {canonical: raw.raw_columns[raw.header.index(header)] for header, canonical in raw.columns.items()}
    for column, holder in table.moved_when_absent:
        if column not in by_name and holder in by_name:
            by_name[column] = by_name.pop(holder)
    return by_name


def read_raw(spark: SparkSession, table: Table, raw: RawResult, raw_uri: str) -> DataFrame:
    """Every raw row of one table: each canonical column as normalized text (missing ones as null), with its
    `_file`, `_line`, `_position` in the upload, the raw pass's `_reason` when it rejected the line, and
    `_text`, the row as a line of text."""
    if raw.files:
        frame = spark.read.parquet(*[f"{raw_uri}/{raw_file_name(f)}" for f in raw.files])
        by_name = source_columns(table, raw)
        fields = [F.coalesce(F.col(spark_identifier(c)), F.lit("")) for c in raw.raw_columns]
        text = F.coalesce(F.col("_text"), F.concat_ws(",", *fields))
        file_index = F.element_at(
            F.create_map(*[F.lit(v) for i, f in enumerate(raw.files) for v in (f, i)]), F.col("_file")
        )
    else:
        frame = spark.createDataFrame([], "_file string, _line bigint, _reason string, _text string")
        by_name, text, file_index = {}, F.col("_text"), F.lit(0)
    return frame.select(
        *[
            (
                _normalized(F.col(spark_identifier(by_name[name])), table, name)
                if name in by_name
                else F.lit(None).cast("string")
            ).alias(name)
            for name in table.column_names
        ],
        "_file",
        "_line",
        (file_index.cast("bigint") * LINE_SPAN + F.col("_line")).alias("_position"),
        "_reason",
        text.alias("_text"),
    )


def rejection(table: Table) -> Column:
    """Why a row that the raw pass accepted cannot be staged: its first required value that is missing or does
    not parse as its type, or an id that names the marts' unknown member; null when it can be staged."""
    problems = [
        F.when(F.col(c.name).isNull(), F.lit(f"missing required {c.header}")).when(
            _typed(F.col(c.name), c.type, f"`{c.name}`").isNull(),
            F.concat(F.lit(f"unparseable {c.header}: '"), F.col(c.name), F.lit("'")),
        )
        for c in table.required_columns
    ]
    if "id" in table.key:
        problems.append(
            F.when(
                F.col("id") == UNKNOWN_MEMBER_KEY,
                F.lit(f"reserved id: '{UNKNOWN_MEMBER_KEY}' is the key of the marts' unknown members"),
            )
        )
    return F.coalesce(*problems) if problems else F.lit(None).cast("string")


def row_key(table: Table) -> Column:
    """Hash of a row's values as text: the key of tables that have no natural key, and how key conflicts tell
    one version of a row from another (there computed on typed columns, hence the cast)."""
    values = [F.coalesce(F.col(n).cast("string"), F.lit(NULL_MARK)) for n in table.column_names]
    return F.md5(F.concat_ws(KEY_SEPARATOR, *values))


@dataclass(frozen=True)
class StagingColumn:
    """A column of a staging table, as its Iceberg table, its catalog view and its Dagster schema show it."""

    name: str
    spark_type: str
    description: str
    nullable: bool


ROW_KEY = StagingColumn("row_key", "string", "Key: MD5 of the row's normalized values.", nullable=False)
LOAD_COLUMNS = (
    StagingColumn("upload_id", "string", "The upload this row came from.", nullable=False),
    StagingColumn(
        "load_id",
        "string",
        "The staging run that wrote this row; readers take only the committed load of each upload.",
        nullable=False,
    ),
)


def staging_columns(table: Table) -> list[StagingColumn]:
    """The columns of a staging table: the contract's, `row_key` when the table has no natural key, then
    `upload_id` and `load_id`."""
    contract = [StagingColumn(c.name, c.spark_type, c.description, nullable=not c.required) for c in table.columns]
    return [*contract, *([] if table.has_natural_key else [ROW_KEY]), *LOAD_COLUMNS]


def staging_schema(table: Table) -> str:
    """The columns of a staging table as DDL, to create it or add what an older table lacks."""
    return ", ".join(f"{spark_identifier(c.name)} {c.spark_type}" for c in staging_columns(table))


def type_columns(table: Table, text: DataFrame, *carried: str) -> DataFrame:
    """Typed canonical columns, plus `row_key` for tables without a natural key, plus the `carried` columns."""
    typed = [_typed(F.col(c.name), c.type, f"`{c.name}`").cast(c.spark_type).alias(c.name) for c in table.columns]
    return text.select(*typed, *([] if table.has_natural_key else [row_key(table).alias("row_key")]), *carried)


def parsed_columns(table: Table) -> list[TableColumn]:
    """The optional columns typing can turn from text into null: their unparseable values are counted."""
    return [c for c in table.columns if c.type not in ("string", "code_system") and not c.required]


def read_counts(lines: DataFrame) -> tuple[int, int, int]:
    """Rows read, rows the raw pass rejected, and rows rejected here (`_problem`): reads `_reason` and the
    required columns only."""
    row = lines.agg(
        F.count(F.lit(1)).alias("_rows"),
        F.sum(F.col("_reason").isNotNull().cast("int")).alias("_raw_rejected"),
        F.sum((F.col("_reason").isNull() & F.col("_problem").isNotNull()).cast("int")).alias("_rejected"),
    ).collect()[0]
    return int(row["_rows"]), int(row["_raw_rejected"] or 0), int(row["_rejected"] or 0)


def unparseable_values(lines: DataFrame, columns: list[TableColumn]) -> dict[str, int]:
    """Per column, how many values of stageable rows are present as text but do not parse as its type."""
    stageable = F.col("_reason").isNull() & F.col("_problem").isNull()
    row = lines.agg(
        *[
            F.sum(
                (stageable & F.col(c.name).isNotNull() & _typed(F.col(c.name), c.type, f"`{c.name}`").isNull()).cast(
                    "int"
                )
            ).alias(c.name)
            for c in columns
        ]
    ).collect()[0]
    return {c.name: int(row[c.name]) for c in columns if row[c.name]}


def may_hold_unparseable(table: Table, raw: RawResult, facts: StagingProfile) -> list[TableColumn]:
    """The parsed columns where a value may not have parsed: those whose staged values are fewer than the
    non-empty raw ones. Each raw value is staged, unparseable, text that normalizes to null (blanks, `NaN`, null
    tokens) or in a row rejected here, so where the counts are equal no value failed to parse."""
    sources = source_columns(table, raw)
    return [c for c in parsed_columns(table) if raw.filled.get(sources.get(c.name, ""), 0) > facts.filled[c.name]]


def quarantine_rows(lines: DataFrame, reason: Column, table: str, upload_id: str, load_id: str) -> DataFrame:
    return lines.select(
        F.lit(table).alias("table_name"),
        F.lit(upload_id).alias("upload_id"),
        F.lit(load_id).alias("load_id"),
        F.col("_file").alias("file"),
        F.col("_line").alias("line_number"),
        reason.alias("reason"),
        F.col("_text").alias("text"),
    )


def key_conflict_losers(table: Table, staged: DataFrame, rows: DataFrame) -> DataFrame:
    """Every line of the row versions that lose a key conflict, with its `_content` (the version's hash) and a
    `_reason` naming the rule that decided. `staged` holds the distinct rows, `rows` every stageable row typed,
    with `_file`, `_line`, `_position` and `_text`."""
    renamed = [f"_key{i}" for i in range(len(table.key))]
    conflicted = (
        staged.groupBy(*table.key)
        .count()
        .where(F.col("count") > 1)
        .select(*[F.col(k).alias(r) for k, r in zip(table.key, renamed, strict=False)])
    )
    pairs = zip(table.key, renamed, strict=True)
    matches = reduce(lambda a, b: a & b, [F.col(k).eqNullSafe(F.col(r)) for k, r in pairs])
    filled = reduce(lambda a, b: a + b, [F.col(n).isNotNull().cast("int") for n in table.column_names])
    candidates = rows.join(conflicted, matches, "left_semi").select(
        "*", row_key(table).alias("_content"), filled.alias("_filled")
    )
    versions = candidates.groupBy(*table.key, "_content", "_filled").agg(F.max("_position").alias("_last"))
    by_key = Window.partitionBy(*table.key)
    ranked = versions.select(
        "_content",
        "_filled",
        F.row_number().over(by_key.orderBy(F.col("_filled").desc(), F.col("_last").desc())).alias("_rank"),
        F.max("_filled").over(by_key).alias("_kept_filled"),
    )
    losers = ranked.where(F.col("_rank") > 1).select(
        "_content",
        F.when(F.col("_filled") < F.col("_kept_filled"), F.lit(f"{KEY_CONFLICT}: the kept row is more complete"))
        .otherwise(F.lit(f"{KEY_CONFLICT}: the kept row comes later in the upload"))
        .alias("_reason"),
    )
    return candidates.join(losers, "_content")


def stage_table(
    spark: SparkSession, table: Table, raw: RawResult, raw_uri: str, lake: IcebergTables, upload_id: str, load_id: str
) -> tuple[StagingResult, StagingProfile]:
    """Append one table's staged and quarantined rows of one upload to their Iceberg tables under `load_id`,
    where readers do not look until the upload is committed, and profile them for the checks.

    The typed rows are written as they are: duplicates are rare, and the profile of what was written (one
    distinct count of the key) shows whether there are any. Only then is the load's partition rewritten without
    them: exact duplicates (rows equal once typed) go in one `distinct`, and rows that share a natural key but
    differ are resolved by the costlier window. The quarantined count is read back from the quarantine table, so
    `rows_reconcile` fails if a rejected row was not written."""
    target = lake.ensure(spark, STAGING_LAYER, table.name, staging_schema(table), LOAD_PARTITIONING)
    quarantine_table = lake.ensure(spark, STAGING_LAYER, QUARANTINE, QUARANTINE_COLUMNS, LOAD_PARTITIONING)
    this_load = (F.col("upload_id") == upload_id) & (F.col("load_id") == load_id)
    lines = read_raw(spark, table, raw, raw_uri).withColumn("_problem", rejection(table))
    rows_read, raw_rejected, rejected = read_counts(lines)
    stageable = lines.where(F.col("_reason").isNull() & F.col("_problem").isNull())
    lake.append(
        type_columns(table, stageable).withColumn("upload_id", F.lit(upload_id)).withColumn("load_id", F.lit(load_id)),
        target,
    )
    written = spark.table(target).where(this_load)
    facts = profile(table, written)
    suspects = may_hold_unparseable(table, raw, facts)
    unparseable = unparseable_values(lines, suspects) if suspects else {}
    if raw_rejected or rejected:
        lake.append(
            quarantine_rows(
                lines.where(F.col("_reason").isNotNull() | F.col("_problem").isNotNull()),
                F.coalesce("_reason", "_problem"),
                table.name,
                upload_id,
                load_id,
            ),
            quarantine_table,
        )
    losing_lines = 0
    if facts.key_duplicates:
        kept = written.distinct()
        if table.has_natural_key:
            rows = type_columns(table, stageable, "_file", "_line", "_position", "_text")
            losers = key_conflict_losers(table, kept, rows)
            losing_lines = int(losers.count())
            if losing_lines:
                lake.append(quarantine_rows(losers, F.col("_reason"), table.name, upload_id, load_id), quarantine_table)
                kept = (
                    kept.withColumn("_content", row_key(table))
                    .join(losers.select("_content"), "_content", "left_anti")
                    .drop("_content")
                )
        with lake.commit_lock(target):
            retry(lambda: kept.writeTo(target).overwrite(this_load))
        facts = profile(table, spark.table(target).where(this_load))
    reasons: dict[str, int] = {}
    if raw_rejected or rejected or losing_lines:
        rows = spark.table(quarantine_table).where(this_load & (F.col("table_name") == table.name))
        categories = rows.groupBy(F.split(F.col("reason"), ":").getItem(0).alias("category")).count().collect()
        reasons = {row["category"]: int(row["count"]) for row in categories}
    duplicates = rows_read - raw_rejected - rejected - losing_lines - facts.rows
    result = StagingResult(table.name, rows_read, facts.rows, sum(reasons.values()), duplicates, unparseable, reasons)
    return result, facts


def discard_stale_loads(
    spark: SparkSession,
    lake: IcebergTables,
    commits: CommitLog,
    abandoned_before: dt.datetime,
    upload_id: str | None = None,
) -> list[tuple[str, str]]:
    """Delete the loads that are neither an upload's committed load nor the one committed before it (kept for
    readers that started before the switch): loads that were replaced, and loads begun before
    `abandoned_before` and never committed (runs that died or failed). Also their raw files. Returns the
    (upload, load) pairs deleted."""
    stale = commits.uploads().stale(abandoned_before, upload_id)
    for upload, load in stale:
        discard_load(spark, lake, list(TABLES), upload, load)
        commits.record(LoadRecord(upload, load, "discarded", now()))
    return stale


def discard_load(spark: SparkSession, lake: IcebergTables, tables: list[str], upload_id: str, load_id: str) -> None:
    """Delete one load's rows from the given staging tables and from the quarantine, and its raw files."""
    condition = f"upload_id = {literal(upload_id)} AND load_id = {literal(load_id)}"
    for table in tables:
        delete_folder(lake.layout.raw(table, upload_id, load_id))
    for name in [*tables, QUARANTINE]:
        identifier = lake.open(spark, STAGING_LAYER, name)
        if identifier:
            lake.delete(spark, identifier, condition)


ROWS_RECONCILE = Check(
    "rows_reconcile",
    "Rows in = rows out + quarantined + duplicates dropped.",
    STAGING_LAYER,
    tuple(TABLES),
    blocking=True,
)
KEY_UNIQUE = Check("key_unique", "The table's key identifies one row.", STAGING_LAYER, tuple(TABLES), blocking=True)
REQUIRED_NOT_NULL = Check(
    "required_not_null", "Required columns have no nulls.", STAGING_LAYER, tuple(TABLES), blocking=True
)
STAGING_CHECKS = (ROWS_RECONCILE, KEY_UNIQUE, REQUIRED_NOT_NULL)
"""Blocking: source-data problems are quarantined before they run, so a failure is a pipeline bug."""


def staging_checks(
    table: Table, raw: RawResult, result: StagingResult, facts: StagingProfile
) -> dict[Check, tuple[bool, dict]]:
    """The blocking checks of a staging partition, (passed, metadata) by check (`STAGING_CHECKS`)."""
    accounted = facts.rows + result.quarantined + result.duplicates_dropped
    return {
        ROWS_RECONCILE: (
            raw.rows_in == accounted == result.rows_read,
            {
                "rows_in": raw.rows_in,
                "rows_read_by_spark": result.rows_read,
                "rows_out": facts.rows,
                "quarantined": result.quarantined,
                "duplicates_dropped": result.duplicates_dropped,
                "unaccounted": raw.rows_in - accounted,
            },
        ),
        KEY_UNIQUE: (facts.key_duplicates == 0, {"key": list(table.key), "duplicate_keys": facts.key_duplicates}),
        REQUIRED_NOT_NULL: (not any(facts.null_required.values()), {"null_counts": facts.null_required}),
    }


def profile(table: Table, frame: DataFrame) -> StagingProfile:
    """Two small aggregations: Sail plans a distinct count mixed with other aggregates 50x slower."""
    parsed = parsed_columns(table)
    counts = [F.count(F.lit(1)).alias("rows")]
    counts += [F.sum(F.col(c.name).isNull().cast("int")).alias(c.name) for c in table.required_columns]
    counts += [F.count(c.name).alias(f"_filled_{c.name}") for c in parsed]
    row = frame.agg(*counts).collect()[0]
    keys = frame.agg(F.countDistinct(F.struct(*table.key)).alias("keys")).collect()[0]["keys"]
    return StagingProfile(
        rows=int(row["rows"]),
        key_duplicates=int(row["rows"] - keys),
        null_required={c.name: int(row[c.name] or 0) for c in table.required_columns},
        filled={c.name: int(row[f"_filled_{c.name}"]) for c in parsed},
    )
