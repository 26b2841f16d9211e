"""The project as the Dagster UI shows and runs it: runs launched through the same GraphQL mutation the UI sends
(executed by a real run worker beside a real code server), what the asset pages show (checks per partition,
lineage, kinds, owners, code versions, freshness, column descriptions, settings), and the rough edges a power
user hit: placeholders in descriptions, the dashboard link, `query | head`, the sensor's first tick."""

import dataclasses
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, build_sensor_context, instance_for_test
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from synthea_pipeline import definitions
from synthea_pipeline.assets.specs import code_version
from synthea_pipeline.definitions import defs
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.run_tags import ENGINE_TAG, LAKE_TAG, ORIGIN_TAG
from synthea_pipeline.runs import SAMPLE_DIR, run_upload
from synthea_pipeline.sensors import upload_sensor
from synthea_pipeline.settings import SETTINGS
from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.bi import BI_VIEW_READS
from synthea_pipeline.transforms.checks import UPLOAD_CHECKS
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline.transforms.storage import storage_for
from synthea_pipeline.transforms.uploads import upload_export
from synthea_pipeline_tests.conftest import catalog_rows, fresh_instance

REPOSITORY = Path(__file__).parents[1]
UPLOAD = "ward-ui"
LAUNCH = """mutation($executionParams: ExecutionParams!) { launchPipelineExecution(executionParams: $executionParams) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on InvalidSubsetError { message }
  ... on PythonError { message } } }"""
CHECKS = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  assetChecksOrError { ... on AssetChecks { checks { name canExecuteIndividually } } } } } }"""
RESOURCE = """query($selector: ResourceSelector!) { topLevelResourceDetailsOrError(resourceSelector: $selector) {
  ... on ResourceDetails { configuredValues { key value type } } } }"""
PLACEHOLDER = re.compile(r"<[A-Za-z_][^>]*>")
"""What markdown renders as an HTML tag, i.e. drops from a description."""


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A code server for the project's definitions and an instance whose runs a real run worker executes, with
    the sample uploaded to a fresh lake named by the environment (as `dagster dev` would read it). Runs are
    launched when submitted, as the queue of `dagster dev` does with a free slot (no daemon runs here)."""
    lake_root = str(tmp_path_factory.mktemp("ui") / "lake")
    launched_at_once = {
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    }
    with (
        pytest.MonkeyPatch.context() as patch,
        tempfile.TemporaryDirectory() as home,
        instance_for_test(temp_dir=home, overrides=launched_at_once) as instance,
    ):
        patch.setenv("SYNTHEA_LAKE_ROOT", lake_root)
        upload_export(str(SAMPLE_DIR), storage_for(f"{lake_root}/source"), UPLOAD, replace=True)
        instance.add_dynamic_partitions("uploads", [UPLOAD])
        with define_out_of_process_context(definitions.__file__, "defs", instance) as context:
            yield context, instance, lake_root


def launch(context, asset_keys: list[list[str]], checks: list[tuple[list[str], str]] | None, partition: str | None):
    """What the UI's Materialize and Execute buttons send."""
    selector = {
        "repositoryLocationName": context.code_location_names[0],
        "repositoryName": "__repository__",
        "pipelineName": "__ASSET_JOB",
        "assetSelection": [{"path": key} for key in asset_keys],
    }
    if checks is not None:
        selector["assetCheckSelection"] = [{"assetKey": {"path": key}, "name": name} for key, name in checks]
    tags = [{"key": "dagster/partition", "value": partition}] if partition else []
    result = execute_dagster_graphql(
        context,
        LAUNCH,
        variables={
            "executionParams": {
                "selector": selector,
                "mode": "default",
                "executionMetadata": {"tags": tags},
                "runConfigData": "{}",
            }
        },
    )
    return result.data["launchPipelineExecution"]


def finished(instance, run_id: str, timeout: float = 300):
    """The run once its worker process has finished it."""
    deadline = time.monotonic() + timeout
    while not (run := instance.get_run_by_id(run_id)).is_finished:
        assert time.monotonic() < deadline, f"run {run_id} still {run.status} after {timeout} s"
        time.sleep(0.5)
    return run


@pytest.mark.slow
def test_a_check_cannot_be_launched_without_materializing_its_partition(ui):
    context, instance, _ = ui
    for key in (["raw", "patients"], ["staging", "patients"], ["marts", "patient_fact"]):
        node = execute_dagster_graphql(context, CHECKS, variables={"key": {"path": key}}).data["assetNodeOrError"]
        checks = node["assetChecksOrError"]["checks"]
        assert checks and {c["canExecuteIndividually"] for c in checks} == {"REQUIRES_MATERIALIZATION"}, key
    runs_before = len(instance.get_runs())
    outcome = launch(context, [], [(["staging", "patients"], "key_unique")], partition=None)
    assert outcome["__typename"] == "InvalidSubsetError"
    assert len(instance.get_runs()) == runs_before


@pytest.mark.slow
def test_a_partition_materialized_from_the_ui_records_its_checks_on_that_partition(ui):
    context, instance, lake_root = ui
    keys = [[layer, table] for layer in ("source", "raw", "staging") for table in TABLES]
    outcome = launch(context, keys, None, partition=UPLOAD)
    assert outcome["__typename"] == "LaunchRunSuccess", outcome
    run_id = outcome["run"]["runId"]
    run = finished(instance, run_id)
    assert run.is_success, [e.user_message for e in instance.all_logs(run_id) if e.level >= 40]
    assert (run.tags[ORIGIN_TAG], run.tags[LAKE_TAG], run.tags[ENGINE_TAG]) == ("ui", lake_root, "sail")
    evaluations = [
        record.event_log_entry.dagster_event.event_specific_data
        for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    ]
    assert len(evaluations) == len(TABLES) * 5 + len(UPLOAD_CHECKS)
    assert {e.partition for e in evaluations} == {UPLOAD}
    assert all(e.passed for e in evaluations if e.asset_key.path[0] == "staging" and e.severity.value == "ERROR")


@pytest.mark.slow
def test_the_ui_shows_every_setting_as_the_environment_variable_it_comes_from(ui):
    context, _, _ = ui
    selector = {"repositoryLocationName": context.code_location_names[0], "repositoryName": "__repository__"}
    shown = {}
    for resource in ("lake", "spark", "catalog", "synthea"):
        details = execute_dagster_graphql(
            context, RESOURCE, variables={"selector": {**selector, "resourceName": resource}}
        )
        shown |= {
            v["key"]: (v["type"], v["value"])
            for v in details.data["topLevelResourceDetailsOrError"]["configuredValues"]
        }
    assert shown["root"] == ("ENV_VAR", "SYNTHEA_LAKE_ROOT")
    assert shown["engine"] == ("ENV_VAR", "SYNTHEA_SPARK_ENGINE")
    assert {value for kind, value in shown.values() if kind == "ENV_VAR"} == {s.env_var for s in SETTINGS}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    lake_root = str(tmp_path_factory.mktemp("cli") / "lake")
    with fresh_instance() as instance:
        report = run_upload(str(SAMPLE_DIR), lake_root, "ward-cli", instance=instance)
        assert report.success and not report.errors, report.errors
        yield instance, lake_root, report


@pytest.mark.slow
def test_runs_of_the_command_line_say_so(cli_run):
    instance, _, report = cli_run
    assert instance.get_run_by_id(report.run_id).tags[ORIGIN_TAG] == "cli run"


@pytest.mark.slow
def test_the_dashboard_opens_from_its_asset_as_a_preview_of_its_figures(cli_run):
    instance, lake_root, _ = cli_run
    [record] = instance.fetch_materializations(AssetKey(["reports", "dashboard"]), limit=1).records
    metadata = record.asset_materialization.metadata
    assert not [key for key, value in metadata.items() if str(getattr(value, "value", "")).startswith("file://")]
    preview = metadata["preview"].value
    patients = catalog_rows(Lake(lake_root), "SELECT sum(patients) AS n FROM synthea_marts.bi_demographics")
    figures = preview.split("\n\n")[1].splitlines()
    assert figures[0].startswith("| patients | encounters |")
    assert figures[2].startswith(f"| {patients.column('n')[0].as_py():,} | ")
    for view in BI_VIEW_READS:
        assert f"`{view}`" in preview


@pytest.mark.slow
def test_query_into_a_closed_pipe_ends_quietly(cli_run):
    _, lake_root, _ = cli_run
    command = (
        f"set -o pipefail; {sys.executable} -m synthea_pipeline.cli query --lake {lake_root} "
        "'SELECT * FROM range(300000)' | head -n 2"
    )
    result = subprocess.run(["bash", "-c", command], check=False, capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[0].strip() == "range"
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 0


@pytest.mark.slow
def test_the_sensor_counts_uploads_it_already_processed(cli_run):
    instance, lake_root, _ = cli_run
    context = build_sensor_context(
        instance=instance, resources={"lake": LakeResource(root=lake_root), "catalog": CatalogResource()}
    )
    result = upload_sensor(context)
    assert result.run_requests == []
    reason = result.skip_reason.skip_message
    assert "0 to run, 0 unchanged, 1 already processed or removed, 0 waiting or invalid" in reason
    assert "ward-cli: already in the lake (committed " in reason


@pytest.mark.unit
def test_descriptions_keep_their_placeholders_in_code_spans():
    described = {}
    for assets in defs.assets:
        for key, spec in assets.specs_by_key.items():
            described[key.to_user_string()] = spec.description or ""
        for check in assets.check_specs:
            described[f"{check.asset_key.to_user_string()}:{check.name}"] = check.description or ""
    for definition in [*defs.jobs, *defs.sensors, *defs.schedules]:
        described[definition.name] = definition.description or ""
    lost = {name: PLACEHOLDER.findall(re.sub(r"`[^`]*`", "", text)) for name, text in described.items()}
    assert {name: tags for name, tags in lost.items() if tags} == {}
    assert "`source/<upload_id>/`" in described["source/patients"]


@pytest.mark.unit
def test_every_asset_declares_kinds_owner_code_version_and_code_references():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.kinds and node.owners == ["team:data-engineering"] and node.code_version, key
        references = node.metadata["dagster/code_references"].code_references
        assert any(
            r.file_path.endswith(f"assets/{'bi' if key.path[0] == 'reports' else key.path[0]}.py")
            or r.file_path.endswith("assets/ingest.py")
            for r in references
        ), key
        assert any("/transforms/" in r.file_path for r in references), key
        has_policy = node.freshness_policy is not None
        assert has_policy == (key.path[0] in ("marts", "omop", "bi", "reports")), key


@pytest.mark.unit
def test_code_versions_follow_the_contract():
    assert code_version("staging", [TABLES["patients"]]) != code_version("staging", [TABLES["allergies"]])
    patient_fact = MARTS["patient_fact"]
    assert defs.resolve_asset_graph().get(AssetKey(["marts", "patient_fact"])).code_version == code_version(
        "marts", [patient_fact]
    )
    assert code_version("marts", [patient_fact]) != code_version(
        "marts", [dataclasses.replace(patient_fact, reads=(*patient_fact.reads, "allergies"))]
    )


EVERY_ENCOUNTER_INPUT = {"encounters", "patients", "providers", "organizations", "payers"}
MART_INPUTS = {
    "patient_fact": EVERY_ENCOUNTER_INPUT | {"conditions", "immunizations", "medications", "procedures"},
    "encounter_dim": EVERY_ENCOUNTER_INPUT | {"observations"},
    "condition_dim": {"conditions", "encounters", "patients"},
    "procedure_dim": {"procedures", "encounters", "patients"},
    "medication_dim": {"medications", "encounters", "patients", "payers"},
    "provider_dim": {"providers", "organizations"},
    "organization_dim": {"organizations"},
    "payer_dim": {"payers"},
    "location_dim": {"patients", "providers", "organizations"},
    "date_dim": EVERY_ENCOUNTER_INPUT | {"conditions", "immunizations", "medications", "procedures"},
}
"""The staging tables each mart is computed from, written out here so a change to the marts' lineage is a
reviewed change of this test."""


@pytest.mark.unit
def test_lineage_is_exact():
    graph = defs.resolve_asset_graph()
    assert set(MART_INPUTS) == set(MARTS)
    for name, inputs in MART_INPUTS.items():
        parents = {p.to_user_string() for p in graph.get(AssetKey(["marts", name])).parent_keys}
        assert parents == {f"staging/{t}" for t in inputs}, name
    assert {p.to_user_string() for p in graph.get(AssetKey(["marts", "provider_dim"])).parent_keys} == {
        "staging/providers",
        "staging/organizations",
    }
    for view, marts in BI_VIEW_READS.items():
        assert {p.to_user_string() for p in graph.get(AssetKey(["bi", view])).parent_keys} == {
            f"marts/{m}" for m in marts
        }
    assert {p.to_user_string() for p in graph.get(AssetKey(["bi", "bi_demographics"])).parent_keys} == {
        "marts/patient_fact"
    }


@pytest.mark.unit
def test_every_staging_and_mart_column_is_described_before_the_first_run():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        if key.path[0] not in ("staging", "marts"):
            continue
        columns = graph.get(key).metadata["dagster/column_schema"].schema.columns
        assert columns and all(c.description for c in columns), key


@pytest.mark.unit
def test_what_dagster_dev_leaves_in_the_project_is_ignored_by_git():
    result = subprocess.run(
        ["git", "check-ignore", "storage/", ".nux/", ".telemetry/", ".dagster/", "lake/"],
        check=False,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )
    assert sorted(result.stdout.split()) == sorted(["storage/", ".nux/", ".telemetry/", ".dagster/", "lake/"])
