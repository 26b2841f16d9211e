"""The lake's Apache Iceberg tables, and the commit logs that make an upload (and a marts build) appear to every
reader at once.

Each staging table, the quarantine and each mart is an Iceberg format-v2 table at `LAKE/<layer>/<table>/`. Iceberg
commits one table at a time, so one table's commit cannot publish an upload that spans twenty tables. Instead:
- every staged and quarantined row carries the `load_id` of the run that wrote it (tables are partitioned by
  `upload_id` and `load_id`), and every mart row the `build_id` of its build (partitioned by `build_id`);
- a run appends its rows under a new id, where no reader looks, then appends one record to a commit log,
  `staging/uploads` or `marts/builds`: that single Iceberg commit is the moment the whole upload (or build)
  switches for every reader, because readers (catalog views, the marts, their checks) only take rows of the
  committed ids;
- ids that are neither current nor the one before are deleted afterwards (keeping the previous one lets a
  reader that started before the switch finish), and ids of runs that died are never committed, so nothing
  half-written is ever read.

How a Spark session names the tables depends on where the lake is and which engine runs (`catalog`):
- `path`: Sail on a local lake; tables are registered in the session by their location.
- `hadoop`: JVM Spark on a local lake; an Iceberg Hadoop catalog named `lake` whose warehouse is the lake root.
- `glue`: a lake on S3, on any engine; an Iceberg catalog named `glue` over the Glue Data Catalog, which commits
  with optimistic concurrency. Its databases are the user-facing ones suffixed `_iceberg`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from pyarrow import fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DataType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StructField,
    StructType,
)

from synthea_pipeline.transforms.lake import Lake, aws_client, filesystem_for
from synthea_pipeline.transforms.sql import literal

CATALOGS = ("path", "hadoop", "glue")
GLUE_CATALOG = "glue"
HADOOP_CATALOG = "lake"
ICEBERG_DATABASE_SUFFIX = "_iceberg"
STAGING_DATABASE, MARTS_DATABASE, OMOP_DATABASE = "synthea_staging", "synthea_marts", "synthea_omop"
"""The catalog databases readers query unless configured otherwise (settings `SYNTHEA_STAGING_DATABASE`,
`SYNTHEA_MARTS_DATABASE`, `SYNTHEA_OMOP_DATABASE`)."""
STAGING_LAYER, MARTS_LAYER, OMOP_LAYER = "staging", "marts", "omop"
QUARANTINE, UPLOADS, BUILDS = "quarantine", "uploads", "builds"
UPLOADS_COLUMNS = (
    "upload_id string, load_id string, action string, logged_at timestamp, registered_at timestamp, "
    "upload_checksum string, synthea_release string, upload_token string, note string, patients bigint"
)
"""`upload_token` names the manifest a load was made from, or the one a removal took out; `note` says why a load
was discarded or an upload removed; `patients` is a committed load's count of staged patients."""
BUILDS_COLUMNS = "build_id string, action string, logged_at timestamp, includes_identifiers boolean"
MARTS_SUBJECT = MARTS_LAYER
"""Builds are kept in the same shape as loads: one subject per built layer (the marts, the OMOP tables), whose
versions are builds; each layer has its own builds log, `<layer>/builds`."""
QUARANTINE_COLUMNS = (
    "table_name string, upload_id string, load_id string, file string, line_number bigint, reason string, text string"
)
LOAD_PARTITIONING = ("upload_id", "load_id")
BUILD_PARTITIONING = ("build_id",)
COMMIT_ATTEMPTS = 5
CONFLICT_MARKERS = ("conflict", "Cannot commit", "CommitFailedException", "ConcurrentModificationException")
"""How Sail, Iceberg Java and Glue word a lost optimistic commit."""
LOCKS_FOLDER = ".locks"
GLUE_TABLE_INPUT_KEYS = (
    "Name",
    "Description",
    "Owner",
    "Retention",
    "StorageDescriptor",
    "PartitionKeys",
    "TableType",
    "Parameters",
)
"""The parts of a Glue table that `UpdateTable` takes back."""
ABANDONED_AFTER = dt.timedelta(days=1)
"""A build begun this long ago and never committed belongs to a run that died: a later build deletes its rows."""

T = TypeVar("T")


@dataclass(frozen=True)
class IcebergTables:
    """The lake's Iceberg tables as one Spark session sees them."""

    root: str
    table_catalog: str = "path"
    staging_database: str = STAGING_DATABASE
    marts_database: str = MARTS_DATABASE
    omop_database: str = OMOP_DATABASE

    def __post_init__(self):
        if self.table_catalog not in CATALOGS:
            raise ValueError(f"unknown Iceberg catalog {self.table_catalog!r}: choose one of {', '.join(CATALOGS)}")

    @property
    def layout(self) -> Lake:
        return Lake(self.root)

    def location(self, layer: str, table: str) -> str:
        return self.layout.uri(layer, table)

    def database(self, layer: str) -> str:
        """The Glue database that holds a layer's Iceberg tables."""
        names = {STAGING_LAYER: self.staging_database, OMOP_LAYER: self.omop_database}
        return names.get(layer, self.marts_database) + ICEBERG_DATABASE_SUFFIX

    def identifier(self, layer: str, table: str) -> str:
        if self.table_catalog == "glue":
            return f"{GLUE_CATALOG}.{self.database(layer)}.{table}"
        if self.table_catalog == "hadoop":
            return f"{HADOOP_CATALOG}.{layer}.{table}"
        return f"{layer}__{table}"

    def exists(self, spark: SparkSession, layer: str, table: str) -> bool:
        """Whether the table is in the lake: path and Hadoop tables keep a version hint beside their metadata,
        Glue tables are in the catalog."""
        if self.table_catalog == "glue":
            return spark.catalog.tableExists(self.identifier(layer, table))
        fs, path = filesystem_for(self.location(layer, table) + "/metadata/version-hint.text")
        return fs.get_file_info(path).type == pafs.FileType.File

    def open(self, spark: SparkSession, layer: str, table: str) -> str | None:
        """The identifier of an existing table in this session, None when the lake has no such table."""
        if not self.exists(spark, layer, table):
            return None
        if self.table_catalog == "path":
            spark.sql(
                f"CREATE TABLE IF NOT EXISTS {self.identifier(layer, table)} USING iceberg "
                f"LOCATION '{self.location(layer, table)}'"
            )
        return self.identifier(layer, table)

    def ensure(
        self, spark: SparkSession, layer: str, table: str, columns: str, partitioned_by: tuple[str, ...] = ()
    ) -> str:
        """The table's identifier in this session, creating the table (empty) when it does not exist yet, and
        evolving an existing table (written by an earlier contract) to the `columns` (`evolve`)."""
        identifier = self.identifier(layer, table)
        if self.open(spark, layer, table):
            self.evolve(spark, layer, table, columns)
            return identifier
        partitioning = f" PARTITIONED BY ({', '.join(partitioned_by)})" if partitioned_by else ""
        location = "" if self.table_catalog == "hadoop" else f" LOCATION '{self.location(layer, table)}'"
        if self.table_catalog == "glue":
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {GLUE_CATALOG}.{self.database(layer)}")
        if self.table_catalog == "hadoop":
            spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {HADOOP_CATALOG}.{layer}")
        with self.commit_lock(identifier):
            if self.open(spark, layer, table):
                return identifier
            try:
                spark.sql(f"CREATE TABLE IF NOT EXISTS {identifier} ({columns}) USING iceberg{partitioning}{location}")
            except Exception:
                if not self.open(spark, layer, table):
                    raise
        return identifier

    def evolve(self, spark: SparkSession, layer: str, table: str, columns: str) -> list[str]:
        """Iceberg schema evolution, so a lake written by an earlier contract upgrades itself: adds the declared
        `columns` the table lacks (null in its earlier rows, after the table's last column) and widens the ones
        declared wider, in place, and returns their names. JVM Spark alters the table; Sail, which has no `ALTER
        TABLE ... ADD COLUMNS` or `ALTER COLUMN ... TYPE`, appends no rows with the declared schema, merging it into
        the table's; its Glue commit leaves Glue's columns as they were, so `show_columns_in_glue` updates them."""
        identifier = self.identifier(layer, table)
        declared = spark.createDataFrame([], columns)
        if not any(self.changes(spark, identifier, declared.schema)):
            return []
        with self.commit_lock(identifier):
            missing, widened = self.changes(spark, identifier, declared.schema)
            added = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
            statements = [f"ALTER TABLE {identifier} ADD COLUMNS ({added})"] if missing else []
            statements += [
                f"ALTER TABLE {identifier} ALTER COLUMN `{f.name}` TYPE {f.dataType.simpleString()}" for f in widened
            ]
            try:
                spark.sql(statements[0])
            except Exception:
                retry(lambda: declared.writeTo(identifier).option("mergeSchema", "true").append())
                if self.table_catalog == "glue":
                    retry(lambda: self.show_columns_in_glue(spark, layer, table))
            else:
                for statement in statements[1:]:
                    spark.sql(statement)
        return [f.name for f in (*missing, *widened)]

    def show_columns_in_glue(self, spark: SparkSession, layer: str, table: str) -> None:
        """Make the Glue table's columns (what the Glue console, crawlers and Lake Formation show) the Iceberg
        table's, as Iceberg's own Glue catalog does on every commit; the Glue table's partition keys stay."""
        glue = aws_client("glue")
        found = glue.get_table(DatabaseName=self.database(layer), Name=table)["Table"]
        partition_keys = {key["Name"] for key in found.get("PartitionKeys", [])}
        kept = {column["Name"]: column for column in found["StorageDescriptor"].get("Columns", [])}
        columns = [
            {**kept.get(f.name, {}), "Name": f.name, "Type": f.dataType.simpleString()}
            for f in spark.table(self.identifier(layer, table)).schema
            if f.name not in partition_keys
        ]
        table_input = {key: value for key, value in found.items() if key in GLUE_TABLE_INPUT_KEYS}
        table_input["StorageDescriptor"] = {**found["StorageDescriptor"], "Columns": columns}
        glue.update_table(
            DatabaseName=self.database(layer),
            TableInput=table_input,
            **({"VersionId": found["VersionId"]} if found.get("VersionId") else {}),
        )

    def changes(
        self, spark: SparkSession, identifier: str, declared: StructType
    ) -> tuple[list[StructField], list[StructField]]:
        """The declared columns the table lacks, and those it has in a type Iceberg widens to the declared one
        (int to bigint, float to double, a decimal to more digits of the same scale). Raises `SchemaConflict` for
        any other difference: Iceberg cannot narrow or convert a column in place."""
        existing = {f.name: f.dataType for f in spark.table(identifier).schema}
        missing = [f for f in declared if f.name not in existing]
        changed = [f for f in declared if f.name in existing and existing[f.name] != f.dataType]
        for column in changed:
            if not widens(existing[column.name], column.dataType):
                raise SchemaConflict(
                    f"{identifier}: column {column.name} is {existing[column.name].simpleString()} in the lake but "
                    f"{column.dataType.simpleString()} in the contract, a change Iceberg cannot make in place (only "
                    f"int to bigint, float to double, decimal to more digits); declare the lake's type, or move the "
                    f"table's folder aside and reprocess its uploads"
                )
        return missing, changed

    def append(self, frame: DataFrame, identifier: str) -> None:
        """Append rows in one Iceberg commit, retried when another writer committed first."""
        with self.commit_lock(identifier):
            retry(lambda: frame.writeTo(identifier).append())

    def delete(self, spark: SparkSession, identifier: str, condition: str) -> None:
        with self.commit_lock(identifier):
            retry(lambda: spark.sql(f"DELETE FROM {identifier} WHERE {condition}"))

    def delete_everywhere(
        self, spark: SparkSession, layer: str, tables: Iterable[str], column: str, value: str
    ) -> None:
        """Delete the rows whose `column` is `value` from each of a layer's `tables` the lake has (a build's or a
        load's rows)."""
        for table in tables:
            identifier = self.open(spark, layer, table)
            if identifier:
                self.delete(spark, identifier, f"{column} = {literal(value)}")

    @contextmanager
    def commit_lock(self, identifier: str) -> Iterator[None]:
        """Serializes the commits to one table of a local lake across threads and processes. Path-based
        Iceberg commits are not atomic across processes: two Sail processes appending ten rows each to one
        table here kept 19. Sail and JVM Spark share the lock of a table (named `<layer>.<table>`), an expiry of
        its snapshots (`upkeep`) takes it too. The lock is a `flock`, released by the kernel when its holder dies.
        On S3 the Glue Data Catalog's optimistic concurrency does this job (`retry`)."""
        if self.layout.on_s3:
            yield
            return
        folder = os.path.join(self.root, LOCKS_FOLDER)
        os.makedirs(folder, exist_ok=True)
        layer_and_table = ".".join(identifier.replace("__", ".").split(".")[-2:])
        with open(os.path.join(folder, f"{layer_and_table}.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class SchemaConflict(Exception):
    """A table's column has a type the contract cannot reach by Iceberg's in-place widening."""


def widens(old: DataType, new: DataType) -> bool:
    """Whether Iceberg's schema evolution turns a column of type `old` into one of type `new` in place."""
    if isinstance(old, DecimalType) and isinstance(new, DecimalType):
        return old.scale == new.scale and old.precision < new.precision
    return (type(old), type(new)) in {(IntegerType, LongType), (FloatType, DoubleType)}


def retry(commit: Callable[[], T]) -> T:
    """Run an Iceberg commit, again after a commit conflict: catalogs that commit optimistically (Glue) report a
    concurrent commit as an error instead of retrying. Any other error is raised at once: the commit may have
    happened, and repeating it could write its rows twice."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return commit()
        except Exception as error:
            if attempt == COMMIT_ATTEMPTS or not any(marker in str(error) for marker in CONFLICT_MARKERS):
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def utc(moment: dt.datetime | None) -> dt.datetime | None:
    """A timestamp read back from a table: engines return them naive, in the session's time zone (UTC)."""
    return moment.replace(tzinfo=dt.timezone.utc) if moment is not None and moment.tzinfo is None else moment


@dataclass(frozen=True)
class LoadRecord:
    upload_id: str
    load_id: str
    action: str
    logged_at: dt.datetime
    registered_at: dt.datetime | None = None
    upload_checksum: str | None = None
    synthea_release: str | None = None
    upload_token: str | None = None
    note: str | None = None
    patients: int | None = None


@dataclass
class UploadLog:
    """What the `staging/uploads` log says: for each upload, its committed load (if not removed), the load
    committed before it and every load a run began. Actions: `begun` (a run started writing a load),
    `committed` (the load is the upload's content), `discarded` (a load's rows were deleted), `removed` (the
    upload was taken out of the lake)."""

    records: list[LoadRecord] = field(default_factory=list)

    def _by_upload(self) -> dict[str, list[LoadRecord]]:
        grouped: dict[str, list[LoadRecord]] = {}
        for record in sorted(self.records, key=lambda r: (r.logged_at, r.load_id, r.action)):
            grouped.setdefault(record.upload_id, []).append(record)
        return grouped

    def current(self) -> dict[str, LoadRecord]:
        """Each upload in the lake and its committed load."""
        current = {}
        for upload, records in self._by_upload().items():
            decisive = [r for r in records if r.action in ("committed", "removed")]
            if decisive and decisive[-1].action == "committed":
                current[upload] = decisive[-1]
        return current

    def order(self) -> list[str]:
        """Uploads in the order they entered the lake (their first commit after any removal): later wins."""
        current = self.current()
        return sorted(current, key=lambda u: (current[u].registered_at, u))

    def previous(self, upload_id: str) -> str | None:
        committed = [r.load_id for r in self._by_upload().get(upload_id, []) if r.action == "committed"]
        return committed[-2] if len(committed) > 1 else None

    def registered_at(self, upload_id: str, now: dt.datetime) -> dt.datetime:
        """When an upload committed now entered the lake: kept from its earlier commits unless it was removed."""
        records = [r for r in self._by_upload().get(upload_id, []) if r.action in ("committed", "removed")]
        if records and records[-1].action == "committed":
            return records[-1].registered_at
        return now

    def stale(self, abandoned_before: dt.datetime, upload_id: str | None = None) -> list[tuple[str, str]]:
        """What a clean-up deletes: (upload, load) pairs not discarded yet that are either committed and
        superseded (neither current nor the previous commit of a current upload), or begun before
        `abandoned_before` and never committed. A load begun later may belong to a run still writing it."""
        current = self.current()
        stale = []
        for upload, records in self._by_upload().items():
            if upload_id is not None and upload != upload_id:
                continue
            keep = {current[upload].load_id, self.previous(upload)} if upload in current else set()
            discarded = {r.load_id for r in records if r.action == "discarded"}
            committed = {r.load_id for r in records if r.action == "committed"}
            begun = {r.load_id: r.logged_at for r in records if r.action == "begun"}
            candidates = dict.fromkeys([*begun, *committed])
            stale += [
                (upload, load)
                for load in candidates
                if load not in keep and load not in discarded and (load in committed or begun[load] < abandoned_before)
            ]
        return stale


class CommitLog:
    """Reads and appends the staging and marts commit logs of one lake through one Spark session."""

    def __init__(self, spark: SparkSession, lake: IcebergTables):
        self.spark = spark
        self.tables = lake

    def uploads_table(self) -> str:
        return self.tables.ensure(self.spark, STAGING_LAYER, UPLOADS, UPLOADS_COLUMNS)

    def builds_table(self, subject: str = MARTS_SUBJECT) -> str:
        return self.tables.ensure(self.spark, subject, BUILDS, BUILDS_COLUMNS)

    def uploads(self) -> UploadLog:
        rows = self.spark.table(self.uploads_table()).collect()
        return UploadLog(
            [
                LoadRecord(
                    **{**row.asDict(), "logged_at": utc(row["logged_at"]), "registered_at": utc(row["registered_at"])}
                )
                for row in rows
            ]
        )

    def record(self, record: LoadRecord) -> None:
        frame = self.spark.createDataFrame([record.__dict__], UPLOADS_COLUMNS)
        self.tables.append(frame, self.uploads_table())

    def builds(self, subject: str = MARTS_SUBJECT) -> UploadLog:
        """A layer's builds log in the shape of the uploads log: one subject (the layer) whose loads are builds."""
        rows = self.spark.table(self.builds_table(subject)).collect()
        return UploadLog(
            [LoadRecord(subject, r["build_id"], r["action"], utc(r["logged_at"]), utc(r["logged_at"])) for r in rows]
        )

    def identifiers_included(self) -> bool:
        """Whether the committed build of the marts includes direct identifiers (False before the first)."""
        rows = (
            self.spark.table(self.builds_table())
            .where("action = 'committed'")
            .orderBy(F.col("logged_at").desc())
            .limit(1)
            .collect()
        )
        return bool(rows and rows[0]["includes_identifiers"])

    def record_build(
        self, build_id: str, action: str, includes_identifiers: bool, subject: str = MARTS_SUBJECT
    ) -> None:
        frame = self.spark.createDataFrame(
            [
                {
                    "build_id": build_id,
                    "action": action,
                    "logged_at": now(),
                    "includes_identifiers": includes_identifiers,
                }
            ],
            BUILDS_COLUMNS,
        )
        self.tables.append(frame, self.builds_table(subject))
