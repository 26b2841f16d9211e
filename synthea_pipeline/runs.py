"""Running one upload through the asset graph in-process, as `synthea-pipeline run` does."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from synthea_pipeline.dead_runs import mark_dead_runs
from synthea_pipeline.definitions import defs
from synthea_pipeline.jobs import ingest_upload_job, maintain_lake_job, rebuild_marts_job, remove_upload_job
from synthea_pipeline.partitions import uploads_partitions
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import REMOTE_ENGINES, SparkResource
from synthea_pipeline.run_tags import HOST_TAG, ORIGIN_TAG
from synthea_pipeline.settings import CATALOG_FIELDS, SPARK_ENGINE, SPARK_FIELDS, current_values
from synthea_pipeline.transforms.catalog import defined_views
from synthea_pipeline.transforms.uploads import upload_export

SAMPLE_DIR = Path(str(resources.files("synthea_pipeline") / "samples" / "v3.3_au_11p"))
DEFAULT_DAGSTER_HOME = ".dagster"
PARTITIONED_LAYERS = ("source", "raw", "staging")


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
    tables: list[TableAccount] = field(default_factory=list)
    marts: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    warnings: dict[str, dict] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    dashboard: str | None = None


def dagster_instance() -> DagsterInstance:
    """The instance in DAGSTER_HOME, else the local one in ./.dagster; created on first use. Runs of this host
    left STARTED by a process that died are marked failed first."""
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


def run_upload(
    source_dir: str,
    lake_root: str,
    upload_id: str,
    engine: str | None = None,
    instance: DagsterInstance | None = None,
    include_identifiers: bool = False,
    replace: bool = True,
    spark: SparkResource | None = None,
) -> RunReport:
    """Register `upload_id` as a partition, materialize every asset for it in this process, then the marts over
    all uploads."""
    lake_resource = LakeResource(root=lake_root)
    spark = spark or spark_from_environment(engine)
    check_engine(spark, lake_root)
    if os.path.abspath(source_dir) != lake_resource.layout().source(upload_id):
        upload_export(source_dir, lake_resource.source_storage(), upload_id, replace)
    instance = instance or dagster_instance()
    instance.add_dynamic_partitions(uploads_partitions.name, [upload_id])
    return _execute(upload_id, lake_resource, spark, instance, include_identifiers, origin="cli run")


def check_engine(spark: SparkResource, lake_root: str) -> None:
    """Refuse engine and lake combinations that cannot work, before anything is written."""
    engine = spark.resolved_engine()
    if not lake_root.startswith("s3://") and engine in REMOTE_ENGINES:
        raise ValueError(f"the {engine} engine needs the lake on S3: --lake s3://bucket/prefix")


def lake_uploads(lake_root: str) -> list[str]:
    """The uploads in the lake (its uploads log), in the order they entered it; the lake, not the Dagster
    instance, is the source of truth."""
    catalog = catalog_from_environment()
    databases = catalog.databases()
    with catalog.open(LakeResource(root=lake_root).layout()) as engine:
        if (databases.staging, "uploads") not in defined_views(engine, databases):
            return []
        return [row[0] for row in engine.execute(
            f"SELECT upload_id FROM {databases.staging}.uploads ORDER BY registered_at, upload_id").fetchall()]


def backfill(
    upload_ids: list[str] | None,
    lake_root: str,
    engine: str | None = None,
    instance: DagsterInstance | None = None,
    include_identifiers: bool = False,
) -> list[RunReport]:
    """Recompute the given uploads (every upload in the lake when None) from their source folders, in the order
    they entered the lake, then the marts, catalog and dashboard once: the marts end up as if the uploads had
    arrived in that order. Stops at the first failed upload, leaving the marts as they were. Uploads missing
    from the Dagster instance (a new instance, another folder) are registered again."""
    instance = instance or dagster_instance()
    in_lake = lake_uploads(lake_root)
    unknown = sorted(set(upload_ids or []) - set(in_lake))
    if unknown:
        raise KeyError(f"uploads not in the lake: {', '.join(unknown)} (in the lake: {', '.join(in_lake) or 'none'})")
    selected = [u for u in in_lake if upload_ids is None or u in upload_ids]
    if not selected:
        raise KeyError(f"the lake {lake_root} holds no uploads: run or upload one first")
    instance.add_dynamic_partitions(uploads_partitions.name, selected)
    lake_resource = LakeResource(root=lake_root)
    spark = spark_from_environment(engine)
    check_engine(spark, lake_root)
    reports = []
    for position, upload_id in enumerate(selected):
        last = position == len(selected) - 1
        reports.append(_execute(upload_id, lake_resource, spark, instance, include_identifiers, origin="cli backfill",
                                with_marts=last))
        if not reports[-1].success:
            break
    return reports


def remove(upload_id: str, lake_root: str, engine: str | None = None, instance: DagsterInstance | None = None,
           purge_source: bool = False) -> RunReport:
    """Take an upload out of the lake (and its Dagster partition), then rebuild the marts, catalog and
    dashboard, in this process. KeyError when neither the lake nor the instance knows the upload."""
    instance = instance or dagster_instance()
    in_lake = lake_uploads(lake_root)
    if upload_id not in in_lake and not instance.has_dynamic_partition(uploads_partitions.name, upload_id):
        raise KeyError(f"upload {upload_id} is not in the lake (in the lake: {', '.join(in_lake) or 'none'})")
    instance.add_dynamic_partitions(uploads_partitions.name, [upload_id])
    lake_resource = LakeResource(root=lake_root)
    spark = spark_from_environment(engine)
    removal = _run_job(remove_upload_job, lake_resource, spark, instance, "cli remove", partition_key=upload_id,
                       ops={"remove_upload_from_lake": {"config": {"purge_source": purge_source}}})
    if not removal.success:
        return _report(removal, upload_id)
    return _report(_run_job(rebuild_marts_job, lake_resource, spark, instance, "cli remove"), upload_id)


def maintain(lake_root: str, older_than_days: float, engine: str | None = None,
             instance: DagsterInstance | None = None) -> dict:
    """The lake's upkeep in this process; returns what was deleted and expired."""
    result = _run_job(maintain_lake_job, LakeResource(root=lake_root), spark_from_environment(engine),
                      instance or dagster_instance(), "cli maintain",
                      ops={"clean_lake": {"config": {"older_than_days": older_than_days}}})
    if not result.success:
        raise RuntimeError("; ".join(_report(result, "").errors))
    return result.output_for_node("clean_lake")


def _run_job(job_def, lake: LakeResource, spark: SparkResource, instance: DagsterInstance, origin: str,
             partition_key: str | None = None, asset_selection=None, ops: dict | None = None
             ) -> ExecuteInProcessResult:
    """One job of the project's definitions, in this process, on this lake and engine; tagged with the command
    that ran it and this host, so a later start finds it if this process dies (`dead_runs.mark_dead_runs`)."""
    job = Definitions(
        assets=defs.assets, jobs=defs.jobs, resources={**defs.resources, "lake": lake, "spark": spark}
    ).resolve_job_def(job_def.name)
    return job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        asset_selection=asset_selection(job) if asset_selection else None,
        raise_on_error=False,
        tags={HOST_TAG: socket.gethostname(), ORIGIN_TAG: origin},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}, **({"ops": ops} if ops else {})},
    )


def _execute(upload_id: str, lake: LakeResource, spark: SparkResource, instance: DagsterInstance,
             include_identifiers: bool, origin: str, with_marts: bool = True) -> RunReport:
    result = _run_job(
        ingest_upload_job, lake, spark, instance, origin, partition_key=upload_id,
        asset_selection=None if with_marts else lambda job: [
            key for key in job.asset_layer.executable_asset_keys if key.path[0] in PARTITIONED_LAYERS],
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
        elif layer == "marts":
            report.marts[table] = metadata["dagster/row_count"]
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
            report.errors.append(message or error.message.strip())
    for check in result.get_asset_check_evaluations():
        name = f"{'/'.join(check.asset_key.path)}:{check.check_name}"
        report.checks[name] = check.passed
        if check.passed:
            continue
        metadata = {key: value.value for key, value in check.metadata.items()}
        if check.severity.value == "ERROR":
            report.errors.append(f"check {name} failed: {metadata}")
        else:
            report.warnings[name] = metadata
    return report

