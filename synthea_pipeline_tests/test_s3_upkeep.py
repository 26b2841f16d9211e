"""Upkeep of a lake on S3 (a moto server): maintenance expires snapshots and removal commits through the Glue
Data Catalog. The OMOP tables stay off here (conftest): their removal is tested in test_omop, their S3 and Glue
writes in test_s3_lake."""

import json

import boto3
import pytest

from synthea_pipeline.runs import SAMPLE_DIR, maintain, remove, run_upload
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline_tests.conftest import fresh_instance
from synthea_pipeline_tests.test_s3_lake import committed

pytestmark = pytest.mark.slow  # three pipeline runs on an S3 lake


def test_maintain_and_remove_commit_through_glue(bucket, monkeypatch):
    """On an S3 lake and Glue databases of its own, as it changes them. moto stores the `VersionId` it is given but
    does not refuse a stale one, so the compare-and-swap of a concurrent commit is not exercised here."""
    monkeypatch.setenv("SYNTHEA_STAGING_DATABASE", "upkeep_staging")
    monkeypatch.setenv("SYNTHEA_MARTS_DATABASE", "upkeep_marts")
    monkeypatch.setenv("SYNTHEA_OMOP_DATABASE", "upkeep_omop")
    lake = Lake(f"s3://{bucket}/lake")
    glue = boto3.client("glue")
    with fresh_instance() as instance:
        for _ in range(2):
            report = run_upload(str(SAMPLE_DIR), lake.root, "u1", instance=instance)
            assert report.success and not report.errors, report.errors
        before = glue.get_table(DatabaseName="upkeep_staging_iceberg", Name="patients")["Table"]["Parameters"]
        patients = committed(lake, "SELECT * EXCLUDE (load_id) FROM upkeep_staging.patients")
        summary = maintain(lake.root, older_than_days=0, instance=instance)
        assert summary["snapshots_expired"] > 0 and summary["files_deleted"] > 0
        after = glue.get_table(DatabaseName="upkeep_staging_iceberg", Name="patients")["Table"]["Parameters"]
        assert after["previous_metadata_location"] == before["metadata_location"] != after["metadata_location"]
        metadata = json.loads(
            boto3.client("s3")
            .get_object(Bucket=bucket, Key=after["metadata_location"][len(f"s3://{bucket}/") :])["Body"]
            .read()
        )
        assert len(metadata["snapshots"]) == 1
        assert committed(lake, "SELECT * EXCLUDE (load_id) FROM upkeep_staging.patients") == patients

        report = remove("u1", lake.root, instance=instance)
    assert report.success, report.errors
    assert committed(lake, "SELECT count(*) FROM upkeep_staging_iceberg.patients") == [(0,)]
    assert committed(lake, "SELECT count(*) FROM upkeep_marts.patient_fact WHERE upload_id IS NOT NULL") == [(0,)]
