"""The Spark resource: hands the transforms a PySpark session on the configured engine."""

from __future__ import annotations

import os
import sys
from typing import Optional

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr
from pyspark.sql import SparkSession

from synthea_pipeline.transforms.staging import SPARK_CONF, configure

ENGINE_ENV = "SYNTHEA_SPARK_ENGINE"
ENGINES = ("sail", "local-jvm")
CONNECT_MODE_ENV = "SPARK_CONNECT_MODE_ENABLED"


class SparkResource(ConfigurableResource):
    """One Spark session per run step, started on first use and stopped when the step ends.

    `engine` is `sail` (Spark Connect server in this process, no JVM) or `local-jvm` (`local[*]`); when unset it
    is read from SYNTHEA_SPARK_ENGINE at run time, defaulting to `sail`."""

    engine: Optional[str] = None
    _session: Optional[SparkSession] = PrivateAttr(default=None)
    _server: object = PrivateAttr(default=None)

    def resolved_engine(self) -> str:
        engine = self.engine or os.environ.get(ENGINE_ENV) or "sail"
        if engine not in ENGINES:
            raise ValueError(f"unknown Spark engine {engine!r}: choose one of {', '.join(ENGINES)}")
        return engine

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
