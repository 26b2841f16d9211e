"""Everything Dagster loads, assembled explicitly. Loads without credentials or network: every setting is an
`EnvVar`-backed resource field, resolved when a run or a sensor tick uses the resource; unset settings take their
local defaults (`settings.apply_local_defaults`)."""

import warnings

from dagster import BetaWarning, Definitions, EnvVar, PreviewWarning, with_source_code_references

from synthea_pipeline import settings
from synthea_pipeline.assets.bi import build_bi_assets
from synthea_pipeline.assets.ingest import build_raw_assets, build_source_assets, build_staging_assets
from synthea_pipeline.assets.marts import build_mart_assets
from synthea_pipeline.dead_runs import dead_runs
from synthea_pipeline.jobs import ingest_upload_job, maintain_lake_job, rebuild_marts_job, remove_upload_job
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.schedules import maintain_lake_schedule
from synthea_pipeline.sensors import rebuild_marts_after_removal, upload_sensor

settings.apply_local_defaults()

with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)  # source code references
    warnings.simplefilter("ignore", PreviewWarning)  # partitioned asset checks
    assets = with_source_code_references([
        build_source_assets(), build_raw_assets(), build_staging_assets(), build_mart_assets(), build_bi_assets(),
    ])

defs = Definitions(
    assets=assets,
    jobs=[ingest_upload_job, rebuild_marts_job, remove_upload_job, maintain_lake_job],
    schedules=[maintain_lake_schedule],
    sensors=[upload_sensor, rebuild_marts_after_removal, dead_runs],
    resources={
        "lake": LakeResource(
            root=EnvVar(settings.LAKE_ROOT.env_var),
            upload_quiet_seconds=EnvVar.int(settings.UPLOAD_QUIET_SECONDS.env_var),
        ),
        "spark": SparkResource(
            engine=EnvVar(settings.SPARK_ENGINE.env_var),
            glue_job_prefix=EnvVar(settings.GLUE_JOB_PREFIX.env_var),
            pipes_uri=EnvVar(settings.PIPES_URI.env_var),
            code_uri=EnvVar(settings.CODE_URI.env_var),
            emr_application_id=EnvVar(settings.EMR_APPLICATION_ID.env_var),
            emr_execution_role_arn=EnvVar(settings.EMR_EXECUTION_ROLE_ARN.env_var),
            emr_spark_submit_parameters=EnvVar(settings.EMR_SPARK_SUBMIT_PARAMETERS.env_var),
        ),
        "catalog": CatalogResource(
            staging_database=EnvVar(settings.STAGING_DATABASE_NAME.env_var),
            marts_database=EnvVar(settings.MARTS_DATABASE_NAME.env_var),
            athena_workgroup=EnvVar(settings.ATHENA_WORKGROUP.env_var),
            athena_output=EnvVar(settings.ATHENA_OUTPUT.env_var),
        ),
    },
)
