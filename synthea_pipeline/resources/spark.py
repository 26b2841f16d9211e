"""The Spark resource: runs a Spark layer (staging, marts) of a run on the configured engine and hands Dagster
what the layer reported.

- `sail` (default) and `local-jvm` run the layer in this process.
- `glue` and `emr-serverless` run the layer's Pipes entry script (`synthea_pipeline/entrypoints/`) as one AWS
  Glue job run or one EMR Serverless job run, with context and messages exchanged through S3."""

import os
import sys
from collections.abc import Iterator
from typing import Any, Optional

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
from dagster._core.definitions.metadata.external_metadata import metadata_map_from_external
from pydantic import PrivateAttr
from pyspark.sql import SparkSession

from synthea_pipeline.resources.remote_spark import RemoteSparkSettings, run_on_emr_serverless, run_on_glue
from synthea_pipeline.transforms.layers import LAYERS, AssetReport, LayerFailed, Report
from synthea_pipeline.transforms.staging import SPARK_CONF, configure

ENGINE_ENV = "SYNTHEA_SPARK_ENGINE"
ENGINES = ("sail", "local-jvm", "glue", "emr-serverless")
REMOTE_ENGINES = ("glue", "emr-serverless")
CONNECT_MODE_ENV = "SPARK_CONNECT_MODE_ENABLED"


def dagster_result(report: Report) -> MaterializeResult | AssetCheckResult:
    """A layer's report as Dagster receives it from a Pipes message, so in-process and remote runs show the
    same metadata."""
    metadata = metadata_map_from_external(report.metadata)
    if isinstance(report, AssetReport):
        return MaterializeResult(asset_key=AssetKey.from_user_string(report.asset_key), metadata=metadata)
    return AssetCheckResult(
        asset_key=AssetKey.from_user_string(report.asset_key),
        check_name=report.check_name,
        passed=report.passed,
        severity=AssetCheckSeverity(report.severity),
        metadata=metadata,
    )


class SparkResource(ConfigurableResource):
    """`engine` is `sail`, `local-jvm`, `glue` or `emr-serverless`; when unset it is read from
    SYNTHEA_SPARK_ENGINE at run time, defaulting to `sail`. The AWS engines read their settings (job names,
    application, buckets) from the environment at run time too, see `RemoteSparkSettings`."""

    engine: Optional[str] = None
    _session: Optional[SparkSession] = PrivateAttr(default=None)
    _server: object = PrivateAttr(default=None)

    def resolved_engine(self) -> str:
        engine = self.engine or os.environ.get(ENGINE_ENV) or "sail"
        if engine not in ENGINES:
            raise ValueError(f"unknown Spark engine {engine!r}: choose one of {', '.join(ENGINES)}")
        return engine

    def run_layer(self, context: AssetExecutionContext, layer: str, params: dict[str, Any]
                  ) -> Iterator[MaterializeResult | AssetCheckResult]:
        engine = self.resolved_engine()
        if engine == "glue":
            yield from run_on_glue(context, layer, params, RemoteSparkSettings.from_env(),
                                   self.aws_client("glue"), self.aws_client("s3"))
            return
        if engine == "emr-serverless":
            yield from run_on_emr_serverless(context, layer, params, RemoteSparkSettings.from_env(),
                                             self.aws_client("emr-serverless"), self.aws_client("s3"))
            return
        try:
            reports = LAYERS[layer](self.get_session(), context.log, **params)
        except LayerFailed as failure:
            raise Failure(description=str(failure)) from None
        yield from (dagster_result(report) for report in reports)

    def aws_client(self, service: str):
        """A boto3 client, built when a run needs it (credentials and region from the environment)."""
        import boto3

        return boto3.client(service)

    def get_session(self) -> SparkSession:
        if self._session is None:
            self._session = self._start(self.resolved_engine())
            configure(self._session)
        return self._session

    def _start(self, engine: str) -> SparkSession:
        if engine == "sail":
            os.environ.setdefault("RUST_LOG", "error")
            from pysail.spark import SparkConnectServer

            self._server = SparkConnectServer(ip="127.0.0.1", port=0)
            self._server.start(background=True)
            _, port = self._server.listening_address
            # pyspark 3.5 routes `pyspark.sql.functions` to Connect while this variable is set, and to the JVM
            # otherwise; the Connect builder is used directly so the classic builder keeps no remote option.
            os.environ[CONNECT_MODE_ENV] = "1"
            from pyspark.sql.connect.session import SparkSession as ConnectSession

            return ConnectSession.builder.remote(f"sc://127.0.0.1:{port}").create()
        if engine != "local-jvm":
            raise ValueError(f"the {engine} engine runs layers remotely and has no local session")
        os.environ.pop(CONNECT_MODE_ENV, None)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.master("local[*]").appName("synthea-pipeline")
        for key, value in {**SPARK_CONF, "spark.ui.enabled": "false", "spark.driver.memory": "4g"}.items():
            builder = builder.config(key, value)
        return builder.getOrCreate()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None
        if self._server is not None:
            self._server.stop()
            self._server = None
