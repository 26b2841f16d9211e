"""The Spark resource: runs a Spark layer (staging, marts) of a run on the configured engine (`engines`) and hands
Dagster what the layer reported. Its fields are the engine choice and every registered engine's settings."""

from collections.abc import Callable, Iterator
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
from pydantic import Field, PrivateAttr, create_model
from pyspark.sql import SparkSession

from synthea_pipeline.engines import ENGINES
from synthea_pipeline.engines.engine import Engine, InProcessEngine, RemoteEngine
from synthea_pipeline.metadata import dagster_metadata
from synthea_pipeline.run_tags import ENGINE_TAG, tag_run
from synthea_pipeline.settings import ENGINE_FIELDS, SPARK_ENGINE
from synthea_pipeline.transforms.lake import Lake, aws_client
from synthea_pipeline.transforms.layers import LAYERS, AssetReport, LayerFailed, Report
from synthea_pipeline.transforms.staging import configure


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


class SparkEngineResource(ConfigurableResource):
    """Runs the Spark layers on `engine`: in this process on the session the engine starts, or as job runs
    through Dagster Pipes. `SparkResource` adds a field per engine setting."""

    engine: str = Field(default=SPARK_ENGINE.default, description=SPARK_ENGINE.description)
    _session: SparkSession | None = PrivateAttr(default=None)
    _stop_beside_session: Callable[[], None] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Tags the run with the engine its Spark layers run on."""
        tag_run(context, {ENGINE_TAG: self.engine})

    def resolved_engine(self) -> Engine:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown Spark engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        return ENGINES[self.engine]

    def table_catalog(self, lake: Lake) -> str:
        """How the layers name the lake's Iceberg tables (see `transforms.iceberg`)."""
        return self.resolved_engine().table_catalog(lake)

    def run_layer(
        self, context: AssetExecutionContext, layer: str, params: dict[str, Any]
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        engine = self.resolved_engine()
        lake = Lake(params["lake_root"])
        params = {**params, "table_catalog": engine.table_catalog(lake)}
        if isinstance(engine, RemoteEngine):
            settings = {name: getattr(self, name) for name in engine.settings}
            yield from engine.run_layer(context, layer, params, settings, self.aws_client)
            return
        try:
            reports = LAYERS[layer](self._session_on(engine, lake), context.log, **params)
        except LayerFailed as failure:
            yield from (dagster_result(report) for report in failure.reports)
            raise Failure(description=str(failure)) from None
        yield from (dagster_result(report) for report in reports)

    def upkeep_session(self, lake: Lake) -> SparkSession:
        """A session in this process for the lake's small upkeep (taking an upload out, deleting stale loads)."""
        return self._session_on(self.resolved_engine().upkeep_engine, lake)

    def aws_client(self, service: str):
        """A boto3 client for the remote engines, built when a run needs it."""
        return aws_client(service)

    def get_session(self, lake_root: str) -> SparkSession:
        """The engine's session for a lake; started once and reused by every layer of the run."""
        return self._session_on(self.resolved_engine(), Lake(lake_root))

    def _session_on(self, engine: InProcessEngine, lake: Lake) -> SparkSession:
        if self._session is None:
            self._session, self._stop_beside_session = engine.start(lake)
            configure(self._session)
        return self._session

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None
        if self._stop_beside_session is not None:
            self._stop_beside_session()
            self._stop_beside_session = None


SparkResource = create_model(
    "SparkResource",
    __base__=SparkEngineResource,
    __module__=__name__,
    __doc__="The Spark resource: the engine choice and every registered engine's settings (`settings.SPARK_FIELDS`).",
    **{
        name: (str, Field(default=setting.default, description=setting.description))
        for name, setting in ENGINE_FIELDS.items()
    },
)
