"""The Spark resource: runs a Spark layer (staging, marts) of a run on the configured engine and hands Dagster
what the layer reported.

- `sail` (default) and `local-jvm` run the layer in this process.
- `glue` and `emr-serverless` run the layer's Pipes entry script (`synthea_pipeline/entrypoints/`) as one AWS
  Glue job run or one EMR Serverless job run, with context and messages exchanged through S3."""

import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    ConfigurableResource,
    Failure,
    InitResourceContext,
    MaterializeResult,
)
from dagster_pyspark import LazyPySparkResource
from pydantic import Field, PrivateAttr
from pyspark.sql import SparkSession

from synthea_pipeline.metadata import dagster_metadata
from synthea_pipeline.run_tags import ENGINE_TAG, tag_run
from synthea_pipeline.settings import (
    CODE_URI,
    EMR_APPLICATION_ID,
    EMR_EXECUTION_ROLE_ARN,
    EMR_SPARK_SUBMIT_PARAMETERS,
    GLUE_JOB_PREFIX,
    PIPES_URI,
    SPARK_ENGINE,
)
from synthea_pipeline.transforms.iceberg import GLUE_CATALOG, HADOOP_CATALOG
from synthea_pipeline.transforms.lake import aws_client, aws_endpoint, aws_region
from synthea_pipeline.transforms.layers import LAYERS, AssetReport, LayerFailed, Report
from synthea_pipeline.transforms.staging import SPARK_CONF, configure


def _close_connect_clients_once() -> None:
    """pyspark 3.5: a stopped Spark Connect session closes its client again when it is garbage-collected, and every
    close shuts down the release thread pool all sessions of the process share, so a later session's queries in
    the same process (the next run of `backfill`, a test module) fail at random with "Pool not running". Closing
    a closed client does nothing here."""
    from pyspark.sql.connect.client.core import SparkConnectClient

    close = SparkConnectClient.close

    def close_once(self: SparkConnectClient) -> None:
        if not self.is_closed:
            close(self)

    SparkConnectClient.close = close_once


_close_connect_clients_once()
if "SPARK_CONNECT_LOG_LEVEL" not in os.environ:
    # pyspark's Spark Connect client logs every server error with a traceback once a logging configuration
    # re-enables its logger; the error reaches the caller anyway, so only its message is shown.
    logging.getLogger("pyspark.sql.connect.client.core").setLevel(logging.CRITICAL)

ENGINES = ("sail", "local-jvm", "glue", "emr-serverless")
REMOTE_ENGINES = ("glue", "emr-serverless")
CONNECT_MODE_ENV = "SPARK_CONNECT_MODE_ENABLED"


def dagster_result(report: Report) -> MaterializeResult | AssetCheckResult:
    """A layer's report as Dagster receives it from a Pipes message, so in-process and remote runs show the
    same metadata."""
    metadata = dagster_metadata(report.metadata)
    if isinstance(report, AssetReport):
        return MaterializeResult(asset_key=AssetKey.from_user_string(report.asset_key), metadata=metadata)
    return AssetCheckResult(
        asset_key=AssetKey.from_user_string(report.asset_key),
        check_name=report.check_name,
        passed=report.passed,
        severity=AssetCheckSeverity(report.severity),
        metadata=metadata,
    )


JVM_PACKAGES = ("org.apache.iceberg:iceberg-spark-runtime-3.5_2.12:1.7.1", "org.apache.iceberg:iceberg-aws-bundle:1.7.1",
                "org.apache.hadoop:hadoop-aws:3.3.4")
"""What Glue 5.0 ships: Spark 3.5.4 with Iceberg 1.7.1 (and its AWS bundle: the Glue catalog, S3FileIO).
hadoop-aws is pinned to the Hadoop that pyspark 3.5 bundles (3.3.4; Glue 5.0 runs 3.4.1), which it must match.
JVM Spark loads them from Maven Central on first use; all of them always, since a JVM takes its jars once."""


def start_sail(glue_catalog: bool) -> tuple[object, str]:
    """A Sail Spark Connect server in this process and its address. For a lake on S3 its catalog `glue` is the
    Glue Data Catalog (region and endpoint from the usual AWS environment); its default catalog stays the
    session's own, where path-based tables are registered."""
    os.environ.setdefault("RUST_LOG", "error")
    if glue_catalog:
        region = aws_region()
        endpoint = aws_endpoint("glue")
        glue = f'{{type="glue", name="{GLUE_CATALOG}", region="{region}"' + (
            f', endpoint_url="{endpoint}"}}' if endpoint else "}")
        os.environ["SAIL_CATALOG__LIST"] = f'[{{name="sail", type="memory", initial_database=["default"]}}, {glue}]'
        os.environ["SAIL_CATALOG__DEFAULT_CATALOG"] = "sail"
    from pysail.spark import SparkConnectServer

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    return server, f"sc://127.0.0.1:{server.listening_address[1]}"


def jvm_iceberg_conf(lake_root: str) -> dict[str, str]:
    """JVM Spark settings for the lake's Iceberg tables: the jars, Iceberg's SQL extensions (DELETE, MERGE), and
    the catalog the layers name tables through (`transforms.iceberg`). A local lake: the Hadoop catalog `lake`
    whose warehouse is its root. A lake on S3: the catalog `glue`, Iceberg's GlueCatalog with S3FileIO, as on
    Glue 5 and EMR, and `s3://` read through hadoop-aws (the raw Parquet); both go to AWS_ENDPOINT_URL when set.
    Iceberg's vectorized (Arrow) Parquet reader is off: with pyspark 3.5's jars it corrupted the JVM's memory
    here (SIGSEGV in the symbol table)."""
    conf = {
        "spark.jars.packages": ",".join(JVM_PACKAGES),
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        "spark.sql.iceberg.vectorization.enabled": "false",
    }
    if not lake_root.startswith("s3://"):
        return {**conf,
                f"spark.sql.catalog.{HADOOP_CATALOG}": "org.apache.iceberg.spark.SparkCatalog",
                f"spark.sql.catalog.{HADOOP_CATALOG}.type": "hadoop",
                f"spark.sql.catalog.{HADOOP_CATALOG}.warehouse": os.path.abspath(lake_root)}
    glue = f"spark.sql.catalog.{GLUE_CATALOG}"
    conf.update({
        glue: "org.apache.iceberg.spark.SparkCatalog",
        f"{glue}.catalog-impl": "org.apache.iceberg.aws.glue.GlueCatalog",
        f"{glue}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
        f"{glue}.warehouse": lake_root,
        f"{glue}.client.region": aws_region(),
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    })
    conf.update({f"spark.hadoop.fs.s3a.{key}": value for key, value in aws_credentials().items()})
    glue_endpoint, s3_endpoint = aws_endpoint("glue"), aws_endpoint("s3")
    if glue_endpoint:
        conf[f"{glue}.glue.endpoint"] = glue_endpoint
    if s3_endpoint:
        conf.update({
            f"{glue}.s3.endpoint": s3_endpoint,
            f"{glue}.s3.path-style-access": "true",
            "spark.hadoop.fs.s3a.endpoint": s3_endpoint,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(s3_endpoint.startswith("https")).lower(),
        })
    return conf


def aws_credentials() -> dict[str, str]:
    """This process's AWS credentials (any source boto3 reads: environment, profile, SSO, role) in hadoop-aws's
    terms. The JVM cannot be relied on to find them itself: it keeps the environment it was started with."""
    import boto3

    credentials = boto3.Session().get_credentials()
    if credentials is None:
        return {}
    frozen = credentials.get_frozen_credentials()
    found = {"access.key": frozen.access_key, "secret.key": frozen.secret_key}
    if frozen.token:
        found.update({"session.token": frozen.token,
                      "aws.credentials.provider": "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"})
    return found


def share_aws_credentials(session: SparkSession) -> None:
    """Hands this process's AWS credentials to the JVM's AWS SDK v2 clients (Iceberg's Glue catalog and S3FileIO)
    as the system properties their default credentials chain reads first."""
    credentials = aws_credentials()
    system = session._jvm.java.lang.System
    for key, value in (("aws.accessKeyId", "access.key"), ("aws.secretAccessKey", "secret.key"),
                       ("aws.sessionToken", "session.token")):
        if value in credentials:
            system.setProperty(key, credentials[value])
        else:
            system.clearProperty(key)


class SparkResource(ConfigurableResource):
    """Runs the Spark layers on `engine`: in this process on a session dagster-pyspark builds (a Sail Spark
    Connect server's, or local JVM Spark's), or as Glue / EMR Serverless job runs through Dagster Pipes."""

    engine: str = Field(default=SPARK_ENGINE.default, description=SPARK_ENGINE.description)
    glue_job_prefix: str = Field(default=GLUE_JOB_PREFIX.default, description=GLUE_JOB_PREFIX.description)
    pipes_uri: str = Field(default=PIPES_URI.default, description=PIPES_URI.description)
    code_uri: str = Field(default=CODE_URI.default, description=CODE_URI.description)
    emr_application_id: str = Field(default=EMR_APPLICATION_ID.default, description=EMR_APPLICATION_ID.description)
    emr_execution_role_arn: str = Field(default=EMR_EXECUTION_ROLE_ARN.default,
                                        description=EMR_EXECUTION_ROLE_ARN.description)
    emr_spark_submit_parameters: str = Field(default=EMR_SPARK_SUBMIT_PARAMETERS.default,
                                             description=EMR_SPARK_SUBMIT_PARAMETERS.description)
    _session: SparkSession | None = PrivateAttr(default=None)
    _server: object = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Tags the run with the engine its Spark layers run on."""
        tag_run(context, {ENGINE_TAG: self.engine})

    def resolved_engine(self) -> str:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown Spark engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        return self.engine

    def table_catalog(self, lake_root: str) -> str:
        """How the layers name the lake's Iceberg tables (see `transforms.iceberg`): through the Glue Data
        Catalog for a lake on S3, else by location (Sail) or a Hadoop catalog (JVM Spark)."""
        if lake_root.startswith("s3://"):
            return "glue"
        return "hadoop" if self.resolved_engine() == "local-jvm" else "path"

    def run_layer(self, context: AssetExecutionContext, layer: str, params: dict[str, Any]
                  ) -> Iterator[MaterializeResult | AssetCheckResult]:
        params = {**params, "catalog": self.table_catalog(params["lake_root"])}
        engine = self.resolved_engine()
        if engine in REMOTE_ENGINES:
            from synthea_pipeline.resources.remote_spark import (  # dagster-aws: half a second, for AWS runs only
                run_on_emr_serverless,
                run_on_glue,
            )
        if engine == "glue":
            yield from run_on_glue(context, layer, params, self.remote_settings(),
                                   self.aws_client("glue"), self.aws_client("s3"))
            return
        if engine == "emr-serverless":
            yield from run_on_emr_serverless(context, layer, params, self.remote_settings(),
                                             self.aws_client("emr-serverless"), self.aws_client("s3"))
            return
        try:
            reports = LAYERS[layer](self.get_session(params["lake_root"]), context.log, **params)
        except LayerFailed as failure:
            yield from (dagster_result(report) for report in failure.reports)
            raise Failure(description=str(failure)) from None
        yield from (dagster_result(report) for report in reports)

    def remote_settings(self):
        from synthea_pipeline.resources.remote_spark import RemoteSparkSettings

        return RemoteSparkSettings(
            glue_job_prefix=self.glue_job_prefix, pipes_uri=self.pipes_uri or None, code_uri=self.code_uri or None,
            emr_application_id=self.emr_application_id or None,
            emr_execution_role_arn=self.emr_execution_role_arn or None,
            emr_spark_submit_parameters=self.emr_spark_submit_parameters)

    def upkeep_session(self, lake_root: str) -> SparkSession:
        """A session in this process for the lake's small upkeep (taking an upload out, deleting stale loads):
        the engine's own, or beside the AWS engines a Sail one, which commits through the Glue Data Catalog as
        the Glue and EMR jobs do."""
        engine = self.resolved_engine()
        return self._session_on("sail" if engine in REMOTE_ENGINES else engine, lake_root)

    def aws_client(self, service: str):
        """A boto3 client, built when a run needs it (credentials and region from the environment)."""
        return aws_client(service)

    def get_session(self, lake_root: str) -> SparkSession:
        """The engine's session for a lake; started once and reused by every layer of the run."""
        return self._session_on(self.resolved_engine(), lake_root)

    def _session_on(self, engine: str, lake_root: str) -> SparkSession:
        if self._session is None:
            self._session = self._start(engine, lake_root)
            configure(self._session)
        return self._session

    def _start(self, engine: str, lake_root: str) -> SparkSession:
        """dagster-pyspark builds the session from the configuration this run needs: Sail's address (a server
        on a free port per run) or JVM Spark's Iceberg catalog for this lake."""
        if engine == "sail":
            self._server, address = start_sail(glue_catalog=lake_root.startswith("s3://"))
            return LazyPySparkResource(spark_config={"spark.remote": address}).spark_session
        if engine != "local-jvm":
            raise ValueError(f"the {engine} engine runs layers remotely and has no local session")
        os.environ.pop(CONNECT_MODE_ENV, None)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        session = LazyPySparkResource(spark_config={
            "spark.master": "local[*]", "spark.app.name": "synthea-pipeline", **SPARK_CONF,
            **jvm_iceberg_conf(lake_root), "spark.ui.enabled": "false", "spark.driver.memory": "4g",
        }).spark_session
        if lake_root.startswith("s3://"):
            share_aws_credentials(session)
        return session

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None
        if self._server is not None:
            self._server.stop()
            self._server = None
