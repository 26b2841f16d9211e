"""The catalog resource: registers the catalog views over the lake's Iceberg tables and answers SQL. A local lake
gets an embedded DuckDB catalog file (`<lake>/catalog.duckdb`); a lake on S3 the Glue Data Catalog, queried with
Athena. Which one is decided by the lake root at run time."""

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
from dagster import ConfigurableResource
from pydantic import Field

from synthea_pipeline.settings import (
    ATHENA_OUTPUT,
    ATHENA_WORKGROUP,
    MARTS_DATABASE_NAME,
    OMOP_DATABASE_NAME,
    STAGING_DATABASE_NAME,
)
from synthea_pipeline.transforms.bi import BI_VIEWS
from synthea_pipeline.transforms.catalog import (
    LAKE_TABLES,
    UPLOAD_STATE_TABLES,
    UPLOAD_STATES,
    Databases,
    as_of_query,
    athena_query,
    connect,
    defined_views,
    iceberg_sources,
    open_catalog,
    register_glue,
    uploads_query,
)
from synthea_pipeline.transforms.lake import Lake, aws_client
from synthea_pipeline.transforms.marts import MARTS

CATALOG_FILE = "catalog.duckdb"


class CatalogResource(ConfigurableResource):
    """The catalog's database names (the Iceberg tables are in the same names suffixed `_iceberg`) and where
    Athena runs queries. Athena is polled here rather than through dagster-aws's `AthenaClientResource`, whose
    client cannot name the query's database or result location and returns rows without column names."""

    staging_database: str = Field(default=STAGING_DATABASE_NAME.default, description=STAGING_DATABASE_NAME.description)
    marts_database: str = Field(default=MARTS_DATABASE_NAME.default, description=MARTS_DATABASE_NAME.description)
    omop_database: str = Field(default=OMOP_DATABASE_NAME.default, description=OMOP_DATABASE_NAME.description)
    athena_workgroup: str = Field(default=ATHENA_WORKGROUP.default, description=ATHENA_WORKGROUP.description)
    athena_output: str = Field(default=ATHENA_OUTPUT.default, description=ATHENA_OUTPUT.description)
    athena_timeout_seconds: int = Field(
        default=600, description="How long an Athena query may take before it is cancelled and the command fails."
    )

    def databases(self) -> Databases:
        return Databases(staging=self.staging_database, marts=self.marts_database, omop=self.omop_database)

    def open(
        self, lake: Lake, as_of: dt.datetime | None = None, tables: tuple[tuple[str, str], ...] = LAKE_TABLES
    ) -> duckdb.DuckDBPyConnection:
        """The embedded engine over the lake's Iceberg tables (those of `tables`) with every catalog view they
        allow (as at `as_of`)."""
        databases = self.databases()
        iceberg = databases.iceberg_tables(lake.root, lake.table_catalog("path"))
        sources = iceberg_sources(iceberg, aws_client("glue") if lake.on_s3 else None, tables)
        return open_catalog(iceberg, databases, sources, as_of=as_of)

    def upload_states(self, lake: Lake) -> dict[str, dict]:
        """Every upload the lake's uploads log knows, by id, as the `upload_states` view gives it: read from the
        Iceberg tables themselves (not the catalog file or Athena), so a sensor tick or a command sees the log as
        it is now."""
        with self.open(lake, tables=UPLOAD_STATE_TABLES) as engine:
            if (self.databases().staging, UPLOAD_STATES) not in defined_views(engine, self.databases()):
                return {}
            rows = engine.sql(uploads_query(self.databases().staging, UPLOAD_STATES)).to_arrow_table().to_pylist()
        return {row["upload_id"]: row for row in rows}

    @contextmanager
    def registered(self, lake: Lake) -> Iterator[tuple[duckdb.DuckDBPyConnection, dict[str, str]]]:
        """Registers every catalog view where readers look, idempotently, and yields the embedded engine over
        them with what was registered. Locally the engine is the catalog file itself, written under a temporary
        name and swapped in when the block ends; on S3 the views become Athena views, typed by the columns the
        embedded engine computes."""
        databases = self.databases()
        if lake.on_s3:
            with self.open(lake) as engine:
                yield engine, register_glue(aws_client("glue"), engine, databases)
            return
        path = os.path.join(lake.root, CATALOG_FILE)
        temp = f"{path}.{os.getpid()}.tmp"
        for stale in (temp, f"{temp}.wal"):
            if os.path.exists(stale):
                os.remove(stale)
        iceberg = databases.iceberg_tables(lake.root, "path")
        with open_catalog(iceberg, databases, iceberg_sources(iceberg), temp) as engine:
            yield engine, {f"{schema}.{name}": "written" for schema, name in defined_views(engine, databases)}
        os.replace(temp, path)
        if os.path.exists(f"{path}.wal"):
            os.remove(f"{path}.wal")

    def view_rows(self, engine: duckdb.DuckDBPyConnection) -> dict[str, list[dict]]:
        """Every BI view's rows, computed by the embedded engine."""
        marts = self.databases().marts
        return {view: engine.sql(f"SELECT * FROM {marts}.{view}").to_arrow_table().to_pylist() for view in BI_VIEWS}

    def query(self, lake: Lake, sql: str, as_of: dt.datetime | None = None) -> tuple[list[str], list[list]]:
        """Runs SQL with the marts database as the default (then staging locally), as Athena would; with `as_of`
        over the marts and BI views as they were then (Iceberg time travel)."""
        databases = self.databases()
        if lake.on_s3:
            if as_of:
                with self.open(lake) as engine:
                    columns = {
                        m: [r[0] for r in engine.execute(f"DESCRIBE {databases.marts_iceberg}.{m}").fetchall()]
                        for m in MARTS
                    }
                    identifiers = engine.execute(
                        f"SELECT includes_identifiers FROM {databases.marts}.current_build"
                    ).fetchall()
                sql = as_of_query(sql, databases, as_of, columns, bool(identifiers and identifiers[0][0]))
            return athena_query(
                aws_client("athena"),
                sql,
                databases.marts,
                self.athena_workgroup,
                self.athena_output or None,
                self.athena_timeout_seconds,
            )
        path = os.path.join(lake.root, CATALOG_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no catalog at {path}: run the pipeline on this lake first")
        with self.open(lake, as_of) if as_of else connect(path, read_only=True) as engine:
            engine.execute(f"SET search_path = '{databases.marts},{databases.staging}'")
            result = engine.sql(sql)
            return list(result.columns), [list(row) for row in result.fetchall()]
