"""The CloudFormation template: the lake bucket is private and encrypted, each role reaches only its own
prefixes and Glue databases, and the jobs it declares run the scripts `deploy` uploads, with Iceberg."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthea_pipeline.deploy import GLUE_VERSION
from synthea_pipeline.remote_jobs import PACKAGE_ZIP, entry_script, glue_conf_argument
from synthea_pipeline.transforms.iceberg import ICEBERG_DATABASE_SUFFIX

TEMPLATE = Path(__file__).parents[1] / "infra" / "synthea-pipeline.yaml"
STAGING, MARTS = "${StagingDatabase}", "${MartsDatabase}"
STAGING_ICEBERG, MARTS_ICEBERG = STAGING + ICEBERG_DATABASE_SUFFIX, MARTS + ICEBERG_DATABASE_SUFFIX
ICEBERG_READS = ("glue:GetDatabase", "glue:GetTable", "glue:GetTables")
ICEBERG_WRITES = ("glue:CreateDatabase", "glue:CreateTable", "glue:UpdateTable")
"""What Iceberg's GlueCatalog calls to read a table, and to create and commit one."""


class CloudFormationLoader(yaml.SafeLoader):
    pass


for tag in ("Ref", "Sub", "GetAtt", "Join", "Select", "Split", "If", "Equals", "ImportValue", "FindInMap"):
    CloudFormationLoader.add_multi_constructor(
        f"!{tag}", lambda loader, suffix, node, tag=tag: {
            tag: loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node)
        })


@pytest.fixture(scope="module")
def resources():
    return yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)["Resources"]


def statements(resource: dict) -> list[dict]:
    properties = resource["Properties"]
    documents = [p["PolicyDocument"] for p in properties.get("Policies", [])]
    documents += [properties["PolicyDocument"]] if "PolicyDocument" in properties else []
    return [s for d in documents for s in d["Statement"]]


def granted_targets(resource: dict, actions: set[str]) -> list:
    """The Resource entries of the statements that allow any of `actions`."""
    targets = []
    for statement in statements(resource):
        granted = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] == "Allow" and actions & set(granted):
            targets += statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
    return targets


def object_prefixes(resource: dict, actions: set[str]) -> set[str]:
    """The lake prefixes on which the role or policy is allowed any of `actions`."""
    return {target["Sub"].split("}/", 1)[1] if "Sub" in target else "(bucket)"
            for target in granted_targets(resource, actions)}


def catalog_databases(resource: dict, action: str) -> set[str]:
    """The Glue databases on whose tables the role or policy is allowed `action`: those it names both as a
    database and by its tables (Glue checks both), and it must be allowed on the catalog too."""
    arns = {target["Sub"].split("${AWS::AccountId}:", 1)[1] for target in granted_targets(resource, {action})}
    databases = {arn.removeprefix("database/") for arn in arns if arn.startswith("database/")}
    tables = {arn.removeprefix("table/").removesuffix("/*") for arn in arns if arn.startswith("table/")}
    assert not arns or "catalog" in arns, (action, arns)
    assert databases == tables, (action, databases, tables)
    return databases


def test_bucket_is_private_encrypted_and_tls_only(resources):
    bucket = resources["LakeBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values()) and len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    [deny] = statements(resources["LakeBucketPolicy"])
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


ORCHESTRATED = {"source/*", "raw/*", "staging/*", "marts/*", "reports/*", "_pipes/*", "athena-results/*"}


@pytest.mark.parametrize("role, reads, writes, deletes", [
    ("GlueStagingRole", {"code/*", "source/*", "raw/*", "staging/*", "_pipes/*"}, {"raw/*", "staging/*", "_pipes/*"},
     {"raw/*", "staging/*", "_pipes/*"}),
    ("GlueMartsRole", {"code/*", "staging/*", "marts/*", "_pipes/*"}, {"marts/*", "_pipes/*"},
     {"marts/*", "_pipes/*"}),
    ("EmrJobRole", {"code/*", "source/*", "raw/*", "staging/*", "marts/*", "_pipes/*"},
     {"raw/*", "staging/*", "marts/*", "_pipes/*"}, {"raw/*", "staging/*", "marts/*", "_pipes/*"}),
    ("UploaderPolicy", {"source/*"}, {"source/*"}, {"source/*"}),
    ("BiReaderPolicy", {"staging/*", "marts/*", "athena-results/*"}, {"athena-results/*"}, set()),
    ("OrchestratorPolicy", ORCHESTRATED, ORCHESTRATED, ORCHESTRATED),
])
def test_each_role_reaches_only_its_own_prefixes(resources, role, reads, writes, deletes):
    """The quarantine is an Iceberg table under staging/: no role reaches a quarantine/ prefix any more."""
    assert object_prefixes(resources[role], {"s3:GetObject"}) == reads
    assert object_prefixes(resources[role], {"s3:PutObject"}) == writes
    assert object_prefixes(resources[role], {"s3:DeleteObject"}) == deletes
    for statement in statements(resources[role]):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert "*" not in actions and "s3:*" not in actions
        if statement["Resource"] == "*":
            assert "Condition" in statement, statement


@pytest.mark.parametrize("role, reads, writes", [
    ("GlueStagingRole", {STAGING_ICEBERG}, {STAGING_ICEBERG}),
    ("GlueMartsRole", {STAGING_ICEBERG, MARTS_ICEBERG}, {MARTS_ICEBERG}),
    ("EmrJobRole", {STAGING_ICEBERG, MARTS_ICEBERG}, {STAGING_ICEBERG, MARTS_ICEBERG}),
    ("OrchestratorPolicy", {STAGING, MARTS, STAGING_ICEBERG, MARTS_ICEBERG},
     {STAGING, MARTS, STAGING_ICEBERG, MARTS_ICEBERG}),
    ("BiReaderPolicy", {STAGING, MARTS, STAGING_ICEBERG, MARTS_ICEBERG}, set()),
    ("UploaderPolicy", set(), set()),
])
def test_each_role_commits_only_its_own_iceberg_tables(resources, role, reads, writes):
    """Iceberg's GlueCatalog reads and commits tables through the Glue Data Catalog: each job may change the
    tables of its own `_iceberg` database only (the marts job reads the staging one), the orchestrator also
    registers the views and expires snapshots, BI readers read the views and the tables under them. Nobody may
    drop a table or a database."""
    for action in ICEBERG_READS:
        assert catalog_databases(resources[role], action) == reads, action
    for action in ICEBERG_WRITES:
        assert catalog_databases(resources[role], action) == writes, action
    for statement in statements(resources[role]):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not [a for a in actions if a.startswith("glue:Delete")], statement


def test_iceberg_tables_and_athena_views_have_their_own_databases(resources):
    """The Iceberg tables are in the `_iceberg` databases, where `transforms.iceberg` names them, at the layers'
    prefixes; the plain databases hold the Athena views over them."""
    databases = {}
    for resource in resources.values():
        if resource["Type"] == "AWS::Glue::Database":
            database = resource["Properties"]["DatabaseInput"]
            databases[database["Name"].get("Sub") or "${" + database["Name"]["Ref"] + "}"] = database
    assert set(databases) == {STAGING, MARTS, STAGING_ICEBERG, MARTS_ICEBERG}
    assert databases[STAGING_ICEBERG]["LocationUri"] == {"Sub": "s3://${LakeBucket}/staging/"}
    assert databases[MARTS_ICEBERG]["LocationUri"] == {"Sub": "s3://${LakeBucket}/marts/"}
    assert "Iceberg tables" in databases[STAGING_ICEBERG]["Description"]["Sub"]
    assert "Athena views" in databases[MARTS]["Description"]["Sub"]


@pytest.mark.parametrize("job, layer", [("GlueStagingJob", "staging"), ("GlueMartsJob", "marts")])
def test_glue_jobs_run_the_deployed_scripts(resources, job, layer):
    properties = resources[job]["Properties"]
    assert properties["GlueVersion"] == GLUE_VERSION
    assert properties["Command"]["ScriptLocation"]["Sub"].endswith(f"/code/{entry_script(layer)}")
    assert properties["DefaultArguments"]["--extra-py-files"]["Sub"].endswith(f"/code/{PACKAGE_ZIP}")
    assert properties["Role"] == {"GetAtt": f"Glue{layer.capitalize()}Role.Arn"}


@pytest.mark.parametrize("job", ["GlueStagingJob", "GlueMartsJob"])
def test_glue_jobs_open_the_iceberg_catalog_deploy_configures(resources, job):
    """The stack's jobs get the same Iceberg settings as the jobs `deploy` creates, warehouse in the lake bucket."""
    arguments = resources[job]["Properties"]["DefaultArguments"]
    assert arguments["--datalake-formats"] == "iceberg"
    assert arguments["--conf"] == {"Sub": glue_conf_argument("${LakeBucket}")}


def test_template_passes_cfn_lint():
    """cfn-lint checks every resource's properties against the CloudFormation specification (offline)."""
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
