"""Running a Spark layer as an AWS Glue or EMR Serverless job run through Dagster Pipes: the layer's parameters
travel as Pipes extras (context object in S3), its reports come back as Pipes messages in S3, and the run's
cost figures are added to every materialization."""

import os
import random
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult
from dagster_aws.pipes import (
    PipesEMRServerlessClient,
    PipesGlueClient,
    PipesS3ContextInjector,
    PipesS3MessageReader,
)

from synthea_pipeline.deploy import PACKAGE_ZIP, emr_iceberg_parameters, entry_script, glue_job_name

GLUE_JOB_PREFIX_ENV = "SYNTHEA_GLUE_JOB_PREFIX"
PIPES_URI_ENV = "SYNTHEA_PIPES_URI"
CODE_URI_ENV = "SYNTHEA_CODE_URI"
EMR_APPLICATION_ENV = "SYNTHEA_EMR_APPLICATION_ID"
EMR_ROLE_ENV = "SYNTHEA_EMR_EXECUTION_ROLE_ARN"
EMR_SUBMIT_ENV = "SYNTHEA_EMR_SPARK_SUBMIT_PARAMETERS"
DEFAULT_GLUE_JOB_PREFIX = "synthea-pipeline"
MESSAGE_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class RemoteSparkSettings:
    """Where the remote jobs are and where Pipes exchanges context and messages; from the environment."""

    glue_job_prefix: str
    pipes_uri: str | None
    code_uri: str | None
    emr_application_id: str | None
    emr_execution_role_arn: str | None
    emr_spark_submit_parameters: str = ""

    @classmethod
    def from_env(cls) -> "RemoteSparkSettings":
        return cls(
            glue_job_prefix=os.environ.get(GLUE_JOB_PREFIX_ENV) or DEFAULT_GLUE_JOB_PREFIX,
            pipes_uri=os.environ.get(PIPES_URI_ENV),
            code_uri=os.environ.get(CODE_URI_ENV),
            emr_application_id=os.environ.get(EMR_APPLICATION_ENV),
            emr_execution_role_arn=os.environ.get(EMR_ROLE_ENV),
            emr_spark_submit_parameters=os.environ.get(EMR_SUBMIT_ENV, ""),
        )

    def pipes_location(self, lake_root: str) -> tuple[str, str]:
        """Bucket and key prefix for Pipes objects: $SYNTHEA_PIPES_URI, else `_pipes/` under an S3 lake."""
        uri = self.pipes_uri or (f"{lake_root.rstrip('/')}/_pipes" if lake_root.startswith("s3://") else None)
        if not uri or not uri.startswith("s3://"):
            raise ValueError(
                "the AWS engines need the lake on S3 (SYNTHEA_LAKE_ROOT=s3://bucket/prefix) or "
                f"{PIPES_URI_ENV}=s3://bucket/prefix for the Pipes context and messages"
            )
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        return bucket, f"{prefix.strip('/')}/" if prefix.strip("/") else ""


def lake_bucket(lake_root: str) -> str:
    return lake_root[len("s3://"):].split("/", 1)[0]


class PrefixedS3MessageReader(PipesS3MessageReader):
    """Writes messages under a key prefix, so the job roles need access to that prefix only."""

    def __init__(self, *, key_prefix: str, **kwargs):
        super().__init__(**kwargs)
        self.key_prefix = key_prefix

    @contextmanager
    def get_params(self):
        with super().get_params() as params:
            yield {**params, "key_prefix": self.key_prefix + "".join(random.choices(string.ascii_letters, k=30))}


class CostReportingGlueClient(PipesGlueClient):
    """Adds the job run's execution time and DPU-seconds (as Glue reports them) to the run's metadata."""

    def _extract_dagster_metadata(self, response):
        job_run = response["JobRun"]
        metadata = dict(super()._extract_dagster_metadata(response))
        metadata["glue_execution_seconds"] = job_run.get("ExecutionTime")
        metadata["glue_worker"] = f"{job_run.get('NumberOfWorkers')} x {job_run.get('WorkerType')}"
        if job_run.get("DPUSeconds") is not None:
            metadata["glue_dpu_seconds"] = float(job_run["DPUSeconds"])
        elif job_run.get("ExecutionTime") is not None and job_run.get("MaxCapacity") is not None:
            metadata["glue_dpu_seconds_estimated"] = float(job_run["ExecutionTime"] * job_run["MaxCapacity"])
        return metadata


class CostReportingEMRServerlessClient(PipesEMRServerlessClient):
    """Adds the job run's duration and billed vCPU/memory/storage hours to the run's metadata, and fails with
    the job's own error (its `stateDetails`) rather than a bare "job failed"."""

    def _wait_for_completion(self, context, start_response):
        try:
            return super()._wait_for_completion(context, start_response)
        except RuntimeError:
            run = self.client.get_job_run(applicationId=start_response["applicationId"],
                                          jobRunId=start_response["jobRunId"])["jobRun"]
            raise RuntimeError(f"EMR Serverless job run {run['jobRunId']} ended {run['state']}: "
                               f"{run.get('stateDetails')}") from None

    def _extract_dagster_metadata(self, response):
        job_run = response["jobRun"]
        metadata = dict(super()._extract_dagster_metadata(response))
        metadata["emr_execution_seconds"] = job_run.get("totalExecutionDurationSeconds")
        metadata["emr_billed_resources"] = job_run.get("billedResourceUtilization") or {}
        return metadata


def _pipes_parts(settings: RemoteSparkSettings, params: dict[str, Any], s3_client):
    bucket, prefix = settings.pipes_location(params["lake_root"])
    injector = PipesS3ContextInjector(bucket=bucket, client=s3_client, key_prefix=prefix)
    reader = PrefixedS3MessageReader(key_prefix=prefix, bucket=bucket, client=s3_client,
                                     interval=MESSAGE_POLL_SECONDS, include_stdio_in_messages=True)
    return injector, reader


def run_on_glue(context: AssetExecutionContext, layer: str, params: dict[str, Any], settings: RemoteSparkSettings,
                glue_client, s3_client) -> Iterator[MaterializeResult | AssetCheckResult]:
    """One Glue job run (`<prefix>-<layer>`, created by `synthea-pipeline deploy`) for the layer."""
    injector, reader = _pipes_parts(settings, params, s3_client)
    client = CostReportingGlueClient(context_injector=injector, message_reader=reader, client=glue_client)
    invocation = client.run(
        context=context,
        start_job_run_params={"JobName": glue_job_name(settings.glue_job_prefix, layer), "Arguments": {}},
        extras=params,
    )
    yield from invocation.get_results()


def run_on_emr_serverless(context: AssetExecutionContext, layer: str, params: dict[str, Any],
                          settings: RemoteSparkSettings, emr_client, s3_client
                          ) -> Iterator[MaterializeResult | AssetCheckResult]:
    """One EMR Serverless job run of the layer's entry script as `deploy` uploaded it."""
    missing = [name for name, value in ((EMR_APPLICATION_ENV, settings.emr_application_id),
                                        (EMR_ROLE_ENV, settings.emr_execution_role_arn),
                                        (CODE_URI_ENV, settings.code_uri)) if not value]
    if missing:
        raise ValueError(f"the emr-serverless engine needs {', '.join(missing)} (see `synthea-pipeline deploy`)")
    injector, reader = _pipes_parts(settings, params, s3_client)
    client = CostReportingEMRServerlessClient(client=emr_client, context_injector=injector, message_reader=reader,
                                              poll_interval=MESSAGE_POLL_SECONDS)
    code = settings.code_uri.rstrip("/")
    invocation = client.run(
        context=context,
        start_job_run_params={
            "applicationId": settings.emr_application_id,
            "executionRoleArn": settings.emr_execution_role_arn,
            "name": f"synthea-{layer}-{context.run.run_id[:8]}",
            "jobDriver": {"sparkSubmit": {
                "entryPoint": f"{code}/{entry_script(layer)}",
                "sparkSubmitParameters": f"--conf spark.submit.pyFiles={code}/{PACKAGE_ZIP} "
                                         f"{emr_iceberg_parameters(lake_bucket(params['lake_root']))} "
                                         f"{settings.emr_spark_submit_parameters}".strip(),
            }},
        },
        extras=params,
    )
    yield from invocation.get_results()

