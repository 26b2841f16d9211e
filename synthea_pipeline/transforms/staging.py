"""Staging layer: typed, trimmed, deduplicated Parquet in the canonical schema of `tables.py`.

Plain PySpark DataFrame code (runs on Sail, JVM Spark, Glue or EMR). Parsing never fails a job: a value that does
not parse as its column's type becomes null and is counted per column (`unparseable_values`). Exact duplicate rows
are dropped; rows that share a natural key but differ keep the one with the smallest content hash, so the choice
does not depend on file order. Tables without a natural key get that hash as their key, `row_key`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from synthea_pipeline.tables import SPARK_TYPES, Table
from synthea_pipeline.transforms.lake import discard, filesystem_for, staging_area
from synthea_pipeline.transforms.raw import RawResult

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


@dataclass
class StagingResult:
    table: str
    rows_read: int
    rows_out: int
    unparseable_values: dict[str, int] = field(default_factory=dict)

    @property
    def duplicates_dropped(self) -> int:
        return self.rows_read - self.rows_out


@dataclass
class StagingProfile:
    """Facts about a written staging partition that the asset checks judge."""

    rows: int
    key_duplicates: int
    null_required: dict[str, int]


def configure(spark: SparkSession) -> None:
    for key, value in SPARK_CONF.items():
        spark.conf.set(key, value)


def _normalized(raw: Column, table: Table, name: str) -> Column:
    """Trimmed text with empty strings (and `NaN` in numeric columns, declared tokens) as null."""
    column = table.column_index[name]
    tokens = ["", *column.null_tokens] + (["NaN"] if column.type in NUMERIC_TYPES else [])
    value = F.trim(raw)
    return F.when(value.isin(tokens), F.lit(None)).otherwise(value)


def _typed(value: Column, column_type: str, sql_name: str) -> Column:
    if column_type == "string":
        return value
    if column_type == "code_system":
        lowered = F.lower(value)
        mapped = reduce(lambda acc, kv: acc.when(lowered == kv[0], kv[1]), CODE_SYSTEMS.items(), F)
        return mapped.otherwise(value)
    if column_type == "date":
        return F.to_date(value, "yyyy-MM-dd")
    if column_type == "timestamp":
        return F.coalesce(F.to_timestamp(value, TIMESTAMP_FORMAT), F.to_timestamp(value, "yyyy-MM-dd"))
    if column_type == "year_or_timestamp":
        return F.when(value.rlike(r"^\d{4}$"), F.to_timestamp(value, "yyyy")).otherwise(
            _typed(value, "timestamp", sql_name)
        )
    return F.expr(f"try_cast({sql_name} as {SPARK_TYPES[column_type]})")


def read_raw(spark: SparkSession, table: Table, raw: RawResult, raw_uri: str) -> DataFrame:
    """The raw CSV of one table with every canonical column as normalized text (missing ones as null)."""
    if raw.files:
        schema = T.StructType([T.StructField(f"_c{i}", T.StringType()) for i in range(len(raw.header))])
        frame = spark.read.csv([f"{raw_uri}/{f}" for f in raw.files], schema=schema, header=True, quote="\u0000")
        by_name = {canonical: f"_c{raw.header.index(header)}" for header, canonical in raw.columns.items()}
        for column, holder in table.moved_when_absent:
            if column not in by_name and holder in by_name:
                by_name[column] = by_name.pop(holder)
    else:
        frame = spark.createDataFrame([], T.StructType([T.StructField("_c0", T.StringType())]))
        by_name = {}
    return frame.select(
        [
            (_normalized(F.col(by_name[name]), table, name) if name in by_name else F.lit(None).cast("string")).alias(
                name
            )
            for name in table.column_names
        ]
    )


def row_key(table: Table) -> Column:
    """Hash of a row's values as text: the key of tables that have no natural key, and the tie-break between
    rows sharing a natural key (there computed on typed columns, hence the cast)."""
    values = [F.coalesce(F.col(n).cast("string"), F.lit(NULL_MARK)) for n in table.column_names]
    return F.md5(F.concat_ws(KEY_SEPARATOR, *values))


def type_columns(table: Table, text: DataFrame) -> DataFrame:
    """Typed canonical columns, plus `row_key` for tables without a natural key."""
    typed = [_typed(F.col(c.name), c.type, f"`{c.name}`").cast(c.spark_type).alias(c.name) for c in table.columns]
    return text.select(*typed, *([] if table.has_natural_key else [row_key(table).alias("row_key")]))


def resolve_key_conflicts(table: Table, frame: DataFrame) -> DataFrame:
    """Keep, per natural key, the row whose content hash is smallest."""
    window = Window.partitionBy(*table.key).orderBy(row_key(table))
    return frame.withColumn("_rank", F.row_number().over(window)).where("_rank = 1").drop("_rank")


def read_stats(table: Table, text: DataFrame) -> tuple[int, dict[str, int]]:
    """Rows Spark read, and per typed column how many non-null values did not parse."""
    checked = [c for c in table.columns if c.type not in ("string", "code_system")]
    sums = [F.count(F.lit(1)).alias("_rows")] + [
        F.sum(
            F.when(F.col(c.name).isNotNull() & _typed(F.col(c.name), c.type, f"`{c.name}`").isNull(), 1).otherwise(0)
        ).alias(c.name)
        for c in checked
    ]
    row = text.agg(*sums).collect()[0]
    return row["_rows"], {c.name: int(row[c.name]) for c in checked if row[c.name]}


def stage_table(
    spark: SparkSession, table: Table, raw: RawResult, raw_uri: str, staging_uri: str, upload_id: str
) -> tuple[StagingResult, StagingProfile, str]:
    """Write one table's staging partition for one upload beside its final place and profile it; returns the
    temporary location for the caller to `publish` once the profile passes its checks, or to `discard`.

    Exact duplicates go in one `distinct`; rows that share a natural key but differ are rare, so the costlier
    window that resolves them runs only when the written partition shows any."""
    text = read_raw(spark, table, raw, raw_uri)
    rows_read, unparseable = read_stats(table, text)
    staged = type_columns(table, text).distinct().withColumn("upload_id", F.lit(upload_id))
    temp = write_parquet(staged, staging_area(staging_uri))
    facts = profile(spark, table, temp)
    if facts.key_duplicates and table.has_natural_key:
        resolved = write_parquet(resolve_key_conflicts(table, spark.read.parquet(temp)), staging_area(staging_uri))
        discard(temp)
        temp, facts = resolved, profile(spark, table, resolved)
    return StagingResult(table.name, rows_read, facts.rows, unparseable), facts, temp


def staging_checks(table: Table, raw: RawResult, result: StagingResult, facts: StagingProfile
                   ) -> dict[str, tuple[bool, dict]]:
    """The blocking checks of a staging partition: (passed, metadata) by check name."""
    accounted = facts.rows + raw.quarantined + result.duplicates_dropped
    return {
        "rows_reconcile": (raw.rows_in == accounted, {
            "rows_in": raw.rows_in, "rows_out": facts.rows, "quarantined": raw.quarantined,
            "duplicates_dropped": result.duplicates_dropped, "unaccounted": raw.rows_in - accounted}),
        "key_unique": (facts.key_duplicates == 0, {"key": list(table.key), "duplicate_keys": facts.key_duplicates}),
        "required_not_null": (not any(facts.null_required.values()), {"null_counts": facts.null_required}),
    }


def write_parquet(frame: DataFrame, uri: str) -> str:
    frame.write.mode("overwrite").option("compression", "zstd").parquet(uri)
    _ensure_parquet(uri, to_arrow_schema(frame.schema))
    return uri


def _ensure_parquet(uri: str, schema) -> None:
    """Writes one empty typed file when the engine wrote none (Sail writes no file for an empty DataFrame), so
    readers always find the schema."""
    fs, path = filesystem_for(uri)
    files = [
        i.path
        for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        if i.path.endswith(".parquet") and i.type == pafs.FileType.File
    ]
    if not files:
        fs.create_dir(path)
        with fs.open_output_stream(f"{path}/part-00000.parquet") as out:
            pq.write_table(schema.empty_table(), out, compression="zstd")


def profile(spark: SparkSession, table: Table, staging_uri: str) -> StagingProfile:
    """Two small aggregations: Sail plans a distinct count mixed with other aggregates 50x slower."""
    frame = spark.read.parquet(staging_uri)
    counts = [F.count(F.lit(1)).alias("rows")]
    counts += [F.sum(F.col(c.name).isNull().cast("int")).alias(c.name) for c in table.required_columns]
    row = frame.agg(*counts).collect()[0]
    keys = frame.agg(F.countDistinct(F.struct(*table.key)).alias("keys")).collect()[0]["keys"]
    return StagingProfile(
        rows=row["rows"],
        key_duplicates=row["rows"] - keys,
        null_required={c.name: int(row[c.name] or 0) for c in table.required_columns},
    )
