"""Stand-ins for the Glue and EMR Serverless job-run APIs that really run the job: moto's versions report
success without running anything. Each `start_job_run` downloads the entry script and the package zip that
`synthea-pipeline deploy` put in (moto) S3 and runs the script in a subprocess with the exact arguments, or
driver environment, the Pipes client sent; Spark is a Sail server in the test process (SPARK_REMOTE). Everything
else (job definitions, applications) is moto's, over HTTP."""

import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

import boto3
from dagster import DagsterExecutionInterruptedError


@dataclass
class LocalRun:
    process: subprocess.Popen
    started: float
    stderr_path: str
    argv: list[str]
    env: dict[str, str]
    stopped: bool = False


@dataclass
class LocalJobRunner:
    spark_remote: str
    workdir: str = field(default_factory=tempfile.mkdtemp)
    runs: dict[str, LocalRun] = field(default_factory=dict)

    def download(self, uri: str) -> str:
        parsed = urlparse(uri)
        target = os.path.join(self.workdir, uuid.uuid4().hex[:8] + "-" + os.path.basename(parsed.path))
        boto3.client("s3").download_file(parsed.netloc, parsed.path.lstrip("/"), target)
        return target

    def start(self, script_uri: str, py_files_uri: str, argv: list[str], env: dict[str, str]) -> str:
        run_id = "jr_" + uuid.uuid4().hex
        script, package = self.download(script_uri), self.download(py_files_uri)
        stderr_path = os.path.join(self.workdir, f"{run_id}.stderr")
        full_env = {
            **os.environ,
            **env,
            "SPARK_REMOTE": self.spark_remote,
            "PYTHONPATH": package + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        full_env.pop("SPARK_CONNECT_MODE_ENABLED", None)
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, script, *argv],
                env=full_env,
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.runs[run_id] = LocalRun(process, time.time(), stderr_path, argv, env)
        return run_id

    def state(self, run_id: str) -> tuple[str, str, int]:
        """RUNNING, SUCCEEDED, FAILED or STOPPED; the last line of stderr on failure; seconds so far."""
        run = self.runs[run_id]
        code = run.process.poll()
        seconds = int(time.time() - run.started)
        if code is None:
            return "RUNNING", "", seconds
        if run.stopped:
            return "STOPPED", "", seconds
        if code == 0:
            return "SUCCEEDED", "", seconds
        with open(run.stderr_path, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
        return "FAILED", lines[-1] if lines else f"exit status {code}", seconds

    def stop(self, run_id: str) -> None:
        run = self.runs[run_id]
        run.stopped = True
        run.process.kill()
        run.process.wait()


class LocalGlue:
    """The boto3 Glue client, except that job runs execute locally. `interrupt_at_poll` raises Dagster's
    interrupt at that `get_job_run` call, as a cancelled run does while the client polls."""

    def __init__(self, runner: LocalJobRunner, interrupt_at_poll: int | None = None):
        self.moto = boto3.client("glue")
        self.meta = self.moto.meta
        self.exceptions = self.moto.exceptions
        self.runner = runner
        self.interrupt_at_poll = interrupt_at_poll
        self.polls = 0
        self.stopped: list[str] = []
        self.jobs: dict[str, str] = {}

    def __getattr__(self, name):
        return getattr(self.moto, name)

    def start_job_run(self, JobName: str, Arguments: dict[str, str] | None = None, **_):
        job = self.moto.get_job(JobName=JobName)["Job"]
        arguments = {**job.get("DefaultArguments", {}), **(Arguments or {})}
        run_id = self.runner.start(
            job["Command"]["ScriptLocation"],
            arguments["--extra-py-files"],
            ["--JOB_NAME", JobName, *[part for item in arguments.items() for part in item]],
            {},
        )
        self.jobs[run_id] = JobName
        return {"JobRunId": run_id}

    def get_job_run(self, JobName: str, RunId: str, **_):
        self.polls += 1
        if self.interrupt_at_poll is not None and self.polls >= self.interrupt_at_poll:
            raise DagsterExecutionInterruptedError()
        state, error, seconds = self.runner.state(RunId)
        job = self.moto.get_job(JobName=JobName)["Job"]
        return {
            "JobRun": {
                "Id": RunId,
                "JobName": JobName,
                "JobRunState": state,
                "ErrorMessage": error,
                "ExecutionTime": seconds,
                "WorkerType": job.get("WorkerType"),
                "NumberOfWorkers": job.get("NumberOfWorkers"),
                "MaxCapacity": float(job.get("NumberOfWorkers") or 0),
            }
        }

    def batch_stop_job_run(self, JobName: str, JobRunIds: list[str]):
        for run_id in JobRunIds:
            self.runner.stop(run_id)
            self.stopped.append(run_id)
        return {"SuccessfulSubmissions": [{"JobName": JobName, "JobRunId": r} for r in JobRunIds], "Errors": []}


class LocalEMRServerless:
    """The boto3 EMR Serverless client, except that job runs execute locally: the entry point and
    `spark.submit.pyFiles` come from sparkSubmitParameters, driver environment from its `driverEnv` confs."""

    def __init__(self, runner: LocalJobRunner):
        self.moto = boto3.client("emr-serverless")
        self.runner = runner
        self.cancelled: list[str] = []
        self.submitted: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.moto, name)

    def start_job_run(self, applicationId: str, jobDriver: dict, **_):
        self.moto.get_application(applicationId=applicationId)
        submit = jobDriver["sparkSubmit"]
        confs = dict(
            part.split("=", 1)
            for flag, part in zip(*[iter(shlex.split(submit["sparkSubmitParameters"]))] * 2, strict=False)
            if flag == "--conf"
        )
        self.submitted.append(confs)
        env = {
            k[len("spark.emr-serverless.driverEnv.") :]: v
            for k, v in confs.items()
            if k.startswith("spark.emr-serverless.driverEnv.")
        }
        run_id = self.runner.start(
            submit["entryPoint"], confs["spark.submit.pyFiles"], list(submit.get("entryPointArguments", [])), env
        )
        return {"applicationId": applicationId, "jobRunId": run_id, "arn": f"arn:aws:emr-serverless:{run_id}"}

    def get_job_run(self, applicationId: str, jobRunId: str):
        state, error, seconds = self.runner.state(jobRunId)
        state = {"SUCCEEDED": "SUCCESS", "STOPPED": "CANCELLED"}.get(state, state)
        return {
            "jobRun": {
                "applicationId": applicationId,
                "jobRunId": jobRunId,
                "state": state,
                "stateDetails": error,
                "totalExecutionDurationSeconds": seconds,
                "configurationOverrides": {},
            }
        }

    def get_application(self, applicationId: str):
        """EMR Serverless reports the type as "Spark" (what the Pipes client expects); moto echoes "SPARK"."""
        application = self.moto.get_application(applicationId=applicationId)["application"]
        return {"application": {**application, "type": application["type"].capitalize()}}

    def get_dashboard_for_job_run(self, applicationId: str, jobRunId: str):
        return {"url": f"http://localhost/emr-serverless/{applicationId}/{jobRunId}"}

    def cancel_job_run(self, applicationId: str, jobRunId: str):
        self.runner.stop(jobRunId)
        self.cancelled.append(jobRunId)
        return {"applicationId": applicationId, "jobRunId": jobRunId}


class LocalECS:
    """The boto3 ECS client, except that tasks run locally: `run_task` starts the task definition's container
    command (its `python` this interpreter) with the definition's and the overrides' environment, as Fargate
    would; the `tasks_stopped` waiter waits for the processes. Task definitions and clusters are moto's."""

    def __init__(self, environment: dict[str, str]):
        self.moto = boto3.client("ecs")
        self.meta = self.moto.meta
        self.environment = environment
        self.tasks: dict[str, tuple[subprocess.Popen, str, str]] = {}
        self.started: list[dict] = []
        self.stopped: list[str] = []
        self.workdir = tempfile.mkdtemp(prefix="local-ecs-")

    def __getattr__(self, name):
        return getattr(self.moto, name)

    def run_task(self, cluster: str, taskDefinition: str, overrides: dict, **params):
        definition = self.moto.describe_task_definition(taskDefinition=taskDefinition)["taskDefinition"]
        (container,) = definition["containerDefinitions"]
        environment = {item["name"]: item["value"] for item in container.get("environment", [])}
        for override in overrides.get("containerOverrides", []):
            if override["name"] == container["name"]:
                environment.update({item["name"]: item["value"] for item in override.get("environment", [])})
        running = sum(process.poll() is None for process, _, _ in self.tasks.values())
        self.started.append({"cluster": cluster, "environment": environment, "running_before": running, **params})
        command = [sys.executable if part == "python" else part for part in container["command"]]
        arn = f"arn:aws:ecs:us-east-1:123456789012:task/{cluster}/{uuid.uuid4().hex}"
        with open(os.path.join(self.workdir, arn.rsplit("/", 1)[1] + ".log"), "wb") as log:
            process = subprocess.Popen(
                command, env={**os.environ, **self.environment, **environment}, stdout=log, stderr=log
            )
        self.tasks[arn] = (process, container["name"], cluster)
        return {"tasks": [{"taskArn": arn, "containers": [{"name": container["name"]}]}], "failures": []}

    def get_waiter(self, name: str):
        assert name == "tasks_stopped", name
        client = self

        class TasksStopped:
            def wait(self, tasks: list[str], **_):
                for arn in tasks:
                    client.tasks[arn][0].wait()

        return TasksStopped()

    def describe_tasks(self, tasks: list[str], cluster: str | None = None, **_):
        described = []
        for arn in tasks:
            process, container, cluster_name = self.tasks[arn]
            code = process.poll()
            described.append(
                {
                    "taskArn": arn,
                    "clusterArn": f"arn:aws:ecs:us-east-1:123456789012:cluster/{cluster_name}",
                    "lastStatus": "RUNNING" if code is None else "STOPPED",
                    "stopCode": "EssentialContainerExited",
                    "containers": [{"name": container, "exitCode": code, "runtimeId": arn}],
                }
            )
        return {"tasks": described, "failures": []}

    def stop_task(self, task: str, **_):
        process = self.tasks[task][0]
        process.kill()
        process.wait()
        self.stopped.append(task)
        return {"task": {"taskArn": task}}
