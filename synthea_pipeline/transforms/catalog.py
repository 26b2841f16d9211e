"""The catalog: what every reader queries. Its views are written once, in Athena (Trino) SQL, over the lake's
Iceberg tables, and take only committed rows (see `iceberg`), so a reader sees each upload and the marts entirely
as before or entirely as after a run:

- `<staging>.uploads`: the uploads in the lake, each with its committed load and when it entered the lake;
- `<staging>.<table>` and `<staging>.quarantine`: the rows of those loads;
- `<marts>.current_build` and `<marts>.<mart>`: the committed build of the marts (direct identifiers shown only
  when that build includes them), and the BI views over them;
- `<omop>.current_build` and `<omop>.<table>`: the committed OMOP CDM 5.4 build, every table with exactly the CDM's
  columns, the vocabulary tables as the vocabulary load that build maps with.

On AWS the Iceberg tables are in the Glue Data Catalog (databases `<staging>_iceberg`, `<marts>_iceberg`, written
by the Spark engines) and the views are Athena views in `<staging>` and `<marts>`. Locally the same views live in
an embedded DuckDB file whose `*_iceberg` schemas read the tables with DuckDB's Iceberg extension, installed from
the package index (`duckdb-ext-iceberg`, no download at run time). Registering twice changes nothing."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import exp

from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.bi import BI_VIEWS, SOURCE_DIALECT, local_sql, view_sql
from synthea_pipeline.transforms.cdm import cdm_table, cdm_tables
from synthea_pipeline.transforms.iceberg import (
    BUILDS,
    ICEBERG_DATABASE_SUFFIX,
    MARTS_DATABASE,
    MARTS_LAYER,
    OMOP_DATABASE,
    OMOP_LAYER,
    QUARANTINE,
    QUARANTINE_COLUMNS,
    STAGING_DATABASE,
    STAGING_LAYER,
    UPLOADS,
    IcebergTables,
)
from synthea_pipeline.transforms.lake import aws_endpoint, aws_region
from synthea_pipeline.transforms.marts import MART_IDENTIFIERS, MARTS, PARTITIONED_MARTS, PARTS
from synthea_pipeline.transforms.omop import BUILD_VOCABULARY, CLINICAL_TABLES, VOCABULARY_LOADS
from synthea_pipeline.transforms.sql import identifier, literal
from synthea_pipeline.transforms.staging import staging_columns
from synthea_pipeline.transforms.vocabulary import LOAD_COLUMN, VOCABULARY_TABLES

UPLOAD_STATES = "upload_states"
"""The catalog view of every upload the uploads log knows, with its state (`loading`, `committed`, `failed`,
`removed`), release, patients and times; `synthea-pipeline uploads` adds the ones still waiting in `source/`."""


def uploads_query(database: str, view: str = UPLOADS) -> str:
    """Every row of a view of uploads (`uploads`, or `upload_states`), in the order the uploads entered the
    lake."""
    return f"SELECT * FROM {database}.{view} ORDER BY registered_at, upload_id"


PRESTO_TYPES = {
    "string": "varchar",
    "int": "integer",
    "bigint": "bigint",
    "double": "double",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp(6) with time zone",
}
EXTENSIONS = ("avro", "iceberg")


@dataclass(frozen=True)
class Databases:
    staging: str = STAGING_DATABASE
    marts: str = MARTS_DATABASE
    omop: str = OMOP_DATABASE

    @property
    def staging_iceberg(self) -> str:
        return self.staging + ICEBERG_DATABASE_SUFFIX

    @property
    def marts_iceberg(self) -> str:
        return self.marts + ICEBERG_DATABASE_SUFFIX

    @property
    def omop_iceberg(self) -> str:
        return self.omop + ICEBERG_DATABASE_SUFFIX

    @property
    def views(self) -> tuple[str, ...]:
        """The databases of the catalog views."""
        return (self.staging, self.marts, self.omop)

    def iceberg_of(self, layer: str) -> str:
        """The database of a layer's Iceberg tables."""
        return {STAGING_LAYER: self.staging_iceberg, OMOP_LAYER: self.omop_iceberg}.get(layer, self.marts_iceberg)

    def iceberg_tables(self, root: str, table_catalog: str) -> IcebergTables:
        return IcebergTables(root, table_catalog, self.staging, self.marts, self.omop)


QUARANTINE_NAMES = [column.split()[0] for column in QUARANTINE_COLUMNS.split(", ")]


def catalog_views(
    databases: Databases, mart_columns: dict[str, list[str]], includes_identifiers: bool, part_map: bool = True
) -> dict[tuple[str, str], str]:
    """Every catalog view's Athena SQL by (database, view); `mart_columns` are the marts' table columns. A
    partitioned mart shows each upload's rows of the build the committed build's part map names, and the unknown
    members of the committed build; without a part map (a lake written before incremental builds), the committed
    build's rows."""
    staging, iceberg = databases.staging, databases.staging_iceberg
    views = {
        (staging, UPLOADS): f"""
SELECT upload_id, load_id, registered_at, logged_at AS committed_at, upload_checksum, synthea_release
FROM (
  SELECT l.*, ROW_NUMBER() OVER (PARTITION BY upload_id ORDER BY logged_at DESC, load_id DESC, action DESC) AS n
  FROM {iceberg}.{UPLOADS} AS l
  WHERE action IN ('committed', 'removed')
) AS latest
WHERE n = 1 AND action = 'committed'"""
    }
    staged = [(name, [c.name for c in staging_columns(table)]) for name, table in TABLES.items()]
    for table, columns in [*staged, (QUARANTINE, QUARANTINE_NAMES)]:
        views[(staging, table)] = f"""
SELECT {", ".join(f"s.{identifier(c)}" for c in columns)}
FROM {iceberg}.{table} AS s
JOIN {staging}.{UPLOADS} AS u ON s.upload_id = u.upload_id AND s.load_id = u.load_id"""
    views[(staging, UPLOAD_STATES)] = f"""
WITH loads AS (
  SELECT upload_id, load_id,
         MIN(CASE WHEN action = 'begun' THEN logged_at END) AS begun_at,
         MAX(CASE WHEN action = 'committed' THEN logged_at END) AS committed_at,
         MAX(CASE WHEN action = 'discarded' THEN logged_at END) AS discarded_at,
         MAX(CASE WHEN action = 'discarded' THEN note END) AS discard_note
  FROM {iceberg}.{UPLOADS}
  WHERE action <> 'removed'
  GROUP BY upload_id, load_id
),
last_load AS (
  SELECT upload_id, begun_at AS last_run_at,
         CASE WHEN committed_at IS NOT NULL THEN 'committed' WHEN discarded_at IS NOT NULL THEN 'failed'
              ELSE 'loading' END AS last_run,
         CASE WHEN committed_at IS NULL THEN discard_note END AS last_run_note
  FROM (
    SELECT l.*, ROW_NUMBER() OVER (PARTITION BY upload_id ORDER BY COALESCE(begun_at, committed_at) DESC, load_id DESC)
           AS n
    FROM loads AS l
  ) AS ranked
  WHERE n = 1
),
decisive AS (
  SELECT upload_id, action, logged_at, registered_at, upload_checksum, synthea_release, upload_token, note, patients
  FROM (
    SELECT l.*, ROW_NUMBER() OVER (PARTITION BY upload_id ORDER BY logged_at DESC, load_id DESC, action DESC) AS n
    FROM {iceberg}.{UPLOADS} AS l
    WHERE action IN ('committed', 'removed')
  ) AS ranked
  WHERE n = 1
)
SELECT
  u.upload_id,
  CASE WHEN d.action = 'committed' THEN 'committed'
       WHEN d.action = 'removed' AND (r.last_run_at IS NULL OR r.last_run_at <= d.logged_at) THEN 'removed'
       ELSE r.last_run END AS state,
  d.synthea_release,
  CASE WHEN d.action = 'committed' THEN d.patients END AS patients,
  CASE WHEN d.action = 'committed' THEN d.registered_at END AS registered_at,
  CASE WHEN d.action = 'committed' THEN d.logged_at END AS committed_at,
  CASE WHEN d.action = 'removed' THEN d.logged_at END AS removed_at,
  CASE WHEN d.action = 'removed' THEN d.note END AS removal_note,
  r.last_run,
  r.last_run_at,
  r.last_run_note,
  d.upload_checksum,
  d.upload_token
FROM (SELECT DISTINCT upload_id FROM {iceberg}.{UPLOADS}) AS u
LEFT JOIN last_load AS r ON r.upload_id = u.upload_id
LEFT JOIN decisive AS d ON d.upload_id = u.upload_id"""
    marts = databases.marts
    views[(marts, "current_build")] = f"""
SELECT build_id, logged_at AS committed_at, includes_identifiers
FROM {databases.marts_iceberg}.{BUILDS}
WHERE action = 'committed'
ORDER BY logged_at DESC, build_id DESC
LIMIT 1"""
    if part_map:
        views[(marts, "current_parts")] = f"""
SELECT upload_id, part_build
FROM {databases.marts_iceberg}.{PARTS}
WHERE build_id = (SELECT build_id FROM {marts}.current_build)"""
    for mart, columns in mart_columns.items():
        hidden = {"build_id", *([] if includes_identifiers else MART_IDENTIFIERS.get(mart, ()))}
        select = f"SELECT {', '.join(f'm.{identifier(c)}' for c in columns if c not in hidden)}"
        if part_map and mart in PARTITIONED_MARTS:
            views[(marts, mart)] = f"""
{select}
FROM {databases.marts_iceberg}.{mart} AS m
LEFT JOIN {marts}.current_parts AS p ON m.upload_id = p.upload_id AND m.build_id = p.part_build
WHERE p.upload_id IS NOT NULL
   OR (m.upload_id IS NULL AND m.build_id = (SELECT build_id FROM {marts}.current_build))"""
        else:
            views[(marts, mart)] = f"""
{select}
FROM {databases.marts_iceberg}.{mart} AS m
WHERE m.build_id = (SELECT build_id FROM {marts}.current_build)"""
    for view in BI_VIEWS:
        views[(marts, view)] = view_sql(view, marts)
    views.update(omop_views(databases))
    return {key: sql.strip() for key, sql in views.items()}


TOOL_WRITTEN_TABLES = ("cohort", "cohort_definition")
"""CDM tables OHDSI's tools write themselves, in their results schema."""


def unbuilt_cdm_tables() -> list[str]:
    """The CDM 5.4 tables no build writes (`visit_detail`, `note`, `specimen`, ...), which OHDSI's tools that
    read every table (Achilles' full run, cohort definitions) expect to find, empty when there is nothing."""
    built = {*CLINICAL_TABLES, *VOCABULARY_TABLES, *TOOL_WRITTEN_TABLES}
    return [table for table in cdm_tables() if table not in built]


def omop_views(databases: Databases) -> dict[tuple[str, str], str]:
    """The committed OMOP build's tables with exactly the CDM's columns, the vocabulary tables of the load that
    build maps with, and the CDM's other tables, empty."""
    omop, iceberg = databases.omop, databases.omop_iceberg
    views = {
        (omop, "current_build"): f"""
SELECT build_id, logged_at AS committed_at
FROM {iceberg}.{BUILDS}
WHERE action = 'committed'
ORDER BY logged_at DESC, build_id DESC
LIMIT 1""",
        (omop, "current_vocabulary"): f"""
SELECT {LOAD_COLUMN}, vocabulary_source
FROM {iceberg}.{BUILD_VOCABULARY}
WHERE build_id = (SELECT build_id FROM {omop}.current_build)""",
    }
    for table in CLINICAL_TABLES:
        columns = ", ".join(f"t.{identifier(f.name)}" for f in cdm_table(table).fields)
        views[(omop, table)] = f"""
SELECT {columns}
FROM {iceberg}.{table} AS t
WHERE t.build_id = (SELECT build_id FROM {omop}.current_build)"""
    for table in VOCABULARY_TABLES:
        columns = ", ".join(f"t.{identifier(f.name)}" for f in cdm_table(table).fields)
        views[(omop, table)] = f"""
SELECT {columns}
FROM {iceberg}.{table} AS t
WHERE t.{LOAD_COLUMN} = (SELECT {LOAD_COLUMN} FROM {omop}.current_vocabulary)"""
    for table in unbuilt_cdm_tables():
        columns = ", ".join(
            f"CAST(NULL AS {PRESTO_TYPES[f.spark_type]}) AS {identifier(f.name)}" for f in cdm_table(table).fields
        )
        views[(omop, table)] = f"\nSELECT {columns}\nWHERE false"
    return views


def extension_folder() -> Path:
    """Where the `duckdb-ext-*` packages put the extensions built for the installed DuckDB."""
    import duckdb_ext

    version = f"v{duckdb.__version__}"
    folders = sorted(
        folder for root in duckdb_ext.__path__ for folder in (Path(root) / "extensions" / version).glob("*")
    )
    if not folders:
        raise RuntimeError(
            f"no DuckDB extensions for DuckDB {version}: install duckdb-ext-iceberg and "
            "duckdb-ext-avro of the same version"
        )
    return folders[0]


def connect(path: str = ":memory:", read_only: bool = False, s3: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the Iceberg extension (and httpfs with S3 credentials for a lake on S3)."""
    connection = duckdb.connect(path, read_only=read_only)
    folder = extension_folder()
    for extension in (*EXTENSIONS, *(("httpfs",) if s3 else ())):
        connection.execute(f"LOAD '{folder / f'{extension}.duckdb_extension'}'")
    connection.execute("SET TimeZone = 'UTC'")
    if s3:
        connection.execute(s3_secret())
    return connection


def s3_secret() -> str:
    """DuckDB's S3 secret from the usual AWS environment (and AWS_ENDPOINT_URL for S3-compatible endpoints)."""
    import boto3

    session = boto3.Session()
    credentials = session.get_credentials().get_frozen_credentials()
    options = {"TYPE": "s3", "KEY_ID": credentials.access_key, "SECRET": credentials.secret_key, "REGION": aws_region()}
    if credentials.token:
        options["SESSION_TOKEN"] = credentials.token
    endpoint = aws_endpoint("s3")
    settings = [f"{key} {literal(value)}" for key, value in options.items()]
    if endpoint:
        host = endpoint.split("://", 1)[-1].rstrip("/")
        settings += [
            f"ENDPOINT {literal(host)}",
            "URL_STYLE 'path'",
            f"USE_SSL {'true' if endpoint.startswith('https') else 'false'}",
        ]
    return f"CREATE OR REPLACE SECRET lake ({', '.join(settings)})"


LAKE_TABLES = tuple(
    [(STAGING_LAYER, t) for t in (*TABLES, QUARANTINE, UPLOADS)]
    + [(MARTS_LAYER, m) for m in (*MARTS, BUILDS, PARTS)]
    + [(OMOP_LAYER, t) for t in (*CLINICAL_TABLES, *VOCABULARY_TABLES, BUILDS, BUILD_VOCABULARY, VOCABULARY_LOADS)]
)
"""Every Iceberg table of a lake, as (layer, table)."""
UPLOAD_STATE_TABLES = ((STAGING_LAYER, UPLOADS),)
"""The Iceberg tables the `upload_states` view reads."""


def iceberg_sources(
    lake: IcebergTables, glue=None, tables: tuple[tuple[str, str], ...] = LAKE_TABLES
) -> dict[tuple[str, str], str]:
    """Where DuckDB reads each existing Iceberg table of `tables`, by (layer, table): its folder for a local lake
    (a version hint names the current metadata), the current metadata file the Glue Data Catalog names for a lake
    on S3."""
    sources = {}
    for layer, table in tables:
        if glue is None:
            if (Path(lake.location(layer, table)) / "metadata" / "version-hint.text").exists():
                sources[(layer, table)] = lake.location(layer, table)
            continue
        try:
            found = glue.get_table(DatabaseName=lake.database(layer), Name=table)["Table"]
        except glue.exceptions.EntityNotFoundException:
            continue
        sources[(layer, table)] = found["Parameters"]["metadata_location"]
    return sources


def _first_snapshot(connection: duckdb.DuckDBPyConnection, source: str) -> dt.datetime | None:
    first = connection.execute(f"SELECT min(timestamp_ms) FROM iceberg_snapshots({literal(source)})").fetchone()[0]
    return first.replace(tzinfo=dt.timezone.utc) if first else None


def _scan(connection: duckdb.DuckDBPyConnection, source: str, as_of: dt.datetime | None) -> str:
    """A table's rows, as at `as_of` when given: none when the table had no snapshot yet (DuckDB refuses such
    a time travel). Rows from before a schema upgrade get today's columns (null where the table lacked one), so
    the views, which name today's columns, still answer."""
    if as_of is None:
        return f"SELECT * FROM iceberg_scan({literal(source)})"
    first = _first_snapshot(connection, source)
    if first is None or first > as_of:
        return f"SELECT * FROM iceberg_scan({literal(source)}) LIMIT 0"
    return (
        f"(SELECT * FROM iceberg_scan({literal(source)}) LIMIT 0) UNION ALL BY NAME "
        f"(SELECT * FROM iceberg_scan({literal(source)}, "
        f"snapshot_from_timestamp = TIMESTAMPTZ {literal(as_of.isoformat())}))"
    )


def open_catalog(
    lake: IcebergTables,
    databases: Databases,
    sources: dict[tuple[str, str], str],
    path: str = ":memory:",
    as_of: dt.datetime | None = None,
) -> duckdb.DuckDBPyConnection:
    """An embedded DuckDB catalog of the lake: the Iceberg tables (at `as_of`, when given) and every catalog
    view over them."""
    connection = connect(path, s3=lake.layout.on_s3)
    for layer in (STAGING_LAYER, MARTS_LAYER, OMOP_LAYER):
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {databases.iceberg_of(layer)}")
    for schema in databases.views:
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    if as_of and (MARTS_LAYER, BUILDS) in sources:
        first = _first_snapshot(connection, sources[(MARTS_LAYER, BUILDS)])
        if first is None or first > as_of:
            raise ValueError(
                f"the lake has no marts as of {as_of.isoformat()}: its history starts at "
                f"{first.isoformat() if first else 'the next build'} (older snapshots are expired by "
                "`synthea-pipeline maintain`)"
            )
    for (layer, table), source in sources.items():
        schema = databases.iceberg_of(layer)
        connection.execute(f"CREATE OR REPLACE VIEW {schema}.{table} AS {_scan(connection, source, as_of)}")
    mart_columns = {
        mart: [row[0] for row in connection.execute(f"DESCRIBE {databases.marts_iceberg}.{mart}").fetchall()]
        for mart in MARTS
        if (MARTS_LAYER, mart) in sources
    }
    build = []
    if (MARTS_LAYER, BUILDS) in sources:
        build = connection.execute(
            f"SELECT includes_identifiers FROM {databases.marts_iceberg}.{BUILDS} "
            "WHERE action = 'committed' ORDER BY logged_at DESC, build_id DESC LIMIT 1"
        ).fetchall()
    views = catalog_views(databases, mart_columns, bool(build and build[0][0]), (MARTS_LAYER, PARTS) in sources)
    available = {(databases.iceberg_of(layer), table) for (layer, table) in sources}
    for (database, name), sql in views.items():
        needs = {(t.db, t.name) for t in sqlglot.parse_one(sql, read=SOURCE_DIALECT).find_all(exp.Table) if t.db}
        if needs <= available:
            connection.execute(f"CREATE OR REPLACE VIEW {database}.{name} AS {local_sql(sql)}")
            available.add((database, name))
    return connection


def defined_views(connection: duckdb.DuckDBPyConnection, databases: Databases) -> list[tuple[str, str]]:
    """The (database, view) pairs of the catalog views an embedded catalog holds."""
    rows = connection.execute("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return [(schema, view) for schema, view in rows if schema in databases.views]


def duckdb_to_hive(duckdb_type: str) -> str:
    kind = duckdb_type.upper()
    if kind.startswith("DECIMAL"):
        return kind.lower().replace(" ", "")
    return {
        "VARCHAR": "string",
        "INTEGER": "int",
        "BIGINT": "bigint",
        "HUGEINT": "decimal(38,0)",
        "DOUBLE": "double",
        "BOOLEAN": "boolean",
        "DATE": "date",
        "TIMESTAMP WITH TIME ZONE": "timestamp",
        "TIMESTAMP": "timestamp",
    }[kind]


def view_columns(connection: duckdb.DuckDBPyConnection, database: str, view: str) -> list[tuple[str, str]]:
    """A view's output columns with catalog types, as the embedded engine computes them."""
    return [(row[0], duckdb_to_hive(row[1])) for row in connection.execute(f"DESCRIBE {database}.{view}").fetchall()]


def athena_view_input(name: str, database: str, sql: str, columns: list[tuple[str, str]]) -> dict:
    """An Athena view as the Glue Data Catalog stores one (a base64 "Presto view" beside Hive columns)."""
    presto = {
        "originalSql": sql,
        "catalog": "awsdatacatalog",
        "schema": database,
        "columns": [{"name": n, "type": PRESTO_TYPES.get(t, t)} for n, t in columns],
        "owner": "synthea-pipeline",
        "runAsInvoker": False,
        "properties": {},
    }
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


def _same(existing: dict, wanted: dict) -> bool:
    """Only what this module sets: Glue fills in defaults on read."""
    plain = ("TableType", "PartitionKeys", "ViewOriginalText", "ViewExpandedText")
    return (
        all(existing.get(key) == wanted.get(key) for key in plain)
        and all(existing.get("Parameters", {}).get(k) == v for k, v in wanted["Parameters"].items())
        and existing.get("StorageDescriptor", {}).get("Columns") == wanted["StorageDescriptor"]["Columns"]
    )


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


def register_glue(glue, connection: duckdb.DuckDBPyConnection, databases: Databases) -> dict[str, str]:
    """Every catalog view the embedded catalog could define, as an Athena view in the Glue Data Catalog (the
    Iceberg tables themselves are registered by the engines that write them); returns what happened to each."""
    _ensure_database(glue, databases.staging, "synthea-pipeline: committed staging rows (views)")
    _ensure_database(glue, databases.marts, "synthea-pipeline: the committed marts build and BI views (views)")
    _ensure_database(glue, databases.omop, "synthea-pipeline: the committed OMOP CDM 5.4 build (views)")
    sql = {(d, v): s for (d, v), s in _view_sql(connection, databases).items()}
    return {
        f"{database}.{view}": _put_table(
            glue,
            database,
            athena_view_input(view, database, sql[(database, view)], view_columns(connection, database, view)),
        )
        for database, view in defined_views(connection, databases)
    }


def _view_sql(connection: duckdb.DuckDBPyConnection, databases: Databases) -> dict[tuple[str, str], str]:
    mart_columns = {}
    for database, view in defined_views(connection, databases):
        if database == databases.marts and view in MARTS:
            mart_columns[view] = [
                row[0] for row in connection.execute(f"DESCRIBE {databases.marts_iceberg}.{view}").fetchall()
            ]
    identifiers = connection.execute(f"SELECT includes_identifiers FROM {databases.marts}.current_build").fetchall()
    return catalog_views(databases, mart_columns, bool(identifiers and identifiers[0][0]))


def as_of_query(
    sql: str, databases: Databases, as_of: dt.datetime, mart_columns: dict[str, list[str]], includes_identifiers: bool
) -> str:
    """The user's Athena query over the marts and BI views as they were at `as_of`: each mart and BI view
    becomes a CTE reading the Iceberg tables `FOR TIMESTAMP AS OF`, and references to them point there."""
    moment = as_of.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    views = {
        view: text
        for (database, view), text in catalog_views(databases, mart_columns, includes_identifiers).items()
        if database == databases.marts
    }

    def pinned(text: str) -> exp.Expression:
        tree = sqlglot.parse_one(text, read=SOURCE_DIALECT)
        for table in tree.find_all(exp.Table):
            if table.db == databases.marts and table.name in views:
                table.set("db", None)
            elif table.db == databases.marts_iceberg:
                table.set(
                    "version",
                    exp.Version(
                        this="TIMESTAMP",
                        kind="AS OF",
                        expression=exp.cast(
                            exp.Literal.string(moment),
                            exp.DataType.build("TIMESTAMP WITH TIME ZONE", dialect=SOURCE_DIALECT),
                        ),
                    ),
                )
        return tree

    query = pinned(sql)
    ctes = [
        exp.CTE(this=pinned(views[name]), alias=exp.TableAlias(this=exp.to_identifier(name)))
        for name in ("current_build", *MARTS, *BI_VIEWS)
        if name in views
    ]
    existing = query.args.get("with_")
    query.set("with_", exp.With(expressions=ctes + (existing.expressions if existing else [])))
    return query.sql(dialect=SOURCE_DIALECT)


def athena_query(
    athena,
    sql: str,
    database: str,
    workgroup: str,
    output: str | None,
    timeout_seconds: float,
    poll_seconds: float = 1.0,
) -> tuple[list[str], list[list]]:
    """Run one statement on Athena and return its column names and rows (values as Athena returns them, text).
    A query still running after `timeout_seconds` is cancelled (TimeoutError)."""
    import time

    request = {"QueryString": sql, "QueryExecutionContext": {"Database": database}, "WorkGroup": workgroup}
    if output:
        request["ResultConfiguration"] = {"OutputLocation": output}
    query_id = athena.start_query_execution(**request)["QueryExecutionId"]
    deadline = time.monotonic() + timeout_seconds
    while True:
        status = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
        if status["State"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        if time.monotonic() > deadline:
            athena.stop_query_execution(QueryExecutionId=query_id)
            raise TimeoutError(
                f"Athena query {query_id} still {status['State']} after {timeout_seconds:.0f} s: cancelled"
            )
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
