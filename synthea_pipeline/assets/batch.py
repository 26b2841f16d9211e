"""Runs over several uploads (the upload sensor's batches): each upload is still its own partition, load and
commit. Such a run is a ranged run of the upload partitions tagged `dagster/defer_asset_events`, so Dagster records
no materialization for the range as a whole; each step records every upload's materializations and check results
against that upload's partition, goes on past an upload that fails, and fails at its end naming each one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    Failure,
    MaterializeResult,
    Output,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    EXTERNALLY_MANAGED_ASSETS_TAG,
)

from synthea_pipeline.run_tags import BATCH_CHECKSUMS_TAG, CHECKSUM_TAG

LAYERS = ("source", "raw", "staging")

Result = MaterializeResult | AssetCheckResult


def batch_run_tags(uploads: Sequence[str], checksums: dict[str, str]) -> dict[str, str]:
    """The tags of one run over `uploads`, contiguous in the partitions' order: the range, Dagster's switch that
    leaves recording each upload's events to the steps, and every upload with the content checksum the sensor
    computed for it (empty where its manifest has one)."""
    return {
        ASSET_PARTITION_RANGE_START_TAG: uploads[0],
        ASSET_PARTITION_RANGE_END_TAG: uploads[-1],
        EXTERNALLY_MANAGED_ASSETS_TAG: "true",
        BATCH_CHECKSUMS_TAG: json.dumps({upload: checksums.get(upload, "") for upload in uploads}, sort_keys=True),
    }


def batch_checksums(tags: dict[str, str]) -> dict[str, str]:
    """A batch run's uploads with the checksum each was started for (empty for any other run)."""
    return json.loads(tags.get(BATCH_CHECKSUMS_TAG, "{}"))


def batch_uploads(tags: dict[str, str]) -> list[str]:
    """The uploads a batch run was started for (none for any other run)."""
    return sorted(batch_checksums(tags))


class UploadBatch:
    """The uploads of a step's run, and how each one's results reach Dagster: yielded as usual in a run of one
    upload, recorded against the upload's partition in a batch run."""

    def __init__(self, context: AssetExecutionContext):
        self.context = context
        tags = context.run.tags
        self.batched = ASSET_PARTITION_RANGE_START_TAG in tags and context.partition_key_range.start != (
            context.partition_key_range.end
        )
        if self.batched and tags.get(EXTERNALLY_MANAGED_ASSETS_TAG) != "true":
            raise Failure(
                f"a run over several uploads needs the tag {EXTERNALLY_MANAGED_ASSETS_TAG}=true, so each upload's "
                "results are recorded against its own partition: start it from the upload sensor, or run the "
                "uploads one at a time"
            )
        self.uploads: list[str] = list(context.partition_keys) if self.batched else [context.partition_key]
        self.checksums = batch_checksums(tags)
        self.failures: dict[str, str] = {}
        self._targets: dict[tuple[AssetKey, str], AssetCheckEvaluationTargetMaterializationData | None] = {}

    def plan(self, keys: Iterable[AssetKey]) -> None:
        """In a batch: records that this step will materialize `keys` for the batch's uploads, as Dagster does for
        every asset of any other run when it starts (the switch that leaves the events to the steps also leaves
        this out). For the staging tables, whose state the marts automation reads: the UI shows those partitions
        in progress, the automation waits for the batch instead of building after each upload's commit, and an
        upload that fails shows as failed."""
        if not self.batched:
            return
        instance = self.context.instance
        partitions_def = self.context.assets_def.partitions_def
        subsets = (
            [(None, partitions_def.subset_with_partition_keys(self.uploads))]
            if instance.event_log_storage.supports_partition_subset_in_asset_materialization_planned_events
            else [(upload, None) for upload in self.uploads]
        )
        step = self.context.get_step_execution_context().step.key
        for key in sorted(keys, key=lambda k: k.path):
            for partition, subset in subsets:
                planned = AssetMaterializationPlannedData(key, partition=partition, partitions_subset=subset)
                event = DagsterEvent.build_asset_materialization_planned_event(self.context.job_name, step, planned)
                instance.report_dagster_event(event, run_id=self.context.run_id)

    def checksum(self, upload: str) -> str | None:
        """The content checksum the run was started for, if the sensor computed one (uploads without manifest)."""
        return self.checksums.get(upload) or self.context.run.tags.get(CHECKSUM_TAG)

    def each(self, upload: str, results: Iterable[Result]) -> Iterator[Result]:
        """`results` of one upload that the run selected: yielded in a run of one upload (where a failure fails
        the step); in a batch, recorded against the upload's partition, and a failure recorded for `finish` instead
        of raised."""
        selected = (r for r in results if self.selected(r))
        if not self.batched:
            yield from selected
            return
        try:
            for result in selected:
                self.context.log_event(self.partitioned(result, upload))
        except Exception as error:  # one upload's failure, whatever it is, must not stop the others
            reason = error.description if isinstance(error, Failure) else f"{type(error).__name__}: {error}"
            self.failures[upload] = reason
            self.context.log.error(f"upload {upload} failed, the batch goes on: {reason}")

    def selected(self, result: Result) -> bool:
        """Whether the run asked for `result`'s asset or check (a run may leave checks out)."""
        if isinstance(result, MaterializeResult):
            return result.asset_key in self.context.selected_asset_keys
        return AssetCheckKey(result.asset_key, result.check_name) in self.context.selected_asset_check_keys

    def finish(self) -> Iterator[MaterializeResult | Output]:
        """In a batch: the step's outputs, which Dagster records no event for but the next steps wait on (assets in
        the order of the layers: raw before staging; checks as bare outputs, their results being recorded per
        upload already), then a failure naming every upload that failed."""
        if not self.batched:
            return
        keys = sorted(self.context.selected_asset_keys, key=lambda k: LAYERS.index(k.path[0]))
        yield from (MaterializeResult(asset_key=key) for key in keys)
        for output, spec in self.context.assets_def.check_specs_by_output_name.items():
            if spec.key in self.context.selected_asset_check_keys:
                yield Output(None, output_name=output)
        if self.failures:
            raise Failure(
                f"{len(self.failures)} of {len(self.uploads)} uploads failed (the others are committed): "
                + "; ".join(f"{upload}: {reason}" for upload, reason in sorted(self.failures.items())),
                metadata={"failed_uploads": sorted(self.failures)},
            )

    def partitioned(self, result: Result, upload: str) -> AssetMaterialization | AssetCheckEvaluation:
        """A step's result as the event Dagster records for the upload's partition in a run of its own: a check
        result names the materialization it checked, which is what makes it count as passed for that partition."""
        if isinstance(result, MaterializeResult):
            return AssetMaterialization(asset_key=result.asset_key, partition=upload, metadata=result.metadata)
        return AssetCheckEvaluation(
            asset_key=result.asset_key,
            check_name=result.check_name,
            passed=result.passed,
            metadata=result.metadata,
            severity=result.severity,
            partition=upload,
            target_materialization_data=self.latest_materialization(result.asset_key, upload),
        )

    def latest_materialization(
        self, key: AssetKey, upload: str
    ) -> AssetCheckEvaluationTargetMaterializationData | None:
        """The latest materialization of the upload's partition of `key` (the one this step just recorded), looked up
        once per asset and upload."""
        if (key, upload) not in self._targets:
            records = self.context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, asset_partitions=[upload]), limit=1
            ).records
            self._targets[key, upload] = (
                AssetCheckEvaluationTargetMaterializationData(
                    run_id=records[0].run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp
                )
                if records
                else None
            )
        return self._targets[key, upload]

    def accepted_by(self, key: AssetKey) -> list[str]:
        """The uploads an earlier step of this run materialized `key` for (it refused or skipped the others);
        every upload when the run does not materialize `key`."""
        selection = self.context.run.asset_selection
        if not self.batched or (selection is not None and key not in selection):
            return self.uploads
        records = self.context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, asset_partitions=self.uploads), limit=len(self.uploads) * 4
        ).records
        done = {r.partition_key for r in records if r.run_id == self.context.run_id}
        return [upload for upload in self.uploads if upload in done]
