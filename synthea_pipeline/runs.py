"""Running one upload through the asset graph in-process, as `synthea-pipeline run` does."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dagster import DagsterInstance, ExecuteInProcessResult
from pyarrow import fs as pafs

from synthea_pipeline.definitions import defs, ingest_upload_job
from synthea_pipeline.partitions import uploads_partitions
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.transforms.lake import Lake, copy_file, files_in, filesystem_for, publish, staging_area

SAMPLE_DIR = Path(str(resources.files("synthea_pipeline") / "samples" / "v3.3_au_11p"))
DEFAULT_DAGSTER_HOME = ".dagster"


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
    errors: list[str] = field(default_factory=list)


def dagster_instance() -> DagsterInstance:
    """The instance in DAGSTER_HOME, else the local one in ./.dagster; created on first use."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


class UploadConflict(Exception):
    pass


def _fingerprint(folder_uri: str) -> tuple:
    """File names and sizes, and the patients file itself: enough to tell two Synthea exports apart."""
    fs, path = filesystem_for(folder_uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    sizes = sorted((i.base_name, i.size) for i in infos if i.type == pafs.FileType.File)
    patients = f"{path}/patients.csv"
    if fs.get_file_info(patients).type != pafs.FileType.File:
        return sizes, b""
    with fs.open_input_stream(patients) as stream:
        return sizes, stream.read()


def copy_upload(source_dir: str, lake: Lake, upload_id: str, replace: bool = True) -> str:
    """Copy an export folder's files to source/<upload_id>/ unless it already is that folder. With
    `replace=False`, a different export already under that id is refused rather than overwritten."""
    target = lake.source(upload_id)
    if os.path.abspath(source_dir) == target:
        return target
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"source folder {source_dir} does not exist")
    if not replace and files_in(target) and _fingerprint(target) != _fingerprint(os.path.abspath(source_dir)):
        raise UploadConflict(
            f"upload id {upload_id!r} already holds a different export in {target}; pass --upload-id with a new "
            f"id for this one, or --upload-id {upload_id} to replace it"
        )
    temp = staging_area(target)
    fs, temp_path = filesystem_for(temp)
    fs.create_dir(temp_path)
    for name in files_in(source_dir):
        copy_file(f"{os.path.abspath(source_dir)}/{name}", f"{temp}/{name}")
    publish(temp, target)
    return target


def run_upload(
    source_dir: str,
    lake_root: str,
    upload_id: str,
    engine: str | None = None,
    instance: DagsterInstance | None = None,
    include_identifiers: bool = False,
    replace: bool = True,
) -> RunReport:
    """Register `upload_id` as a partition, materialize every asset for it in this process, then the marts over
    all uploads."""
    lake_resource = LakeResource(root=lake_root)
    lake = lake_resource.layout()
    copy_upload(source_dir, lake, upload_id, replace)
    instance = instance or dagster_instance()
    instance.add_dynamic_partitions(uploads_partitions.name, [upload_id])
    job = defs.resolve_job_def(ingest_upload_job.name)
    result = job.execute_in_process(
        instance=instance,
        partition_key=upload_id,
        raise_on_error=False,
        run_config={
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
            "ops": {"marts": {"config": {"include_identifiers": include_identifiers}}},
        },
        resources={"lake": lake_resource, "spark": SparkResource(engine=engine)},
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
        if not check.passed and check.severity.value == "ERROR":
            report.errors.append(f"check {name} failed: {check.metadata}")
    return report

