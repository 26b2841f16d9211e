"""Everything Dagster loads, assembled explicitly. Loads without credentials or network: every setting is an
`EnvVar`-backed resource field, resolved when a run or a sensor tick uses the resource; unset settings take their
local defaults (`settings.apply_local_defaults`)."""

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from dagster import (
    AnchorBasedFilePathMapping,
    AssetsDefinition,
    BetaWarning,
    Definitions,
    PreviewWarning,
    in_process_executor,
    link_code_references_to_git,
    with_source_code_references,
)

from synthea_pipeline import settings
from synthea_pipeline.assets.bi import build_bi_assets
from synthea_pipeline.assets.ingest import build_source_assets, build_staging_assets
from synthea_pipeline.assets.marts import build_mart_assets
from synthea_pipeline.assets.omop import build_omop_assets
from synthea_pipeline.assets.synthea import build_synthea_assets
from synthea_pipeline.automation import marts_automation
from synthea_pipeline.dead_runs import dead_runs
from synthea_pipeline.jobs import (
    generate_population_job,
    ingest_upload_job,
    maintain_lake_job,
    rebuild_marts_job,
    remove_upload_job,
    stage_upload_job,
)
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.resources.synthea import SyntheaResource
from synthea_pipeline.schedules import maintain_lake_schedule
from synthea_pipeline.sensors import rebuild_marts_after_removal, upload_sensor

GIT_URL_VARIABLE = "SYNTHEA_GIT_URL"
GIT_SHA_VARIABLE = "SYNTHEA_GIT_SHA"
"""Set by the image build (the Dockerfile's GIT_URL and GIT_SHA build arguments): the repository and commit its code
came from, so the UI's code references open that commit in the repository instead of a path inside the container."""


def with_code_references(assets: Sequence[AssetsDefinition]) -> Sequence[AssetsDefinition]:
    """References to each asset's function and transform modules: links into the git repository at the image's
    commit when the deployed image names them (read when the definitions load: code references are load-time
    metadata), else local file paths."""
    referenced = with_source_code_references(assets)
    git_url, git_sha = os.environ.get(GIT_URL_VARIABLE), os.environ.get(GIT_SHA_VARIABLE)
    if not (git_url and git_sha):
        return referenced
    return link_code_references_to_git(
        referenced,
        git_url=git_url,
        git_branch=git_sha,
        file_path_mapping=(AnchorBasedFilePathMapping(Path(__file__), "synthea_pipeline/definitions.py")),
    )


settings.apply_local_defaults()

with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)  # source code references
    warnings.simplefilter("ignore", PreviewWarning)  # partitioned asset checks
    assets = with_code_references(
        [
            build_synthea_assets(),
            build_source_assets(),
            build_staging_assets(),
            build_mart_assets(),
            build_omop_assets(),
            build_bi_assets(),
        ]
    )

defs = Definitions(
    assets=assets,
    jobs=[
        generate_population_job,
        stage_upload_job,
        ingest_upload_job,
        rebuild_marts_job,
        remove_upload_job,
        maintain_lake_job,
    ],
    schedules=[maintain_lake_schedule],
    sensors=[upload_sensor, marts_automation, rebuild_marts_after_removal, dead_runs],
    # Runs of a selection rather than a job (the UI's Materialize, `marts_automation`) take one process too, as the
    # jobs do: one Spark session per run instead of a process and a session per step.
    executor=in_process_executor,
    resources={
        "lake": LakeResource(**settings.as_env_vars(settings.LAKE_FIELDS)),
        "spark": SparkResource(**settings.as_env_vars(settings.SPARK_FIELDS)),
        "catalog": CatalogResource(**settings.as_env_vars(settings.CATALOG_FIELDS)),
        "synthea": SyntheaResource(**settings.as_env_vars(settings.SYNTHEA_FIELDS)),
    },
)
