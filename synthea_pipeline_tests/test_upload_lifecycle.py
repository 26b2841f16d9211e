"""What users do to a lake over weeks: remove an upload and have it stay removed on any Dagster instance until it is
uploaded again, re-upload cut or partial copies of loaded patients and be told, before anything is committed, what
that would remove, and list every upload with its state."""

import io
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from dagster import build_sensor_context

from synthea_pipeline.cli import main
from synthea_pipeline.jobs import stage_upload_job
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.runs import _run_job, backfill, list_uploads, run_upload
from synthea_pipeline.sensors import upload_sensor
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.storage import LocalStorage
from synthea_pipeline.transforms.uploads import upload_export
from synthea_pipeline_tests.conftest import SAMPLES, catalog_rows, fresh_instance, read_rows, staged, write_rows

pytestmark = pytest.mark.slow  # a dozen pipeline runs on one Sail server

SAMPLE = SAMPLES["2.7"]


def sensor_tick(lake: Lake, instance):
    return upload_sensor(
        build_sensor_context(
            instance=instance, resources={"lake": LakeResource(root=lake.root), "catalog": CatalogResource()}
        )
    )


def patient_ids(folder: Path) -> set[str]:
    return {row[0] for row in read_rows(folder / "patients.csv")[1]}


def rows_of(folder: Path, table: str, patients: set[str]) -> int:
    """Distinct complete rows of a table whose patient is one of `patients` (what staging keeps of them)."""
    path = folder / f"{table}.csv"
    if not path.exists():
        return 0
    lines = path.read_text().split("\n")[:-1]  # the text after the last line break is a cut line, or nothing
    header, *rows = [tuple(line.split(",")) for line in lines]
    column = header.index("PATIENT")
    return len({row for row in rows if len(row) == len(header) and row[column] in patients})


@pytest.fixture(scope="module")
def removed(spark, instance, tmp_path_factory):
    """A lake of `kept` (2.7) and `gone` (3.0 without procedures.csv), after `gone` was removed by the command
    without --purge-source; the report of `gone`'s run and what the command printed."""
    work = tmp_path_factory.mktemp("removal")
    lake = Lake(str(work / "lake"))
    partial = work / "gone"
    shutil.copytree(SAMPLES["3.0"], partial)
    (partial / "procedures.csv").unlink()
    assert run_upload(str(SAMPLES["2.7"]), lake.root, "kept", instance=instance, spark=spark).success
    report = run_upload(str(partial), lake.root, "gone", instance=instance, spark=spark)
    assert report.success, report.errors
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["remove", "gone", "--lake", lake.root]) == 0
    return lake, report, printed.getvalue()


def test_a_first_upload_names_the_tables_it_lacks(removed):
    _, report, _ = removed
    assert report.warnings["staging/patients:export_complete"]["absent_tables"] == ["procedures"]
    assert report.checks["staging/patients:history_preserved"] is True and report.supersedes == []


def test_the_remove_command_says_what_it_removed_and_rebuilt(removed):
    lake, _, printed = removed
    assert printed.startswith(
        f"removed upload gone from {lake.root}: 1 loads deleted (staging, quarantine and raw "
        "rows), its partition removed, its source kept: the sensor leaves it alone until it is "
        "uploaded again\n"
    )
    assert "rows in" not in printed and "staging (Iceberg)" not in printed  # no staging load to report
    assert f"marts (all uploads): patient_fact {len(patient_ids(SAMPLES['2.7'])) + 1}," in printed


def test_a_removed_upload_is_listed_and_left_alone_by_the_sensor_of_a_fresh_instance(removed):
    lake, _, _ = removed
    uploads = {row["upload_id"]: row for row in list_uploads(lake.root)}
    assert uploads["gone"]["state"] == "removed" and uploads["gone"]["patients"] is None
    assert uploads["gone"]["removed_at"] is not None and uploads["gone"]["committed_at"] is None
    assert uploads["kept"]["state"] == "committed"
    assert uploads["kept"]["patients"] == len(patient_ids(SAMPLES["2.7"]))
    assert uploads["kept"]["synthea_release"] == "2.7" and uploads["kept"]["registered_at"] is not None
    in_catalog = catalog_rows(lake, "SELECT upload_id, state FROM synthea_staging.upload_states ORDER BY 1")
    assert in_catalog.to_pylist() == [
        {"upload_id": "gone", "state": "removed"},
        {"upload_id": "kept", "state": "committed"},
    ]
    with fresh_instance() as fresh:
        result = sensor_tick(lake, fresh)
        assert result.run_requests == []
        assert [request.partition_keys for request in result.dynamic_partitions_requests] == [["kept"]]
        assert "gone: removed from the lake at" in result.skip_reason.skip_message
        assert "kept: already in the lake" in result.skip_reason.skip_message


def test_backfilling_a_removed_upload_says_how_to_bring_it_back(removed):
    with pytest.raises(
        KeyError,
        match=r"upload gone was removed from the lake .*synthea-pipeline upload EXPORT "
        r"--upload-id gone",
    ):
        backfill(["gone"], removed[0].root)


def test_a_backfill_by_an_instance_that_still_lists_the_upload_skips_it(removed, spark, instance):
    lake, _, _ = removed
    instance.add_dynamic_partitions("uploads", ["gone"])
    result = _run_job(stage_upload_job, LakeResource(root=lake.root), spark, instance, "backfill", partition_key="gone")
    assert result.success
    assert result.get_asset_materialization_events() == []
    assert CatalogResource().upload_states(lake)["gone"]["state"] == "removed"
    assert staged(lake, "gone", "patients").num_rows == 0


def test_an_explicit_new_upload_brings_a_removed_upload_back(removed):
    lake, _, _ = removed
    upload_export(str(SAMPLES["3.0"]), LocalStorage(lake.uri("source")), "gone")
    assert {row["upload_id"]: row["state"] for row in list_uploads(lake.root)}["gone"] == "waiting"
    with fresh_instance() as fresh:
        assert [request.partition_key for request in sensor_tick(lake, fresh).run_requests] == ["gone"]


@pytest.fixture(scope="module")
def history(spark, instance, tmp_path_factory):
    """A lake holding `ward` (the 2.7 sample), and the exports that follow it."""
    work = tmp_path_factory.mktemp("history")
    lake = Lake(str(work / "lake"))
    assert run_upload(str(SAMPLE), lake.root, "ward", instance=instance, spark=spark).success
    cut = work / "ward-cut"
    shutil.copytree(SAMPLE, cut)
    text = (cut / "encounters.csv").read_bytes()
    (cut / "encounters.csv").write_bytes(text[: len(text) // 2])
    return {"lake": lake, "work": work, "cut": cut}


def test_a_cut_copy_of_loaded_patients_is_refused_naming_what_it_would_remove(history, spark, instance):
    lake, cut = history["lake"], history["cut"]
    patients = patient_ids(SAMPLE)
    before, after = rows_of(SAMPLE, "encounters", patients), rows_of(cut, "encounters", patients)
    report = run_upload(str(cut), lake.root, "ward-copy", instance=instance, spark=spark)
    assert not report.success
    [error] = report.errors
    assert error.startswith("upload ward-copy not committed: it would remove history: ")
    assert f"encounters: {before:,} -> {after:,} rows" in error
    assert f"for the {len(patients)} patients of upload ward" in error
    assert "more than the 10% allowed" in error and "the last line of encounters.csv is cut" in error
    assert "--replace" in error and "synthea-pipeline upload EXPORT --upload-id ward-copy --replace" in error
    assert report.checks["staging/patients:history_preserved"] is False
    assert staged(lake, "ward-copy", "patients").num_rows == 0
    assert staged(lake, "ward", "encounters").num_rows == before
    state = CatalogResource().upload_states(lake)["ward-copy"]
    assert (state["state"], state["last_run"]) == ("failed", "failed")
    assert "would remove history" in state["last_run_note"]


def test_confirmed_with_replace_the_cut_copy_takes_the_patients_over_and_says_what_it_removed(history, spark, instance):
    lake, cut = history["lake"], history["cut"]
    patients = patient_ids(SAMPLE)
    before, after = rows_of(SAMPLE, "encounters", patients), rows_of(cut, "encounters", patients)
    report = run_upload(str(cut), lake.root, "ward-copy", instance=instance, spark=spark, replace_history=True)
    assert report.success, report.errors
    assert report.supersedes[0].startswith(f"supersedes upload ward ({len(patients)} patients moved): ")
    assert f"encounters {after - before:+,}" in report.supersedes[0]
    warning = report.warnings["staging/patients:history_preserved"]
    assert warning["confirmed_with_replace"] is True
    assert warning["supersedes"]["ward"]["rows"]["encounters"] == {"before": before, "after": after}
    assert warning["supersedes"]["ward"]["moved_to"] == {"ward-copy": len(patients)}
    fact = catalog_rows(
        lake, "SELECT upload_id, count(*) AS n FROM synthea_marts.patient_fact WHERE NOT is_unknown GROUP BY 1"
    ).to_pylist()
    assert fact == [{"upload_id": "ward-copy", "n": len(patients)}]


def test_a_copy_lacking_a_table_its_patients_had_is_refused(history, spark, instance):
    lake = history["lake"]
    partial = history["work"] / "no-encounters"
    shutil.copytree(SAMPLE, partial)
    (partial / "encounters.csv").unlink()
    patients = patient_ids(SAMPLE)
    report = run_upload(str(partial), lake.root, "ward-again", instance=instance, spark=spark)
    assert not report.success
    cut_rows = rows_of(history["cut"], "encounters", patients)
    assert (
        f"encounters.csv is absent (upload ward-copy had {cut_rows:,} rows for the {len(patients)} patients this "
        "upload takes over)"
    ) in report.errors[0]


def test_a_re_upload_that_shrinks_a_table_less_than_the_limit_needs_no_confirmation(history, spark, instance):
    """The cut copy corrected: encounters complete again, a few conditions fewer (within the 10% allowed)."""
    lake, work = history["lake"], history["work"]
    corrected = work / "corrected"
    shutil.copytree(SAMPLE, corrected)
    patients = patient_ids(SAMPLE)
    header, conditions = read_rows(corrected / "conditions.csv")
    write_rows(corrected / "conditions.csv", header, conditions[len(conditions) * 5 // 100 :])
    conditions_before, conditions_after = (
        rows_of(SAMPLE, "conditions", patients),
        rows_of(corrected, "conditions", patients),
    )
    encounters_before, encounters_after = (
        rows_of(history["cut"], "encounters", patients),
        rows_of(corrected, "encounters", patients),
    )
    report = run_upload(str(corrected), lake.root, "ward-copy", instance=instance, spark=spark)
    assert report.success, report.errors
    assert conditions_before > conditions_after and encounters_after > encounters_before
    assert report.supersedes == [
        (
            f"supersedes its previous load ({len(patients)} patients): encounters "
            f"{encounters_after - encounters_before:+,}, conditions {conditions_after - conditions_before:+,}"
        )
    ]
    assert report.checks["staging/patients:history_preserved"] is True
