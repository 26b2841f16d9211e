"""Asset factories for source -> raw -> staging, one asset per table: a step that takes stock of an upload, then one
step for raw and staging (each table's raw pass, then its staging)."""

from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from synthea_pipeline.assets.batch import UploadBatch
from synthea_pipeline.assets.specs import check_specs, layer_spec_fields
from synthea_pipeline.metadata import column_schema
from synthea_pipeline.partitions import uploads_partitions
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.run_tags import CLI_RUN, origin_of
from synthea_pipeline.tables import TABLES, Table
from synthea_pipeline.transforms.checks import RAW_QUARANTINE, STAGING_QUARANTINE, UPLOAD_CHECKS
from synthea_pipeline.transforms.layers import SCHEMA_KEY, table_schema
from synthea_pipeline.transforms.raw import find_source_files, upload_release
from synthea_pipeline.transforms.staging import STAGING_CHECKS
from synthea_pipeline.transforms.uploads import (
    REPLACE_FIELD,
    UPLOADING_SUFFIX,
    missing_or_different,
    read_manifest,
    removal_holds,
    removal_notice,
)

UPLOAD_MARKER_ASSET = AssetKey(["source", "patients"])
"""Every upload has patients: its materialization carries the content checksum an upload was taken in with."""
INGEST_CHECKS = (RAW_QUARANTINE, *STAGING_CHECKS, STAGING_QUARANTINE, *UPLOAD_CHECKS)


def _spec(layer: str, table: Table, description: str, deps_layer: str | None, **metadata) -> AssetSpec:
    return AssetSpec(
        key=AssetKey([layer, table.name]),
        **layer_spec_fields(layer, [table], **metadata),
        description=f"{description} Grain: {table.grain}.",
        deps=[AssetKey([deps_layer, table.name])] if deps_layer else [],
        partitions_def=uploads_partitions,
        skippable=True,
    )


def _selected_tables(context: AssetExecutionContext) -> list[Table]:
    return [TABLES[key.path[-1]] for key in sorted(context.selected_asset_keys, key=lambda k: k.path)]


def _take_stock(
    context: AssetExecutionContext,
    lake: LakeResource,
    batch: UploadBatch,
    upload: str,
    state: dict | None,
    tables: list[Table],
) -> Iterator[MaterializeResult]:
    upload_uri = lake.layout().source(upload)
    storage = lake.source_storage()
    if any(o.key == f"{upload}{UPLOADING_SUFFIX}" for o in storage.list_children("")[0]):
        raise Failure(
            f"upload {upload} is being uploaded ({upload}{UPLOADING_SUFFIX} present): run it once "
            "the upload has finished"
        )
    manifest = read_manifest(storage, upload)
    if origin_of(context.run.tags) != CLI_RUN and removal_holds(state, manifest):
        context.log.warning(f"upload {upload} skipped: {removal_notice(upload, state)}")
        return
    if manifest is not None:
        problems = missing_or_different(manifest, list(storage.list_objects(upload)))
        if problems:
            raise Failure(f"upload {upload} is incomplete or changed since its manifest: {'; '.join(problems)}")
    files, other = find_source_files(upload_uri)
    if "patients" not in files:
        raise Failure(f"upload {upload}: no patients.csv under {upload_uri}")
    if other:
        context.log.warning(f"files that are not Synthea tables, ignored: {', '.join(other)}")
    release = upload_release(upload_uri)
    checksum = manifest["checksum"] if manifest else batch.checksum(upload)
    for table in tables:
        yield MaterializeResult(
            asset_key=AssetKey(["source", table.name]),
            metadata={
                "files": files.get(table.name, []),
                "present": table.name in files,
                "synthea_release": release,
                "upload_checksum": checksum,
                "has_manifest": manifest is not None,
                "location": MetadataValue.path(upload_uri),
            },
        )


def build_source_assets():
    @multi_asset(
        name="source_upload",
        specs=[
            _spec("source", TABLES[t], f"Synthea `{t}.csv` as uploaded under `source/<upload_id>/`.", None)
            for t in TABLES
        ],
        partitions_def=uploads_partitions,
        can_subset=True,
    )
    def source_upload(
        context: AssetExecutionContext, lake: LakeResource, catalog: CatalogResource
    ) -> Iterator[MaterializeResult]:
        """Takes stock of each upload: which tables have files, their headers and the Synthea release; an upload
        whose manifest lists files that are absent or of another size fails here, before anything is read. An
        upload the lake removed is skipped with every later step (a backfill of an instance that still lists it),
        unless it was uploaded again since or `synthea-pipeline run` asks for it."""
        batch = UploadBatch(context)
        tables = _selected_tables(context)
        states = catalog.upload_states(lake.layout())
        for upload in batch.uploads:
            yield from batch.each(upload, _take_stock(context, lake, batch, upload, states.get(upload), tables))
        yield from batch.finish()

    return source_upload


RAW_DESCRIPTION = (
    "Every line of `{t}` as text columns with its file and line number (BOM, CRLF and unnamed "
    "columns removed; lines that cannot be split into the header's fields carry their reason "
    "instead). Parquet under `raw/{t}/upload_id=<id>/load_id=<run>/`, written by the staging step "
    "where the data is (this process, or the Glue / EMR Serverless job)."
)
STAGING_DESCRIPTION = (
    "`{t}` typed, trimmed and deduplicated, in the canonical schema of every Synthea release; the "
    "Iceberg table `staging/{t}/`, one load per run, which readers see once the whole upload is "
    "committed. Rows that cannot be staged go to the Iceberg table `staging/quarantine/` with "
    "their reason."
)


def build_staging_assets():
    @multi_asset(
        name="raw_and_staging_tables",
        specs=[_spec("raw", TABLES[t], RAW_DESCRIPTION.format(t=t), "source") for t in TABLES]
        + [
            _spec(
                "staging",
                TABLES[t],
                STAGING_DESCRIPTION.format(t=t),
                "raw",
                **{SCHEMA_KEY: column_schema(table_schema(TABLES[t]))},
            )
            for t in TABLES
        ],
        check_specs=check_specs(INGEST_CHECKS, partitions_def=uploads_partitions),
        partitions_def=uploads_partitions,
    )
    def raw_and_staging_tables(
        context: AssetExecutionContext, lake: LakeResource, spark: SparkResource, catalog: CatalogResource
    ) -> Iterator:
        """Reads every table of the upload into raw Parquet, then types, deduplicates and checks it, in one
        Spark layer run (in this process, or one Glue / EMR Serverless job run, so an upload on S3 is read
        there and never streams through this process) under this run's load, and commits the load for the whole
        upload at once: readers see every table of the upload as before or every table as after. A table that
        cannot be read at all (a required column missing) fails the step before any data is read, naming table,
        file, line and reason."""
        databases = catalog.databases()
        batch = UploadBatch(context)
        batch.plan(k for k in context.selected_asset_keys if k.path[0] == "staging")
        for upload in batch.accepted_by(UPLOAD_MARKER_ASSET):
            manifest = read_manifest(lake.source_storage(), upload) or {}
            params = {
                "lake_root": lake.layout().root,
                "upload_id": upload,
                "load_id": context.run_id,
                "upload_checksum": manifest.get("checksum") or batch.checksum(upload),
                "upload_token": manifest.get("upload_token"),
                "replace_history": bool(manifest.get(REPLACE_FIELD)),
                "history_shrink_limit_percent": lake.history_shrink_limit_percent,
                "staging_database": databases.staging,
                "marts_database": databases.marts,
            }
            yield from batch.each(upload, spark.run_layer(context, "staging", params))
        yield from batch.finish()

    return raw_and_staging_tables
