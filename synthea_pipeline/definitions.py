"""Everything Dagster loads, assembled explicitly. Loads without credentials or network: resources read their
settings from the environment only when a run uses them."""

from dagster import AssetSelection, Definitions, define_asset_job

from synthea_pipeline.assets.ingest import build_raw_assets, build_source_assets, build_staging_assets
from synthea_pipeline.assets.marts import build_mart_assets
from synthea_pipeline.partitions import uploads_partitions
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource

ingest_upload_job = define_asset_job(
    "ingest_upload",
    selection=AssetSelection.all(),
    partitions_def=uploads_partitions,
    description="Carries one upload through every layer, then rebuilds the marts over all uploads.",
)

defs = Definitions(
    assets=[build_source_assets(), build_raw_assets(), build_staging_assets(), build_mart_assets()],
    jobs=[ingest_upload_job],
    resources={"lake": LakeResource(), "spark": SparkResource()},
)
