"""The engine interface: what the Spark resource, the settings and the command line need of a place where the
Spark layers run. Each engine is one module of this package, registered in `engines/__init__.py`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult
from pyspark.sql import SparkSession

from synthea_pipeline.setting import Setting
from synthea_pipeline.transforms.lake import Lake

AwsClient = Callable[[str], Any]
"""Builds a boto3 client for a service (`glue`, `s3`): the Spark resource's, which the tests replace."""


class Engine(ABC):
    """Where the Spark layers run. `settings` are the Spark resource fields it reads, by field name, each filled
    from its own environment variable."""

    name: ClassVar[str]
    description: ClassVar[str]
    settings: ClassVar[dict[str, Setting]] = {}
    local_catalog: ClassVar[str] = "path"
    """How its sessions name a local lake's Iceberg tables (`transforms.iceberg.CATALOGS`)."""

    def table_catalog(self, lake: Lake) -> str:
        return lake.table_catalog(self.local_catalog)

    def check(self, lake: Lake) -> None:
        """Refuses a lake this engine cannot work on, before anything is written; any lake by default."""
        return

    @property
    @abstractmethod
    def upkeep_engine(self) -> InProcessEngine:
        """The engine whose session in this process does the lake's small upkeep (taking an upload out, deleting
        stale loads)."""


class InProcessEngine(Engine):
    """Runs the layers in this process, on a session it starts for the run."""

    @property
    def upkeep_engine(self) -> InProcessEngine:
        return self

    @abstractmethod
    def start(self, lake: Lake) -> tuple[SparkSession, Callable[[], None] | None]:
        """A session for the lake, and what stops whatever was started beside it (a server) once the session
        is stopped."""


class RemoteEngine(Engine):
    """Runs each layer's Pipes entry script (`synthea_pipeline/entrypoints/`) as one job run elsewhere, with
    context and messages exchanged through S3: the lake must be on S3."""

    def check(self, lake: Lake) -> None:
        if not lake.on_s3:
            raise ValueError(f"the {self.name} engine needs the lake on S3: --lake s3://bucket/prefix")

    @abstractmethod
    def run_layer(
        self,
        context: AssetExecutionContext,
        layer: str,
        params: dict[str, Any],
        settings: dict[str, str],
        aws_client: AwsClient,
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        """Runs the layer with `params` as one job run and yields what it reported; `settings` are the values
        of the engine's `settings`."""
