"""Incremental mart builds: a build rewrites only the uploads that changed and keeps the others' rows, and after
every kind of change (a new upload, references a later upload resolves, a corrected re-upload, the same patients
under a second upload id, rows of a patient absent from the lake in two uploads) its marts equal, row for row, a
full rebuild of the same lake."""

import logging
import shutil
import uuid

import pytest

from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.layers import AssetReport, run_marts, run_staging
from synthea_pipeline.transforms.marts import MARTS, UNKNOWN_KEY
from synthea_pipeline_tests.conftest import SAMPLES, mart, read_rows

pytestmark = pytest.mark.slow  # eight uploads, each built incrementally and then in full

LOG = logging.getLogger("incremental")


def partial_export(folder, source, keep=None, drop=()):
    """A copy of a sample with only the files `keep` names (all when None) minus `drop`; patients.csv always, as
    a header alone when it is not kept."""
    folder.mkdir()
    for path in source.glob("*.csv"):
        if (keep is None or path.stem in keep) and path.stem not in drop:
            shutil.copy(path, folder / path.name)
    if not (folder / "patients.csv").exists():
        (folder / "patients.csv").write_text((source / "patients.csv").read_text().splitlines()[0] + "\n")
    return folder


def corrected_export(folder, source):
    """A sample whose first patient's marital status was corrected."""
    shutil.copytree(source, folder)
    header, rows = read_rows(folder / "patients.csv")
    rows[0][header.index("MARITAL")] = "W" if rows[0][header.index("MARITAL")] != "W" else "M"
    (folder / "patients.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return folder, rows[0][0]


ABSENT_PATIENT = "00000000-0000-4000-8000-000000000000"


def orphan_export(folder, source):
    """An export whose three conditions name a patient that no upload holds (patients.csv is a header alone)."""
    folder.mkdir()
    (folder / "patients.csv").write_text((source / "patients.csv").read_text().splitlines()[0] + "\n")
    header, rows = read_rows(source / "conditions.csv")
    for row in rows[:3]:
        row[header.index("PATIENT")] = ABSENT_PATIENT
    (folder / "conditions.csv").write_text("\n".join(",".join(r) for r in [header, *rows[:3]]) + "\n")
    return folder


def build(session, lake: Lake, full: bool) -> str:
    """One committed marts build; returns what its plan said it did."""
    reports = run_marts(session, LOG, lake.root, f"build-{uuid.uuid4().hex[:8]}", full_rebuild=full)
    [plan] = {r.metadata["build_plan"]["raw_value"] for r in reports if isinstance(r, AssetReport)}
    return plan


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Each upload staged into one lake, then an incremental build and a full rebuild: per step, the incremental
    build's plan, the marts it showed and the marts the full rebuild showed."""
    spark = SparkResource(engine="sail")
    folder = tmp_path_factory.mktemp("incremental")
    lake = Lake(str(folder / "lake"))
    corrected, corrected_patient = corrected_export(folder / "corrected", SAMPLES["2.7"])
    uploads = [
        ("m2.7", SAMPLES["2.7"]),
        ("m3.0", SAMPLES["3.0"]),
        ("no-providers", partial_export(folder / "no-providers", SAMPLES["3.3-3.4"], drop=("providers",))),
        ("providers", partial_export(folder / "providers", SAMPLES["3.3-3.4"], keep=("providers",))),
        ("m2.7", corrected),
        ("m3.0-again", SAMPLES["3.0"]),
        ("orphans", orphan_export(folder / "orphans", SAMPLES["2.7"])),
        ("orphans-again", folder / "orphans"),
    ]
    results = []
    try:
        session = spark.get_session(lake.root)
        for upload_id, export in uploads:
            shutil.rmtree(lake.source(upload_id), ignore_errors=True)
            shutil.copytree(export, lake.source(upload_id))
            run_staging(session, LOG, lake.root, upload_id, f"load-{uuid.uuid4().hex[:8]}", replace_history=True)
            plan = build(session, lake, full=False)
            incremental = {name: mart(lake, name) for name in MARTS}
            full_plan = build(session, lake, full=True)
            rebuilt = {name: mart(lake, name) for name in MARTS}
            results.append((upload_id, plan, full_plan, incremental, rebuilt))
    finally:
        spark.teardown_after_execution(None)
    return results, corrected_patient


def test_every_build_equals_a_full_rebuild(steps):
    for upload_id, plan, full_plan, incremental, rebuilt in steps[0]:
        assert full_plan == "full rebuild: asked for"
        for name in MARTS:
            assert incremental[name].num_rows > 0, (upload_id, name)
            assert incremental[name].equals(rebuilt[name]), (upload_id, plan, name)


def test_a_build_rewrites_only_the_changed_uploads_when_nothing_ties_them_to_the_others(steps):
    plans = {index: plan for index, (_, plan, *_) in enumerate(steps[0])}
    assert plans[0] == "full rebuild: the lake's first build"
    assert plans[1] == "rewrites 1 of 2 uploads, keeps the others' rows"
    assert plans[2] == "rewrites 1 of 3 uploads, keeps the others' rows"
    assert plans[4] == "rewrites 1 of 4 uploads, keeps the others' rows", "a corrected re-upload"


def test_references_a_later_upload_resolves_are_rewritten(steps):
    *_, before, _ = steps[0][2]
    _, later_plan, _, after, _ = steps[0][3]
    assert later_plan == "full rebuild: a provider that a kept upload references without finding it is in the lake now"

    def unknown_providers(marts):
        rows = marts["encounter_dim"].to_pylist()
        return sum(1 for r in rows if r["upload_id"] == "no-providers" and r["provider_key"] == UNKNOWN_KEY)

    assert unknown_providers(before) > 0
    assert unknown_providers(after) == 0


def test_a_corrected_reupload_shows_the_correction(steps):
    results, patient = steps
    _, _, _, before, _ = results[3]
    _, _, _, after, _ = results[4]
    marital = {
        name: {r["patient_key"]: r["marital_status"] for r in marts["patient_fact"].to_pylist()}
        for name, marts in (("before", before), ("after", after))
    }
    assert marital["before"][patient] != marital["after"][patient]


def test_the_same_patients_under_a_second_upload_id_fall_back_to_a_full_rebuild(steps):
    _, plan, _, incremental, _ = steps[0][5]
    assert plan == "full rebuild: a patient id is in an upload the build rewrites and in one it keeps"
    owners = {r["upload_id"] for r in incremental["patient_fact"].to_pylist() if r["upload_id"]}
    assert "m3.0-again" in owners and "m3.0" not in owners


def test_rows_of_a_patient_absent_from_the_lake_in_two_uploads_are_kept_once(steps):
    _, first_plan, *_ = steps[0][6]
    _, plan, _, incremental, _ = steps[0][7]
    assert first_plan == "rewrites 1 of 6 uploads, keeps the others' rows"
    assert (
        plan
        == "full rebuild: a patient absent from the lake has rows in an upload the build rewrites and in one it keeps"
    )
    orphans = [r for r in incremental["condition_dim"].to_pylist() if r["upload_id"] in ("orphans", "orphans-again")]
    assert len(orphans) == 3 and {r["upload_id"] for r in orphans} == {"orphans-again"}
    assert {r["patient_key"] for r in orphans} == {UNKNOWN_KEY}
