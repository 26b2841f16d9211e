"""Registering the lake's tables: in the Glue Data Catalog on AWS (typed from the table contract, partitions added
per upload, BI views as Athena views), and in an embedded DuckDB catalog with the same database and table names,
which also computes the BI views for previews and the dashboard. Registering twice changes nothing."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.bi import BI_VIEWS, MARTS_DATABASE, STAGING_DATABASE, local_sql, view_sql
from synthea_pipeline.transforms.lake import Lake, filesystem_for
from synthea_pipeline.transforms.marts import MARTS, staged_uploads
from synthea_pipeline.transforms.staging import QUARANTINE_SCHEMA

PARQUET_FORMAT = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"},
}
QUARANTINE = "quarantine"
"""The staging database's table of every quarantined row, partitioned by table and upload."""
QUARANTINE_PARTITION_KEYS = ("table_name", "upload_id")
PRESTO_TYPES = {"string": "varchar", "int": "integer", "bigint": "bigint", "double": "double",
                "boolean": "boolean", "date": "date", "timestamp": "timestamp(3)"}


@dataclass(frozen=True)
class Databases:
    staging: str = STAGING_DATABASE
    marts: str = MARTS_DATABASE


def hive_type(arrow_type: pa.DataType) -> str:
    """The Glue/Athena column type of a Parquet column."""
    if pa.types.is_decimal(arrow_type):
        return f"decimal({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    for check, name in ((pa.types.is_string, "string"), (pa.types.is_large_string, "string"),
                        (pa.types.is_date, "date"), (pa.types.is_boolean, "boolean"), (pa.types.is_int32, "int"),
                        (pa.types.is_int64, "bigint"), (pa.types.is_floating, "double")):
        if check(arrow_type):
            return name
    raise TypeError(f"no catalog type for {arrow_type}")


def staging_columns(table: str) -> list[dict]:
    """Staging columns and types straight from the table contract, so every partition reads with one schema."""
    spec = TABLES[table]
    columns = [{"Name": c.name, "Type": c.spark_type} for c in spec.columns]
    if not spec.has_natural_key:
        columns.append({"Name": "row_key", "Type": "string"})
    return columns


def quarantine_columns() -> list[dict]:
    return [{"Name": f.name, "Type": hive_type(f.type)} for f in QUARANTINE_SCHEMA
            if f.name not in QUARANTINE_PARTITION_KEYS]


def mart_schema(lake: Lake, mart: str) -> pa.Schema:
    fs, path = filesystem_for(lake.uri("marts", mart))
    return ds.dataset(path, filesystem=fs, format="parquet").schema


def table_input(name: str, location: str, columns: list[dict], partition_keys: tuple[str, ...], description: str
                ) -> dict:
    return {
        "Name": name,
        "Description": description,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE", "parquet.compression": "ZSTD"},
        "PartitionKeys": [{"Name": key, "Type": "string"} for key in partition_keys],
        "StorageDescriptor": {"Columns": columns, "Location": location.rstrip("/") + "/", **PARQUET_FORMAT},
    }


def athena_view_input(name: str, database: str, sql: str, columns: list[tuple[str, str]]) -> dict:
    """An Athena view as the Glue Data Catalog stores one (a base64 "Presto view" beside Hive columns)."""
    presto = {"originalSql": sql, "catalog": "awsdatacatalog", "schema": database,
              "columns": [{"name": n, "type": PRESTO_TYPES.get(t, t)} for n, t in columns], "owner": "synthea-pipeline",
              "runAsInvoker": False, "properties": {}}
    encoded = base64.b64encode(json.dumps(presto, sort_keys=True).encode()).decode()
    return {
        "Name": name,
        "TableType": "VIRTUAL_VIEW",
        "Parameters": {"presto_view": "true", "comment": "Presto View"},
        "ViewOriginalText": f"/* Presto View: {encoded} */",
        "ViewExpandedText": "/* Presto View */",
        "StorageDescriptor": {"Columns": [{"Name": n, "Type": t} for n, t in columns], "SerdeInfo": {}},
        "PartitionKeys": [],
    }


def _same_descriptor(existing: dict, wanted: dict) -> bool:
    """Only what this module sets: Glue fills in defaults (Compressed, NumberOfBuckets, ...) on read."""
    return (existing.get("Columns") == wanted.get("Columns")
            and existing.get("Location") == wanted.get("Location")
            and existing.get("InputFormat") == wanted.get("InputFormat")
            and existing.get("OutputFormat") == wanted.get("OutputFormat")
            and existing.get("SerdeInfo", {}).get("SerializationLibrary")
            == wanted.get("SerdeInfo", {}).get("SerializationLibrary"))


def _same(existing: dict, wanted: dict) -> bool:
    plain = ("TableType", "PartitionKeys", "ViewOriginalText", "ViewExpandedText", "Description")
    return (all(existing.get(key) == wanted.get(key) for key in plain if key in wanted)
            and all(existing.get("Parameters", {}).get(k) == v for k, v in wanted["Parameters"].items())
            and _same_descriptor(existing.get("StorageDescriptor", {}), wanted["StorageDescriptor"]))


def _put_table(glue, database: str, wanted: dict) -> str:
    """Create, or update only when what this module sets differs (no new table version otherwise)."""
    try:
        existing = glue.get_table(DatabaseName=database, Name=wanted["Name"])["Table"]
    except glue.exceptions.EntityNotFoundException:
        try:
            glue.create_table(DatabaseName=database, TableInput=wanted)
            return "created"
        except glue.exceptions.AlreadyExistsException:
            existing = glue.get_table(DatabaseName=database, Name=wanted["Name"])["Table"]
    if _same(existing, wanted):
        return "unchanged"
    glue.update_table(DatabaseName=database, TableInput=wanted, SkipArchive=True)
    return "updated"


def _ensure_database(glue, name: str, description: str) -> None:
    try:
        glue.get_database(Name=name)
    except glue.exceptions.EntityNotFoundException:
        glue.create_database(DatabaseInput={"Name": name, "Description": description})


def register_glue(glue, lake: Lake, databases: Databases, view_columns: dict[str, list[tuple[str, str]]]
                  ) -> dict[str, str]:
    """Staging tables (partitioned by upload, one partition per staged upload), marts and BI views in the Glue
    Data Catalog; returns what happened to each table."""
    _ensure_database(glue, databases.staging, "synthea-pipeline staging tables")
    _ensure_database(glue, databases.marts, "synthea-pipeline marts and BI views")
    outcome = {}
    for table in TABLES:
        location = lake.uri("staging", table)
        wanted = table_input(table, location, staging_columns(table), ("upload_id",), TABLES[table].grain)
        outcome[f"{databases.staging}.{table}"] = _put_table(glue, databases.staging, wanted)
        _put_partitions(glue, databases.staging, table, wanted["StorageDescriptor"], {
            (upload,): lake.partition("staging", table, upload) for upload in staged_uploads(lake, table)})
    wanted = table_input(QUARANTINE, lake.uri(QUARANTINE), quarantine_columns(), QUARANTINE_PARTITION_KEYS,
                         "Rows not staged, with the reason, file and line (every table and upload)")
    outcome[f"{databases.staging}.{QUARANTINE}"] = _put_table(glue, databases.staging, wanted)
    _put_partitions(glue, databases.staging, QUARANTINE, wanted["StorageDescriptor"], {
        (table, upload): lake.partition(QUARANTINE, table, upload)
        for table in TABLES for upload in staged_uploads(lake, table, QUARANTINE)})
    for mart in MARTS:
        columns = [{"Name": f.name, "Type": hive_type(f.type)} for f in mart_schema(lake, mart)]
        wanted = table_input(mart, lake.uri("marts", mart), columns, (), MARTS[mart].grain)
        outcome[f"{databases.marts}.{mart}"] = _put_table(glue, databases.marts, wanted)
    for view, columns in view_columns.items():
        wanted = athena_view_input(view, databases.marts, view_sql(view, databases.marts), columns)
        outcome[f"{databases.marts}.{view}"] = _put_table(glue, databases.marts, wanted)
    return outcome


def _put_partitions(glue, database: str, table: str, descriptor: dict, locations: dict[tuple[str, ...], str]
                    ) -> None:
    """One partition per key (e.g. upload), located at its folder, with the table's pinned columns."""
    existing = {tuple(p["Values"]): p for page in glue.get_paginator("get_partitions").paginate(
        DatabaseName=database, TableName=table) for p in page["Partitions"]}
    missing = []
    for values, location in locations.items():
        wanted = {"Values": list(values), "StorageDescriptor": {**descriptor, "Location": location.rstrip("/") + "/"}}
        current = existing.get(values)
        if current is None:
            missing.append(wanted)
        elif not _same_descriptor(current["StorageDescriptor"], wanted["StorageDescriptor"]):
            glue.update_partition(DatabaseName=database, TableName=table, PartitionValueList=list(values),
                                  PartitionInput=wanted)
    for start in range(0, len(missing), 100):
        response = glue.batch_create_partition(DatabaseName=database, TableName=table,
                                               PartitionInputList=missing[start : start + 100])
        errors = [e for e in response.get("Errors", [])
                  if e.get("ErrorDetail", {}).get("ErrorCode") != "AlreadyExistsException"]
        if errors:
            raise RuntimeError(f"Glue refused partitions of {database}.{table}: {errors}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _local_cast(name: str, kind: str) -> str:
    """Timestamps are UTC instants: shown in UTC whatever the reader's time zone, as Athena shows them."""
    return f"timezone('UTC', {name})" if kind == "timestamp" else f"CAST({name} AS {kind})"


def _local_view(connection, name: str, columns: list[tuple[str, str]], glob: str, has_files: bool) -> None:
    """A view over Parquet files with the contract's types, or an empty one of the same shape before any."""
    if has_files:
        selected = [f"{_local_cast(column, kind)} AS {column}" for column, kind in columns]
        source = f"read_parquet({_quote(glob)}, union_by_name = true, hive_partitioning = false)"
    else:
        selected = [f"CAST(NULL AS {kind}) AS {column}" for column, kind in columns]
        source = "(SELECT 1) WHERE false"
    connection.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {', '.join(selected)} FROM {source}")


def open_catalog(lake: Lake, databases: Databases = Databases(), path: str = ":memory:"
                 ) -> duckdb.DuckDBPyConnection:
    """A DuckDB catalog of the lake: `<marts>.<mart>` views and the BI views, and for a local lake also the
    `<staging>.<table>` views. A local lake is read by path, so a catalog file keeps working for other DuckDB
    clients. An S3 lake's marts are read with pyarrow into memory first (DuckDB's own S3 support is an extension
    downloaded at run time); its staging tables are Athena's to query."""
    connection = duckdb.connect(path)
    connection.execute("SET TimeZone = 'UTC'")
    for schema in (databases.staging, databases.marts):
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    local = not lake.on_s3
    if local:
        for table in TABLES:
            columns = [(c["Name"], c["Type"]) for c in staging_columns(table)] + [("upload_id", "string")]
            glob = lake.uri("staging", table, "upload_id=*", "*.parquet")
            _local_view(connection, f"{databases.staging}.{table}", columns, glob,
                        bool(staged_uploads(lake, table)))
        columns = [(f.name, hive_type(f.type)) for f in QUARANTINE_SCHEMA]
        glob = lake.uri(QUARANTINE, "*", "upload_id=*", "*.parquet")
        has_rows = any(staged_uploads(lake, table, QUARANTINE) for table in TABLES)
        _local_view(connection, f"{databases.staging}.{QUARANTINE}", columns, glob, has_rows)
    for mart in MARTS:
        if local:
            source = f"read_parquet({_quote(lake.uri('marts', mart, '*.parquet'))})"
        else:
            fs, folder = filesystem_for(lake.uri("marts", mart))
            connection.register(f"_marts_{mart}", ds.dataset(folder, filesystem=fs, format="parquet").to_table())
            source = f"_marts_{mart}"
        connection.execute(f"CREATE OR REPLACE VIEW {databases.marts}.{mart} AS SELECT * FROM {source}")
    for view in BI_VIEWS:
        connection.execute(f"CREATE OR REPLACE VIEW {databases.marts}.{view} AS "
                           f"{local_sql(view_sql(view, databases.marts))}")
    return connection


def duckdb_to_hive(duckdb_type: str) -> str:
    kind = duckdb_type.upper()
    if kind.startswith("DECIMAL"):
        return kind.lower().replace(" ", "")
    return {"VARCHAR": "string", "INTEGER": "int", "BIGINT": "bigint", "HUGEINT": "decimal(38,0)",
            "DOUBLE": "double", "BOOLEAN": "boolean", "DATE": "date", "TIMESTAMP WITH TIME ZONE": "timestamp",
            "TIMESTAMP": "timestamp"}[kind]


def view_columns(connection: duckdb.DuckDBPyConnection, database: str) -> dict[str, list[tuple[str, str]]]:
    """Each BI view's output columns with catalog types, as the embedded engine computes them."""
    return {view: [(row[0], duckdb_to_hive(row[1])) for row in
                   connection.execute(f"DESCRIBE {database}.{view}").fetchall()] for view in BI_VIEWS}


def athena_query(athena, sql: str, database: str, workgroup: str, output: str | None, poll_seconds: float = 1.0
                 ) -> tuple[list[str], list[list]]:
    """Run one statement on Athena and return its column names and rows (values as Athena returns them, text)."""
    import time

    request = {"QueryString": sql, "QueryExecutionContext": {"Database": database}, "WorkGroup": workgroup}
    if output:
        request["ResultConfiguration"] = {"OutputLocation": output}
    query_id = athena.start_query_execution(**request)["QueryExecutionId"]
    while True:
        status = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
        if status["State"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(poll_seconds)
    if status["State"] != "SUCCEEDED":
        raise RuntimeError(f"Athena query {query_id} {status['State']}: {status.get('StateChangeReason', '')}")
    columns, rows = [], []
    for page in athena.get_paginator("get_query_results").paginate(QueryExecutionId=query_id):
        columns = columns or [c["Name"] for c in page["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]]
        for row in page["ResultSet"]["Rows"]:
            rows.append([cell.get("VarCharValue") for cell in row["Data"]])
    if rows and rows[0] == columns:
        rows = rows[1:]
    return columns, rows
