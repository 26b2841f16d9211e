"""The `emr-serverless` engine: each Spark layer runs as one EMR Serverless job run of its Pipes entry script, as
`synthea-pipeline deploy` uploaded it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult

from synthea_pipeline.engines.aws import PIPES_URI, AwsEngine
from synthea_pipeline.engines.engine import AwsClient
from synthea_pipeline.remote_jobs import PACKAGE_ZIP, emr_iceberg_parameters, entry_script
from synthea_pipeline.setting import Setting
from synthea_pipeline.transforms.lake import Lake

CODE_URI = Setting("SYNTHEA_CODE_URI", "", "s3:// folder of the job code `deploy` uploaded (EMR Serverless).")
EMR_APPLICATION_ID = Setting("SYNTHEA_EMR_APPLICATION_ID", "", "EMR Serverless application id.")
EMR_EXECUTION_ROLE_ARN = Setting("SYNTHEA_EMR_EXECUTION_ROLE_ARN", "", "EMR Serverless job execution role ARN.")
EMR_SPARK_SUBMIT_PARAMETERS = Setting(
    "SYNTHEA_EMR_SPARK_SUBMIT_PARAMETERS", "", "Extra spark-submit parameters of EMR Serverless job runs."
)


def emr_costs(job_run: dict) -> dict[str, Any]:
    """Duration and billed vCPU, memory and storage hours as EMR Serverless reports them."""
    return {
        "emr_execution_seconds": job_run.get("totalExecutionDurationSeconds"),
        "emr_billed_resources": job_run.get("billedResourceUtilization") or {},
    }


class EmrServerless(AwsEngine):
    name = "emr-serverless"
    description = "EMR Serverless job runs"
    settings: ClassVar[dict[str, Setting]] = {
        "pipes_uri": PIPES_URI,
        "code_uri": CODE_URI,
        "emr_application_id": EMR_APPLICATION_ID,
        "emr_execution_role_arn": EMR_EXECUTION_ROLE_ARN,
        "emr_spark_submit_parameters": EMR_SPARK_SUBMIT_PARAMETERS,
    }
    required = ("emr_application_id", "emr_execution_role_arn", "code_uri")
    """The settings a job run cannot start without."""

    def run_layer(
        self,
        context: AssetExecutionContext,
        layer: str,
        params: dict[str, Any],
        settings: dict[str, str],
        aws_client: AwsClient,
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        from dagster_aws.pipes import PipesEMRServerlessClient

        from synthea_pipeline.engines.pipes import MESSAGE_POLL_SECONDS, s3_exchange, with_costs

        missing = [self.settings[name].env_var for name in self.required if not settings[name]]
        if missing:
            raise ValueError(f"the emr-serverless engine needs {', '.join(missing)} (see `synthea-pipeline deploy`)")
        emr_client = aws_client("emr-serverless")
        injector, reader = s3_exchange(settings["pipes_uri"], params, aws_client("s3"))
        client = PipesEMRServerlessClient(
            client=emr_client, context_injector=injector, message_reader=reader, poll_interval=MESSAGE_POLL_SECONDS
        )
        code = settings["code_uri"].rstrip("/")
        invocation = client.run(
            context=context,
            start_job_run_params={
                "applicationId": settings["emr_application_id"],
                "executionRoleArn": settings["emr_execution_role_arn"],
                "name": f"synthea-{layer}-{context.run.run_id[:8]}",
                "jobDriver": {
                    "sparkSubmit": {
                        "entryPoint": f"{code}/{entry_script(layer)}",
                        "sparkSubmitParameters": f"--conf spark.submit.pyFiles={code}/{PACKAGE_ZIP} "
                        f"{emr_iceberg_parameters(Lake(params['lake_root']).bucket)} "
                        f"{settings['emr_spark_submit_parameters']}".strip(),
                    }
                },
            },
            extras=params,
        )
        job_run = emr_client.get_job_run(
            applicationId=settings["emr_application_id"],
            jobRunId=invocation.metadata["AWS EMR Serverless Job Run ID"].value,
        )["jobRun"]
        yield from with_costs(invocation, emr_costs(job_run))


EMR_SERVERLESS = EmrServerless()
