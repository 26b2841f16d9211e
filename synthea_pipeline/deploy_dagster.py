"""`synthea-pipeline deploy-dagster`: build the image from the repository's Dockerfile, push it to ECR, then create
or update the orchestrator stack (infra/dagster-ecs.yaml), passing the lake stack's outputs as its parameters.
Run it from a checkout of the repository, with Docker and AWS credentials that may push to ECR and deploy both
stacks' resources."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from synthea_pipeline.transforms.lake import aws_client

TEMPLATE = Path("infra") / "dagster-ecs.yaml"
DEPLOY_OPTIONS = ("ImageUri", "VpcId", "PrivateSubnetIds", "AllowedCidr")
"""The orchestrator stack's parameters that come from the command, not from the lake stack's outputs."""


class DeployError(Exception):
    """A deployment that cannot go ahead as asked: a missing stack output, a failed build or stack operation."""


class _TemplateLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML, short-form functions (!Ref, !Sub ...) as plain values."""


_TemplateLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def template_parameters(template: Path) -> dict[str, bool]:
    """Each parameter of the template, and whether it has a default."""
    declared = yaml.load(template.read_text(), Loader=_TemplateLoader).get("Parameters", {})
    return {name: "Default" in spec for name, spec in declared.items()}


def stack_parameters(template: Path, lake_outputs: dict[str, str], options: dict[str, str]) -> dict[str, str]:
    """The lake stack's outputs named like the template's parameters, then the command's options; a parameter
    without a default that neither gives is an error naming it."""
    declared = template_parameters(template)
    parameters = {name: value for name, value in lake_outputs.items() if name in declared}
    parameters.update(options)
    missing = sorted(name for name, has_default in declared.items() if not has_default and name not in parameters)
    if missing:
        raise DeployError(
            f"{template} needs {', '.join(missing)}: the lake stack has no such output and no option "
            "gave it (deploy infra/synthea-pipeline.yaml first)"
        )
    return parameters


@dataclass
class DagsterDeployPlan:
    stack: str
    image_uri: str
    parameters: dict[str, str]
    commands: list[list[str]] = field(default_factory=list)
    stack_action: str = "would create or update"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [*(f"note: {note}" for note in self.notes), f"image: {self.image_uri}"]
        lines += ["  $ " + " ".join(command) for command in self.commands]
        lines.append(f"stack {self.stack}: {self.stack_action}")
        lines += [f"  {name} = {value}" for name, value in sorted(self.parameters.items())]
        return "\n".join(lines)


def default_tag(repository: Path) -> str:
    """The commit the image is built from, with the time: tags are immutable in the repository."""
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=repository, capture_output=True, text=True, check=False
        ).stdout.strip()
        or "nogit"
    )
    return f"{commit}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"


def git_source(repository: Path) -> tuple[str, str]:
    """The repository's `origin` as a browsable https URL and the commit checked out, which the image keeps so the
    UI's code references link to that commit (`definitions.with_code_references`); empty strings when unknown."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", *arguments], cwd=repository, capture_output=True, text=True, check=False
        ).stdout.strip()

    url = re.sub(r"^(?:ssh://)?git@([^:/]+)[:/]", r"https://\1/", git("remote", "get-url", "origin"))
    return url.removesuffix(".git"), git("rev-parse", "HEAD")


def existing_repository(ecr, name: str) -> str | None:
    """The ECR repository's URI, None when there is none."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        return None


def ensure_repository(ecr, name: str) -> str:
    """The ECR repository's URI, creating it (immutable tags, scanned on push, encrypted) when absent."""
    return (
        existing_repository(ecr, name)
        or ecr.create_repository(
            repositoryName=name,
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
            encryptionConfiguration={"encryptionType": "AES256"},
        )["repository"]["repositoryUri"]
    )


def create_or_update(cloudformation, stack: str, template_body: str, parameters: dict[str, str]) -> str:
    """Create the stack, or update it; waits until it settles. Returns what was done."""
    arguments = {
        "StackName": stack,
        "TemplateBody": template_body,
        "Capabilities": ["CAPABILITY_NAMED_IAM"],
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    }
    try:
        cloudformation.describe_stacks(StackName=stack)
    except cloudformation.exceptions.ClientError:
        cloudformation.create_stack(**arguments)
        cloudformation.get_waiter("stack_create_complete").wait(StackName=stack)
        return "created"
    try:
        cloudformation.update_stack(**arguments)
    except cloudformation.exceptions.ClientError as error:
        if "No updates are to be performed" in str(error):
            return "unchanged"
        raise
    cloudformation.get_waiter("stack_update_complete").wait(StackName=stack)
    return "updated"


def deploy_dagster(
    stack: str,
    lake_stack: str,
    vpc_id: str,
    subnet_ids: Sequence[str],
    allowed_cidr: str,
    repository: Path = Path("."),
    repository_name: str = "synthea-pipeline",
    tag: str | None = None,
    dry_run: bool = False,
    cloudformation=None,
    ecr=None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> DagsterDeployPlan:
    """Build and push the image, then create or update `stack`. With `dry_run` only the lake stack and the
    repository are read, and without credentials (or the lake stack) not even those: what they would give is
    shown as placeholders. The plan says what would be run."""
    from botocore.exceptions import BotoCoreError, ClientError

    cloudformation = cloudformation or aws_client("cloudformation")
    ecr = ecr or aws_client("ecr")
    template = repository / TEMPLATE
    if not (repository / "Dockerfile").exists() or not template.exists():
        raise DeployError(
            f"{repository.absolute()} is not a checkout of synthea-pipeline (no Dockerfile or "
            f"{TEMPLATE}): run deploy-dagster from the repository's root"
        )
    unread = None
    try:
        lake = cloudformation.describe_stacks(StackName=lake_stack)["Stacks"][0]
        lake_outputs = {o["OutputKey"]: o["OutputValue"] for o in lake.get("Outputs", [])}
    except (BotoCoreError, ClientError) as error:
        if not dry_run:
            raise DeployError(f"lake stack {lake_stack} not found: {error}") from None
        unread = f"lake stack {lake_stack} not read ({error})"
        lake_outputs = {
            name: f"<output {name} of {lake_stack}>"
            for name, has_default in template_parameters(template).items()
            if not has_default and name not in DEPLOY_OPTIONS
        }
    if dry_run:
        try:
            repository_uri = existing_repository(ecr, repository_name)
        except (BotoCoreError, ClientError):
            repository_uri = None
        repository_uri = repository_uri or f"<account>.dkr.ecr.<region>.amazonaws.com/{repository_name}"
    else:
        repository_uri = ensure_repository(ecr, repository_name)
    image_uri = f"{repository_uri}:{tag or default_tag(repository)}"
    parameters = stack_parameters(
        template,
        lake_outputs,
        {"ImageUri": image_uri, "VpcId": vpc_id, "PrivateSubnetIds": ",".join(subnet_ids), "AllowedCidr": allowed_cidr},
    )
    registry = repository_uri.split("/", 1)[0]
    git_url, git_sha = git_source(repository)
    plan = DagsterDeployPlan(
        stack,
        image_uri,
        parameters,
        commands=[
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
                image_uri,
                str(repository),
            ],
            ["docker", "login", "--username", "AWS", "--password-stdin", registry],
            ["docker", "push", image_uri],
        ],
        notes=[unread] if unread else [],
    )
    if dry_run:
        return plan
    build, login, push = plan.commands
    _checked(run, build)
    _checked(run, login, input=_ecr_password(ecr))
    _checked(run, push)
    plan.stack_action = create_or_update(cloudformation, stack, template.read_text(), parameters)
    return plan


def _ecr_password(ecr) -> str:
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    return base64.b64decode(token).decode().split(":", 1)[1]


def _checked(run: Callable[..., subprocess.CompletedProcess], command: list[str], input: str | None = None) -> None:
    result = run(command, input=input, text=True, check=False)
    if result.returncode != 0:
        raise DeployError(f"{' '.join(command[:2])} failed with exit code {result.returncode}")
