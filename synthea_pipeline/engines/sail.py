"""The `sail` engine (the default): the layers run in this process on a Sail Spark Connect server started for the
run, on a free port."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from dagster_pyspark import LazyPySparkResource
from pyspark.sql import SparkSession

from synthea_pipeline.engines.engine import InProcessEngine
from synthea_pipeline.transforms.iceberg import GLUE_CATALOG
from synthea_pipeline.transforms.lake import Lake, aws_endpoint, aws_region


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


def start_sail(glue_catalog: bool) -> tuple[object, str]:
    """A Sail Spark Connect server in this process and its address. For a lake on S3 its catalog `glue` is the
    Glue Data Catalog (region and endpoint from the usual AWS environment); its default catalog stays the
    session's own, where path-based tables are registered."""
    os.environ.setdefault("RUST_LOG", "error")
    if glue_catalog:
        region = aws_region()
        endpoint = aws_endpoint("glue")
        glue = f'{{type="glue", name="{GLUE_CATALOG}", region="{region}"' + (
            f', endpoint_url="{endpoint}"}}' if endpoint else "}"
        )
        os.environ["SAIL_CATALOG__LIST"] = f'[{{name="sail", type="memory", initial_database=["default"]}}, {glue}]'
        os.environ["SAIL_CATALOG__DEFAULT_CATALOG"] = "sail"
    from pysail.spark import SparkConnectServer

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    return server, f"sc://127.0.0.1:{server.listening_address[1]}"


class Sail(InProcessEngine):
    name = "sail"
    description = "Sail in this process, the default"

    def start(self, lake: Lake) -> tuple[SparkSession, Callable[[], None]]:
        """dagster-pyspark builds the session from the address of a server started for this run."""
        server, address = start_sail(glue_catalog=lake.on_s3)
        return LazyPySparkResource(spark_config={"spark.remote": address}).spark_session, server.stop


SAIL = Sail()
