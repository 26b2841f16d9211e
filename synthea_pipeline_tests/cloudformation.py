"""Reading the CloudFormation templates under infra/ in tests: a YAML loader for the short-form intrinsic functions,
the statements of IAM roles and policies, and cfn-lint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

INFRA = Path(__file__).parents[1] / "infra"
INTRINSICS = (
    "Ref",
    "Sub",
    "GetAtt",
    "Join",
    "Select",
    "Split",
    "If",
    "Equals",
    "Not",
    "And",
    "Or",
    "Condition",
    "ImportValue",
    "FindInMap",
    "Base64",
    "GetAZs",
    "Cidr",
)


class CloudFormationLoader(yaml.SafeLoader):
    """`!Ref X` loads as {"Ref": "X"}, `!Sub [...]` as {"Sub": [...]}, and so on."""


def _intrinsic(name: str):
    def construct(loader: yaml.SafeLoader, node: yaml.Node):
        if isinstance(node, yaml.ScalarNode):
            return {name: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {name: loader.construct_sequence(node, deep=True)}
        return {name: loader.construct_mapping(node, deep=True)}

    return construct


for _name in INTRINSICS:
    CloudFormationLoader.add_constructor(f"!{_name}", _intrinsic(_name))


def load_template(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=CloudFormationLoader)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def statements(resource: dict) -> list[dict]:
    """The statements of a role's inline policies or of a managed policy."""
    properties = resource["Properties"]
    documents = [p["PolicyDocument"] for p in properties.get("Policies", [])]
    documents += [properties["PolicyDocument"]] if "PolicyDocument" in properties else []
    return [s for d in documents for s in d["Statement"]]


def actions(statement: dict) -> list[str]:
    return as_list(statement["Action"])


def granted_targets(resource: dict, wanted: set[str]) -> list:
    """The Resource entries of the statements that allow any of `wanted` actions."""
    targets = []
    for statement in statements(resource):
        if statement["Effect"] == "Allow" and wanted & set(actions(statement)):
            targets += as_list(statement["Resource"])
    return targets


def resources_of_type(resources: dict, kind: str) -> dict[str, dict]:
    return {name: resource for name, resource in resources.items() if resource["Type"] == kind}


def comment_above(template: Path, logical_id: str) -> str:
    """The comment lines directly above a resource's logical id in the template text."""
    lines = template.read_text().splitlines()
    index = lines.index(f"  {logical_id}:")
    comment = []
    for line in reversed(lines[:index]):
        if not re.match(r"\s*#", line):
            break
        comment.insert(0, line.strip().lstrip("#").strip())
    return " ".join(comment)


def cfn_lint(template: Path) -> subprocess.CompletedProcess:
    """cfn-lint checks every resource's properties against the CloudFormation specification (offline)."""
    executable = Path(sys.executable).parent / "cfn-lint"
    return subprocess.run([str(executable), str(template)], check=False, capture_output=True, text=True, timeout=180)
