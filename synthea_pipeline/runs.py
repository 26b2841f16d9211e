"""Running uploads through the asset graph in-process, as the `synthea-pipeline` commands do, and what the lake
knows of its uploads."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from synthea_pipeline.assets.synthea import POPULATION_KEY
from synthea_pipeline.dead_runs import mark_dead_runs
from synthea_pipeline.definitions import defs
from synthea_pipeline.jobs import (
    generate_population_job,
    ingest_upload_job,
    maintain_lake_job,
    rebuild_marts_job,
    remove_upload_job,
)
from synthea_pipeline.partitions import uploads_partitions
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.run_tags import CLI_RUN, HOST_TAG, ORIGIN_TAG, PROCESS_TAG
from synthea_pipeline.settings import CATALOG_FIELDS, LAKE_FIELDS, SPARK_ENGINE, SPARK_FIELDS, current_values
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.uploads import (
    MANIFEST_SUFFIX,
    confirm_replace,
    read_manifest,
    removal_holds,
    removal_notice,
    upload_export,
)

SAMPLE_DIR = Path(str(resources.files("synthea_pipeline") / "samples" / "v3.3_au_11p"))
DEFAULT_DAGSTER_HOME = ".dagster"
PARTITIONED_LAYERS = ("source", "raw", "staging")
INTERRUPTED = "DagsterExecutionInterruptedError"
console_log_level = "CRITICAL"
"""What Dagster itself prints while a command runs: nothing by default (the command prints its own report and a
one-line reason for a failure), everything with `--verbose`."""


@dataclass
class TableAccount:
    table: str
    rows_in: int = 0
    quarantined: int = 0
    duplicates_dropped: int = 0
    rows_out: int = 0
    location: str = ""


@dataclass
class RunReport:
    upload_id: str
    run_id: str
    success: bool
    release: str = "unknown"
    release_note: str = ""
    tables: list[TableAccount] = field(default_factory=list)
    supersedes: list[str] = field(default_factory=list)
    marts: dict[str, int] = field(default_factory=dict)
    omop: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    warnings: dict[str, dict] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    dashboard: str | None = None
    outputs: dict[str, object] = field(default_factory=dict)


def dagster_instance() -> DagsterInstance:
    """The instance in DAGSTER_HOME, else the local one in ./.dagster; created on first use. Runs of this host
    left unfinished by a process that died are marked failed first."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    instance = DagsterInstance.get()
    mark_dead_runs(instance)
    return instance


def spark_from_environment(engine: str | None = None) -> SparkResource:
    """The Spark resource of a command-line run: `engine` when given, every other setting from the environment
    (the resources of a Dagster run resolve the same variables themselves)."""
    return SparkResource(**{**current_values(SPARK_FIELDS), "engine": SPARK_ENGINE.current(engine)})


def catalog_from_environment() -> CatalogResource:
    return CatalogResource(**current_values(CATALOG_FIELDS))


def lake_from_environment(lake_root: str) -> LakeResource:
    """The lake resource of a command-line run on `lake_root`, every other setting from the environment."""
    return LakeResource(**{**current_values(LAKE_FIELDS), "root": lake_root})


def run_upload(
    source_dir: str,
    lake_root: str,
    upload_id: str,
    engine: str | None = None,
    instance: DagsterInstance | None = None,
    include_identifiers: bool = False,
    replace: bool = True,
    spark: SparkResource | None = None,
    replace_history: bool = False,
) -> RunReport:
    """Register `upload_id` as a partition, materialize every asset for it in this process, then the marts over
    all uploads. `replace_history` confirms (in the upload's manifest) that it may remove history it supersedes."""
    lake_resource = lake_from_environment(lake_root)
    spark = spark or spark_from_environment(engine)
    check_engine(spark, lake_root)
    storage = lake_resource.source_storage()
    if os.path.abspath(source_dir) != lake_resource.layout().source(upload_id):
        upload_export(source_dir, storage, upload_id, replace, replace_history=replace_history)
    elif replace_history:
        confirm_replace(storage, upload_id)
    instance = instance or dagster_instance()
    instance.add_dynamic_partitions(uploads_partitions.name, [upload_id])
    return _execute(upload_id, lake_resource, spark, instance, include_identifiers, origin=CLI_RUN)


@dataclass
class GenerationReport:
    run_id: str
    success: bool
    shards: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False


def generate(population: dict, lake_root: str, instance: DagsterInstance | None = None) -> GenerationReport:
    """Materialize the `synthea/population` asset with these `Population` fields, in this process."""
    result = _run_job(
        generate_population_job,
        lake_from_environment(lake_root),
        spark_from_environment(),
        instance or dagster_instance(),
        CLI_RUN,
        ops={POPULATION_KEY.to_python_identifier(): {"config": population}},
    )
    report = _report(result, "")
    shards = [
        event.materialization.metadata["shard_reports"].value
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key == POPULATION_KEY
    ]
    return GenerationReport(
        result.run_id, result.success, shards[0] if shards else [], report.errors, report.interrupted
    )


def check_engine(spark: SparkResource, lake_root: str) -> None:
    """Refuse engine and lake combinations that cannot work, before anything is written."""
    spark.resolved_engine().check(Lake(lake_root))


def source_uploads(lake: Lake) -> set[str]:
    """The ids of the uploads in `source/`: a folder or a manifest, one listing of its top level."""
    objects, folders = LakeResource(root=lake.root).source_storage().list_children("")
    return set(folders) | {o.key[: -len(MANIFEST_SUFFIX)] for o in objects if o.key.endswith(MANIFEST_SUFFIX)}


def waiting_uploads(lake: Lake, upload_ids: set[str] | None = None) -> dict[str, dict | None]:
    """The uploads in `source/` (those of `upload_ids` only, when given), each with its manifest (None without
    one)."""
    storage = LakeResource(root=lake.root).source_storage()
    ids = source_uploads(lake) if upload_ids is None else source_uploads(lake) & upload_ids
    return {upload: read_manifest(storage, upload) for upload in sorted(ids)}


def list_uploads(lake_root: str) -> list[dict]:
    """Every upload the lake knows, as the catalog's `upload_states` view gives it, then those waiting in
    `source/` (never run, or uploaded again after a removal) in the view's shape with state `waiting`."""
    lake = Lake(lake_root)
    states = catalog_from_environment().upload_states(lake)
    rows = list(states.values())
    for upload, manifest in waiting_uploads(lake).items():
        state = states.get(upload)
        if state is None or (state["state"] == "removed" and not removal_holds(state, manifest)):
            rows.append(
                {
                    "upload_id": upload,
                    "state": "waiting",
                    "synthea_release": (manifest or {}).get("synthea_release"),
                    "patients": None,
                    "registered_at": None,
                    "committed_at": None,
                    "removed_at": state and state["removed_at"],
                    "last_run": state and state["last_run"],
                }
            )
    return rows


def backfill(
    upload_ids: list[str] | None,
    lake_root: str,
    engine: str | None = None,
    instance: DagsterInstance | None = None,
    include_identifiers: bool = False,
) -> list[RunReport]:
    """Recompute the given uploads (every upload committed in the lake when None) from their source folders, in
    the order they entered the lake (then those never processed yet), then the marts, catalog and dashboard once:
    the marts end up as if the uploads had arrived in that order. Stops at the first failed upload, leaving the
    marts as they were. Uploads missing from the Dagster instance (a new instance, another folder) are registered
    again. KeyError, saying what to do, for an upload the lake removed or does not know."""
    lake = Lake(lake_root)
    states = catalog_from_environment().upload_states(lake)
    committed = [u for u, state in states.items() if state["state"] == "committed"]
    if upload_ids is None:
        selected = committed
    else:
        waiting = waiting_uploads(lake, set(upload_ids) - set(committed))
        problems = []
        for upload in upload_ids:
            state = states.get(upload)
            if upload in committed:
                continue
            if removal_holds(state, waiting.get(upload)):
                problems.append(f"upload {upload} was {removal_notice(upload, state)}")
            elif upload not in waiting:
                problems.append(
                    f"upload {upload} is neither in the lake nor in {lake.uri('source')}/ (in the lake: "
                    f"{', '.join(committed) or 'none'}); upload it first: synthea-pipeline upload EXPORT "
                    f"--upload-id {upload}"
                )
        if problems:
            raise KeyError("; ".join(problems))
        selected = [u for u in committed if u in upload_ids] + [u for u in upload_ids if u not in committed]
    if not selected:
        raise KeyError(
            f"the lake {lake_root} holds no committed uploads: run or upload one first (synthea-pipeline run EXPORT)"
        )
    instance = instance or dagster_instance()
    instance.add_dynamic_partitions(uploads_partitions.name, selected)
    lake_resource = lake_from_environment(lake_root)
    spark = spark_from_environment(engine)
    check_engine(spark, lake_root)
    reports = []
    for position, upload_id in enumerate(selected):
        last = position == len(selected) - 1
        reports.append(
            _execute(
                upload_id, lake_resource, spark, instance, include_identifiers, origin="cli backfill", with_marts=last
            )
        )
        if not reports[-1].success:
            break
    return reports


def remove(
    upload_id: str,
    lake_root: str,
    engine: str | None = None,
    instance: DagsterInstance | None = None,
    purge_source: bool = False,
    spark: SparkResource | None = None,
) -> RunReport:
    """Take an upload out of the lake (and its Dagster partition), then rebuild the marts, catalog and
    dashboard, in this process; the report's `outputs` hold how many loads were deleted. KeyError when neither
    the lake, its `source/` nor the instance knows the upload."""
    instance = instance or dagster_instance()
    lake = Lake(lake_root)
    states = catalog_from_environment().upload_states(lake)
    if (
        upload_id not in states
        and upload_id not in source_uploads(lake)
        and not instance.has_dynamic_partition(uploads_partitions.name, upload_id)
    ):
        known = ", ".join(u for u, s in states.items() if s["state"] == "committed") or "none"
        raise KeyError(f"upload {upload_id} is not in the lake (in the lake: {known})")
    instance.add_dynamic_partitions(uploads_partitions.name, [upload_id])
    lake_resource = lake_from_environment(lake_root)
    spark = spark or spark_from_environment(engine)
    removal = _run_job(
        remove_upload_job,
        lake_resource,
        spark,
        instance,
        "cli remove",
        partition_key=upload_id,
        ops={"remove_upload_from_lake": {"config": {"purge_source": purge_source}}},
    )
    if not removal.success:
        return _report(removal, upload_id)
    report = _report(_run_job(rebuild_marts_job, lake_resource, spark, instance, "cli remove"), upload_id)
    report.outputs["loads_deleted"] = removal.output_for_node("remove_upload_from_lake")
    return report


def maintain(
    lake_root: str, older_than_days: float, engine: str | None = None, instance: DagsterInstance | None = None
) -> dict:
    """The lake's upkeep in this process; returns what was deleted and expired."""
    result = _run_job(
        maintain_lake_job,
        LakeResource(root=lake_root),
        spark_from_environment(engine),
        instance or dagster_instance(),
        "cli maintain",
        ops={"clean_lake": {"config": {"older_than_days": older_than_days}}},
    )
    if not result.success:
        raise RuntimeError("; ".join(_report(result, "").errors))
    return result.output_for_node("clean_lake")


def _run_job(
    job_def,
    lake: LakeResource,
    spark: SparkResource,
    instance: DagsterInstance,
    origin: str,
    partition_key: str | None = None,
    asset_selection=None,
    ops: dict | None = None,
) -> ExecuteInProcessResult:
    """One job of the project's definitions, in this process, on this lake and engine; tagged with the command
    that ran it, this host and this process, so a later start finds it if this process dies, even before the run
    starts (`dead_runs.mark_dead_runs`)."""
    job = Definitions(
        assets=defs.assets, jobs=defs.jobs, resources={**defs.resources, "lake": lake, "spark": spark}
    ).resolve_job_def(job_def.name)
    return job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        asset_selection=asset_selection(job) if asset_selection else None,
        raise_on_error=False,
        tags={HOST_TAG: socket.gethostname(), PROCESS_TAG: f"{os.getpid()}:{time.time():.3f}", ORIGIN_TAG: origin},
        run_config={
            "loggers": {"console": {"config": {"log_level": console_log_level}}},
            **({"ops": ops} if ops else {}),
        },
    )


def _execute(
    upload_id: str,
    lake: LakeResource,
    spark: SparkResource,
    instance: DagsterInstance,
    include_identifiers: bool,
    origin: str,
    with_marts: bool = True,
) -> RunReport:
    result = _run_job(
        ingest_upload_job,
        lake,
        spark,
        instance,
        origin,
        partition_key=upload_id,
        asset_selection=None
        if with_marts
        else lambda job: [key for key in job.asset_layer.executable_asset_keys if key.path[0] in PARTITIONED_LAYERS],
        ops={"marts": {"config": {"include_identifiers": include_identifiers}}} if with_marts else None,
    )
    return _report(result, upload_id)


def _report(result: ExecuteInProcessResult, upload_id: str) -> RunReport:
    report = RunReport(upload_id=upload_id, run_id=result.run_id, success=result.success)
    accounts: dict[str, TableAccount] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        layer, table = materialization.asset_key.path
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        if layer == "synthea":
            continue
        if layer == "staging":
            accounts[table] = TableAccount(
                table=table,
                rows_in=metadata["rows_in"],
                quarantined=metadata["quarantined"],
                duplicates_dropped=metadata["duplicates_dropped"],
                rows_out=metadata["rows_out"],
                location=metadata["location"],
            )
            report.release = metadata["synthea_release"]
            report.release_note = metadata.get("synthea_release_note", "")
        elif layer == "marts":
            report.marts[table] = metadata["dagster/row_count"]
        elif layer == "omop":
            report.omop[table] = metadata["dagster/row_count"]
        elif layer == "reports":
            report.dashboard = metadata["path"]
    report.tables = [accounts[t] for t in sorted(accounts)]
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            message = data.user_failure_data.description if data.user_failure_data else None
            error = data.error
            while error.cause is not None:
                error = error.cause
            if error.cls_name == INTERRUPTED:
                report.interrupted = True
                message = "interrupted (SIGINT or SIGTERM): nothing of this run was committed"
            report.errors.append(message or error.message.strip())
    for check in result.get_asset_check_evaluations():
        name = f"{'/'.join(check.asset_key.path)}:{check.check_name}"
        report.checks[name] = check.passed
        metadata = {key: value.value for key, value in check.metadata.items()}
        if check.check_name == "history_preserved":
            report.supersedes = metadata.get("summary", [])
        if check.passed:
            continue
        if check.severity.value == "ERROR":
            report.errors.append(f"check {name} failed: {metadata}")
        else:
            report.warnings[name] = metadata
    return report
