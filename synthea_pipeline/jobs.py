"""The jobs: an upload's runs (to staging, or through every layer), the marts rebuild, and the lake's upkeep."""

from dagster import AssetSelection, define_asset_job, in_process_executor, job

from synthea_pipeline.automation import DOWNSTREAM_OF_STAGING
from synthea_pipeline.ops import clean_lake, remove_upload_from_lake
from synthea_pipeline.partitions import uploads_partitions

GENERATION = AssetSelection.groups("synthea")
"""The generated populations: not partitioned by upload; their uploads reach the graph through `source/`."""
UPLOAD_ASSETS = AssetSelection.all() - GENERATION

generate_population_job = define_asset_job(
    "generate_population",
    selection=GENERATION,
    executor_def=in_process_executor,
    description="Generates a Synthea population (its config: size, place, release, seeds, shards) into the lake's "
    "source/ as uploads, which the upload sensor then runs: what `synthea-pipeline generate` executes.",
)

stage_upload_job = define_asset_job(
    "stage_upload",
    selection=UPLOAD_ASSETS - DOWNSTREAM_OF_STAGING,
    partitions_def=uploads_partitions,
    executor_def=in_process_executor,
    description="Carries one upload through source, raw and staging: the upload sensor's runs. The marts, BI views "
    "and dashboard follow by declarative automation (`marts_automation`), once for uploads staged together. One "
    "process, one Spark session for the run.",
)

ingest_upload_job = define_asset_job(
    "ingest_upload",
    selection=UPLOAD_ASSETS,
    partitions_def=uploads_partitions,
    executor_def=in_process_executor,
    description="Carries one upload through every layer, then rebuilds the marts over all uploads, registers the "
    "catalog and redraws the dashboard: what `synthea-pipeline run` executes. Its steps run one after another in "
    "one process, which starts one Spark session for the run (a process per step would start one per step).",
)

rebuild_marts_job = define_asset_job(
    "rebuild_marts",
    selection=DOWNSTREAM_OF_STAGING,
    executor_def=in_process_executor,
    config={"ops": {"marts": {"config": {"full_rebuild": True}}}},
    description="Rebuilds the marts over every upload in the lake from scratch (every upload's rows rewritten), "
    "registers the catalog and redraws the dashboard; started after an upload is removed, and what a change of "
    "the marts' declarations calls for.",
)


@job(
    name="remove_upload",
    partitions_def=uploads_partitions,
    description="Takes one upload (partition) out of the lake; the marts are rebuilt by the run it triggers.",
)
def remove_upload_job():
    remove_upload_from_lake()


@job(
    name="maintain_lake", description="The lake's upkeep: stale loads and builds, old snapshots and unreachable files."
)
def maintain_lake_job():
    clean_lake()
