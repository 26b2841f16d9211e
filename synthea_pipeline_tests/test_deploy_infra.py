"""The orchestrator template (infra/dagster-ecs.yaml) against the image and the instance it runs: every container
gets what deploy/dagster.yaml and deploy/workspace.yaml read from the environment (the password only from the
RDS-managed secret), the commands and ports match the Dockerfile, every task reaches the database through its
PgBouncer sidecar in transaction mode, the UI stays internal, the database private and encrypted, and the task
roles reach the lake through the lake stack's orchestrator policy only, with the run launcher's ECS permissions
scoped to this cluster and its run task definition."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from synthea_pipeline.settings import SETTINGS
from synthea_pipeline_tests.cloudformation import (
    INFRA,
    actions,
    as_list,
    cfn_lint,
    granted_targets,
    load_template,
    resources_of_type,
    statements,
)

pytestmark = pytest.mark.unit  # the template as data

REPOSITORY = Path(__file__).parents[1]
TEMPLATE = INFRA / "dagster-ecs.yaml"
LAKE_TEMPLATE = INFRA / "synthea-pipeline.yaml"
INSTANCE = yaml.safe_load((REPOSITORY / "deploy" / "dagster.yaml").read_text())
WORKSPACE = yaml.safe_load((REPOSITORY / "deploy" / "workspace.yaml").read_text())
TASKS = {
    "WebserverTaskDefinition": "webserver",
    "DaemonTaskDefinition": "daemon",
    "CodeServerTaskDefinition": "code-server",
    "RunTaskDefinition": "run",
}
"""Each task definition and its Dagster container (the other one is the pooler, POOLER)."""
POOLER = "pgbouncer"
POOLER_PORT = "6432"
PASSWORD_SECRET = {"Sub": "${Db.MasterUserSecret.SecretArn}:password::"}
DELIBERATELY_UNSET = {
    "SYNTHEA_PIPES_URI": "the AWS engines default to _pipes/ under the S3 lake, where the roles may write",
    "SYNTHEA_EMR_SPARK_SUBMIT_PARAMETERS": "no extra spark-submit parameters; the application's defaults apply",
    "SYNTHEA_ATHENA_OUTPUT": "the orchestrator's workgroup enforces its own result location",
    "SYNTHEA_UPLOAD_SENSOR_BUDGET_SECONDS": "the default is sized for a sensor evaluated on ECS",
    "SYNTHEA_UPLOAD_BATCH_SIZE": "a batch only groups runs; every upload in it still loads and commits on its own",
    "SYNTHEA_JAR": "populations run the release they name, resolved into the generation image",
    "SYNTHEA_CACHE": "the generation image sets its own, where its build resolved the releases",
    "SYNTHEA_MAVEN_REPOSITORY": "the generation image resolves the releases when it is built, not in the tasks",
}
"""Pipeline settings a deployment on AWS leaves at their defaults, and why."""


@pytest.fixture(scope="module")
def template():
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def resources(template):
    return template["Resources"]


def dockerfile() -> dict:
    """The Dockerfile's ENV, WORKDIR, EXPOSE, CMD and where each COPY puts its source (absolute paths)."""
    image = {"env": {}, "workdir": "/", "expose": set(), "copies": {}, "cmd": None}
    for line in (REPOSITORY / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        expanded = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: image["env"].get(m[1] or m[2], m[0]), rest)
        if instruction == "ENV":
            words = shlex.split(rest)
            pairs = [w.split("=", 1) for w in words] if "=" in words[0] else [[words[0], " ".join(words[1:])]]
            image["env"].update(pairs)
        elif instruction == "WORKDIR":
            image["workdir"] = str(Path(image["workdir"]) / expanded.strip())
        elif instruction == "EXPOSE":
            image["expose"].update(int(port.split("/")[0]) for port in expanded.split())
        elif instruction == "COPY":
            *sources, destination = [w for w in shlex.split(expanded) if not w.startswith("--")]
            for source in sources:
                target = Path(image["workdir"]) / destination
                image["copies"][source] = str(target / Path(source).name if destination.endswith("/") else target)
        elif instruction == "CMD":
            image["cmd"] = yaml.safe_load(rest)
    return image


IMAGE = dockerfile()


def env_names(config) -> set[str]:
    """Every environment variable a Dagster YAML file reads (`{env: NAME}`), anywhere in it."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            return {config["env"]}
        return {name for value in config.values() for name in env_names(value)}
    if isinstance(config, list):
        return {name for value in config for name in env_names(value)}
    return set()


def container(resources, task: str, name: str | None = None) -> dict:
    """A task definition's Dagster container, or its container `name`; a task has those two containers only."""
    definitions = {d["Name"]: d for d in resources[task]["Properties"]["ContainerDefinitions"]}
    assert set(definitions) == {TASKS[task], POOLER}
    return definitions[name or TASKS[task]]


def environment(resources, task: str, name: str | None = None) -> dict:
    return {entry["Name"]: entry["Value"] for entry in container(resources, task, name).get("Environment", [])}


def secrets(resources, task: str, name: str | None = None) -> dict:
    return {entry["Name"]: entry["ValueFrom"] for entry in container(resources, task, name).get("Secrets", [])}


def option(command: list[str], *names: str) -> str:
    """The value after the first of `names` in a command line."""
    index = next(i for i, word in enumerate(command) if word in names)
    return command[index + 1]


def test_the_image_is_what_the_template_expects():
    """The facts the other tests rely on, read from the Dockerfile rather than assumed."""
    assert IMAGE["expose"] == {3000, 4000}
    assert IMAGE["copies"]["deploy/dagster.yaml"] == f"{IMAGE['env']['DAGSTER_HOME']}/dagster.yaml"
    assert IMAGE["copies"]["deploy/workspace.yaml"] == f"{IMAGE['workdir']}/workspace.yaml"
    assert env_names(INSTANCE) >= {
        "DAGSTER_POSTGRES_HOST",
        "DAGSTER_POSTGRES_PASSWORD",
        "DAGSTER_RUN_TASK_DEFINITION",
        "DAGSTER_COMPUTE_LOG_BUCKET",
    }
    assert env_names(WORKSPACE) == {"DAGSTER_CODE_SERVER_HOST"}


@pytest.mark.parametrize("task", TASKS)
def test_every_container_gets_what_the_instance_reads(resources, task):
    """All four load the instance from the image's DAGSTER_HOME: each gets every variable deploy/dagster.yaml reads,
    from its Environment, its Secrets or the image's ENV, and nothing moves DAGSTER_HOME off the copied file."""
    provided = set(environment(resources, task)) | set(secrets(resources, task)) | set(IMAGE["env"])
    assert env_names(INSTANCE) <= provided, env_names(INSTANCE) - provided
    assert "DAGSTER_HOME" not in environment(resources, task)
    assert container(resources, task)["Image"] == {"Ref": "ImageUri"}


@pytest.mark.parametrize("task", TASKS)
def test_the_password_comes_only_from_the_rds_managed_secret(resources, task):
    """DAGSTER_POSTGRES_PASSWORD, and the pooler's DB_PASSWORD, are ECS secrets from the `password` key of the
    secret RDS manages, never in the Environment, and no Environment entry looks like a credential."""
    assert secrets(resources, task) == {"DAGSTER_POSTGRES_PASSWORD": PASSWORD_SECRET}
    assert secrets(resources, task, POOLER) == {"DB_PASSWORD": PASSWORD_SECRET}
    for name, value in [*environment(resources, task).items(), *environment(resources, task, POOLER).items()]:
        assert not re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE", name), name
        if isinstance(value, str):
            assert not re.search(r"AKIA[0-9A-Z]{16}|://[^/\s]+:[^/\s]+@|-----BEGIN", value), (name, value)
            assert not re.fullmatch(r"[A-Za-z0-9+/=]{32,}", value), (name, value)


def test_the_database_is_encrypted_private_and_kept(resources, template):
    database = resources["Db"]
    properties = database["Properties"]
    assert properties["Engine"] == "postgres"
    assert template["Parameters"][properties["EngineVersion"]["Ref"]]["Default"].startswith("16.")
    assert properties["StorageEncrypted"] is True
    assert properties["PubliclyAccessible"] is False
    assert properties["ManageMasterUserPassword"] is True
    assert "MasterUserPassword" not in properties and "MasterUserSecret" not in properties
    assert properties["DeletionProtection"] is True
    assert database["DeletionPolicy"] == "Snapshot" and database["UpdateReplacePolicy"] == "Snapshot"
    retention = template["Parameters"][properties["BackupRetentionPeriod"]["Ref"]]
    assert retention["MinValue"] >= 1 and retention["Default"] >= 7
    subnets = resources[properties["DBSubnetGroupName"]["Ref"]]["Properties"]["SubnetIds"]
    assert subnets == {"Ref": "PrivateSubnetIds"}
    [group] = properties["VPCSecurityGroups"]
    [ingress] = resources[group["Ref"]]["Properties"]["SecurityGroupIngress"]
    assert (ingress["FromPort"], ingress["ToPort"]) == (5432, 5432)
    assert ingress["SourceSecurityGroupId"] == {"Ref": "TaskSecurityGroup"}
    for task in TASKS:
        postgres, pooler = environment(resources, task), environment(resources, task, POOLER)
        assert pooler["DB_HOST"] == {"GetAtt": "Db.Endpoint.Address"}
        assert pooler["DB_PORT"] == {"GetAtt": "Db.Endpoint.Port"}
        assert postgres["DAGSTER_POSTGRES_USER"] == pooler["DB_USER"] == properties["MasterUsername"]
        assert postgres["DAGSTER_POSTGRES_DB"] == pooler["DB_NAME"] == properties["DBName"]


@pytest.mark.parametrize("task", TASKS)
def test_dagster_reaches_postgres_through_the_pooler(resources, template, task):
    """Every Dagster container (webserver, daemon, code server, runs) connects to its task's PgBouncer sidecar on
    loopback, in transaction mode, and starts only once it answers; the sidecar is essential, listens on loopback
    only (nothing outside the task reaches it), logs where its task does, and goes to the database over TLS."""
    dagster, pooler = container(resources, task), container(resources, task, POOLER)
    postgres, pooling = environment(resources, task), environment(resources, task, POOLER)
    assert (postgres["DAGSTER_POSTGRES_HOST"], postgres["DAGSTER_POSTGRES_PORT"]) == ("127.0.0.1", POOLER_PORT)
    assert (pooling["LISTEN_ADDR"], pooling["LISTEN_PORT"]) == ("127.0.0.1", POOLER_PORT)
    assert pooling["POOL_MODE"] == "transaction"
    assert pooling["SERVER_TLS_SSLMODE"] in ("require", "verify-ca", "verify-full")
    assert int(pooling["DEFAULT_POOL_SIZE"]) <= 10
    instance = INSTANCE["storage"]["postgres"]["postgres_db"]
    assert (instance["hostname"], instance["port"]) == (
        {"env": "DAGSTER_POSTGRES_HOST"},
        {"env": "DAGSTER_POSTGRES_PORT"},
    )
    assert dagster["DependsOn"] == [{"ContainerName": POOLER, "Condition": "HEALTHY"}]
    assert pooler["Essential"] is True and "PortMappings" not in pooler and "DependsOn" not in pooler
    check = pooler["HealthCheck"]["Command"]
    assert check[:2] == ["CMD", "pg_isready"] and option(check, "-h") == "127.0.0.1"
    assert option(check, "-p") == POOLER_PORT
    assert pooler["Image"] == {"Ref": "PoolerImage"} and template["Parameters"]["PoolerImage"]["Default"]
    assert (
        pooler["LogConfiguration"]["Options"]["awslogs-group"]
        == dagster["LogConfiguration"]["Options"]["awslogs-group"]
    )
    assert pooler["LogConfiguration"]["Options"]["awslogs-stream-prefix"] == POOLER
    first = container(resources, next(iter(TASKS)), POOLER)
    assert {k: v for k, v in pooler.items() if k != "LogConfiguration"} == {
        k: v for k, v in first.items() if k != "LogConfiguration"
    }  # the same sidecar in every task


def test_only_the_execution_role_reads_the_secret(resources):
    """The execution role injects the password: it may read that one secret and nothing else of Secrets Manager;
    no task role may read secrets at all."""
    execution = resources["ExecutionRole"]
    assert granted_targets(execution, {"secretsmanager:GetSecretValue"}) == [
        {"GetAtt": "Db.MasterUserSecret.SecretArn"}
    ]
    for statement in statements(execution):
        if any(a.startswith("secretsmanager:") for a in actions(statement)):
            assert actions(statement) == ["secretsmanager:GetSecretValue"]
    for task in TASKS:
        role = resources[resources[task]["Properties"]["TaskRoleArn"]["GetAtt"].removesuffix(".Arn")]
        assert not [s for s in statements(role) if any(a.startswith("secretsmanager:") for a in actions(s))]
        assert resources[task]["Properties"]["ExecutionRoleArn"] == {"GetAtt": "ExecutionRole.Arn"}


def test_ports_match_the_image_and_the_workspace(resources):
    """The webserver serves on 3000 and the code server on 4000, as the image exposes them, the workspace dials
    the code server's port and the load balancer the webserver's."""
    [server] = WORKSPACE["load_from"]
    grpc = server["grpc_server"]
    webserver, code_server = (
        container(resources, "WebserverTaskDefinition"),
        container(resources, "CodeServerTaskDefinition"),
    )
    assert [m["ContainerPort"] for m in webserver["PortMappings"]] == [3000]
    assert int(option(webserver["Command"], "-p", "--port")) == 3000
    assert [m["ContainerPort"] for m in code_server["PortMappings"]] == [grpc["port"]]
    assert int(option(code_server["Command"], "--port", "-p")) == grpc["port"]
    assert {3000, grpc["port"]} <= IMAGE["expose"]
    assert resources["WebserverTargetGroup"]["Properties"]["Port"] == 3000
    [target] = resources["WebserverService"]["Properties"]["LoadBalancers"]
    assert (target["ContainerName"], target["ContainerPort"]) == ("webserver", 3000)
    for task in ("DaemonTaskDefinition", "RunTaskDefinition"):
        assert "PortMappings" not in container(resources, task)


def test_commands_load_the_workspace_and_code_the_image_holds(resources):
    """The webserver and the daemon read the workspace file where the Dockerfile copies it; the code server runs
    the image's own command, as the location the workspace names."""
    workspace = IMAGE["copies"]["deploy/workspace.yaml"]
    webserver = container(resources, "WebserverTaskDefinition")["Command"]
    daemon = container(resources, "DaemonTaskDefinition")["Command"]
    assert webserver[0] == "dagster-webserver" and option(webserver, "-w", "--workspace") == workspace
    assert option(webserver, "-h", "--host") == "0.0.0.0"
    assert daemon[:2] == ["dagster-daemon", "run"] and option(daemon, "-w", "--workspace") == workspace
    code_server = container(resources, "CodeServerTaskDefinition")["Command"]
    assert code_server == IMAGE["cmd"]
    assert option(code_server, "--location-name") == WORKSPACE["load_from"][0]["grpc_server"]["location_name"]
    assert "Command" not in container(resources, "RunTaskDefinition")


@pytest.mark.parametrize("task", ["WebserverTaskDefinition", "DaemonTaskDefinition"])
def test_webserver_and_daemon_find_the_code_server(resources, task):
    """DAGSTER_CODE_SERVER_HOST is the code server's Cloud Map name, which its service registers (A records: the
    tasks' own addresses), in a private namespace of the stack's VPC."""
    assert env_names(WORKSPACE) <= set(environment(resources, task))
    namespace = resources["ServiceNamespace"]["Properties"]
    assert resources["ServiceNamespace"]["Type"] == "AWS::ServiceDiscovery::PrivateDnsNamespace"
    assert namespace["Vpc"] == {"Ref": "VpcId"}
    assert environment(resources, task)["DAGSTER_CODE_SERVER_HOST"] == {
        "Sub": "${CodeServerDiscovery.Name}." + namespace["Name"]["Sub"]
    }
    discovery = resources["CodeServerDiscovery"]["Properties"]
    assert discovery["NamespaceId"] == {"Ref": "ServiceNamespace"}
    assert [record["Type"] for record in discovery["DnsConfig"]["DnsRecords"]] == ["A"]
    [registry] = resources["CodeServerService"]["Properties"]["ServiceRegistries"]
    assert registry["RegistryArn"] == {"GetAtt": "CodeServerDiscovery.Arn"}


def test_the_run_task_definition_is_the_launchers(resources):
    """EcsRunLauncher overrides the command of the container deploy/dagster.yaml names, in the task definition
    DAGSTER_RUN_TASK_DEFINITION names: the ARN for the webserver and the daemon (a new one redeploys them), the
    family for the code server and the runs, which launch nothing."""
    launcher = INSTANCE["run_launcher"]["config"]
    assert launcher["task_definition"] == {"env": "DAGSTER_RUN_TASK_DEFINITION"}
    assert container(resources, "RunTaskDefinition")["Name"] == launcher["container_name"]
    family = resources["RunTaskDefinition"]["Properties"]["Family"]
    for task in ("WebserverTaskDefinition", "DaemonTaskDefinition"):
        assert environment(resources, task)["DAGSTER_RUN_TASK_DEFINITION"] == {"Ref": "RunTaskDefinition"}
    for task in ("CodeServerTaskDefinition", "RunTaskDefinition"):
        assert environment(resources, task)["DAGSTER_RUN_TASK_DEFINITION"] == family


def test_every_task_is_private_on_fargate_with_its_own_logs(resources, template):
    assert {"Name": "containerInsights", "Value": "enabled"} in resources["Cluster"]["Properties"]["ClusterSettings"]
    groups = set()
    for task in TASKS:
        properties = resources[task]["Properties"]
        assert properties["NetworkMode"] == "awsvpc" and properties["RequiresCompatibilities"] == ["FARGATE"]
        logs = container(resources, task)["LogConfiguration"]
        assert logs["LogDriver"] == "awslogs"
        group = logs["Options"]["awslogs-group"]["Ref"]
        assert resources[group]["Type"] == "AWS::Logs::LogGroup"
        assert resources[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        groups.add(group)
    assert len(groups) == len(TASKS)
    services = resources_of_type(resources, "AWS::ECS::Service")
    assert set(services) == {"WebserverService", "DaemonService", "CodeServerService"}
    for name, service in services.items():
        properties = service["Properties"]
        assert properties["LaunchType"] == "FARGATE", name
        network = properties["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert network["AssignPublicIp"] == "DISABLED", name
        assert network["Subnets"] == {"Ref": "PrivateSubnetIds"}, name
        assert {"Ref": "TaskSecurityGroup"} in network["SecurityGroups"], name
    assert template["Parameters"]["PrivateSubnetIds"]["Type"] == "List<AWS::EC2::Subnet::Id>"
    webserver = services["WebserverService"]["Properties"]
    assert webserver["DesiredCount"] == {"Ref": "WebserverCount"}
    assert template["Parameters"]["WebserverCount"]["Default"] == 1


def test_one_daemon_at_a_time(resources):
    """Two daemons would both run the schedules, the sensors and the queue: a deployment stops the old one first."""
    properties = resources["DaemonService"]["Properties"]
    assert properties["DesiredCount"] == 1
    assert properties["DeploymentConfiguration"]["MaximumPercent"] == 100
    assert properties["DeploymentConfiguration"]["MinimumHealthyPercent"] == 0


def ingress_rules(resources, group: str) -> list[dict]:
    rules = list(resources[group]["Properties"].get("SecurityGroupIngress", []))
    rules += [
        r["Properties"]
        for r in resources_of_type(resources, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Ref": group}
    ]
    return rules


def test_the_ui_is_internal_and_admits_only_the_allowed_network(resources, template):
    """Dagster OSS has no login: the load balancer is internal, admits AllowedCidr only and reaches only the
    webserver; the webserver admits only the load balancer; the code server only the Dagster tasks."""
    assert "no login" in template["Description"] and "internal" in template["Description"]
    balancer = resources["LoadBalancer"]["Properties"]
    assert balancer["Scheme"] == "internal"
    assert balancer["Subnets"] == {"Ref": "PrivateSubnetIds"}
    [group] = balancer["SecurityGroups"]
    [ingress] = ingress_rules(resources, group["Ref"])
    assert ingress["CidrIp"] == {"Ref": "AllowedCidr"}
    [no_egress] = resources[group["Ref"]]["Properties"]["SecurityGroupEgress"]
    assert no_egress["CidrIp"] == "255.255.255.255/32"
    [egress] = [
        r["Properties"]
        for r in resources_of_type(resources, "AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["GroupId"] == group
    ]
    assert (egress["FromPort"], egress["ToPort"]) == (3000, 3000)
    assert egress["DestinationSecurityGroupId"] == {"Ref": "WebserverSecurityGroup"}
    [webserver] = ingress_rules(resources, "WebserverSecurityGroup")
    assert (webserver["FromPort"], webserver["ToPort"]) == (3000, 3000)
    assert webserver["SourceSecurityGroupId"] == group
    [code_server] = ingress_rules(resources, "TaskSecurityGroup")
    assert (code_server["FromPort"], code_server["ToPort"]) == (4000, 4000)
    assert code_server["SourceSecurityGroupId"] == {"Ref": "TaskSecurityGroup"}
    target_group = resources["WebserverTargetGroup"]["Properties"]
    assert target_group["HealthCheckPath"] == "/server_info" and target_group["TargetType"] == "ip"


TASK_ROLES = {
    "WebserverTaskDefinition": {"OrchestratorPolicyArn", "RunLauncherPolicy"},
    "DaemonTaskDefinition": {"OrchestratorPolicyArn", "RunLauncherPolicy"},
    "CodeServerTaskDefinition": {"OrchestratorPolicyArn"},
    "RunTaskDefinition": {"OrchestratorPolicyArn", "GeneratorLaunchPolicy"},
}


@pytest.mark.parametrize("task, policies", TASK_ROLES.items())
def test_task_roles_reach_the_lake_through_the_orchestrator_policy_only(resources, task, policies):
    """Each task role has the lake stack's orchestrator policy and, for the webserver and the daemon, the run
    launcher's; nothing in this stack grants S3, and no statement grants everything."""
    name = resources[task]["Properties"]["TaskRoleArn"]["GetAtt"].removesuffix(".Arn")
    role = resources[name]
    attached = {arn["Ref"] if "Ref" in arn else arn["If"][1]["Ref"] for arn in role["Properties"]["ManagedPolicyArns"]}
    assert attached == policies
    assert "Policies" not in role["Properties"]
    granted = [s for policy in policies if policy in resources for s in statements(resources[policy])]
    for statement in granted:
        assert not {"*", "s3:*"} & set(actions(statement)), statement
        assert not [a for a in actions(statement) if a.startswith("s3:")], statement
    principal = role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "ecs-tasks.amazonaws.com"}
    roles = {resources[t]["Properties"]["TaskRoleArn"]["GetAtt"] for t in TASKS}
    assert len(roles) == len(TASKS)


def test_run_launcher_permissions_are_scoped(resources):
    """What EcsRunLauncher calls, no more: RunTask of the run family in this cluster, DescribeTasks, StopTask and
    the run tags on this cluster's tasks, PassRole of the run task's two roles to ECS only, the run logs; only
    DescribeTaskDefinition and DescribeNetworkInterfaces (no resource-level permissions) on "*"."""
    policy = resources["RunLauncherPolicy"]
    by_action = {}
    for statement in statements(policy):
        assert statement["Effect"] == "Allow"
        for action in actions(statement):
            by_action[action] = statement
    assert set(by_action) == {
        "ecs:DescribeTaskDefinition",
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:StopTask",
        "ecs:TagResource",
        "ec2:DescribeNetworkInterfaces",
        "iam:PassRole",
        "logs:GetLogEvents",
    }
    for action, statement in by_action.items():
        if statement["Resource"] == "*":
            assert action in ("ecs:DescribeTaskDefinition", "ec2:DescribeNetworkInterfaces"), action
    family = resources["RunTaskDefinition"]["Properties"]["Family"]["Sub"]
    run_task = by_action["ecs:RunTask"]
    assert run_task["Resource"]["Sub"].endswith(f":task-definition/{family}:*")
    assert run_task["Condition"] == {"ArnEquals": {"ecs:cluster": {"GetAtt": "Cluster.Arn"}}}
    for action in ("ecs:DescribeTasks", "ecs:StopTask", "ecs:TagResource"):
        assert by_action[action]["Resource"]["Sub"].endswith(":task/${Cluster}/*"), action
    assert by_action["ecs:TagResource"]["Condition"] == {"StringEquals": {"ecs:CreateAction": "RunTask"}}
    run = resources["RunTaskDefinition"]["Properties"]
    assert by_action["iam:PassRole"]["Resource"] == [run["TaskRoleArn"], run["ExecutionRoleArn"]]
    assert by_action["iam:PassRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    }
    assert by_action["logs:GetLogEvents"]["Resource"] == {"Sub": "${RunLogGroup.Arn}:log-stream:*"}

    assert container(resources, "RunTaskDefinition")["LogConfiguration"]["Options"]["awslogs-group"] == {
        "Ref": "RunLogGroup"
    }


def test_generation_tasks_write_uploads_only_and_runs_may_start_only_them(resources):
    """The Synthea generation task (a shard per task, started by a run through Pipes) may list, read, write and
    delete under source/ and read and write Pipes objects under _pipes/, nothing else; the run tasks may start
    only its family in this cluster, watch and stop this cluster's tasks, and pass only its two roles to ECS. All
    of it exists only when the stack is given a generation image."""
    generated = ("GeneratorLogGroup", "GeneratorTaskRole", "GeneratorTaskDefinition", "GeneratorLaunchPolicy")
    assert all(resources[name]["Condition"] == "HasGenerator" for name in generated)
    role = resources["GeneratorTaskRole"]
    granted = {}
    for statement in statements(role):
        for action in actions(statement):
            granted.setdefault(action, []).extend(as_list(statement["Resource"]))
    bucket = "arn:${AWS::Partition}:s3:::${LakeBucket}"
    assert {action: sorted(r["Sub"] for r in targets) for action, targets in granted.items()} == {
        "s3:ListBucket": [bucket],
        "s3:GetObject": sorted([f"{bucket}/source/*", f"{bucket}/_pipes/*"]),
        "s3:PutObject": sorted([f"{bucket}/source/*", f"{bucket}/_pipes/*"]),
        "s3:DeleteObject": [f"{bucket}/source/*"],
    }
    listing = next(s for s in statements(role) if "s3:ListBucket" in actions(s))
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["source/*", "_pipes/*"]}}
    definition = resources["GeneratorTaskDefinition"]["Properties"]
    (generator,) = definition["ContainerDefinitions"]
    assert generator["Command"] == ["python", "-m", "synthea_pipeline.entrypoints.generate_job"]
    assert generator["Name"] == "synthea" and definition["RequiresCompatibilities"] == ["FARGATE"]
    policy = resources["GeneratorLaunchPolicy"]
    by_action = {action: statement for statement in statements(policy) for action in actions(statement)}
    assert set(by_action) == {
        "ecs:DescribeTaskDefinition",
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:StopTask",
        "ecs:TagResource",
        "iam:PassRole",
    }
    family = definition["Family"]["Sub"]
    assert by_action["ecs:RunTask"]["Resource"]["Sub"].endswith(f":task-definition/{family}:*")
    assert by_action["ecs:RunTask"]["Condition"] == {"ArnEquals": {"ecs:cluster": {"GetAtt": "Cluster.Arn"}}}
    assert by_action["iam:PassRole"]["Resource"] == [definition["TaskRoleArn"], definition["ExecutionRoleArn"]]
    run_settings = environment(resources, "RunTaskDefinition")
    assert run_settings["SYNTHEA_ECS_TASK_DEFINITION"] == {"Sub": family}
    assert run_settings["SYNTHEA_GENERATOR"] == {"If": ["HasGenerator", "ecs", "local"]}


def test_the_code_server_and_the_runs_get_the_pipeline_settings(resources):
    """Sensors are evaluated in the code server and the steps in the runs: both get every pipeline setting a
    deployment on AWS needs (the rest deliberately unset, listed above with the reason), the same values, and each
    value the lake stack outputs for a setting comes from a parameter of that name or the lake bucket."""
    names = {setting.env_var for setting in SETTINGS}
    assert set(DELIBERATELY_UNSET) <= names
    code_server = environment(resources, "CodeServerTaskDefinition")
    configured = {name for name in code_server if name.startswith("SYNTHEA_")}
    assert configured == names - set(DELIBERATELY_UNSET)
    assert environment(resources, "RunTaskDefinition") == code_server
    for task in ("WebserverTaskDefinition", "DaemonTaskDefinition"):
        assert not [name for name in environment(resources, task) if name.startswith("SYNTHEA_")]
    assert code_server["SYNTHEA_LAKE_ROOT"] == {"Sub": "s3://${LakeBucket}/"}
    lake_outputs = load_template(LAKE_TEMPLATE)["Outputs"]
    for output_name, output in lake_outputs.items():
        setting = output.get("Description", "").split(" ")[0]
        if setting in names and setting != "SYNTHEA_LAKE_ROOT":
            assert code_server[setting] == {"Ref": output_name}, setting


def test_the_defaults_match_the_lake_stack(template):
    """Parameters that mirror the lake stack's defaults agree with them; the Spark jobs run on Glue by default."""
    lake = load_template(LAKE_TEMPLATE)["Parameters"]
    parameters = template["Parameters"]
    assert parameters["SparkEngine"]["Default"] == "glue"
    assert parameters["StagingDatabase"]["Default"] == lake["StagingDatabase"]["Default"]
    assert parameters["MartsDatabase"]["Default"] == lake["MartsDatabase"]["Default"]
    assert parameters["GlueJobPrefix"]["Default"] == lake["ProjectName"]["Default"]
    assert parameters["AthenaWorkGroup"]["Default"] == lake["ProjectName"]["Default"]


def test_compute_logs_go_where_the_orchestrator_policy_allows(resources):
    """Step logs go to the lake bucket under the prefix the lake stack's orchestrator policy may write and read."""
    lake = load_template(LAKE_TEMPLATE)["Resources"]["OrchestratorPolicy"]
    for task in TASKS:
        env = environment(resources, task)
        assert env["DAGSTER_COMPUTE_LOG_BUCKET"] == {"Ref": "LakeBucket"}
        prefix = env["DAGSTER_COMPUTE_LOG_PREFIX"].strip("/")
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            assert {"Sub": f"${{LakeBucket.Arn}}/{prefix}/*"} in granted_targets(lake, {action}), action


def test_outputs(template):
    outputs = template["Outputs"]
    assert {
        "UiUrl",
        "ClusterName",
        "DbSecretArn",
        "WebserverServiceName",
        "DaemonServiceName",
        "CodeServerServiceName",
        "RunTaskDefinitionArn",
    } <= set(outputs)
    assert outputs["DbSecretArn"]["Value"] == {"GetAtt": "Db.MasterUserSecret.SecretArn"}
    assert "LoadBalancer.DNSName" in str(outputs["UiUrl"]["Value"])
    assert as_list(outputs["RunTaskDefinitionArn"]["Value"]) == [{"Ref": "RunTaskDefinition"}]


def test_template_passes_cfn_lint():
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr
