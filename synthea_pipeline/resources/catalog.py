"""The catalog resource: registers the lake's tables and BI views and answers SQL. A local lake gets an embedded
DuckDB catalog file (`<lake>/catalog.duckdb`); a lake on S3 the Glue Data Catalog, queried with Athena. Which
one is decided by the lake root at run time."""

import os
from typing import Optional

from dagster import ConfigurableResource

from synthea_pipeline.transforms.bi import BI_VIEWS, MARTS_DATABASE, STAGING_DATABASE
from synthea_pipeline.transforms.catalog import Databases, athena_query, open_catalog, register_glue, view_columns
from synthea_pipeline.transforms.lake import Lake

CATALOG_FILE = "catalog.duckdb"


class CatalogResource(ConfigurableResource):
    """Database names default to SYNTHEA_STAGING_DATABASE / SYNTHEA_MARTS_DATABASE, else `synthea_staging` and
    `synthea_marts`; Athena runs in SYNTHEA_ATHENA_WORKGROUP (default `synthea-pipeline`), results to
    SYNTHEA_ATHENA_OUTPUT when the workgroup does not set a location."""

    staging_database: Optional[str] = None
    marts_database: Optional[str] = None
    athena_workgroup: Optional[str] = None
    athena_output: Optional[str] = None

    def databases(self) -> Databases:
        return Databases(
            staging=self.staging_database or os.environ.get("SYNTHEA_STAGING_DATABASE") or STAGING_DATABASE,
            marts=self.marts_database or os.environ.get("SYNTHEA_MARTS_DATABASE") or MARTS_DATABASE,
        )

    def aws_client(self, service: str):
        import boto3

        return boto3.client(service)

    def open(self, lake: Lake):
        """The embedded engine over the lake, with the BI views: open once, use for registering and rows."""
        return open_catalog(lake, self.databases())

    def register(self, lake: Lake, engine) -> dict[str, str]:
        """Every staging table (with a partition per upload), mart and BI view; idempotent. `engine` is
        `open(lake)`: it gives the BI views' column types for the Glue Data Catalog."""
        databases = self.databases()
        if lake.on_s3:
            return register_glue(self.aws_client("glue"), lake, databases, view_columns(engine, databases.marts))
        path = os.path.join(lake.root, CATALOG_FILE)
        temp = f"{path}.{os.getpid()}.tmp"
        for stale in (temp, f"{temp}.wal"):
            if os.path.exists(stale):
                os.remove(stale)
        open_catalog(lake, databases, temp).close()
        os.replace(temp, path)
        if os.path.exists(f"{path}.wal"):
            os.remove(f"{path}.wal")
        return {f"{schema}.{name}": "written" for schema, name in engine.execute(
            "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal").fetchall()}

    def view_rows(self, engine) -> dict[str, list[dict]]:
        """Every BI view's rows, computed by the embedded engine."""
        marts = self.databases().marts
        return {view: engine.sql(f"SELECT * FROM {marts}.{view}").to_arrow_table().to_pylist() for view in BI_VIEWS}

    def query(self, lake: Lake, sql: str) -> tuple[list[str], list[list]]:
        """Runs SQL with the marts database as the default (then staging locally), as Athena would."""
        databases = self.databases()
        if lake.on_s3:
            return athena_query(self.aws_client("athena"), sql, databases.marts,
                                self.athena_workgroup or os.environ.get("SYNTHEA_ATHENA_WORKGROUP") or "synthea-pipeline",
                                self.athena_output or os.environ.get("SYNTHEA_ATHENA_OUTPUT"))
        path = os.path.join(lake.root, CATALOG_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no catalog at {path}: run the pipeline on this lake first")
        import duckdb

        with duckdb.connect(path, read_only=True) as engine:
            engine.execute(f"SET search_path = '{databases.marts},{databases.staging}'")
            engine.execute("SET TimeZone = 'UTC'")
            result = engine.sql(sql)
            return list(result.columns), [list(row) for row in result.fetchall()]
