"""Every setting of the project: the environment variable that sets it, its local default and what it means.

The resources take each setting as an `EnvVar`-backed field (see `definitions.py`), which Dagster resolves when a
run or a sensor tick uses the resource and shows by name in the UI. `EnvVar` has no default, so
`apply_local_defaults` fills in the local default of every setting the environment leaves unset: a fresh laptop
runs on the embedded defaults, while a deployment's own values always win."""

from __future__ import annotations

import os

from dagster import EnvVar

from synthea_pipeline.engines import ENGINES
from synthea_pipeline.setting import Setting
from synthea_pipeline.transforms import generation
from synthea_pipeline.transforms.history import SHRINK_LIMIT_PERCENT
from synthea_pipeline.transforms.iceberg import MARTS_DATABASE, OMOP_DATABASE, STAGING_DATABASE
from synthea_pipeline.transforms.vocabulary import SAMPLE_VOCABULARY

LAKE_ROOT = Setting("SYNTHEA_LAKE_ROOT", "lake", "The lake root: a local folder or s3://bucket/prefix.")
UPLOAD_QUIET_SECONDS = Setting(
    "SYNTHEA_UPLOAD_QUIET_SECONDS",
    "300",
    "Seconds an upload without a manifest must stay unchanged before the sensor runs it.",
    integer=True,
)
UPLOAD_SENSOR_BUDGET_SECONDS = Setting(
    "SYNTHEA_UPLOAD_SENSOR_BUDGET_SECONDS",
    "8",
    "Seconds an upload sensor tick may work before it saves its cursor and leaves the rest to the next tick "
    "(Dagster cuts a sensor evaluation off at about 15 s on ECS).",
    integer=True,
)
UPLOAD_BATCH_SIZE = Setting(
    "SYNTHEA_UPLOAD_BATCH_SIZE",
    "25",
    "Most uploads one run of the upload sensor carries when several are ready at once; each is still its own "
    "partition, load and commit (1: a run per upload).",
    integer=True,
)
HISTORY_SHRINK_LIMIT = Setting(
    "SYNTHEA_HISTORY_SHRINK_LIMIT_PERCENT",
    str(SHRINK_LIMIT_PERCENT),
    "How far (percent of its rows) a table of the history an upload supersedes may shrink before the commit needs "
    "--replace (or `replace` in the upload's manifest).",
    integer=True,
)
SPARK_ENGINE = Setting(
    "SYNTHEA_SPARK_ENGINE",
    "sail",
    "Where Spark layers run: "
    + "; ".join(f"{engine.name} ({engine.description})" for engine in ENGINES.values())
    + ".",
)
ENGINE_FIELDS = {name: setting for engine in ENGINES.values() for name, setting in engine.settings.items()}
"""The settings of every engine, by the Spark resource field each fills (engines may share one)."""
STAGING_DATABASE_NAME = Setting(
    "SYNTHEA_STAGING_DATABASE",
    STAGING_DATABASE,
    "Catalog database of the staging views (Iceberg tables: <name>_iceberg).",
)
MARTS_DATABASE_NAME = Setting(
    "SYNTHEA_MARTS_DATABASE",
    MARTS_DATABASE,
    "Catalog database of the mart and BI views (Iceberg tables: <name>_iceberg).",
)
OMOP_DATABASE_NAME = Setting(
    "SYNTHEA_OMOP_DATABASE",
    OMOP_DATABASE,
    "Catalog database of the OMOP CDM 5.4 views (Iceberg tables: <name>_iceberg).",
)
OMOP_VOCABULARY = Setting(
    "SYNTHEA_OMOP_VOCABULARY",
    SAMPLE_VOCABULARY,
    "The OMOP vocabulary the OMOP tables map codes with: a folder or s3:// prefix of an OHDSI Athena download "
    "(CONCEPT.csv, CONCEPT_RELATIONSHIP.csv, ...); `sample` for the small subset shipped for the sample exports; "
    "`none` to skip the OMOP tables.",
)
ATHENA_WORKGROUP = Setting("SYNTHEA_ATHENA_WORKGROUP", "synthea-pipeline", "Athena workgroup queries run in.")
ATHENA_OUTPUT = Setting(
    "SYNTHEA_ATHENA_OUTPUT", "", "s3:// location of Athena query results when the workgroup sets none."
)
SYNTHEA_GENERATOR = Setting(
    "SYNTHEA_GENERATOR",
    "local",
    "Where Synthea generates populations: local (processes on this machine, shards in parallel up to its "
    "cores) or ecs (an ECS task per shard through Dagster Pipes, writing to the lake's source/ on S3).",
)
SYNTHEA_JAR = Setting(
    generation.JAR_VARIABLE,
    "",
    "A Synthea jar with its dependencies (e.g. a GitHub release's synthea-with-dependencies.jar) to run instead "
    "of the chosen release from Maven Central.",
)
SYNTHEA_CACHE = Setting(
    generation.CACHE_VARIABLE,
    generation.DEFAULT_CACHE,
    "Folder Synthea releases are resolved into from Maven (about 200 MB each), once.",
)
SYNTHEA_MAVEN_REPOSITORY = Setting(
    generation.REPOSITORY_VARIABLE, generation.MAVEN_CENTRAL, "Maven repository (or mirror) Synthea is resolved from."
)
SYNTHEA_ECS_CLUSTER = Setting("SYNTHEA_ECS_CLUSTER", "", "ECS cluster the generation tasks run on (ecs generator).")
SYNTHEA_ECS_TASK_DEFINITION = Setting(
    "SYNTHEA_ECS_TASK_DEFINITION", "", "Task definition of the generation image (infra/dagster-ecs.yaml's output)."
)
SYNTHEA_ECS_SUBNETS = Setting("SYNTHEA_ECS_SUBNETS", "", "Comma-separated subnets of the generation tasks.")
SYNTHEA_ECS_SECURITY_GROUPS = Setting(
    "SYNTHEA_ECS_SECURITY_GROUPS", "", "Comma-separated security groups of the generation tasks."
)
SYNTHEA_ECS_CONCURRENCY = Setting(
    "SYNTHEA_ECS_CONCURRENCY",
    "100",
    "Most generation tasks running at once (keep it within the account's Fargate vCPU quota); the other shards "
    "wait for a free slot.",
    integer=True,
)

SETTINGS = (
    LAKE_ROOT,
    UPLOAD_QUIET_SECONDS,
    UPLOAD_SENSOR_BUDGET_SECONDS,
    UPLOAD_BATCH_SIZE,
    HISTORY_SHRINK_LIMIT,
    SPARK_ENGINE,
    *dict.fromkeys(ENGINE_FIELDS.values()),
    STAGING_DATABASE_NAME,
    MARTS_DATABASE_NAME,
    OMOP_DATABASE_NAME,
    OMOP_VOCABULARY,
    ATHENA_WORKGROUP,
    ATHENA_OUTPUT,
    SYNTHEA_GENERATOR,
    SYNTHEA_JAR,
    SYNTHEA_CACHE,
    SYNTHEA_MAVEN_REPOSITORY,
    SYNTHEA_ECS_CLUSTER,
    SYNTHEA_ECS_TASK_DEFINITION,
    SYNTHEA_ECS_SUBNETS,
    SYNTHEA_ECS_SECURITY_GROUPS,
    SYNTHEA_ECS_CONCURRENCY,
)


LAKE_FIELDS = {
    "root": LAKE_ROOT,
    "upload_quiet_seconds": UPLOAD_QUIET_SECONDS,
    "upload_sensor_budget_seconds": UPLOAD_SENSOR_BUDGET_SECONDS,
    "upload_batch_size": UPLOAD_BATCH_SIZE,
    "history_shrink_limit_percent": HISTORY_SHRINK_LIMIT,
    "omop_vocabulary": OMOP_VOCABULARY,
}
SPARK_FIELDS = {"engine": SPARK_ENGINE, **ENGINE_FIELDS}
CATALOG_FIELDS = {
    "staging_database": STAGING_DATABASE_NAME,
    "marts_database": MARTS_DATABASE_NAME,
    "omop_database": OMOP_DATABASE_NAME,
    "athena_workgroup": ATHENA_WORKGROUP,
    "athena_output": ATHENA_OUTPUT,
}
SYNTHEA_FIELDS = {
    "generator": SYNTHEA_GENERATOR,
    "jar": SYNTHEA_JAR,
    "cache": SYNTHEA_CACHE,
    "maven_repository": SYNTHEA_MAVEN_REPOSITORY,
    "ecs_cluster": SYNTHEA_ECS_CLUSTER,
    "ecs_task_definition": SYNTHEA_ECS_TASK_DEFINITION,
    "ecs_subnets": SYNTHEA_ECS_SUBNETS,
    "ecs_security_groups": SYNTHEA_ECS_SECURITY_GROUPS,
    "ecs_concurrency": SYNTHEA_ECS_CONCURRENCY,
}
"""Which resource field each setting fills: as `EnvVar`s in the definitions, as current values on the command
line."""


def as_env_vars(fields: dict[str, Setting]) -> dict[str, EnvVar]:
    return {name: setting.resource_value() for name, setting in fields.items()}


def current_values(fields: dict[str, Setting]) -> dict[str, str]:
    return {name: setting.current() for name, setting in fields.items()}


def apply_local_defaults() -> None:
    """Sets every unset setting to its local default; never changes one the environment sets."""
    for setting in SETTINGS:
        os.environ.setdefault(setting.env_var, setting.default)
