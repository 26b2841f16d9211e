"""Several uploads in one run: the upload sensor starts one run for the uploads that are ready together, each still
its own partition, load and commit, and a bad upload in the batch commits nothing of itself and everything of the
others. A real Dagster instance, a real lake and Sail."""

import shutil

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterEventType,
    DagsterRunStatus,
    Definitions,
    build_sensor_context,
    evaluate_automation_conditions,
    instance_for_test,
)

from synthea_pipeline.automation import marts_automation
from synthea_pipeline.definitions import defs
from synthea_pipeline.jobs import stage_upload_job
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.sensors import upload_sensor
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.storage import storage_for
from synthea_pipeline.transforms.uploads import upload_export
from synthea_pipeline_tests.conftest import SAMPLES, read_rows, staged
from synthea_pipeline_tests.test_uploads import requested_uploads

pytestmark = pytest.mark.slow  # one batch run of four uploads on Sail

GOOD = {"ward-a": SAMPLES["2.7"], "ward-b": SAMPLES["3.0"], "ward-d": SAMPLES["2.7"]}
BAD = "ward-c"


def tick(instance, lake: Lake, batch_size: int = 25):
    lake_resource = LakeResource(root=lake.root, upload_batch_size=batch_size)
    return upload_sensor(
        build_sensor_context(instance=instance, resources={"lake": lake_resource, "catalog": CatalogResource()})
    )


@pytest.fixture(scope="module")
def instance():
    """A run queue of one run at a time: the sensor spreads a batch over no more runs than that."""
    with instance_for_test(overrides={"concurrency": {"runs": {"max_concurrent_runs": 1}}}) as instance:
        yield instance


@pytest.fixture(scope="module")
def batch(instance, spark, tmp_path_factory):
    """Four uploads dropped together, the third without the required BIRTHDATE column; the sensor's requests and
    the outcome of running the one it asked for."""
    work = tmp_path_factory.mktemp("batch")
    lake = Lake(str(work / "lake"))
    source = storage_for(lake.uri("source"))
    bad = work / BAD
    shutil.copytree(SAMPLES["2.7"], bad)
    (bad / "patients.csv").write_text((bad / "patients.csv").read_text().replace("BIRTHDATE", "BIRTH_DAY", 1))
    for upload, folder in sorted({**GOOD, BAD: bad}.items()):
        upload_export(str(folder), source, upload)
    [(request, outcome)] = run_what_the_sensor_asks(instance, lake, spark)
    return lake, request, outcome


def run_what_the_sensor_asks(instance, lake: Lake, spark: SparkResource) -> list:
    """A sensor tick over the lake, then each run it requested, in this process: the requests and the outcomes."""
    result = tick(instance, lake)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = Definitions(
        assets=defs.assets,
        jobs=defs.jobs,
        resources={**defs.resources, "lake": LakeResource(root=lake.root), "spark": spark},
    ).resolve_job_def(stage_upload_job.name)
    return [
        (
            request,
            job.execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags, raise_on_error=False
            ),
        )
        for request in result.run_requests
    ]


def materialized(instance, run_id: str, key: AssetKey) -> dict[str, dict]:
    """The partitions the run materialized `key` for, with each one's metadata."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    return {
        r.event_log_entry.dagster_event.partition: r.event_log_entry.asset_materialization.metadata
        for r in records
        if r.event_log_entry.asset_materialization.asset_key == key
    }


def test_uploads_ready_together_go_in_one_run(batch):
    _, request, _ = batch
    assert requested_uploads(request) == sorted([*GOOD, BAD])
    assert request.partition_key is None


def test_a_bad_upload_fails_the_run_naming_it_and_only_it(batch):
    _, _, outcome = batch
    assert not outcome.success
    [failure] = [e for e in outcome.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    assert "1 of 4 uploads failed (the others are committed)" in message
    assert f"{BAD}:" in message and "missing required column(s) BIRTHDATE" in message
    assert not any(upload in message for upload in GOOD)


def test_the_good_uploads_are_committed_each_with_its_own_load(batch, instance):
    lake, _, _ = batch
    states = CatalogResource().upload_states(lake)
    assert {u: s["state"] for u, s in states.items() if s["state"] == "committed"} == dict.fromkeys(GOOD, "committed")
    assert BAD not in states or states[BAD]["state"] != "committed"
    for upload, folder in GOOD.items():
        _, patients = read_rows(folder / "patients.csv")
        assert staged(lake, upload, "patients").num_rows == len(patients)


def test_each_good_upload_is_materialized_against_its_own_partition_and_the_bad_one_is_not(batch, instance):
    _, _, outcome = batch
    run = outcome.run_id
    for layer in ("source", "raw", "staging"):
        assert set(materialized(instance, run, AssetKey([layer, "patients"]))) == (
            set(GOOD) if layer != "source" else {*GOOD, BAD}
        )
    staging = materialized(instance, run, AssetKey(["staging", "patients"]))
    for upload, folder in GOOD.items():
        assert staging[upload]["rows_out"].value == len(read_rows(folder / "patients.csv")[1])
    source = materialized(instance, run, AssetKey(["source", "patients"]))
    assert source["ward-b"]["synthea_release"].value != source["ward-a"]["synthea_release"].value
    assert instance.get_run_by_id(run).status == DagsterRunStatus.FAILURE


def test_each_good_upload_has_its_own_check_results(batch, instance):
    _, _, outcome = batch
    key = AssetCheckKey(AssetKey(["staging", "patients"]), "rows_reconcile")
    evaluations = [
        e.event_specific_data
        for e in outcome.all_events
        if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION and e.event_specific_data.asset_check_key == key
    ]
    assert sorted(e.partition for e in evaluations) == sorted(GOOD)
    assert all(e.passed for e in evaluations)


def test_the_next_tick_runs_nothing_again(batch, instance):
    lake, _, _ = batch
    assert tick(instance, lake).run_requests == []


def test_a_batch_of_good_uploads_succeeds_with_every_check_recorded(batch, instance, spark):
    lake, _, _ = batch
    source = storage_for(lake.uri("source"))
    later = ["ward-e", "ward-f"]
    for upload in later:
        upload_export(str(SAMPLES["2.7"]), source, upload)
    marts = marts_automation.asset_selection
    cursor = evaluate_automation_conditions(defs, instance, asset_selection=marts).cursor
    [(request, outcome)] = run_what_the_sensor_asks(instance, lake, spark)
    assert requested_uploads(request) == later
    assert outcome.success
    assert set(materialized(instance, outcome.run_id, AssetKey(["staging", "encounters"]))) == set(later)
    checks = {
        (e.event_specific_data.asset_check_key, e.event_specific_data.partition)
        for e in outcome.all_events
        if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert len(checks) == len(later) * len(defs.resolve_assets_def(AssetKey(["staging", "patients"])).check_keys)
    assert {partition for _, partition in checks} == set(later)
    assert {u for u, s in CatalogResource().upload_states(lake).items() if s["state"] == "committed"} >= set(later)
    automation = evaluate_automation_conditions(defs, instance, asset_selection=marts, cursor=cursor)
    assert automation.get_num_requested(AssetKey(["marts", "patient_fact"])) == 1  # the blocking checks count
