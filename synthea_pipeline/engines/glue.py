"""The `glue` engine: each Spark layer runs as one AWS Glue job run (`<prefix>-<layer>`, created by
`synthea-pipeline deploy`) of its Pipes entry script."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult

from synthea_pipeline.engines.aws import PIPES_URI, AwsEngine
from synthea_pipeline.engines.engine import AwsClient
from synthea_pipeline.remote_jobs import glue_job_name
from synthea_pipeline.setting import Setting

GLUE_JOB_PREFIX = Setting(
    "SYNTHEA_GLUE_JOB_PREFIX",
    "synthea-pipeline",
    "Glue job names are <prefix>-staging and <prefix>-marts (created by `deploy`).",
)


def glue_costs(job_run: dict) -> dict[str, Any]:
    """Execution time, workers and DPU-seconds as Glue reports them (estimated from the capacity when absent)."""
    costs: dict[str, Any] = {
        "glue_execution_seconds": job_run.get("ExecutionTime"),
        "glue_worker": f"{job_run.get('NumberOfWorkers')} x {job_run.get('WorkerType')}",
    }
    if job_run.get("DPUSeconds") is not None:
        costs["glue_dpu_seconds"] = float(job_run["DPUSeconds"])
    elif job_run.get("ExecutionTime") is not None and job_run.get("MaxCapacity") is not None:
        costs["glue_dpu_seconds_estimated"] = float(job_run["ExecutionTime"] * job_run["MaxCapacity"])
    return costs


class Glue(AwsEngine):
    name = "glue"
    description = "AWS Glue job runs"
    settings: ClassVar[dict[str, Setting]] = {"glue_job_prefix": GLUE_JOB_PREFIX, "pipes_uri": PIPES_URI}

    def run_layer(
        self,
        context: AssetExecutionContext,
        layer: str,
        params: dict[str, Any],
        settings: dict[str, str],
        aws_client: AwsClient,
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        from dagster_aws.pipes import PipesGlueClient

        from synthea_pipeline.engines.pipes import s3_exchange, with_costs

        glue_client = aws_client("glue")
        injector, reader = s3_exchange(settings["pipes_uri"], params, aws_client("s3"))
        client = PipesGlueClient(context_injector=injector, message_reader=reader, client=glue_client)
        invocation = client.run(
            context=context,
            start_job_run_params={"JobName": glue_job_name(settings["glue_job_prefix"], layer), "Arguments": {}},
            extras=params,
        )
        job_run = glue_client.get_job_run(
            JobName=invocation.metadata["AWS Glue Job Name"].value,
            RunId=invocation.metadata["AWS Glue Job Run ID"].value,
        )["JobRun"]
        yield from with_costs(invocation, glue_costs(job_run))


GLUE = Glue()
