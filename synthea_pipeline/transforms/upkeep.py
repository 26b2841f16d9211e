"""Taking an upload out of the lake, and the lake's upkeep: expiring old Iceberg snapshots and deleting the files
no snapshot needs.

Snapshots are expired by writing the table's next metadata version without them, committed the way the table's
catalog commits: a new `vN.metadata.json` and version hint under the table's commit lock for a local lake, a new
metadata file swapped in through the Glue Data Catalog (`UpdateTable` with the `VersionId` read, so a
concurrent commit makes the swap fail instead of being lost) for a lake on S3. A snapshot is kept when it is
newer than the cutoff, or was the current one at the cutoff, so the tables can be read as of any moment after
it. Files are deleted only when older than the cutoff and reachable from no kept snapshot, so a run still
writing (its files are new) is never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass, field

import duckdb
from pyarrow import fs as pafs
from pyspark.sql import SparkSession

from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.catalog import LAKE_TABLES, connect
from synthea_pipeline.transforms.iceberg import (
    GLUE_TABLE_INPUT_KEYS,
    CommitLog,
    IcebergTables,
    LoadRecord,
    now,
    utc,
)
from synthea_pipeline.transforms.lake import aws_client, delete_folder, filesystem_for
from synthea_pipeline.transforms.marts import discard_stale_builds
from synthea_pipeline.transforms.staging import discard_stale_loads

DELETED = 2
"""A manifest entry's status when its snapshot deleted the file: the file is live only in older snapshots."""
KEPT_FILES = ("version-hint.text",)


class UpkeepRefused(RuntimeError):
    """The table's files do not look as its metadata says: deleting by reachability would be unsafe."""


class UnknownUpload(KeyError):
    def __init__(self, upload_id: str, uploads: list[str]):
        super().__init__(f"upload {upload_id} is not in the lake (in the lake: {', '.join(uploads) or 'none'})")


def remove_upload(
    spark: SparkSession,
    lake: IcebergTables,
    upload_id: str,
    upload_token: str | None = None,
    note: str = "removed",
    in_source: bool = False,
) -> list[tuple[str, str]]:
    """Takes an upload out of the lake: one `removed` record in the uploads log hides it from every reader at
    once (catalog views, the next marts build) and keeps the sensor, backfills and the marts off it until it is
    uploaded again (a manifest other than `upload_token`, the one in `source/` now); then its rows are deleted
    from every staging table and the quarantine, and its raw files. An upload that is only waiting in `source/`
    (`in_source`) or never committed is removed the same way. Returns the (upload, load) pairs deleted."""
    commits = CommitLog(spark, lake)
    log = commits.uploads()
    current = log.current()
    if upload_id not in current and not in_source and upload_id not in {r.upload_id for r in log.records}:
        raise UnknownUpload(upload_id, sorted(current))
    load_id = current[upload_id].load_id if upload_id in current else ""
    commits.record(LoadRecord(upload_id, load_id, "removed", now(), upload_token=upload_token, note=note))
    deleted = discard_stale_loads(spark, lake, commits, now(), upload_id)
    for table in TABLES:
        delete_folder(lake.layout.raw(table, upload_id))
    return deleted


def discard_stale(
    spark: SparkSession, lake: IcebergTables, abandoned_before: dt.datetime
) -> tuple[list[tuple[str, str]], list[str]]:
    """Deletes the loads and builds no reader can see any more: replaced ones, and those begun before
    `abandoned_before` and never committed (runs that died or failed)."""
    commits = CommitLog(spark, lake)
    return (
        discard_stale_loads(spark, lake, commits, abandoned_before),
        discard_stale_builds(spark, lake, commits, abandoned_before),
    )


@dataclass
class TableUpkeep:
    layer: str
    table: str
    snapshots_kept: int = 0
    snapshots_expired: int = 0
    files_deleted: int = 0
    bytes_deleted: int = 0


@dataclass
class Metadata:
    """A table's current metadata and where it is; `version` identifies it to the catalog (a Glue VersionId)."""

    location: str
    content: dict
    version: str | None = None
    extra: dict = field(default_factory=dict)


class LocalMetadata:
    """Metadata of a local lake's tables: `metadata/vN.metadata.json` named by `metadata/version-hint.text`, as
    Sail's path-based tables and JVM Spark's Hadoop catalog both keep them."""

    def __init__(self, lake: IcebergTables):
        self.tables = lake

    def current(self, layer: str, table: str) -> Metadata | None:
        folder = os.path.join(self.tables.location(layer, table), "metadata")
        try:
            with open(os.path.join(folder, "version-hint.text")) as hint:
                version = int(hint.read().strip())
        except FileNotFoundError:
            return None
        location = os.path.join(folder, f"v{version}.metadata.json")
        with open(location) as handle:
            return Metadata(location, json.load(handle), str(version))

    def commit(self, layer: str, table: str, base: Metadata, content: dict) -> str:
        folder = os.path.dirname(base.location)
        version = int(base.version) + 1
        location = os.path.join(folder, f"v{version}.metadata.json")
        with open(location, "x") as handle:
            json.dump(content, handle)
        hint = os.path.join(folder, f".version-hint.{uuid.uuid4().hex}")
        with open(hint, "w") as handle:
            handle.write(str(version))
        os.replace(hint, os.path.join(folder, "version-hint.text"))
        stale_checksum = os.path.join(folder, ".version-hint.text.crc")
        if os.path.exists(stale_checksum):
            os.remove(stale_checksum)
        return location


class GlueMetadata:
    """Metadata of a lake on S3: the Glue Data Catalog names each table's current metadata file."""

    def __init__(self, lake: IcebergTables, glue):
        self.tables = lake
        self.glue = glue

    def current(self, layer: str, table: str) -> Metadata | None:
        try:
            found = self.glue.get_table(DatabaseName=self.tables.database(layer), Name=table)["Table"]
        except self.glue.exceptions.EntityNotFoundException:
            return None
        location = found["Parameters"]["metadata_location"]
        fs, path = filesystem_for(location)
        with fs.open_input_stream(path) as stream:
            content = json.loads(stream.read())
        return Metadata(location, content, found.get("VersionId"), found)

    def commit(self, layer: str, table: str, base: Metadata, content: dict) -> str:
        folder, name = base.location.rsplit("/", 1)
        sequence = name.split("-", 1)[0]
        prefix = f"{int(sequence) + 1:05d}-" if sequence.isdigit() else ""
        location = f"{folder}/{prefix}{uuid.uuid4()}.metadata.json"
        fs, path = filesystem_for(location)
        with fs.open_output_stream(path) as stream:
            stream.write(json.dumps(content).encode())
        table_input = {k: v for k, v in base.extra.items() if k in GLUE_TABLE_INPUT_KEYS}
        table_input["Parameters"] = {
            **table_input.get("Parameters", {}),
            "metadata_location": location,
            "previous_metadata_location": base.location,
        }
        self.glue.update_table(
            DatabaseName=self.tables.database(layer),
            TableInput=table_input,
            **({"VersionId": base.version} if base.version else {}),
        )
        return location


def expire(content: dict, location: str, cutoff_ms: int) -> tuple[dict, int]:
    """The metadata at `location` without the snapshots older than the cutoff, except the one current at the
    cutoff and those a branch or tag points to; and how many were dropped. Its metadata log gains `location`,
    as every Iceberg commit's does, so a reader that just found it can still read it."""
    snapshots = sorted(content.get("snapshots", []), key=lambda s: s["timestamp-ms"])
    older = [s for s in snapshots if s["timestamp-ms"] < cutoff_ms]
    keep = {s["snapshot-id"] for s in snapshots if s["timestamp-ms"] >= cutoff_ms}
    keep |= {ref["snapshot-id"] for ref in content.get("refs", {}).values()}
    if content.get("current-snapshot-id") not in (None, -1):
        keep.add(content["current-snapshot-id"])
    if older:
        keep.add(older[-1]["snapshot-id"])
    expired = [s for s in snapshots if s["snapshot-id"] not in keep]
    if not expired:
        return content, 0
    updated = dict(content)
    updated["snapshots"] = [s for s in snapshots if s["snapshot-id"] in keep]
    updated["snapshot-log"] = [e for e in content.get("snapshot-log", []) if e["snapshot-id"] in keep]
    updated["metadata-log"] = [e for e in content.get("metadata-log", []) if e["timestamp-ms"] >= cutoff_ms] + [
        {"timestamp-ms": content["last-updated-ms"], "metadata-file": location}
    ]
    for key in ("statistics", "partition-statistics"):
        if key in content:
            updated[key] = [e for e in content[key] if e["snapshot-id"] in keep]
    updated["last-updated-ms"] = int(now().timestamp() * 1000)
    return updated, len(expired)


def reachable_files(content: dict, metadata_location: str, connection: duckdb.DuckDBPyConnection) -> set[str]:
    """Every file the kept snapshots need: their manifest lists, manifests, data and delete files and statistics
    files, plus the metadata files still in the metadata log."""
    files = {metadata_location, *(e["metadata-file"] for e in content.get("metadata-log", []))}
    files.update(e["statistics-path"] for key in ("statistics", "partition-statistics") for e in content.get(key, []))
    lists = [s["manifest-list"] for s in content.get("snapshots", [])]
    files.update(lists)
    manifests = _column(connection, lists, "manifest_path") if lists else []
    files.update(manifests)
    if manifests:
        files.update(_column(connection, sorted(set(manifests)), "data_file.file_path", f"status <> {DELETED}"))
    return {_path(f) for f in files}


def _column(connection: duckdb.DuckDBPyConnection, files: list[str], column: str, condition: str = "true") -> list[str]:
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return [
        row[0]
        for row in connection.execute(
            f"SELECT DISTINCT {column} FROM read_avro([{listed}]) WHERE {condition}"
        ).fetchall()
    ]


def _path(uri: str) -> str:
    """A file URI as the lake's filesystem lists it: `bucket/key` on S3, an absolute path locally (Sail writes
    metadata-log entries without the leading slash)."""
    if uri.startswith(("s3://", "s3a://")):
        return uri.split("://", 1)[1]
    if uri.startswith("file:"):
        uri = uri[len("file:") :].lstrip("/")
    return "/" + uri.lstrip("/")


def delete_unreachable(location: str, reachable: set[str], cutoff: dt.datetime) -> tuple[int, int]:
    """Deletes the files under a table's folder that no kept snapshot needs and are older than the cutoff."""
    fs, path = filesystem_for(location)
    files = [
        info
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        if info.type == pafs.FileType.File
    ]
    as_listed = (lambda p: "/" + p.lstrip("/")) if isinstance(fs, pafs.LocalFileSystem) else (lambda p: p)
    listed = {as_listed(info.path): info for info in files}
    folder = as_listed(path).rstrip("/") + "/"
    unmatched = [f for f in reachable if f.startswith(folder) and f not in listed]
    if unmatched:
        raise UpkeepRefused(
            f"{location}: {len(unmatched)} files the table needs are not where its folder lists "
            f"them (e.g. {unmatched[0]}); nothing deleted"
        )
    deleted = size = 0
    for name, info in listed.items():
        if name in reachable or info.base_name in KEPT_FILES or utc(info.mtime) >= cutoff:
            continue
        fs.delete_file(info.path)
        deleted += 1
        size += info.size
    return deleted, size


def expire_and_clean(lake: IcebergTables, cutoff: dt.datetime) -> list[TableUpkeep]:
    """Expires each table's snapshots older than the cutoff, then deletes its files that are unreachable and
    older than the cutoff (orphans of runs that died included): committed through the Glue Data Catalog for a
    lake on S3."""
    on_s3 = lake.layout.on_s3
    metadata = GlueMetadata(lake, aws_client("glue")) if on_s3 else LocalMetadata(lake)
    cutoff_ms = int(cutoff.timestamp() * 1000)
    results = []
    with connect(s3=on_s3) as connection:
        for layer, table in LAKE_TABLES:
            with lake.commit_lock(lake.identifier(layer, table)):
                base = metadata.current(layer, table)
                if base is None:
                    continue
                content, expired = expire(base.content, base.location, cutoff_ms)
                location = metadata.commit(layer, table, base, content) if expired else base.location
            reachable = reachable_files(content, location, connection)
            files, size = delete_unreachable(lake.location(layer, table), reachable, cutoff)
            results.append(TableUpkeep(layer, table, len(content.get("snapshots", [])), expired, files, size))
    return results
