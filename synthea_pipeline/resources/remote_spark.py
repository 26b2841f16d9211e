"""Running a Spark layer as an AWS Glue or EMR Serverless job run through Dagster Pipes: the layer's parameters
travel as Pipes extras (context object in S3), its reports come back as Pipes messages in S3, and the run's
cost figures (as the job run reports them) are added to every materialization."""

import random
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult, PipesClientCompletedInvocation
from dagster_aws.pipes import (
    PipesEMRServerlessClient,
    PipesGlueClient,
    PipesS3ContextInjector,
    PipesS3MessageReader,
)

from synthea_pipeline.remote_jobs import PACKAGE_ZIP, emr_iceberg_parameters, entry_script, glue_job_name
from synthea_pipeline.settings import CODE_URI, EMR_APPLICATION_ID, EMR_EXECUTION_ROLE_ARN, PIPES_URI

MESSAGE_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class RemoteSparkSettings:
    """Where the remote jobs are and where Pipes exchanges context and messages (the Spark resource's settings)."""

    glue_job_prefix: str
    pipes_uri: str | None
    code_uri: str | None
    emr_application_id: str | None
    emr_execution_role_arn: str | None
    emr_spark_submit_parameters: str = ""

    def pipes_location(self, lake_root: str) -> tuple[str, str]:
        """Bucket and key prefix for Pipes objects: $SYNTHEA_PIPES_URI, else `_pipes/` under an S3 lake."""
        uri = self.pipes_uri or (f"{lake_root.rstrip('/')}/_pipes" if lake_root.startswith("s3://") else None)
        if not uri or not uri.startswith("s3://"):
            raise ValueError(
                "the AWS engines need the lake on S3 (SYNTHEA_LAKE_ROOT=s3://bucket/prefix) or "
                f"{PIPES_URI.env_var}=s3://bucket/prefix for the Pipes context and messages"
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


def with_costs(invocation: PipesClientCompletedInvocation, costs: dict[str, Any]
               ) -> Iterator[MaterializeResult | AssetCheckResult]:
    """The layer's results, each materialization with the job run's cost figures added."""
    for result in invocation.get_results():
        if isinstance(result, MaterializeResult):
            result = MaterializeResult(asset_key=result.asset_key, metadata={**(result.metadata or {}), **costs})
        yield result


def glue_costs(job_run: dict) -> dict[str, Any]:
    """Execution time, workers and DPU-seconds as Glue reports them (estimated from the capacity when absent)."""
    costs: dict[str, Any] = {"glue_execution_seconds": job_run.get("ExecutionTime"),
                             "glue_worker": f"{job_run.get('NumberOfWorkers')} x {job_run.get('WorkerType')}"}
    if job_run.get("DPUSeconds") is not None:
        costs["glue_dpu_seconds"] = float(job_run["DPUSeconds"])
    elif job_run.get("ExecutionTime") is not None and job_run.get("MaxCapacity") is not None:
        costs["glue_dpu_seconds_estimated"] = float(job_run["ExecutionTime"] * job_run["MaxCapacity"])
    return costs


def emr_costs(job_run: dict) -> dict[str, Any]:
    """Duration and billed vCPU, memory and storage hours as EMR Serverless reports them."""
    return {"emr_execution_seconds": job_run.get("totalExecutionDurationSeconds"),
            "emr_billed_resources": job_run.get("billedResourceUtilization") or {}}


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
    client = PipesGlueClient(context_injector=injector, message_reader=reader, client=glue_client)
    invocation = client.run(
        context=context,
        start_job_run_params={"JobName": glue_job_name(settings.glue_job_prefix, layer), "Arguments": {}},
        extras=params,
    )
    job_run = glue_client.get_job_run(JobName=invocation.metadata["AWS Glue Job Name"].value,
                                      RunId=invocation.metadata["AWS Glue Job Run ID"].value)["JobRun"]
    yield from with_costs(invocation, glue_costs(job_run))


def run_on_emr_serverless(context: AssetExecutionContext, layer: str, params: dict[str, Any],
                          settings: RemoteSparkSettings, emr_client, s3_client
                          ) -> Iterator[MaterializeResult | AssetCheckResult]:
    """One EMR Serverless job run of the layer's entry script as `deploy` uploaded it."""
    missing = [setting.env_var for setting, value in ((EMR_APPLICATION_ID, settings.emr_application_id),
                                                      (EMR_EXECUTION_ROLE_ARN, settings.emr_execution_role_arn),
                                                      (CODE_URI, settings.code_uri)) if not value]
    if missing:
        raise ValueError(f"the emr-serverless engine needs {', '.join(missing)} (see `synthea-pipeline deploy`)")
    injector, reader = _pipes_parts(settings, params, s3_client)
    client = PipesEMRServerlessClient(client=emr_client, context_injector=injector, message_reader=reader,
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
    job_run = emr_client.get_job_run(applicationId=settings.emr_application_id,
                                     jobRunId=invocation.metadata["AWS EMR Serverless Job Run ID"].value)["jobRun"]
    yield from with_costs(invocation, emr_costs(job_run))

