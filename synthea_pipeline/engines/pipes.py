"""Dagster Pipes over S3 for the AWS engines: the layer's parameters travel as Pipes extras (context object in
S3), its reports come back as Pipes messages in S3, and the job run's cost figures (as it reports them) are added
to every materialization. Imported when an AWS engine runs a layer: dagster-aws takes half a second to import."""

import random
import string
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import AssetCheckResult, MaterializeResult, PipesClientCompletedInvocation
from dagster_aws.pipes import PipesS3ContextInjector, PipesS3MessageReader

from synthea_pipeline.engines.aws import PIPES_URI
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.storage import storage_for

MESSAGE_POLL_SECONDS = 2.0


class PrefixedS3MessageReader(PipesS3MessageReader):
    """Writes messages under a key prefix, so the job roles need access to that prefix only."""

    def __init__(self, *, key_prefix: str, **kwargs):
        super().__init__(**kwargs)
        self.key_prefix = key_prefix

    @contextmanager
    def get_params(self):
        with super().get_params() as params:
            yield {**params, "key_prefix": self.key_prefix + "".join(random.choices(string.ascii_letters, k=30))}


def pipes_location(pipes_uri: str, lake: Lake) -> tuple[str, str]:
    """Bucket and key prefix for Pipes objects: $SYNTHEA_PIPES_URI, else `_pipes/` under a lake on S3."""
    location = Lake(pipes_uri or lake.uri("_pipes"))
    if not location.on_s3:
        raise ValueError(
            "the AWS engines need the lake on S3 (SYNTHEA_LAKE_ROOT=s3://bucket/prefix) or "
            f"{PIPES_URI.env_var}=s3://bucket/prefix for the Pipes context and messages"
        )
    s3 = storage_for(location.root)
    return s3.bucket, f"{s3.prefix}/" if s3.prefix else ""


def s3_exchange(
    pipes_uri: str, params: dict[str, Any], s3_client
) -> tuple[PipesS3ContextInjector, PrefixedS3MessageReader]:
    """The context injector and message reader of one job run."""
    bucket, prefix = pipes_location(pipes_uri, Lake(params["lake_root"]))
    injector = PipesS3ContextInjector(bucket=bucket, client=s3_client, key_prefix=prefix)
    reader = PrefixedS3MessageReader(
        key_prefix=prefix,
        bucket=bucket,
        client=s3_client,
        interval=MESSAGE_POLL_SECONDS,
        include_stdio_in_messages=True,
    )
    return injector, reader


def with_costs(
    invocation: PipesClientCompletedInvocation, costs: dict[str, Any]
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """The layer's results, each materialization with the job run's cost figures added."""
    for result in invocation.get_results():
        if isinstance(result, MaterializeResult):
            result = MaterializeResult(asset_key=result.asset_key, metadata={**(result.metadata or {}), **costs})
        yield result
