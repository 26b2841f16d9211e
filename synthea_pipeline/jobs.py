"""The job every upload runs: all layers for one partition, then the marts over every upload."""

from dagster import AssetSelection, define_asset_job

from synthea_pipeline.partitions import uploads_partitions

ingest_upload_job = define_asset_job(
    "ingest_upload",
    selection=AssetSelection.all(),
    partitions_def=uploads_partitions,
    description="Carries one upload through every layer, then rebuilds the marts over all uploads, registers the "
    "catalog and redraws the dashboard.",
)
