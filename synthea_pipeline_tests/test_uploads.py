"""Uploads and the upload sensor, over real HTTP to a moto S3 server and with a real Dagster instance."""

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from dagster import AssetKey, AssetMaterialization, DagsterResourceFunctionError, build_sensor_context
from pydantic import ValidationError

from synthea_pipeline.assets.batch import batch_run_tags, batch_uploads
from synthea_pipeline.cli import main
from synthea_pipeline.definitions import defs as definitions
from synthea_pipeline.jobs import stage_upload_job
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.sensors import build_upload_sensor, upload_run_requests, upload_sensor
from synthea_pipeline.settings import UPLOAD_BATCH_SIZE, UPLOAD_SENSOR_BUDGET_SECONDS
from synthea_pipeline.transforms.storage import S3Storage, UploadVerificationError, digest_file, storage_for
from synthea_pipeline.transforms.uploads import ReadyUpload, UploadWatcher, upload_export
from synthea_pipeline_tests.conftest import SAMPLES, fresh_instance, zipped

SMALL_TABLES = ("patients.csv", "organizations.csv", "providers.csv", "payers.csv")


@pytest.fixture
def small_export(tmp_path):
    """Four unmodified files of the 2.7 sample: enough for the sensor, quick to upload fifty times."""
    folder = tmp_path / "small"
    folder.mkdir()
    for name in SMALL_TABLES:
        shutil.copy(SAMPLES["2.7"] / name, folder / name)
    return folder


def tick(instance, lake_root, cursor=None, quiet_seconds=300):
    lake = LakeResource(root=lake_root, upload_quiet_seconds=quiet_seconds)
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"lake": lake, "catalog": CatalogResource()}
    )
    return upload_sensor(context)


def reason(result) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""


def requested_uploads(request) -> list[str]:
    """The uploads a run request is for: a batch run's, or the one partition of a run of its own."""
    return batch_uploads(request.tags) or [request.partition_key]


def partitions_added(result) -> list[str]:
    return [key for request in result.dynamic_partitions_requests for key in request.partition_keys]


@pytest.mark.slow
def test_upload_command_stores_verified_files_and_writes_the_manifest_last(bucket, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "synthea_pipeline.cli",
            "upload",
            str(SAMPLES["3.0"]),
            "--to",
            f"s3://{bucket}/lake/source",
            "--upload-id",
            "u1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"to s3://{bucket}/lake/source/u1/" in result.stdout
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="lake/source/")["Contents"]]
    assert "lake/source/u1.uploading" not in keys
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="lake/source/u1.manifest.json")["Body"].read())
    local = sorted(p.name for p in SAMPLES["3.0"].glob("*.csv"))
    assert [f["name"] for f in manifest["files"]] == local
    assert manifest["synthea_release"] == "3.0"
    for entry in manifest["files"]:
        content = (SAMPLES["3.0"] / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest() and entry["size"] == len(content)
        assert s3.get_object(Bucket=bucket, Key=f"lake/source/u1/{entry['name']}")["Body"].read() == content


def test_large_files_go_up_in_parts_and_are_verified(bucket, tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(os.urandom(11 * 1024 * 1024))
    part = 5 * 1024 * 1024
    digest = digest_file(str(path), part)
    assert digest.etag.endswith("-3")
    storage = S3Storage(bucket, "source")
    storage.upload_file(str(path), "u1/big.csv", digest, part)
    head = boto3.client("s3").head_object(Bucket=bucket, Key="source/u1/big.csv")
    assert head["ETag"].strip('"') == digest.etag
    with pytest.raises(UploadVerificationError, match="does not match the file"):
        storage.upload_file(str(path), "u1/big.csv", dataclasses.replace(digest, etag="0" * 32), part)


def test_invalid_upload_ids_are_refused(bucket, small_export):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "synthea_pipeline.cli",
            "upload",
            str(small_export),
            "--to",
            f"s3://{bucket}/source",
            "--upload-id",
            "a,b",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "invalid upload id 'a,b'" in result.stderr and "Traceback" not in result.stderr
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=bucket)


def test_sensor_requests_one_run_per_complete_upload(instance, bucket, small_export):
    lake = f"s3://{bucket}/lake"
    manifest = upload_export(str(small_export), storage_for(f"{lake}/source"), "u1")
    first = tick(instance, lake)
    [request] = first.run_requests
    assert request.partition_key == "u1"
    assert request.run_key.startswith(f"u1@{manifest['checksum'][:16]}.")
    assert partitions_added(first) == ["u1"]
    again = tick(instance, lake, first.cursor)
    assert again.run_requests == [] and "1 unchanged" in reason(again)


def test_incomplete_upload_is_skipped_then_picked_up(instance, bucket, small_export):
    lake = f"s3://{bucket}/lake"
    upload_export(str(small_export), storage_for(f"{lake}/source"), "u1")
    s3 = boto3.client("s3")
    held_back = s3.get_object(Bucket=bucket, Key="lake/source/u1/providers.csv")["Body"].read()
    s3.delete_object(Bucket=bucket, Key="lake/source/u1/providers.csv")
    first = tick(instance, lake)
    assert first.run_requests == []
    assert "u1: incomplete: manifest lists 4 files, 3 present (providers.csv missing)" in reason(first)
    s3.put_object(Bucket=bucket, Key="lake/source/u1/providers.csv", Body=held_back)
    assert [r.partition_key for r in tick(instance, lake, first.cursor).run_requests] == ["u1"]


def test_reupload_runs_again_only_when_the_content_changed(instance, bucket, small_export, tmp_path):
    lake = f"s3://{bucket}/lake"
    storage = storage_for(f"{lake}/source")
    upload_export(str(small_export), storage, "u1")
    first = tick(instance, lake)
    [original] = first.run_requests

    manifest = json.loads(storage.read_bytes("u1.manifest.json"))
    storage.write_bytes("u1.manifest.json", json.dumps({**manifest, "uploaded_at": "later"}).encode())
    identical = tick(instance, lake, first.cursor)
    assert identical.run_requests == [] and "u1: identical re-upload" in reason(identical)

    changed = tmp_path / "changed"
    shutil.copytree(small_export, changed)
    shutil.copy(SAMPLES["3.0"] / "payers.csv", changed / "payers.csv")
    new_manifest = upload_export(str(changed), storage, "u1")
    second = tick(instance, lake, identical.cursor)
    [rerun] = second.run_requests
    assert rerun.run_key.startswith(f"u1@{new_manifest['checksum'][:16]}.") and rerun.run_key != original.run_key

    upload_export(str(small_export), storage, "u1")
    [reverted] = tick(instance, lake, second.cursor).run_requests
    assert reverted.run_key.startswith(original.run_key.split(".")[0])
    assert reverted.run_key not in {original.run_key, rerun.run_key}


def test_an_upload_in_progress_is_left_alone(instance, bucket, small_export):
    lake = f"s3://{bucket}/lake"
    storage = storage_for(f"{lake}/source")
    upload_export(str(small_export), storage, "u1")
    storage.write_bytes("u1.uploading", b"{}")
    waiting = tick(instance, lake)
    assert waiting.run_requests == [] and "u1: upload in progress (u1.uploading present)" in reason(waiting)
    upload_export(str(small_export), storage, "u1")
    assert [r.partition_key for r in tick(instance, lake, waiting.cursor).run_requests] == ["u1"]


@pytest.mark.slow
def test_upload_refuses_a_different_export_under_a_derived_id(bucket, tmp_path):
    first, second = tmp_path / "a" / "csv", tmp_path / "b" / "csv"
    shutil.copytree(SAMPLES["2.7"], first)
    shutil.copytree(SAMPLES["3.0"], second)
    command = [sys.executable, "-m", "synthea_pipeline.cli", "upload", "--to", f"s3://{bucket}/source"]
    assert subprocess.run([*command, str(first)], check=False, capture_output=True, timeout=120).returncode == 0
    again = subprocess.run([*command, str(first)], check=False, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    refused = subprocess.run([*command, str(second)], check=False, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "upload id 'csv' already holds a different export" in refused.stderr
    assert storage_for(f"s3://{bucket}/source").read_bytes("csv/patients.csv") == (first / "patients.csv").read_bytes()


def test_cursor_and_recorded_materializations_survive_a_restart(bucket, small_export):
    lake = f"s3://{bucket}/lake"
    manifest = upload_export(str(small_export), storage_for(f"{lake}/source"), "u1")
    with fresh_instance() as instance:
        first = tick(instance, lake)
        assert len(first.run_requests) == 1
        assert tick(instance, lake, first.cursor).run_requests == []
        # Without its cursor the sensor would hand the upload out again; the instance knows it was processed.
        instance.add_dynamic_partitions("uploads", ["u1"])
        instance.report_runless_asset_event(
            AssetMaterialization(
                AssetKey(["source", "patients"]), partition="u1", metadata={"upload_checksum": manifest["checksum"]}
            )
        )
        assert tick(instance, lake).run_requests == []


def test_manifestless_upload_is_picked_up_once_quiet(instance, bucket):
    lake = f"s3://{bucket}/lake"
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="lake/source/byhand/", Body=b"")
    for name in SMALL_TABLES:
        s3.put_object(Bucket=bucket, Key=f"lake/source/byhand/{name}", Body=(SAMPLES["2.7"] / name).read_bytes())
    s3.put_object(Bucket=bucket, Key="lake/source/nested/csv/patients.csv", Body=b"Id\n")
    s3.put_object(Bucket=bucket, Key="lake/source/bad,id/patients.csv", Body=b"Id\n")

    waiting = tick(instance, lake, quiet_seconds=3600)
    assert waiting.run_requests == []
    assert "byhand: no manifest: waiting until its files have been unchanged for 3600 s" in reason(waiting)
    assert "nested: no manifest and no patients.csv yet (found csv/patients.csv" in reason(waiting)
    assert "bad,id: invalid upload id 'bad,id'" in reason(waiting)

    picked = tick(instance, lake, waiting.cursor, quiet_seconds=0)
    assert [r.partition_key for r in picked.run_requests] == ["byhand"]
    assert tick(instance, lake, picked.cursor).run_requests == []


def test_a_change_restarts_the_quiet_period(instance, bucket):
    lake = f"s3://{bucket}/lake"
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="lake/source/u1/patients.csv", Body=(SAMPLES["2.7"] / "patients.csv").read_bytes())
    first = tick(instance, lake, quiet_seconds=60)
    assert first.run_requests == [] and "unchanged for 0 s" in reason(first)
    long_ago = json.loads(first.cursor)
    long_ago["pending"]["u1"][1] = 0
    s3.put_object(Bucket=bucket, Key="lake/source/u1/payers.csv", Body=(SAMPLES["2.7"] / "payers.csv").read_bytes())
    changed = tick(instance, lake, json.dumps(long_ago), quiet_seconds=60)
    assert changed.run_requests == [] and "unchanged for 0 s" in reason(changed)
    long_ago = json.loads(changed.cursor)
    long_ago["pending"]["u1"][1] = 0
    assert [r.partition_key for r in tick(instance, lake, json.dumps(long_ago), quiet_seconds=60).run_requests] == [
        "u1"
    ]


@pytest.mark.slow
def test_fifty_uploads_landing_together_are_each_handed_out_once_in_batches(instance, bucket, small_export):
    lake = f"s3://{bucket}/lake"
    storage = storage_for(f"{lake}/source")
    ids = [f"upload-{n:02d}" for n in range(50)]
    requests, cursor = [], None
    finished = threading.Event()

    def upload_all():
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda upload: upload_export(str(small_export), storage, upload), ids))
        finished.set()

    uploader = threading.Thread(target=upload_all)
    uploader.start()
    while True:
        done = finished.is_set()
        result = tick(instance, lake, cursor)
        for request in result.run_requests:
            assert len(requested_uploads(request)) <= int(UPLOAD_BATCH_SIZE.default)
            for upload in requested_uploads(request):
                assert storage.read_bytes(f"{upload}.manifest.json")
        requests += result.run_requests
        cursor = result.cursor
        if done:
            break
    uploader.join()
    assert sorted(u for r in requests for u in requested_uploads(r)) == ids
    assert len({r.run_key for r in requests}) == len(requests) < 50
    assert tick(instance, lake, cursor).run_requests == []


@pytest.mark.unit
def test_a_tick_inspects_a_bounded_number_of_uploads(tmp_path, small_export):
    storage = storage_for(str(tmp_path / "source"))
    for n in range(5):
        upload_export(str(small_export), storage, f"u{n}")
    watcher = UploadWatcher(storage, quiet_seconds=0, max_inspections=2)
    handed_out, cursor = [], None
    for _ in range(3):
        outcome = watcher.tick(cursor, now=0)
        handed_out.append([r.upload_id for r in outcome.ready])
        cursor = outcome.cursor
    assert handed_out == [["u0", "u1"], ["u2", "u3"], ["u4"]]
    assert watcher.tick(cursor, now=0).ready == []


@pytest.mark.unit
def test_uploads_that_keep_waiting_do_not_starve_the_others(tmp_path, small_export):
    storage = storage_for(str(tmp_path / "source"))
    for stray in ("a0", "a1"):
        storage.write_bytes(f"{stray}/notes.txt", b"not an export")
    upload_export(str(small_export), storage, "z9")
    watcher = UploadWatcher(storage, quiet_seconds=0, max_inspections=2)
    first = watcher.tick(None, now=0)
    assert first.ready == [] and "left for a later tick" in first.skipped["z9"]
    assert [r.upload_id for r in watcher.tick(first.cursor, now=0).ready] == ["z9"]


def seconds_per_reading():
    """A monotonic clock that moves one second each time it is read: the watcher reads it before starting each
    inspection but the first, the sensor before each upload it hands out but the first."""
    readings = itertools.count()
    return lambda: next(readings)


@pytest.mark.unit
def test_a_tick_stops_at_its_time_budget_and_the_next_ticks_carry_on(tmp_path, small_export):
    storage = storage_for(str(tmp_path / "source"))
    ids = [f"u{n:02d}" for n in range(12)]
    for upload in ids:
        upload_export(str(small_export), storage, upload)
    clock = seconds_per_reading()
    watcher = UploadWatcher(storage, quiet_seconds=0, clock=clock)
    first = watcher.tick(None, now=0, deadline=clock() + 5)
    assert [r.upload_id for r in first.ready] == ids[:5]
    assert first.skipped == dict.fromkeys(
        ids[5:], "left for a later tick (12 uploads to inspect, 5 inspected: the tick's time budget ran out; in turn)"
    )
    handed_out, cursor, ticks = [r.upload_id for r in first.ready], first.cursor, 1
    while any("left for a later tick" in why for why in first.skipped.values()):
        first = watcher.tick(cursor, now=0, deadline=clock() + 5)
        handed_out += [r.upload_id for r in first.ready]
        cursor, ticks = first.cursor, ticks + 1
    assert handed_out == ids and ticks == 3
    after = watcher.tick(cursor, now=0, deadline=clock() + 5)
    assert after.ready == [] and after.skipped == {} and after.unchanged == 12


@pytest.mark.unit
def test_uploads_a_caller_holds_back_come_first_on_the_next_tick(tmp_path, small_export):
    storage = storage_for(str(tmp_path / "source"))
    ids = [f"u{n}" for n in range(5)]
    for upload in ids:
        upload_export(str(small_export), storage, upload)
    watcher = UploadWatcher(storage, quiet_seconds=0, max_inspections=3)
    first = watcher.tick(None, now=0)
    assert [r.upload_id for r in first.ready] == ["u0", "u1", "u2"]
    second = watcher.tick(first.cursor_handing_out(2), now=0)
    assert [r.upload_id for r in second.ready] == ["u2", "u3", "u4"]
    assert watcher.tick(second.cursor, now=0).ready == []


@pytest.mark.unit
def test_a_held_back_reupload_keeps_what_was_handed_out_before(tmp_path, small_export):
    storage = storage_for(str(tmp_path / "source"))
    for upload in ("u0", "u1"):
        upload_export(str(small_export), storage, upload)
    watcher = UploadWatcher(storage, quiet_seconds=0)
    handed_out = watcher.tick(None, now=0).cursor
    changed = tmp_path / "changed"
    shutil.copytree(small_export, changed)
    shutil.copy(SAMPLES["3.0"] / "payers.csv", changed / "payers.csv")
    new_checksums = [upload_export(str(changed), storage, upload)["checksum"] for upload in ("u0", "u1")]
    reuploaded = watcher.tick(handed_out, now=0)
    assert [r.checksum for r in reuploaded.ready] == new_checksums
    held_back = watcher.tick(reuploaded.cursor_handing_out(0), now=0)
    assert [r.checksum for r in held_back.ready] == new_checksums
    assert watcher.tick(held_back.cursor, now=0).ready == []


@pytest.mark.unit
def test_the_sensor_splits_its_budget_between_inspecting_and_handing_out(instance, tmp_path, small_export):
    lake_root = str(tmp_path / "lake")
    ids = [f"budget-{n}" for n in range(5)]
    for upload in ids:
        upload_export(str(small_export), storage_for(f"{lake_root}/source"), upload)
    budgeted_sensor = build_upload_sensor(clock=seconds_per_reading())
    lake = LakeResource(root=lake_root, upload_sensor_budget_seconds=5)
    requested, cursor = [], None
    for _ in range(3):
        result = budgeted_sensor(
            build_sensor_context(
                instance=instance, cursor=cursor, resources={"lake": lake, "catalog": CatalogResource()}
            )
        )
        requested.append([u for r in result.run_requests for u in requested_uploads(r)])
        cursor = result.cursor
    # Of 5 s, the watcher inspects until 2.5 s (three uploads), the sensor hands out two and holds one back.
    assert requested == [ids[:2], ids[2:], []]
    assert "5 unchanged" in reason(result)


@pytest.mark.unit
def test_the_budget_must_be_positive(instance, tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="must be positive"):
        LakeResource(upload_sensor_budget_seconds=0)
    monkeypatch.setenv(UPLOAD_SENSOR_BUDGET_SECONDS.env_var, "0")
    lake = LakeResource(
        root=str(tmp_path / "lake"), upload_sensor_budget_seconds=UPLOAD_SENSOR_BUDGET_SECONDS.resource_value()
    )
    with pytest.raises(DagsterResourceFunctionError) as refused:
        upload_sensor(build_sensor_context(instance=instance, resources={"lake": lake, "catalog": CatalogResource()}))
    assert "upload_sensor_budget_seconds must be positive, not 0" in str(refused.value.__cause__)


@pytest.mark.unit
def test_sensor_watches_a_local_lake_too(instance, tmp_path, small_export):
    lake = str(tmp_path / "lake")
    upload_export(str(small_export), storage_for(f"{lake}/source"), "local-1")
    assert (tmp_path / "lake" / "source" / "local-1.manifest.json").is_file()
    first = tick(instance, lake)
    assert [r.partition_key for r in first.run_requests] == ["local-1"]
    shutil.copy(SAMPLES["3.0"] / "payers.csv", small_export / "payers.csv")
    upload_export(str(small_export), storage_for(f"{lake}/source"), "local-1")
    [rerun] = tick(instance, lake, first.cursor).run_requests
    assert rerun.partition_key == "local-1" and rerun.run_key != first.run_requests[0].run_key


def test_an_upload_a_batch_run_holds_waits_for_that_run(tmp_path, small_export):
    lake = str(tmp_path / "lake")
    storage = storage_for(f"{lake}/source")
    with fresh_instance() as instance:
        instance.add_dynamic_partitions("uploads", ["b1", "b2"])
        batch = instance.create_run_for_job(
            job_def=definitions.resolve_job_def(stage_upload_job.name), tags=batch_run_tags(["b1", "b2"], {})
        )
        for upload in ("b1", "b3"):
            upload_export(str(small_export), storage, upload)
        held = tick(instance, lake)
        assert held.run_requests == []
        assert f"b1: left for a later tick (waits for batch run {batch.run_id}, which holds it)" in reason(held)
        assert "b3: left for a later tick" in reason(held)  # it comes after b1 in the sensor's order
        instance.report_run_failed(batch)
        released = tick(instance, lake, held.cursor)
        assert sorted(u for r in released.run_requests for u in requested_uploads(r)) == ["b1", "b3"]


@pytest.mark.unit
def test_a_zip_of_an_export_uploads_like_its_folder(tmp_path, capsys):
    archive = zipped(SAMPLES["2.7"], tmp_path / "synthea_sample_data_csv_apr2020.zip")
    assert main(["upload", str(archive), "--to", str(tmp_path / "source")]) == 0
    stored = tmp_path / "source" / "synthea_sample_data_csv_apr2020"
    assert f"to {stored}/" in capsys.readouterr().out
    originals = sorted(SAMPLES["2.7"].glob("*.csv"))
    assert sorted(p.name for p in stored.iterdir()) == [p.name for p in originals]
    assert all((stored / p.name).read_bytes() == p.read_bytes() for p in originals)
    assert list(Path(tempfile.gettempdir()).glob("synthea-export-*")) == []  # the extracted copy is gone


@pytest.mark.unit
def test_a_single_csv_or_a_zip_of_two_exports_is_refused_saying_what_to_pass(tmp_path, capsys):
    assert main(["upload", str(SAMPLES["2.7"] / "patients.csv"), "--to", str(tmp_path / "source")]) == 2
    assert "is a file: pass the folder of the export (Synthea's output/csv) or a .zip of it" in capsys.readouterr().err
    two = zipped(SAMPLES["3.0"], zipped(SAMPLES["2.7"], tmp_path / "two.zip", "a/csv"), "b/csv")
    assert main(["upload", str(two), "--to", str(tmp_path / "source")]) == 2
    assert "2 folders with patients.csv (a/csv, b/csv); a zip must hold one Synthea CSV export" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "source").exists()


@pytest.mark.unit
def test_runs_cover_neighbouring_partitions_split_evenly_and_a_held_upload_runs_alone():
    ready = [ReadyUpload(f"u{n}", f"sum{n}") for n in range(7)]
    order = ["u0", "u1", "u2", "old", "u3", "u4", "u5", "u6"]
    requests = upload_run_requests(ready, order, batch_size=2, alone={"u5"})
    assert [requested_uploads(r) for r in requests] == [["u0"], ["u1", "u2"], ["u3", "u4"], ["u5"], ["u6"]]
    assert [r.partition_key for r in requests if not batch_uploads(r.tags)] == ["u0", "u5", "u6"]
    assert len({r.run_key for r in requests}) == len(requests)
    spread = upload_run_requests(ready[:4], order, batch_size=25, alone=set(), parallel=2)
    assert [requested_uploads(r) for r in spread] == [["u0"], ["u1", "u2"], ["u3"]]  # u2 and u3 are not neighbours
