"""The upload sensor (the original design's Lambda trigger): each complete, new upload under `source/` becomes a
dynamic partition and one run of `stage_upload` (the marts follow by declarative automation, `automation.py`).
And the sensor that rebuilds the marts once an upload is removed."""

import time
from collections.abc import Callable

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    run_status_sensor,
    sensor,
)

from synthea_pipeline.jobs import rebuild_marts_job, remove_upload_job, stage_upload_job
from synthea_pipeline.partitions import uploads_partitions
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.run_tags import CHECKSUM_TAG
from synthea_pipeline.transforms.uploads import (
    ReadyUpload,
    UploadWatcher,
    already_committed,
    removal_holds,
    removal_notice,
)

UPLOAD_MARKER_ASSET = AssetKey(["source", "patients"])
INSPECTION_SHARE = 0.5
"""The part of a tick's time budget the watcher may spend reading manifests and listing uploads; the rest is for
the instance look-ups of the uploads it found ready (up to three queries each)."""


def processed_checksum(context: SensorEvaluationContext, upload_id: str) -> str | None:
    """The content checksum the latest materialization of this upload recorded, whoever started it (this
    sensor, `synthea-pipeline run`, a backfill); none once the upload was removed (its partition is gone), so
    the same content uploaded again runs again."""
    if not context.instance.has_dynamic_partition(uploads_partitions.name, upload_id):
        return None
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=UPLOAD_MARKER_ASSET, asset_partitions=[upload_id]), limit=1
    ).records
    if not records:
        return None
    value = records[0].asset_materialization.metadata.get("upload_checksum")
    return value.value if value is not None else None


def build_upload_sensor(clock: Callable[[], float] = time.monotonic) -> SensorDefinition:
    """The upload sensor, timing its budget by `clock` (tests pass one they advance themselves)."""

    @sensor(
        job=stage_upload_job,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Watches `<lake>/source/` for complete uploads (a manifest whose files are all present, or,"
        " without one, patients.csv and no change for the lake's `upload_quiet_seconds`, default 300) and"
        " starts one run of `stage_upload` per new upload or changed content. Uploads the lake's log shows removed"
        " are skipped until uploaded again; those it already committed from the same manifest are registered"
        " without a run. A tick"
        " stops within the lake's `upload_sensor_budget_seconds` (default 8) and leaves the rest to the next.",
    )
    def upload_sensor(context: SensorEvaluationContext, lake: LakeResource, catalog: CatalogResource) -> SensorResult:
        budget = lake.upload_sensor_budget_seconds
        started = clock()
        watcher = UploadWatcher(lake.source_storage(), quiet_seconds=lake.upload_quiet_seconds, clock=clock)
        outcome = watcher.tick(context.cursor, time.time(), deadline=started + budget * INSPECTION_SHARE)
        states = catalog.upload_states(lake.layout()) if outcome.ready else {}
        launch: list[ReadyUpload] = []
        processed: dict[str, str] = {}
        new_partitions: list[str] = []
        for ready in outcome.ready:
            if (launch or processed) and clock() >= started + budget:
                break
            state = states.get(ready.upload_id)
            has_partition = context.instance.has_dynamic_partition(uploads_partitions.name, ready.upload_id)
            if removal_holds(state, ready.manifest):
                processed[ready.upload_id] = removal_notice(ready.upload_id, state)
                continue
            if already_committed(state, ready.manifest):
                processed[ready.upload_id] = (
                    f"already in the lake (committed {state['committed_at']:%Y-%m-%d %H:%M:%S})"
                )
            elif processed_checksum(context, ready.upload_id) == ready.checksum:
                processed[ready.upload_id] = "this content was already processed"
            else:
                launch.append(ready)
            if not has_partition:
                new_partitions.append(ready.upload_id)
        handed_out = len(launch) + len(processed)
        held_back = [r.upload_id for r in outcome.ready[handed_out:]]
        summary = (
            f"saw {outcome.uploads_seen} uploads: {len(launch)} to run, {outcome.unchanged} unchanged, "
            f"{len(processed)} already processed or removed, "
            f"{len(outcome.skipped) + len(held_back)} waiting or invalid"
        )
        details = [f"{upload}: {why}" for upload, why in outcome.skipped.items()]
        details += [f"{upload}: left for a later tick (the sensor's {budget} s budget ran out)" for upload in held_back]
        details += [f"{upload}: {why}" for upload, why in processed.items()]
        context.log.info(summary + "".join(f"; run {r.upload_id} ({r.run_key})" for r in launch))
        return SensorResult(
            run_requests=[
                RunRequest(partition_key=r.upload_id, run_key=r.run_key, tags={CHECKSUM_TAG: r.checksum})
                for r in launch
            ],
            dynamic_partitions_requests=(
                [uploads_partitions.build_add_request(new_partitions)] if new_partitions else []
            ),
            cursor=outcome.cursor_handing_out(handed_out),
            skip_reason=None if launch else "; ".join([summary, *details]),
        )

    return upload_sensor


upload_sensor = build_upload_sensor()


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[remove_upload_job],
    request_job=rebuild_marts_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="Rebuilds the marts, catalog and dashboard after an upload is removed from the lake.",
)
def rebuild_marts_after_removal(context: RunStatusSensorContext) -> RunRequest:
    return RunRequest(
        run_key=context.dagster_run.run_id,
        tags={"synthea/removed_upload": context.dagster_run.tags.get("dagster/partition", "")},
    )
