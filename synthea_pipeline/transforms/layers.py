"""The two Spark layers of a run, staging and marts, as plain functions of a Spark session: they write their
outputs and return what happened as reports in the Dagster Pipes message format. The same function runs
in-process (Sail, JVM Spark) or inside a Glue / EMR Serverless job, and Dagster shows the same metadata either
way."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyspark.sql import SparkSession

from synthea_pipeline.tables import TABLES, Table
from synthea_pipeline.transforms.lake import Lake, discard, publish
from synthea_pipeline.transforms.marts import (
    COLUMN_DESCRIPTIONS,
    MARTS,
    check_marts,
    discard_marts,
    publish_marts,
    write_marts,
)
from synthea_pipeline.transforms.raw import load_manifest
from synthea_pipeline.transforms.staging import stage_table, staging_checks

PARALLEL_TABLES = 2
PATH_KEYS = {"location"}
SCHEMA_KEY = "dagster/column_schema"


class LayerFailed(Exception):
    """The layer ran but its outputs must not be used (blocking checks failed); the message says which."""


@dataclass
class AssetReport:
    asset_key: str
    metadata: dict


@dataclass
class CheckReport:
    asset_key: str
    check_name: str
    passed: bool
    severity: str = "ERROR"
    metadata: dict = field(default_factory=dict)


Report = AssetReport | CheckReport


class Log(Protocol):
    """What a layer needs from a logger; Dagster's context.log and Pipes' context.log both fit."""

    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...
    def error(self, msg: str) -> Any: ...


def plain(value: Any) -> Any:
    """JSON-ready values: engines return numpy numbers for counts."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def external_metadata(metadata: dict) -> dict:
    """Plain values as Pipes metadata (`{"raw_value", "type"}`): paths and the column schema typed explicitly,
    everything else by its Python type."""
    typed = {}
    for key, value in plain(metadata).items():
        if key in PATH_KEYS:
            kind = "path"
        elif key == SCHEMA_KEY:
            kind = "table_schema"
        elif value is None:
            kind = "null"
        elif isinstance(value, bool):
            kind = "bool"
        elif isinstance(value, int):
            kind = "int"
        elif isinstance(value, float):
            kind = "float"
        elif isinstance(value, str):
            kind = "text"
        else:
            kind = "json"
        typed[key] = {"raw_value": value, "type": kind}
    return typed


def table_schema(table: Table) -> dict:
    """A staging table's columns as a Pipes `table_schema` value."""
    columns = [
        {"name": c.name, "type": c.spark_type, "description": c.description or None,
         "constraints": {"nullable": not c.required}}
        for c in table.columns
    ]
    if not table.has_natural_key:
        columns.append({"name": "row_key", "type": "string", "description": "Key: MD5 of the row's normalized values."})
    columns.append({"name": "upload_id", "type": "string", "description": "The upload this row came from."})
    return {"columns": columns}


def frame_schema(frame) -> dict:
    return {"columns": [{"name": f.name, "type": f.dataType.simpleString(), "description": COLUMN_DESCRIPTIONS.get(f.name)}
                        for f in frame.schema]}


def run_staging(spark: SparkSession, log: Log, lake_root: str, upload_id: str, tables: list[str]) -> list[Report]:
    """Types every given table of the upload, two at a time so the many small Spark queries overlap, checks
    each written partition and publishes it, with its quarantine, only when its blocking checks pass."""
    lake = Lake(lake_root)

    def stage(table: Table):
        raw_uri = lake.partition("raw", table.name, upload_id)
        raw = load_manifest(raw_uri)
        return raw, *stage_table(spark, table, raw, raw_uri, lake.staging_path(upload_id, table.name),
                                 lake.partition("quarantine", table.name, upload_id), upload_id)

    selected = [TABLES[name] for name in tables]
    with ThreadPoolExecutor(max_workers=PARALLEL_TABLES) as pool:
        outcomes = list(pool.map(stage, selected))
    reports: list[Report] = []
    for table, (raw, result, facts, temp, quarantine_temp) in zip(selected, outcomes):
        staging_uri = lake.staging_path(upload_id, table.name)
        checks = staging_checks(table, raw, result, facts)
        published = all(passed for passed, _ in checks.values())
        if published:
            publish(temp, staging_uri)
            publish(quarantine_temp, lake.partition("quarantine", table.name, upload_id))
        else:
            discard(temp)
            discard(quarantine_temp)
            log.error(f"{table.name}: staging partition not published, a blocking check failed")
        if result.unparseable_values:
            log.warning(f"{table.name}: unparseable values set to null: {result.unparseable_values}")
        if result.quarantined:
            log.warning(f"{table.name}: {result.quarantined} rows quarantined: {result.quarantine_reasons}")
        key = f"staging/{table.name}"
        reports.append(AssetReport(key, external_metadata({
            "dagster/row_count": int(result.rows_out),
            SCHEMA_KEY: table_schema(table),
            "rows_in": raw.rows_in,
            "rows_read_by_spark": result.rows_read,
            "rows_out": result.rows_out,
            "quarantined": result.quarantined,
            "quarantine_reasons": result.quarantine_reasons,
            "duplicates_dropped": result.duplicates_dropped,
            "unparseable_values": result.unparseable_values,
            "synthea_release": raw.upload_release,
            "source_present": bool(raw.files),
            "published": published,
            "location": staging_uri,
        })))
        reports += [CheckReport(key, name, passed, metadata=external_metadata(metadata))
                    for name, (passed, metadata) in checks.items()]
        reports.append(CheckReport(key, "no_quarantined_rows", result.quarantined == 0, "WARN", external_metadata({
            "quarantined": result.quarantined, "reasons": result.quarantine_reasons,
            "location": lake.partition("quarantine", table.name, upload_id)})))
    return reports


def run_marts(spark: SparkSession, log: Log, lake_root: str, upload_order: list[str],
              include_identifiers: bool = False) -> list[Report]:
    """Rebuilds every mart from all staged uploads (the latest registered upload wins) and publishes them only
    when every blocking check passes, so readers never see a mart that failed one."""
    lake = Lake(lake_root)
    written = write_marts(spark, lake, upload_order, include_identifiers)
    checks = check_marts(spark, lake, written, upload_order)
    failed = [f"{c.mart}:{c.name} {c.metadata}" for c in checks if c.blocking and not c.passed]
    if failed:
        discard_marts(written)
        raise LayerFailed("marts not published, blocking checks failed: " + "; ".join(failed))
    publish_marts(written, lake)
    log.info(f"published {len(written)} marts over {len(upload_order)} uploads")
    rows = {c.mart: c.metadata["rows"] for c in checks if c.name == "primary_key"}
    reports: list[Report] = [
        AssetReport(f"marts/{name}", external_metadata({
            "dagster/row_count": int(rows[name]),
            SCHEMA_KEY: frame_schema(spark.read.parquet(lake.uri("marts", name))),
            "location": lake.uri("marts", name),
            "uploads": list(upload_order),
            "includes_identifiers": include_identifiers,
        }))
        for name in MARTS
    ]
    reports += [CheckReport(f"marts/{c.mart}", c.name, c.passed, "ERROR" if c.blocking else "WARN",
                            external_metadata(c.metadata)) for c in checks]
    return reports


LAYERS = {"staging": run_staging, "marts": run_marts}
