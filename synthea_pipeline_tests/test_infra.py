"""The CloudFormation template: the lake bucket is private and encrypted, each role reaches only its own
prefixes, and the jobs it declares run the scripts `deploy` uploads."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthea_pipeline.deploy import GLUE_VERSION, PACKAGE_ZIP, entry_script

TEMPLATE = Path(__file__).parents[1] / "infra" / "synthea-pipeline.yaml"


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


def object_prefixes(resource: dict, actions: set[str]) -> set[str]:
    """The lake prefixes on which the role or policy is allowed any of `actions`."""
    prefixes = set()
    for statement in statements(resource):
        granted = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] != "Allow" or not actions & set(granted):
            continue
        targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for target in targets:
            prefixes.add(target["Sub"].split("}/", 1)[1] if "Sub" in target else "(bucket)")
    return prefixes


def test_bucket_is_private_encrypted_and_tls_only(resources):
    bucket = resources["LakeBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values()) and len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    [deny] = statements(resources["LakeBucketPolicy"])
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize("role, reads, writes", [
    ("GlueStagingRole", {"code/*", "raw/*", "quarantine/*", "staging/*", "_pipes/*"},
     {"quarantine/*", "staging/*", "_pipes/*"}),
    ("GlueMartsRole", {"code/*", "staging/*", "marts/*", "_pipes/*"}, {"marts/*", "_pipes/*"}),
    ("EmrJobRole", {"code/*", "raw/*", "quarantine/*", "staging/*", "marts/*", "_pipes/*"},
     {"quarantine/*", "staging/*", "marts/*", "_pipes/*"}),
    ("UploaderPolicy", {"source/*"}, {"source/*"}),
    ("BiReaderPolicy", {"staging/*", "marts/*", "athena-results/*"}, {"athena-results/*"}),
    ("OrchestratorPolicy", {"source/*", "raw/*", "quarantine/*", "staging/*", "marts/*", "reports/*", "_pipes/*",
                            "athena-results/*"},
     {"source/*", "raw/*", "quarantine/*", "staging/*", "marts/*", "reports/*", "_pipes/*", "athena-results/*"}),
])
def test_each_role_reaches_only_its_own_prefixes(resources, role, reads, writes):
    assert object_prefixes(resources[role], {"s3:GetObject"}) == reads
    assert object_prefixes(resources[role], {"s3:PutObject", "s3:DeleteObject"}) == writes
    for statement in statements(resources[role]):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert "*" not in actions and "s3:*" not in actions
        if statement["Resource"] == "*":
            assert "Condition" in statement, statement


@pytest.mark.parametrize("job, layer", [("GlueStagingJob", "staging"), ("GlueMartsJob", "marts")])
def test_glue_jobs_run_the_deployed_scripts(resources, job, layer):
    properties = resources[job]["Properties"]
    assert properties["GlueVersion"] == GLUE_VERSION
    assert properties["Command"]["ScriptLocation"]["Sub"].endswith(f"/code/{entry_script(layer)}")
    assert properties["DefaultArguments"]["--extra-py-files"]["Sub"].endswith(f"/code/{PACKAGE_ZIP}")
    assert properties["Role"] == {"GetAtt": f"Glue{layer.capitalize()}Role.Arn"}


def test_template_passes_cfn_lint():
    """cfn-lint checks every resource's properties against the CloudFormation specification (offline)."""
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
