"""The whole pipeline with the lake on S3 (a moto server over HTTP; Sail reads and writes s3:// itself)."""

import boto3
import pyarrow.dataset as ds

from synthea_pipeline.runs import SAMPLE_DIR, run_upload
from synthea_pipeline.tables import DEFAULT_TABLES
from synthea_pipeline.transforms.lake import filesystem_for
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline_tests.conftest import fresh_instance


def rows(uri: str) -> list[tuple]:
    fs, path = filesystem_for(uri)
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table()
    return sorted((tuple(row.values()) for row in table.to_pylist()), key=repr)


def test_lake_on_s3_matches_the_local_folder_run_and_reruns_replace(bucket, tmp_path):
    local_root, s3_root = str(tmp_path / "lake"), f"s3://{bucket}/lake"
    with fresh_instance() as instance:
        local = run_upload(str(SAMPLE_DIR), local_root, "u1", instance=instance)
    with fresh_instance() as instance:
        on_s3 = run_upload(str(SAMPLE_DIR), s3_root, "u1", instance=instance)
        assert on_s3.success and not on_s3.errors, on_s3.errors
        assert [(t.table, t.rows_out) for t in on_s3.tables] == [(t.table, t.rows_out) for t in local.tables]
        assert on_s3.marts == local.marts
        for table in DEFAULT_TABLES:
            assert rows(f"{s3_root}/staging/{table}/upload_id=u1") == rows(
                f"{local_root}/staging/{table}/upload_id=u1"), table
        for mart in MARTS:
            assert rows(f"{s3_root}/marts/{mart}") == rows(f"{local_root}/marts/{mart}"), mart

        s3 = boto3.client("s3")
        keys = lambda: [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                        for o in page.get("Contents", [])]
        before = keys()
        assert "lake/source/u1.manifest.json" in before
        assert not [k for k in before if "/_tmp_" in k]

        again = run_upload(str(SAMPLE_DIR), s3_root, "u1", instance=instance)
        assert again.success
        after = keys()
        assert not [k for k in after if "/_tmp_" in k]
        staging = lambda listing: sorted(k for k in listing if k.startswith("lake/staging/") and k.endswith(".parquet"))
        assert len(staging(after)) == len(staging(before)) and staging(after) != staging(before)
        assert rows(f"{s3_root}/staging/observations/upload_id=u1") == rows(
            f"{local_root}/staging/observations/upload_id=u1")
