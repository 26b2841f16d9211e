"""The upload sensor (the original design's Lambda trigger): each complete, new upload under `source/` becomes a
dynamic partition and a run of `stage_upload`, uploads ready together one run for several of them
(`assets/batch.py`); the marts follow by declarative automation, `automation.py`. And the sensor that rebuilds the
marts once an upload is removed."""

import hashlib
import math
import os
import time
from collections.abc import Callable

from dagster import (
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    run_status_sensor,
    sensor,
)
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.tags import PARTITION_NAME_TAG

from synthea_pipeline.assets.batch import batch_run_tags, batch_uploads
from synthea_pipeline.assets.ingest import UPLOAD_MARKER_ASSET
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


def unfinished_runs(context: SensorEvaluationContext) -> tuple[dict[str, str], set[str]]:
    """The uploads held by a batch run that has not finished, with its run id, and those a run of their own holds.
    Two loads of an upload must never overlap: a new run of the first kind waits for the batch, one of the second
    kind runs alone, where the partition tag limit queues it."""
    records = context.instance.get_run_records(
        RunsFilter(job_name=stage_upload_job.name, statuses=NOT_FINISHED_STATUSES)
    )
    batched = {upload: r.dagster_run.run_id for r in records for upload in batch_uploads(r.dagster_run.tags)}
    alone = {r.dagster_run.tags[PARTITION_NAME_TAG] for r in records if PARTITION_NAME_TAG in r.dagster_run.tags}
    return batched, alone


def parallel_runs(instance: DagsterInstance) -> int:
    """How many batch runs can usefully go at once: the run queue's limit, at most this machine's cores (Dagster's
    default limit of 10 would spread a batch over ten processes on a laptop)."""
    limit = instance.get_concurrency_config().run_queue_config.max_concurrent_runs
    return max(1, min(limit if isinstance(limit, int) and limit > 0 else 1, os.cpu_count() or 1))


def upload_run_requests(
    launch: list[ReadyUpload], partition_order: list[str], batch_size: int, alone: set[str], parallel: int = 1
) -> list[RunRequest]:
    """Runs over stretches of uploads that are neighbours in the partitions' order (a ranged run covers such a
    stretch): each stretch split evenly into runs of at most `batch_size` uploads, and into at least `parallel`
    runs (the run queue's slots) while it has uploads enough; a run of one upload where it stands alone or must
    run `alone`."""
    position = {upload: n for n, upload in enumerate(partition_order)}
    stretches: list[list[ReadyUpload]] = []
    for ready in sorted(launch, key=lambda r: position[r.upload_id]):
        last = stretches[-1][-1].upload_id if stretches else None
        if last is not None and position[ready.upload_id] == position[last] + 1 and not {last, ready.upload_id} & alone:
            stretches[-1].append(ready)
        else:
            stretches.append([ready])
    requests = []
    for stretch in stretches:
        runs = max(math.ceil(len(stretch) / batch_size), min(parallel, len(stretch)))
        for n in range(runs):
            part = stretch[len(stretch) * n // runs : len(stretch) * (n + 1) // runs]
            if len(part) == 1:
                [ready] = part
                requests.append(
                    RunRequest(
                        partition_key=ready.upload_id, run_key=ready.run_key, tags={CHECKSUM_TAG: ready.checksum}
                    )
                )
                continue
            keys = ",".join(r.run_key for r in part)
            requests.append(
                RunRequest(
                    run_key=f"batch:{hashlib.sha256(keys.encode()).hexdigest()[:16]}",
                    tags=batch_run_tags([r.upload_id for r in part], {r.upload_id: r.checksum for r in part}),
                )
            )
    return requests


def build_upload_sensor(clock: Callable[[], float] = time.monotonic) -> SensorDefinition:
    """The upload sensor, timing its budget by `clock` (tests pass one they advance themselves)."""

    @sensor(
        job=stage_upload_job,
        minimum_interval_seconds=10,
        default_status=DefaultSensorStatus.RUNNING,
        description="Watches `<lake>/source/` for complete uploads (a manifest whose files are all present, or,"
        " without one, patients.csv and no change for the lake's `upload_quiet_seconds`, default 300) and"
        " starts a run of `stage_upload` for each new upload or changed content, one run for up to the lake's"
        " `upload_batch_size` (default 25) of the uploads ready in one tick. Uploads the lake's log shows removed"
        " are skipped until uploaded again; those it already committed from the same manifest are registered"
        " without a run. A tick"
        " stops within the lake's `upload_sensor_budget_seconds` (default 8) and leaves the rest to the next.",
    )
    def upload_sensor(context: SensorEvaluationContext, lake: LakeResource, catalog: CatalogResource) -> SensorResult:
        budget, batch_size = lake.upload_sensor_budget_seconds, lake.upload_batch_size
        started = clock()
        watcher = UploadWatcher(lake.source_storage(), quiet_seconds=lake.upload_quiet_seconds, clock=clock)
        outcome = watcher.tick(context.cursor, time.time(), deadline=started + budget * INSPECTION_SHARE)
        states = catalog.upload_states(lake.layout()) if outcome.ready else {}
        launch: list[ReadyUpload] = []
        processed: dict[str, str] = {}
        new_partitions: list[str] = []
        batched, alone = unfinished_runs(context) if outcome.ready else ({}, set())
        waiting = ""
        for ready in outcome.ready:
            if (launch or processed) and clock() >= started + budget:
                break
            if ready.upload_id in batched:
                waiting = f"waits for batch run {batched[ready.upload_id]}, which holds it"
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
        why_held = waiting or f"the sensor's {budget} s budget ran out"
        details += [f"{upload}: left for a later tick ({why_held})" for upload in held_back]
        details += [f"{upload}: {why}" for upload, why in processed.items()]
        requests = upload_run_requests(
            launch,
            context.instance.get_dynamic_partitions(uploads_partitions.name) + new_partitions,
            batch_size,
            alone,
            parallel_runs(context.instance),
        )
        context.log.info(summary + "".join(f"; run {r.run_key}" for r in requests))
        return SensorResult(
            run_requests=requests,
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
