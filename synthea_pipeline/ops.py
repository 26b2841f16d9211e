"""The lake's upkeep as ops: taking an upload out of the lake, and expiring old snapshots and files."""

import datetime as dt

from dagster import Config, Failure, OpExecutionContext, op
from pydantic import Field

from synthea_pipeline.partitions import uploads_partitions
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.run_tags import origin_of
from synthea_pipeline.transforms.iceberg import now
from synthea_pipeline.transforms.lake import delete_folder
from synthea_pipeline.transforms.upkeep import UnknownUpload, discard_stale, expire_and_clean, remove_upload
from synthea_pipeline.transforms.uploads import manifest_key, read_manifest

DEFAULT_RETENTION_DAYS = 7.0


class RemoveUploadConfig(Config):
    purge_source: bool = Field(default=False, description="Also delete the upload's files under source/.")


@op(
    description="Takes the run's upload (partition) out of the lake: hidden from every reader at once, then its "
    "staging and quarantine rows and raw files deleted and its partition removed. The marts are rebuilt next."
)
def remove_upload_from_lake(
    context: OpExecutionContext,
    config: RemoveUploadConfig,
    lake: LakeResource,
    spark: SparkResource,
    catalog: CatalogResource,
) -> int:
    """Returns how many loads were deleted."""
    upload = context.partition_key
    layout = lake.layout()
    iceberg = catalog.databases().iceberg_tables(layout.root, spark.table_catalog(layout))
    storage = lake.source_storage()
    manifest = read_manifest(storage, upload)
    in_source = manifest is not None or any(True for _ in storage.list_objects(upload))
    try:
        deleted = remove_upload(
            spark.upkeep_session(layout),
            iceberg,
            upload,
            upload_token=(manifest or {}).get("upload_token"),
            note=f"{origin_of(context.run.tags)}, run {context.run_id}",
            in_source=in_source,
        )
    except UnknownUpload as unknown:
        if not context.instance.has_dynamic_partition(uploads_partitions.name, upload):
            raise Failure(description=unknown.args[0]) from None
        context.log.warning(f"{unknown.args[0]}: removing its partition only")
        deleted = []
    if config.purge_source:
        delete_folder(layout.source(upload))
        lake.source_storage().delete(manifest_key(upload))
    context.instance.delete_dynamic_partition(uploads_partitions.name, upload)
    context.log.info(
        f"removed upload {upload}: {len(deleted)} loads deleted{', source deleted' if config.purge_source else ''}"
    )
    return len(deleted)


class MaintainLakeConfig(Config):
    older_than_days: float = Field(
        default=DEFAULT_RETENTION_DAYS,
        ge=0,
        description=(
            "Expire snapshots, and delete unreachable files, older than this: time travel reaches this far back. "
            "Keep it longer than the longest run, whose files are not committed yet."
        ),
    )


@op(
    description="Deletes loads and builds no reader sees (runs that died, failed or were replaced), expires "
    "Iceberg snapshots older than the retention and deletes the files no kept snapshot needs."
)
def clean_lake(
    context: OpExecutionContext,
    config: MaintainLakeConfig,
    lake: LakeResource,
    spark: SparkResource,
    catalog: CatalogResource,
) -> dict:
    """Returns what was deleted and expired."""
    layout = lake.layout()
    iceberg = catalog.databases().iceberg_tables(layout.root, spark.table_catalog(layout))
    cutoff = now() - dt.timedelta(days=config.older_than_days)
    loads, builds = discard_stale(spark.upkeep_session(layout), iceberg, cutoff)
    tables = expire_and_clean(iceberg, cutoff)
    summary = {
        "stale_loads": len(loads),
        "stale_builds": len(builds),
        "tables": len(tables),
        "snapshots_expired": sum(t.snapshots_expired for t in tables),
        "files_deleted": sum(t.files_deleted for t in tables),
        "bytes_deleted": sum(t.bytes_deleted for t in tables),
    }
    context.log.info(f"lake upkeep: {summary}")
    return summary
