"""The run tags the project sets: where a run came from, which lake and engine it used, which host runs it
in-process, and the content it was started for."""

from __future__ import annotations

from collections.abc import Mapping

ORIGIN_TAG = "synthea/origin"
"""`cli run`, `cli backfill`, `cli remove` or `cli maintain` (set by `synthea-pipeline`), else `automation`
(`marts_automation`), `sensor`, `schedule`, `backfill` or `ui` (the UI or Dagster's GraphQL API), derived from
Dagster's own tags at run start."""
CLI_RUN = "cli run"
"""The origin of `synthea-pipeline run`'s runs: an explicit request, which brings back an upload the lake removed."""
LAKE_TAG = "synthea/lake"
ENGINE_TAG = "synthea/engine"
HOST_TAG = "synthea/host"
PROCESS_TAG = "synthea/process"
"""`<pid>:<epoch seconds>` of the `synthea-pipeline` process that executes a run in-process, so a run killed before
it started (no RUN_START event names its process) is found too."""
CHECKSUM_TAG = "synthea/upload_checksum"
BATCH_CHECKSUMS_TAG = "synthea/batch_checksums"
"""A batch run's uploads with the content checksum each was started for (JSON)."""
AUTOMATION_TAG = "dagster/from_automation_condition"
"""Dagster's tag on the runs declarative automation launches."""
DAGSTER_ORIGINS = (
    (AUTOMATION_TAG, "automation"),
    ("dagster/sensor_name", "sensor"),
    ("dagster/schedule_name", "schedule"),
    ("dagster/backfill", "backfill"),
)


def origin_of(tags: Mapping[str, str]) -> str:
    """Where a run came from, as far as its tags tell."""
    if ORIGIN_TAG in tags:
        return tags[ORIGIN_TAG]
    return next((origin for tag, origin in DAGSTER_ORIGINS if tag in tags), "ui")


def tag_run(context, tags: Mapping[str, str]) -> None:
    """Adds to the run a resource is set up for (an `InitResourceContext`) the tags it does not have yet; nothing
    outside a run (a sensor tick)."""
    run = context.dagster_run
    missing = {key: value for key, value in tags.items() if run is not None and key not in run.tags}
    if missing and context.instance is not None:
        context.instance.add_run_tags(run.run_id, missing)
