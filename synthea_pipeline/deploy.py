"""`synthea-pipeline deploy`: package the layer entry scripts with the transforms, upload them to S3 and create
or update the Glue jobs; print the EMR Serverless settings that run the same code."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import dagster_pipes

from synthea_pipeline.engines.emr_serverless import (
    CODE_URI,
    EMR_APPLICATION_ID,
    EMR_EXECUTION_ROLE_ARN,
    EMR_SERVERLESS,
)
from synthea_pipeline.remote_jobs import (
    PACKAGE_ZIP,
    SPARK_LAYERS,
    emr_iceberg_parameters,
    entry_script,
    glue_conf_argument,
    glue_job_name,
)
from synthea_pipeline.settings import SPARK_ENGINE
from synthea_pipeline.transforms.lake import aws_client

GLUE_VERSION = "5.0"
EMR_RELEASE = "emr-7.5.0"
PACKAGED = ("__init__.py", "tables.py", "transforms/*.py", "transforms/*.csv", "entrypoints/*.py")
CODE_ARGUMENTS = ("--extra-py-files", "--datalake-formats", "--conf")
"""The Glue job arguments the code needs, which `code_update` sets on an existing job too."""


def build_package() -> bytes:
    """A zip for `--extra-py-files` / `spark.submit.pyFiles`: the table contract, the transforms, the entry
    scripts and dagster_pipes (pure Python, so Glue jobs need no package index)."""
    root = Path(str(resources.files("synthea_pipeline")))
    pipes_root = Path(dagster_pipes.__file__).parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for pattern in PACKAGED:
            for path in sorted(root.glob(pattern)):
                archive.write(path, f"synthea_pipeline/{path.relative_to(root).as_posix()}")
        for path in sorted(pipes_root.glob("*.py")):
            archive.write(path, f"dagster_pipes/{path.name}")
    return buffer.getvalue()


def glue_job_definition(name: str, layer: str, code_uri: str, bucket: str, role_arn: str, workers: int) -> dict:
    return {
        "Name": name,
        "Description": f"synthea-pipeline {layer} layer (Dagster Pipes entry script)",
        "Role": role_arn,
        "GlueVersion": GLUE_VERSION,
        "WorkerType": "G.1X",
        "NumberOfWorkers": workers,
        "Timeout": 120,
        "ExecutionProperty": {"MaxConcurrentRuns": 10 if layer == "staging" else 1},  # a build at a time
        "Command": {"Name": "glueetl", "ScriptLocation": f"{code_uri}/{entry_script(layer)}", "PythonVersion": "3"},
        "DefaultArguments": {
            "--extra-py-files": f"{code_uri}/{PACKAGE_ZIP}",
            "--datalake-formats": "iceberg",
            "--conf": glue_conf_argument(bucket),
            "--job-language": "python",
            "--enable-metrics": "true",
            "--enable-continuous-cloudwatch-log": "true",
        },
    }


def emr_serverless_settings(code_uri: str, bucket: str) -> dict:
    """What an EMR Serverless run of a layer needs; the engine passes the same `sparkSubmitParameters` itself."""
    iceberg = emr_iceberg_parameters(bucket)
    return {
        "application": {"releaseLabel": EMR_RELEASE, "type": "SPARK", "name": "synthea-pipeline"},
        "entryPoints": {layer: f"{code_uri}/{entry_script(layer)}" for layer in SPARK_LAYERS},
        "sparkSubmitParameters": f"--conf spark.submit.pyFiles={code_uri}/{PACKAGE_ZIP} {iceberg}",
        "environment": {
            SPARK_ENGINE.env_var: EMR_SERVERLESS.name,
            CODE_URI.env_var: code_uri,
            EMR_APPLICATION_ID.env_var: "<application id>",
            EMR_EXECUTION_ROLE_ARN.env_var: "<job role arn>",
        },
    }


JOB_UPDATE_FIELDS = (
    "Description",
    "Role",
    "ExecutionProperty",
    "Command",
    "DefaultArguments",
    "NonOverridableArguments",
    "Connections",
    "MaxRetries",
    "Timeout",
    "WorkerType",
    "NumberOfWorkers",
    "GlueVersion",
    "SecurityConfiguration",
    "NotificationProperty",
    "ExecutionClass",
    "JobRunQueuingEnabled",
    "MaintenanceWindow",
    "JobMode",
    "LogUri",
)


def code_update(existing: dict, wanted: dict, role_arn: str | None) -> dict:
    """An existing job keeps its settings (workers, concurrency, role: the stack's); only the code moves, with
    the arguments it needs."""
    update = {k: v for k, v in existing.items() if k in JOB_UPDATE_FIELDS}
    update["Command"] = {**existing.get("Command", {}), "ScriptLocation": wanted["Command"]["ScriptLocation"]}
    update["DefaultArguments"] = {
        **existing.get("DefaultArguments", {}),
        **{k: wanted["DefaultArguments"][k] for k in CODE_ARGUMENTS},
    }
    if role_arn:
        update["Role"] = role_arn
    return update


@dataclass
class DeployPlan:
    code_uri: str
    uploads: dict[str, int] = field(default_factory=dict)
    glue_jobs: dict[str, dict] = field(default_factory=dict)
    glue_actions: dict[str, str] = field(default_factory=dict)
    emr_serverless: dict = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"code: {self.code_uri}/"]
        lines += [f"  {name} ({size} bytes)" for name, size in self.uploads.items()]
        for name, job in self.glue_jobs.items():
            action = self.glue_actions.get(name, "would create or update")
            lines.append(
                f"Glue job {name}: {action} ({job['GlueVersion']}, {job['NumberOfWorkers']} x "
                f"{job['WorkerType']}, script {job['Command']['ScriptLocation']})"
            )
        lines.append("EMR Serverless settings: " + json.dumps(self.emr_serverless, indent=1))
        return "\n".join(lines)


def deploy(
    bucket: str,
    prefix: str = "code",
    job_prefix: str = "synthea-pipeline",
    role_arn: str | None = None,
    workers: int = 2,
    dry_run: bool = False,
    s3=None,
    glue=None,
) -> DeployPlan:
    """Upload the package and entry scripts to s3://bucket/prefix/ and create one Glue job per Spark layer, or
    point an existing one at the new code (keeping its workers, concurrency and, unless `role_arn` is given,
    role). With `dry_run` nothing is called; the
    plan says what would be."""
    code_uri = f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
    package = build_package()
    scripts = {
        entry_script(layer): (
            Path(str(resources.files("synthea_pipeline"))) / "entrypoints" / entry_script(layer)
        ).read_bytes()
        for layer in SPARK_LAYERS
    }
    plan = DeployPlan(
        code_uri,
        uploads={PACKAGE_ZIP: len(package), **{n: len(b) for n, b in scripts.items()}},
        emr_serverless=emr_serverless_settings(code_uri, bucket),
    )
    plan.glue_jobs = {
        glue_job_name(job_prefix, layer): glue_job_definition(
            glue_job_name(job_prefix, layer), layer, code_uri, bucket, role_arn or "<the job's role>", workers
        )
        for layer in SPARK_LAYERS
    }
    if dry_run:
        return plan
    s3 = s3 or aws_client("s3")
    glue = glue or aws_client("glue")
    key_prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    s3.put_object(Bucket=bucket, Key=f"{key_prefix}{PACKAGE_ZIP}", Body=package)
    for name, body in scripts.items():
        s3.put_object(Bucket=bucket, Key=f"{key_prefix}{name}", Body=body)
    for name, job in plan.glue_jobs.items():
        try:
            existing = glue.get_job(JobName=name)["Job"]
        except glue.exceptions.EntityNotFoundException:
            if role_arn is None:
                raise ValueError(
                    f"Glue job {name} does not exist: pass --glue-role to create it, or deploy "
                    "infra/synthea-pipeline.yaml, which creates both jobs with their own roles"
                ) from None
            glue.create_job(**job)
            plan.glue_actions[name] = "created"
            continue
        glue.update_job(JobName=name, JobUpdate=code_update(existing, job, role_arn))
        plan.glue_actions[name] = "updated"
    return plan
