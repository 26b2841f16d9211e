"""Code references in a deployed image link into the git repository at the image's commit: the definitions read
the repository and commit the image build recorded (`deploy-dagster` passes them from the checkout)."""

import json
import os
import subprocess
import sys

import pytest

from synthea_pipeline.definitions import GIT_SHA_VARIABLE, GIT_URL_VARIABLE
from synthea_pipeline.deploy_dagster import git_source

REFERENCES_OF_PATIENT_FACT = """
import json
from dagster import AssetKey
from synthea_pipeline.definitions import defs
node = defs.resolve_asset_graph().get(AssetKey(["marts", "patient_fact"]))
references = node.metadata["dagster/code_references"].code_references
print(json.dumps([getattr(r, "url", None) or r.file_path for r in references]))
"""


def code_references_of_patient_fact(**environment: str) -> list[str]:
    """Each code reference of `marts/patient_fact` (a URL or a local path) when the definitions load in a fresh
    process with `environment`."""
    clean = {k: v for k, v in os.environ.items() if k not in (GIT_URL_VARIABLE, GIT_SHA_VARIABLE)}
    loaded = subprocess.run(
        [sys.executable, "-c", REFERENCES_OF_PATIENT_FACT],
        env={**clean, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(loaded.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_deployed_image_links_code_references_to_its_commit():
    commit = "0123456789abcdef0123456789abcdef01234567"
    references = code_references_of_patient_fact(
        **{GIT_URL_VARIABLE: "https://github.com/example/synthea-pipeline", GIT_SHA_VARIABLE: commit}
    )
    tree = f"https://github.com/example/synthea-pipeline/tree/{commit}/synthea_pipeline/"
    assert references and all(r.startswith(tree) for r in references), references
    assert any(r.startswith(f"{tree}assets/marts.py#L") for r in references), references
    assert f"{tree}transforms/marts.py#L1" in references, references


@pytest.mark.slow
def test_without_a_repository_code_references_stay_local_files():
    references = code_references_of_patient_fact()
    assert references and all(os.path.isfile(r) for r in references), references


@pytest.mark.unit
def test_git_source_is_the_origin_as_https_and_the_commit(tmp_path):
    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *arguments],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert git_source(tmp_path) == ("", "")
    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "first")
    git("remote", "add", "origin", "git@github.com:example/synthea-pipeline.git")
    assert git_source(tmp_path) == ("https://github.com/example/synthea-pipeline", git("rev-parse", "HEAD"))
    git("remote", "set-url", "origin", "https://gitlab.com/example/synthea-pipeline.git")
    assert git_source(tmp_path)[0] == "https://gitlab.com/example/synthea-pipeline"
