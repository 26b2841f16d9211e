"""`synthea-pipeline deploy-dagster` against moto's CloudFormation and ECR: the lake stack's outputs give every
parameter of the Dagster stack that the command's options do not, the ECR repository is created with immutable
tags, the image is built from the repository's Dockerfile and pushed with ECR's token. Docker itself does not run
on these machines (no engine): its commands are recorded, not run."""

import base64
import json
import os
import subprocess
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from synthea_pipeline.cli import main
from synthea_pipeline.deploy_dagster import (
    DEPLOY_OPTIONS,
    DeployError,
    create_or_update,
    deploy_dagster,
    git_source,
    stack_parameters,
    template_parameters,
)
from synthea_pipeline_tests.cloudformation import load_template

REPOSITORY = Path(__file__).parents[1]
LAKE_TEMPLATE = REPOSITORY / "infra" / "synthea-pipeline.yaml"
DAGSTER_TEMPLATE = REPOSITORY / "infra" / "dagster-ecs.yaml"


def lake_output_names() -> list[str]:
    return list(load_template(LAKE_TEMPLATE)["Outputs"])


@pytest.fixture(scope="module")
def lake_stack(moto_endpoint):
    """A stack with the lake template's outputs (moto cannot create the lake's Glue jobs and EMR application)."""
    outputs = {name: {"Value": f"value-of-{name}"} for name in lake_output_names()}
    template = {"Resources": {"Marker": {"Type": "AWS::S3::Bucket"}}, "Outputs": outputs}
    boto3.client("cloudformation").create_stack(StackName="lake", TemplateBody=json.dumps(template))
    return "lake"


@pytest.mark.unit
def test_the_lake_stack_outputs_and_the_options_cover_the_dagster_stack():
    declared = template_parameters(DAGSTER_TEMPLATE)
    required = {name for name, has_default in declared.items() if not has_default}
    assert set(DEPLOY_OPTIONS) <= required
    assert required - set(DEPLOY_OPTIONS) <= set(lake_output_names())
    with pytest.raises(DeployError, match=r"needs .*LakeBucket"):
        stack_parameters(DAGSTER_TEMPLATE, {}, dict.fromkeys(DEPLOY_OPTIONS, "x"))


def test_deploy_dagster_builds_pushes_and_passes_the_lake_outputs(lake_stack):
    commands = []

    def record(command, input=None, text=True, check=False):
        commands.append((command, input))
        return subprocess.CompletedProcess(command, 0)

    ecr = boto3.client("ecr")
    dry = deploy_dagster(
        "dagster",
        lake_stack,
        "vpc-1",
        ["subnet-a", "subnet-b"],
        "10.0.0.0/16",
        repository=REPOSITORY,
        tag="t1",
        dry_run=True,
        run=record,
    )
    assert commands == [] and not ecr.describe_repositories()["repositories"]
    assert dry.image_uri == "<account>.dkr.ecr.<region>.amazonaws.com/synthea-pipeline:t1"

    # moto's CloudFormation cannot resolve the RDS-managed secret (Db.MasterUserSecret.SecretArn), so the stack
    # step stops there; create_or_update is tested on a template moto can create, below.
    with pytest.raises(ClientError, match="MasterUserSecret"):
        deploy_dagster(
            "dagster",
            lake_stack,
            "vpc-1",
            ["subnet-a", "subnet-b"],
            "10.0.0.0/16",
            repository=REPOSITORY,
            tag="t1",
            run=record,
        )
    repository = ecr.describe_repositories()["repositories"][0]
    assert repository["repositoryName"] == "synthea-pipeline" and repository["imageTagMutability"] == "IMMUTABLE"
    image = f"{repository['repositoryUri']}:t1"
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    git_url, git_sha = git_source(REPOSITORY)
    assert commands == [
        (
            [
                "docker",
                "build",
                "--platform",
                "linux/amd64",
                "--build-arg",
                f"GIT_URL={git_url}",
                "--build-arg",
                f"GIT_SHA={git_sha}",
                "--tag",
                image,
                str(REPOSITORY),
            ],
            None,
        ),
        (
            ["docker", "login", "--username", "AWS", "--password-stdin", image.split("/")[0]],
            base64.b64decode(token).decode().split(":", 1)[1],
        ),
        (["docker", "push", image], None),
    ]
    assert dry.parameters == {
        **{name: f"value-of-{name}" for name in lake_output_names() if name in template_parameters(DAGSTER_TEMPLATE)},
        "ImageUri": dry.image_uri,
        "VpcId": "vpc-1",
        "PrivateSubnetIds": "subnet-a,subnet-b",
        "AllowedCidr": "10.0.0.0/16",
    }


def test_a_failed_build_stops_before_the_push_and_the_stack(lake_stack):
    commands = []

    def failing_build(command, input=None, text=True, check=False):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1)

    with pytest.raises(DeployError, match="docker build failed with exit code 1"):
        deploy_dagster(
            "dagster",
            lake_stack,
            "vpc-1",
            ["subnet-a"],
            "10.0.0.0/16",
            repository=REPOSITORY,
            tag="t2",
            run=failing_build,
        )
    assert [c[:2] for c in commands] == [["docker", "build"]]


def test_create_or_update_creates_updates_and_leaves_an_unchanged_stack(moto_endpoint):
    cloudformation = boto3.client("cloudformation")
    template = json.dumps(
        {
            "Parameters": {"Name": {"Type": "String"}},
            "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Ref": "Name"}}}},
        }
    )
    assert create_or_update(cloudformation, "s", template, {"Name": "a"}) == "created"
    assert create_or_update(cloudformation, "s", template, {"Name": "b"}) == "updated"
    stack = cloudformation.describe_stacks(StackName="s")["Stacks"][0]
    assert stack["Parameters"] == [{"ParameterKey": "Name", "ParameterValue": "b"}]
    assert create_or_update(cloudformation, "s", template, {"Name": "b"}) == "unchanged"


def test_deploy_dagster_refuses_a_missing_lake_stack_or_checkout(moto_endpoint, tmp_path):
    with pytest.raises(DeployError, match="not a checkout"):
        deploy_dagster("dagster", "lake", "vpc-1", ["subnet-a"], "10.0.0.0/16", repository=tmp_path)
    with pytest.raises(DeployError, match="lake stack nowhere not found"):
        deploy_dagster("dagster", "nowhere", "vpc-1", ["subnet-a"], "10.0.0.0/16", repository=REPOSITORY)


@pytest.mark.unit
def test_a_dry_run_needs_no_credentials_and_no_lake_stack(monkeypatch, tmp_path, capsys):
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.chdir(REPOSITORY)
    assert (
        main(
            [
                "deploy-dagster",
                "--vpc-id",
                "vpc-1",
                "--subnets",
                "subnet-a,subnet-b",
                "--allowed-cidr",
                "10.0.0.0/16",
                "--tag",
                "t1",
                "--dry-run",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "dry run, nothing built, pushed or deployed"
    assert printed[1].startswith("note: lake stack synthea-pipeline not read (")  # no credentials, or no network
    assert printed[2] == "image: <account>.dkr.ecr.<region>.amazonaws.com/synthea-pipeline:t1"
    assert "  LakeBucket = <output LakeBucket of synthea-pipeline>" in printed
    assert "  VpcId = vpc-1" in printed
