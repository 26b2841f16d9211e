"""The marts follow the uploads by declarative automation, evaluated tick by tick as the daemon's
`marts_automation` sensor does, with real runs on a real lake: uploads staged together are built into the marts,
BI views and dashboard once, in one run, after the last of them (one that fails does not hold the others back),
and a staging commit that lands after the marts were requested is built by the next rebuild instead of lost."""

import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, evaluate_automation_conditions

from synthea_pipeline.automation import marts_automation
from synthea_pipeline.definitions import defs
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.storage import storage_for
from synthea_pipeline.transforms.uploads import upload_export
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows, fresh_instance

pytestmark = pytest.mark.slow  # a dozen real runs

SCALE_SAMPLE = Path(__file__).parents[1] / "benchmarks" / "scale_sample.py"
PATIENTS = 27
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DOWNSTREAM = set(defs.resolve_job_def("rebuild_marts").asset_layer.executable_asset_keys)
PATIENT_FACT = AssetKey(["marts", "patient_fact"])


class Daemon:
    """Ticks of `marts_automation` against one instance, and the runs it would launch."""

    def __init__(self, instance: DagsterInstance):
        self.instance = instance
        self.cursor = None

    def tick(self) -> set[AssetKey]:
        result = evaluate_automation_conditions(
            defs, self.instance, asset_selection=marts_automation.asset_selection, cursor=self.cursor
        )
        self.cursor = result.cursor
        return {key for key in DOWNSTREAM if result.get_num_requested(key)}

    def launch(self, keys: set[AssetKey]) -> None:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=self.instance, asset_selection=sorted(keys), run_config=QUIET, raise_on_error=False
        )
        assert result.success

    def stage(self, upload_id: str) -> bool:
        """The upload sensor's run of one upload."""
        return (
            defs.resolve_job_def("stage_upload")
            .execute_in_process(instance=self.instance, partition_key=upload_id, run_config=QUIET, raise_on_error=False)
            .success
        )

    def queue_stage(self, upload_id: str):
        """A run of the upload requested but not started yet (what the run queue holds)."""
        job = defs.resolve_job_def("stage_upload")
        return self.instance.create_run_for_job(
            job_def=job,
            tags={"dagster/partition": upload_id},
            asset_selection=frozenset(job.asset_layer.executable_asset_keys),
        )


@pytest.fixture
def lake(tmp_path, monkeypatch):
    """A lake named by the environment, as `dagster dev` reads it, whose `source/` holds uploads of different
    patients (re-keyed copies of one export) and one that is not a Synthea export."""
    lake = Lake(str(tmp_path / "lake"))
    monkeypatch.setenv("SYNTHEA_LAKE_ROOT", lake.root)
    for copy, upload_id in enumerate(["ward-a", "ward-b", "ward-c", "ward-d", "ward-e"]):
        export = tmp_path / upload_id
        subprocess.run(
            [
                sys.executable,
                str(SCALE_SAMPLE),
                str(SAMPLES["3.0"]),
                str(PATIENTS),
                str(export),
                "--first-copy",
                str(copy),
            ],
            check=True,
            capture_output=True,
        )
        upload_export(str(export), storage_for(lake.uri("source")), upload_id, replace=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "patients.csv").write_text("name,age\nann,3\n")
    upload_export(str(foreign), storage_for(lake.uri("source")), "foreign", replace=True)
    return lake


@pytest.fixture
def daemon():
    with fresh_instance() as instance:
        instance.add_dynamic_partitions("uploads", ["ward-a", "ward-b", "ward-c", "ward-d", "ward-e", "foreign"])
        yield Daemon(instance)


def patients_per_upload(lake: Lake) -> dict[str, int]:
    rows = catalog_rows(
        lake,
        "SELECT upload_id, count(*) AS n FROM synthea_marts.patient_fact WHERE patient_key <> 'unknown' GROUP BY 1",
    ).to_pylist()
    return {row["upload_id"]: row["n"] for row in rows}


def builds(daemon: Daemon) -> int:
    return len(daemon.instance.fetch_materializations(PATIENT_FACT, limit=100).records)


def test_uploads_staged_together_are_built_into_the_marts_once(lake, daemon):
    assert daemon.tick() == set()
    assert daemon.stage("ward-a") and not daemon.stage("foreign") and daemon.stage("ward-b")
    waiting = daemon.queue_stage("ward-c")
    assert daemon.tick() == set()  # an upload of the batch is still to be staged

    daemon.instance.report_run_canceled(waiting)
    assert daemon.stage("ward-c")
    requested = daemon.tick()
    assert requested == DOWNSTREAM  # the marts, BI views and dashboard, in one run
    daemon.launch(requested)

    assert daemon.tick() == set()
    assert builds(daemon) == 1
    assert patients_per_upload(lake) == {"ward-a": PATIENTS, "ward-b": PATIENTS, "ward-c": PATIENTS}


def test_an_upload_staged_after_the_marts_were_requested_is_built_by_the_next_rebuild(lake, daemon):
    assert daemon.tick() == set()
    assert daemon.stage("ward-d")
    requested = daemon.tick()
    assert requested == DOWNSTREAM

    assert daemon.stage("ward-e")  # committed after the request: the build may have begun without it
    daemon.launch(requested)
    again = daemon.tick()
    assert again == DOWNSTREAM
    daemon.launch(again)

    assert daemon.tick() == set()
    assert builds(daemon) == 2
    assert patients_per_upload(lake) == {"ward-d": PATIENTS, "ward-e": PATIENTS}
