"""What the AWS engines (Glue, EMR Serverless) share: the Pipes location setting, and a Sail session in this
process for the lake's upkeep, which commits through the Glue Data Catalog as their jobs do."""

from __future__ import annotations

from synthea_pipeline.engines.engine import InProcessEngine, RemoteEngine
from synthea_pipeline.engines.sail import SAIL
from synthea_pipeline.setting import Setting

PIPES_URI = Setting(
    "SYNTHEA_PIPES_URI",
    "",
    "s3://bucket/prefix for Pipes context and messages of the AWS engines (default: _pipes/ under an S3 lake).",
)


class AwsEngine(RemoteEngine):
    """A remote engine on AWS: job runs that reach the lake through the Glue Data Catalog."""

    @property
    def upkeep_engine(self) -> InProcessEngine:
        return SAIL
