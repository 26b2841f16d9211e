"""The Spark layers as Glue and EMR Serverless job runs through Dagster Pipes. The job scripts really run (see
aws_jobs.py): deployed by `deploy` to a moto S3, fetched from there, executed with the arguments the Pipes
clients sent, reporting back through S3. The tests assert on what the scripts reported."""

import io
import json
import subprocess
import sys
import zipfile

import boto3
import pytest
from dagster import DagsterEventType, Definitions

from synthea_pipeline.assets.batch import batch_run_tags
from synthea_pipeline.definitions import defs
from synthea_pipeline.deploy import code_update, deploy, glue_job_definition
from synthea_pipeline.engines.sail import start_sail
from synthea_pipeline.jobs import ingest_upload_job, stage_upload_job
from synthea_pipeline.remote_jobs import EMR_ICEBERG_JAR, PACKAGE_ZIP, glue_conf_argument, iceberg_confs
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.runs import SAMPLE_DIR, run_upload
from synthea_pipeline.transforms import raw as raw_pass
from synthea_pipeline.transforms.storage import storage_for
from synthea_pipeline.transforms.uploads import upload_export
from synthea_pipeline_tests.aws_jobs import LocalEMRServerless, LocalGlue, LocalJobRunner
from synthea_pipeline_tests.conftest import fresh_instance

pytestmark = pytest.mark.omop  # the jobs build the OMOP tables too, compared with the in-process run
GLUE_ROLE = "arn:aws:iam::123456789012:role/synthea-glue-job"
EMR_ROLE = "arn:aws:iam::123456789012:role/synthea-emr-job"
AWS_CLIENTS: dict = {}


class LocalAwsSpark(SparkResource):
    """The Spark resource with the Glue / EMR Serverless clients replaced by the local job runners."""

    def aws_client(self, service: str):
        return AWS_CLIENTS.get(service) or super().aws_client(service)


@pytest.fixture(scope="module")
def runner(moto_endpoint, monkeypatch_module):
    """The jobs' Spark: a Sail server whose catalog `glue` is moto's Glue Data Catalog, as a Glue 5 job's is."""
    monkeypatch_module.setenv("RUST_LOG", "error")
    server, address = start_sail(glue_catalog=True)
    yield LocalJobRunner(spark_remote=address)
    server.stop()


@pytest.fixture(scope="module")
def deployed(moto_endpoint):
    bucket = "synthea-jobs"
    boto3.client("s3").create_bucket(Bucket=bucket)
    plan = deploy(bucket, prefix="code", role_arn=GLUE_ROLE)
    application = boto3.client("emr-serverless").create_application(
        name="synthea", releaseLabel="emr-7.5.0", type="SPARK"
    )["applicationId"]
    return {"bucket": bucket, "plan": plan, "application": application}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    with fresh_instance() as instance:
        return run_upload(str(SAMPLE_DIR), str(tmp_path_factory.mktemp("local") / "lake"), "u1", instance=instance)


def refuse_to_stream(self, stream):
    raise AssertionError(f"the orchestrator streamed {self.file} itself")


def own_lake(monkeypatch, name: str) -> str:
    """An S3 lake and Glue databases for one test's runs. The tests share moto's S3 and Glue, and Iceberg finds a
    lake's tables by their Glue names: two lakes under the same databases would write the same tables."""
    monkeypatch.setenv("SYNTHEA_STAGING_DATABASE", f"{name}_staging")
    monkeypatch.setenv("SYNTHEA_MARTS_DATABASE", f"{name}_marts")
    monkeypatch.setenv("SYNTHEA_OMOP_DATABASE", f"{name}_omop")
    return f"s3://synthea-jobs/{name}-lake"


def accounts(report):
    return [(t.table, t.rows_in, t.quarantined, t.duplicates_dropped, t.rows_out) for t in report.tables]


def assert_reports_match(remote, local, omop: bool = True) -> None:
    """What the job scripts reported equals what the in-process run reported: row accounts, marts, OMOP tables
    (unless the remote run was without a vocabulary), checks."""
    assert remote.success and not remote.errors, remote.errors
    assert accounts(remote) == accounts(local)
    assert remote.marts == local.marts
    if omop:
        assert remote.omop == local.omop and local.omop["person"] > 0
        assert remote.checks == local.checks
    else:
        assert not remote.omop
        assert remote.checks == {name: passed for name, passed in local.checks.items() if not name.startswith("omop/")}


def materializations(instance, run_id, layer):
    return {
        "/".join(event.dagster_event.asset_key.path): event.asset_materialization.metadata
        for event in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        if event.dagster_event.asset_key.path[0] == layer
    }


def messages(instance, run_id) -> str:
    return "\n".join(event.user_message for event in instance.all_logs(run_id))


def test_deploy_uploads_a_package_without_dagster_and_creates_then_updates_jobs(deployed):
    s3, glue = boto3.client("s3"), boto3.client("glue")
    package = s3.get_object(Bucket=deployed["bucket"], Key=f"code/{PACKAGE_ZIP}")["Body"].read()
    names = zipfile.ZipFile(io.BytesIO(package)).namelist()
    assert "synthea_pipeline/transforms/layers.py" in names and "dagster_pipes/__init__.py" in names
    assert "synthea_pipeline/entrypoints/staging_job.py" in names
    assert "synthea_pipeline/transforms/OMOP_CDMv5.4_Field_Level.csv" in names  # the OMOP job reads the CDM
    assert not [n for n in names if n.startswith(("synthea_pipeline/assets", "synthea_pipeline/resources"))]
    job = glue.get_job(JobName="synthea-pipeline-staging")["Job"]
    assert job["Command"]["ScriptLocation"] == "s3://synthea-jobs/code/staging_job.py"
    assert job["DefaultArguments"]["--extra-py-files"] == f"s3://synthea-jobs/code/{PACKAGE_ZIP}"
    assert job["DefaultArguments"]["--datalake-formats"] == "iceberg"
    assert job["DefaultArguments"]["--conf"] == glue_conf_argument("synthea-jobs")
    assert deployed["plan"].glue_actions == {
        "synthea-pipeline-staging": "created",
        "synthea-pipeline-marts": "created",
        "synthea-pipeline-omop": "created",
    }

    class RecordsUpdates:
        """moto has no Glue UpdateJob: record the calls, pass everything else to moto."""

        def __init__(self):
            self.updates = {}

        def __getattr__(self, name):
            return getattr(glue, name)

        def update_job(self, JobName, JobUpdate):
            self.updates[JobName] = JobUpdate

    recorder = RecordsUpdates()
    again = deploy(deployed["bucket"], prefix="code", role_arn=GLUE_ROLE, workers=4, glue=recorder)
    assert set(again.glue_actions.values()) == {"updated"}
    update = recorder.updates["synthea-pipeline-marts"]
    assert update["NumberOfWorkers"] == 2 and update["ExecutionProperty"] == {"MaxConcurrentRuns": 1}
    assert update["Role"] == GLUE_ROLE and "Name" not in update
    assert update["Command"]["ScriptLocation"] == "s3://synthea-jobs/code/marts_job.py"
    assert recorder.updates["synthea-pipeline-omop"]["ExecutionProperty"] == {"MaxConcurrentRuns": 1}
    assert update["DefaultArguments"]["--conf"] == glue_conf_argument("synthea-jobs")


@pytest.mark.unit
def test_iceberg_settings_are_the_catalog_glue_over_the_bucket():
    """One list of settings: Glue chains it in its single `--conf` argument, EMR Serverless gets it as `--conf`s
    after the Iceberg jar EMR 7 ships."""
    confs = dict(conf.split("=", 1) for conf in iceberg_confs("my-lake"))
    assert confs["spark.sql.extensions"] == "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
    assert confs["spark.sql.catalog.glue.catalog-impl"] == "org.apache.iceberg.aws.glue.GlueCatalog"
    assert confs["spark.sql.catalog.glue.warehouse"] == "s3://my-lake/"
    assert ["--conf", *glue_conf_argument("my-lake").split()][1::2] == iceberg_confs("my-lake")
    plan = deploy("my-lake", dry_run=True)
    submit = plan.emr_serverless["sparkSubmitParameters"].split()
    assert submit[1::2] == [
        "spark.submit.pyFiles=s3://my-lake/code/synthea_pipeline.zip",
        f"spark.jars={EMR_ICEBERG_JAR}",
        *iceberg_confs("my-lake"),
    ]
    assert set(submit[::2]) == {"--conf"}
    assert "SYNTHEA_EMR_SPARK_SUBMIT_PARAMETERS" not in plan.emr_serverless["environment"]


@pytest.mark.unit
def test_code_update_gives_an_existing_job_the_arguments_the_code_needs():
    wanted = glue_job_definition("synthea-pipeline-staging", "staging", "s3://my-lake/code", "my-lake", "role", 2)
    existing = {
        "Name": "synthea-pipeline-staging",
        "NumberOfWorkers": 10,
        "Command": {"Name": "glueetl"},
        "DefaultArguments": {"--extra-py-files": "s3://old/code.zip", "--TempDir": "s3://tmp/"},
    }
    update = code_update(existing, wanted, None)
    assert update["DefaultArguments"] == {
        "--extra-py-files": f"s3://my-lake/code/{PACKAGE_ZIP}",
        "--TempDir": "s3://tmp/",
        "--datalake-formats": "iceberg",
        "--conf": glue_conf_argument("my-lake"),
    }
    assert update["NumberOfWorkers"] == 10 and "Role" not in update and "Name" not in update


@pytest.mark.slow  # a command-line run importing Dagster and PySpark
def test_deploy_dry_run_needs_no_aws(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "synthea_pipeline.cli", "deploy", "--bucket", "my-lake", "--dry-run"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Glue job synthea-pipeline-staging: would create or update" in result.stdout
    assert "s3://my-lake/code/marts_job.py" in result.stdout
    assert f"spark.jars={EMR_ICEBERG_JAR}" in result.stdout


@pytest.mark.unit
def test_entry_scripts_import_no_dagster():
    code = (
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'dagster' or name.startswith(('dagster.', 'dagster_aws', 'dagster_pyspark')):\n"
        "            raise ImportError('entry scripts must not import ' + name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import synthea_pipeline.entrypoints.staging_job, synthea_pipeline.entrypoints.marts_job\n"
        "import synthea_pipeline.entrypoints.pipes_job as job\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_pipes')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['dagster_pipes']"


@pytest.mark.slow
def test_glue_runs_each_spark_layer_as_one_job_run(deployed, runner, local_reference, monkeypatch):
    """The raw pass too runs in the job, where the data is: this process must not stream the upload."""
    monkeypatch.setitem(AWS_CLIENTS, "glue", glue := LocalGlue(runner))
    monkeypatch.setattr(raw_pass._FileWriter, "run", refuse_to_stream)
    with fresh_instance() as instance:
        report = run_upload(
            str(SAMPLE_DIR), own_lake(monkeypatch, "glue"), "u1", instance=instance, spark=LocalAwsSpark(engine="glue")
        )
        assert_reports_match(report, local_reference)
        assert sorted(glue.jobs.values()) == [
            "synthea-pipeline-marts",
            "synthea-pipeline-omop",
            "synthea-pipeline-staging",
        ]
        for run in (runner.runs[run_id] for run_id in glue.jobs):
            assert "--dagster-pipes-context" in run.argv and "--dagster-pipes-messages" in run.argv
        raw = materializations(instance, report.run_id, "raw")
        assert raw["raw/patients"]["AWS Glue Job Name"].value == "synthea-pipeline-staging"
        assert (
            raw["raw/observations"]["rows_in"].value
            == {t.table: t.rows_in for t in local_reference.tables}["observations"]
        )
        staging = materializations(instance, report.run_id, "staging")
        assert staging["staging/patients"]["AWS Glue Job Name"].value == "synthea-pipeline-staging"
        seconds = staging["staging/patients"]["glue_execution_seconds"].value
        workers = glue.get_job(JobName="synthea-pipeline-staging")["Job"]["NumberOfWorkers"]
        assert seconds >= 1, "the staging job run's own time, as Glue reports it once the run ended"
        assert staging["staging/patients"]["glue_dpu_seconds_estimated"].value == seconds * workers
        assert staging["staging/patients"]["dagster/column_schema"].value.columns[0].name == "id"
        assert "staging layer starting" in messages(instance, report.run_id)
        omop = materializations(instance, report.run_id, "omop")
        assert omop["omop/person"]["AWS Glue Job Name"].value == "synthea-pipeline-omop"
        results = boto3.client("s3").get_object(Bucket="synthea-jobs", Key="glue-lake/reports/omop_dqd_results.json")
        assert json.loads(results["Body"].read())["Overview"]["countTotal"] > 0  # written by the job, after its commit


@pytest.mark.slow
def test_emr_serverless_runs_the_same_layers_from_driver_environment(deployed, runner, local_reference, monkeypatch):
    """The OMOP job's run through Glue is above; EMR Serverless starts every layer the same way, so this run leaves
    the OMOP tables out (no vocabulary), which saves a minute of the suite."""
    monkeypatch.setitem(AWS_CLIENTS, "emr-serverless", emr := LocalEMRServerless(runner))
    monkeypatch.setenv("SYNTHEA_OMOP_VOCABULARY", "none")
    before = set(runner.runs)
    with fresh_instance() as instance:
        report = run_upload(
            str(SAMPLE_DIR),
            own_lake(monkeypatch, "emr"),
            "u1",
            instance=instance,
            spark=LocalAwsSpark(
                engine="emr-serverless",
                code_uri=deployed["plan"].code_uri,
                emr_application_id=deployed["application"],
                emr_execution_role_arn=EMR_ROLE,
            ),
        )
        assert_reports_match(report, local_reference, omop=False)
        new_runs = [runner.runs[r] for r in set(runner.runs) - before]
        assert len(new_runs) == 2 and all("DAGSTER_PIPES_CONTEXT" in r.env for r in new_runs)
        marts = materializations(instance, report.run_id, "marts")
        assert marts["marts/patient_fact"]["AWS EMR Serverless Job Run ID"].value in runner.runs
        assert not emr.cancelled
        assert len(emr.submitted) == 2 and all(
            c["spark.sql.catalog.glue.catalog-impl"] == "org.apache.iceberg.aws.glue.GlueCatalog" for c in emr.submitted
        )


@pytest.mark.slow
def test_a_failing_job_script_fails_the_step_with_its_error(deployed, runner, monkeypatch):
    monkeypatch.setitem(AWS_CLIENTS, "glue", LocalGlue(runner))
    with fresh_instance() as instance:
        instance.add_dynamic_partitions("uploads", ["ghost"])
        job = Definitions(
            assets=defs.assets,
            jobs=[ingest_upload_job],
            resources={
                **defs.resources,
                "lake": LakeResource(root=own_lake(monkeypatch, "failing")),
                "spark": LocalAwsSpark(engine="glue"),
            },
        ).resolve_job_def(ingest_upload_job.name)
        raw_and_staging = [key for key in job.asset_layer.executable_asset_keys if key.path[0] in ("raw", "staging")]
        result = job.execute_in_process(
            instance=instance, partition_key="ghost", raise_on_error=False, asset_selection=raw_and_staging
        )
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        error, message = failure.step_failure_data.error, ""
        while error is not None:
            message, error = message + error.message, error.cause
        assert "completed with status FAILED" in message
        assert "upload ghost: no patients.csv under s3://" in message


@pytest.mark.slow
def test_cancelling_the_run_stops_the_job_run(deployed, runner, monkeypatch):
    monkeypatch.setitem(AWS_CLIENTS, "glue", glue := LocalGlue(runner, interrupt_at_poll=2))
    with fresh_instance() as instance:
        report = run_upload(
            str(SAMPLE_DIR),
            own_lake(monkeypatch, "cancel"),
            "u1",
            instance=instance,
            spark=LocalAwsSpark(engine="glue"),
        )
        assert not report.success
        [stopped] = glue.stopped
        assert runner.runs[stopped].process.returncode < 0
        assert runner.state(stopped)[0] == "STOPPED"


@pytest.mark.slow
def test_a_batch_run_runs_one_glue_job_per_upload_and_records_each_partition(deployed, runner, monkeypatch):
    monkeypatch.setitem(AWS_CLIENTS, "glue", glue := LocalGlue(runner))
    lake = own_lake(monkeypatch, "batch")
    uploads = ["u1", "u2"]
    for upload in uploads:
        upload_export(str(SAMPLE_DIR), storage_for(f"{lake}/source"), upload)
    with fresh_instance() as instance:
        instance.add_dynamic_partitions("uploads", uploads)
        job = Definitions(
            assets=defs.assets,
            jobs=defs.jobs,
            resources={**defs.resources, "lake": LakeResource(root=lake), "spark": LocalAwsSpark(engine="glue")},
        ).resolve_job_def(stage_upload_job.name)
        result = job.execute_in_process(instance=instance, tags=batch_run_tags(uploads, {}), raise_on_error=False)
        assert result.success
        assert sorted(glue.jobs.values()) == ["synthea-pipeline-staging"] * len(uploads)
        staged = {
            event.dagster_event.partition: event.asset_materialization.metadata
            for event in instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
            if event.dagster_event.asset_key.path == ["staging", "patients"]
        }
        assert sorted(staged) == uploads
        assert all(m["AWS Glue Job Name"].value == "synthea-pipeline-staging" for m in staged.values())
        assert staged["u1"]["rows_out"].value == staged["u2"]["rows_out"].value > 0
