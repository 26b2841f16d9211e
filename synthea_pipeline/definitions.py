"""Everything Dagster loads, assembled explicitly. Loads without credentials or network: resources read their
settings from the environment only when a run or a sensor tick uses them."""

from dagster import Definitions

from synthea_pipeline.assets.bi import build_bi_assets
from synthea_pipeline.assets.ingest import build_raw_assets, build_source_assets, build_staging_assets
from synthea_pipeline.assets.marts import build_mart_assets
from synthea_pipeline.jobs import ingest_upload_job, maintain_lake_job, rebuild_marts_job, remove_upload_job
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.schedules import maintain_lake_schedule
from synthea_pipeline.sensors import rebuild_marts_after_removal, upload_sensor

defs = Definitions(
    assets=[build_source_assets(), build_raw_assets(), build_staging_assets(), build_mart_assets(), build_bi_assets()],
    jobs=[ingest_upload_job, rebuild_marts_job, remove_upload_job, maintain_lake_job],
    schedules=[maintain_lake_schedule],
    sensors=[upload_sensor, rebuild_marts_after_removal],
    resources={"lake": LakeResource(), "spark": SparkResource(), "catalog": CatalogResource()},
)
