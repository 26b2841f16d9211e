"""The production instance (`deploy/dagster.yaml`) against a real PostgreSQL server and step logs in a moto S3
bucket, with only the run launcher swapped for the local one (there is no ECS here): an upload carried through by
the upload sensor under `dagster-daemon`, which talks to the image's code-location server over gRPC as on ECS,
and the marts automation, then a backfill of it. The ECS launcher's own configuration is checked by loading the
unchanged file against moto's ECS, with the run task definition the orchestrator template declares. And the pooler
path the ECS tasks take: the same file with its host and port at PgBouncer in transaction mode in front of the
server stores and reads runs."""

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultRunLauncher,
    RunsFilter,
    asset,
    materialize,
)
from dagster._check import CheckError
from dagster_aws.ecs import EcsRunLauncher
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from synthea_pipeline.run_tags import AUTOMATION_TAG, ORIGIN_TAG
from synthea_pipeline.runs import backfill
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows, free_port, server_process, wait_for
from synthea_pipeline_tests.postgres import pgbouncer, postgres_server
from synthea_pipeline_tests.test_deploy_infra import IMAGE

pytestmark = pytest.mark.slow  # a PostgreSQL server, pipeline runs, dagster-daemon

REPOSITORY = Path(__file__).parents[1]
PRODUCTION_CONFIG = REPOSITORY / "deploy" / "dagster.yaml"
LOG_BUCKET, LOG_PREFIX = "lake-for-logs", "dagster/compute-logs"
WAIT_SECONDS = 600
FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def image_command() -> list[str]:
    """The Dockerfile's CMD, its program taken from this environment's bin folder (the image has it on PATH)."""
    program, *arguments = IMAGE["cmd"]
    return [installed(program), *arguments]


def installed(program: str) -> str:
    return str(Path(sys.executable).parent / program)


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def log_bucket(moto_endpoint):
    boto3.client("s3").create_bucket(Bucket=LOG_BUCKET)
    return LOG_BUCKET


@pytest.fixture(scope="module")
def pooler(postgres):
    """PgBouncer in transaction mode in front of the server, as the ECS tasks' sidecar."""
    with pgbouncer(postgres) as bouncer:
        yield bouncer


@pytest.fixture
def production_home(postgres, log_bucket, tmp_path, request, monkeypatch):
    """A DAGSTER_HOME whose dagster.yaml is deploy/dagster.yaml with the local run launcher, a database of its
    own, and the environment the task definitions give (the server's own port: not the image's 5432)."""
    return home_for(postgres, postgres, log_bucket, tmp_path, request.node.name, monkeypatch)


def home_for(postgres, reached_at, log_bucket, tmp_path, name, monkeypatch):
    """The DAGSTER_HOME of `production_home`, with a new database on `postgres` reached at `reached_at` (the
    server itself, or a pooler in front of it)."""
    database = name.lower()[:60]
    postgres.create_database(database)
    config = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    config["run_launcher"] = {"module": "dagster", "class": "DefaultRunLauncher"}
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    environment = {
        **reached_at.environment(database),
        "DAGSTER_COMPUTE_LOG_BUCKET": log_bucket,
        "DAGSTER_COMPUTE_LOG_PREFIX": f"{LOG_PREFIX}/{database}",
        "DAGSTER_HOME": str(home),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return home, database


def compute_log_keys(database: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=LOG_BUCKET, Prefix=f"{LOG_PREFIX}/{database}/")
    return [o["Key"] for o in listing.get("Contents", [])]


def test_an_upload_by_the_sensor_under_the_daemon_then_a_backfill(production_home, postgres, tmp_path):
    """The code server runs the Dockerfile's CMD (its port moved to a free one); the daemon reads
    deploy/workspace.yaml (the same port change) and finds the server at DAGSTER_CODE_SERVER_HOST. The sensor's
    run and the automation's marts build carry the upload through; a backfill of it follows in this process."""
    home, database = production_home
    instance = DagsterInstance.from_config(str(home))
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
    assert isinstance(instance.run_launcher, DefaultRunLauncher)
    lake = Lake(str(tmp_path / "lake"))
    port = free_port()
    workspace = yaml.safe_load((REPOSITORY / "deploy" / "workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"]["port"] = port
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    env = {**os.environ, "SYNTHEA_LAKE_ROOT": lake.root, "DAGSTER_CODE_SERVER_HOST": "127.0.0.1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "synthea_pipeline.cli",
            "upload",
            str(SAMPLES["3.0"]),
            "--to",
            lake.uri("source"),
            "--upload-id",
            "ward-s",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    command = image_command()
    command[command.index("--port") + 1] = str(port)
    with (
        server_process(command, tmp_path / "code-server.log", env, tmp_path) as code_server,
        server_process(
            [installed("dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")],
            tmp_path / "daemon.log",
            env,
            tmp_path,
        ) as daemon,
    ):
        staged = wait_for(
            lambda: [r for r in instance.get_runs(RunsFilter(job_name="stage_upload")) if r.status in FINISHED],
            "the sensor's run",
            [code_server, daemon],
            WAIT_SECONDS,
        )
        assert [(r.status, r.tags["dagster/partition"], r.tags.get(ORIGIN_TAG)) for r in staged] == [
            (DagsterRunStatus.SUCCESS, "ward-s", "sensor")
        ]
        builds = wait_for(
            lambda: [r for r in instance.get_runs(RunsFilter(tags={AUTOMATION_TAG: "true"})) if r.status in FINISHED],
            "the marts built by automation",
            [code_server, daemon],
            WAIT_SECONDS,
        )
        # One build, or two when a tick sees the staging commit only after requesting the first (test_dagster_dev).
        assert 1 <= len(builds) <= 2 and all(b.status == DagsterRunStatus.SUCCESS for b in builds)
        ticks = postgres.query(database, "SELECT count(*) FROM job_ticks WHERE job_origin_id IS NOT NULL")
        assert ticks[0][0] > 0  # the sensor's ticks are kept in Postgres

    reports = backfill(None, lake.root, instance=instance)
    assert [(r.upload_id, r.success) for r in reports] == [("ward-s", True)]
    recorded = postgres.query(database, "SELECT pipeline_name, status FROM runs ORDER BY create_timestamp")
    assert [r for r in recorded if r[0] != "__ASSET_JOB"] == [("stage_upload", "SUCCESS"), ("ingest_upload", "SUCCESS")]
    # the automation's builds: done, or a second one still queued when the daemon stopped
    assert {status for job, status in recorded if job == "__ASSET_JOB"} <= {"SUCCESS", "QUEUED"}
    staged_events = postgres.query(
        database,
        "SELECT count(*) FROM event_logs WHERE dagster_event_type = "
        "'ASSET_MATERIALIZATION' AND asset_key = '[\"staging\", \"patients\"]'",
    )
    assert staged_events == [(2,)]
    latest_fact = instance.fetch_materializations(AssetKey(["marts", "patient_fact"]), limit=1).records[0]
    assert latest_fact.run_id == reports[0].run_id
    logs = compute_log_keys(database)
    assert any(key.endswith(".out") for key in logs) and any(key.endswith(".err") for key in logs)
    assert catalog_rows(lake, "SELECT load_id FROM synthea_staging.uploads").column("load_id").to_pylist() == [
        reports[0].run_id
    ]


def test_the_ecs_launcher_configuration_loads_against_ecs(moto_endpoint, postgres, log_bucket, monkeypatch, tmp_path):
    """deploy/dagster.yaml unchanged: the launcher finds the run task definition and its `run` container; a task
    definition without that container is refused when the instance loads, naming it."""
    database = "ecs_launcher"
    postgres.create_database(database)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(PRODUCTION_CONFIG.read_text())
    for name, value in {
        **postgres.environment(database),
        "DAGSTER_COMPUTE_LOG_BUCKET": log_bucket,
        "DAGSTER_COMPUTE_LOG_PREFIX": LOG_PREFIX,
    }.items():
        monkeypatch.setenv(name, value)
    ecs = boto3.client("ecs")
    container = yaml.safe_load(PRODUCTION_CONFIG.read_text())["run_launcher"]["config"]["container_name"]
    registered = ecs.register_task_definition(
        family="synthea-pipeline-run",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="1024",
        memory="4096",
        containerDefinitions=[{"name": container, "image": "synthea-pipeline:test"}],
    )["taskDefinition"]
    monkeypatch.setenv("DAGSTER_RUN_TASK_DEFINITION", "synthea-pipeline-run")

    instance = DagsterInstance.from_config(str(home))
    launcher = instance.run_launcher
    assert isinstance(launcher, EcsRunLauncher)
    assert launcher.task_definition == registered["taskDefinitionArn"]
    assert launcher.container_name == "run" and launcher.use_current_ecs_task_config
    assert instance.run_monitoring_enabled and instance.run_retries_enabled
    assert instance.run_retries_max_retries == 1
    assert instance.compute_log_manager._s3_bucket == log_bucket  # no public accessor
    assert (
        IMAGE["env"]["DAGSTER_POSTGRES_PORT"] == "5432"
    )  # a direct connection's; the task definitions set the pooler's

    ecs.register_task_definition(
        family="no-run-container",
        containerDefinitions=[{"name": "webserver", "image": "synthea-pipeline:test", "memory": 512}],
    )
    monkeypatch.setenv("DAGSTER_RUN_TASK_DEFINITION", "no-run-container")
    with pytest.raises(CheckError, match="Cannot override container 'run'"):
        DagsterInstance.from_config(str(home)).run_launcher  # noqa: B018 - the launcher loads on first use


@asset
def pooled_number() -> int:
    return 3


def test_the_pooler_path_stores_and_reads_runs(postgres, pooler, log_bucket, tmp_path, request, monkeypatch):
    """deploy/dagster.yaml with DAGSTER_POSTGRES_HOST/PORT at PgBouncer in transaction mode, as on ECS: a run
    materializes an asset, and the run, its events and the materialization read back through a second instance
    set up as dagster-webserver sets up its own (pooled engines, statement_timeout set on each new connection).
    PgBouncer's console shows it carried the database's transactions, so a configuration that bypassed it fails;
    the rows are in the server behind it."""
    home, database = home_for(postgres, pooler, log_bucket, tmp_path, request.node.name, monkeypatch)
    assert os.environ["DAGSTER_POSTGRES_PORT"] == str(pooler.port) != str(postgres.port)
    before = pooler.stats().get(database, {}).get("total_xact_count", 0)
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        result = materialize([pooled_number], instance=instance)
        assert result.success
    run_id = result.run_id

    with DagsterInstance.from_config(str(home)) as reader:
        reader.optimize_for_webserver(statement_timeout=15000, pool_recycle=3600, max_overflow=20)
        [run] = reader.get_runs()
        assert (run.run_id, run.status) == (run_id, DagsterRunStatus.SUCCESS)
        events = reader.all_logs(run_id)
        kinds = [e.dagster_event.event_type for e in events if e.is_dagster_event]
        assert DagsterEventType.ASSET_MATERIALIZATION in kinds and kinds[-1] == DagsterEventType.RUN_SUCCESS
        [record] = reader.fetch_materializations(AssetKey("pooled_number"), limit=5).records
        assert record.run_id == run_id

    # each stored event is at least one transaction through the pooler; none when the config bypassed it
    carried = pooler.stats().get(database, {}).get("total_xact_count", 0) - before
    assert carried >= len(events), f"PgBouncer carried {carried} transactions for {len(events)} events"
    assert postgres.query(database, "SELECT run_id, status FROM runs") == [(run_id, "SUCCESS")]
