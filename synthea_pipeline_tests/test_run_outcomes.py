"""What a user sees when an upload is bad: through Dagster and through the command line."""

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from synthea_pipeline.cli import _age, _duration, main
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.runs import run_upload
from synthea_pipeline.transforms.lake import Lake, aws_client, aws_region
from synthea_pipeline.transforms.storage import LocalStorage
from synthea_pipeline.transforms.uploads import upload_export
from synthea_pipeline_tests.conftest import SAMPLES, quarantined, read_rows, staged

SAMPLE = SAMPLES["2.7"]


@pytest.fixture
def export(tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(SAMPLE, folder)
    return folder


@pytest.mark.slow
def test_quarantined_row_is_accounted_and_checks_pass(instance, export, tmp_path):
    lines = (export / "encounters.csv").read_text().splitlines(keepends=True)
    lines[10] = lines[10].replace(",", ",,", 1)
    (export / "encounters.csv").write_text("".join(lines))
    report = run_upload(str(export), str(tmp_path / "lake"), "bad-row", instance=instance)
    assert report.success and not report.errors
    account = {t.table: t for t in report.tables}["encounters"]
    assert (account.rows_in, account.quarantined, account.rows_out) == (427, 1, 426)
    assert report.checks["staging/encounters:rows_reconcile"] is True
    assert report.checks["raw/encounters:no_quarantined_rows"] is False
    [row] = quarantined(Lake(str(tmp_path / "lake")), "bad-row", "encounters")
    assert row["line_number"] == 11


@pytest.mark.slow
def test_unparseable_values_become_null_and_are_counted(instance, export, tmp_path):
    """Only values that are there and do not parse count: `NaN` and blanks in a numeric column are nulls. The
    count is exact whether or not other rows of the table are quarantined."""
    header, *rows = (export / "supplies.csv").read_text().splitlines()
    for i, quantity in enumerate(["12x", "NaN", "  "]):
        rows[i] = rows[i].rsplit(",", 1)[0] + f",{quantity}"
    (export / "supplies.csv").write_text("\n".join([header, *rows]) + "\n")
    header, *rows = (export / "encounters.csv").read_text().splitlines()
    cost = header.split(",").index("BASE_ENCOUNTER_COST")
    rows[0] = ",".join(v if i != cost else "1.2.3" for i, v in enumerate(rows[0].split(",")))
    rows[1] = ",".join(v if i != 0 else "" for i, v in enumerate(rows[1].split(",")))
    (export / "encounters.csv").write_text("\n".join([header, *rows]) + "\n")
    report = run_upload(str(export), str(tmp_path / "lake"), "bad-value", instance=instance)
    assert report.success
    supplies = staged(Lake(str(tmp_path / "lake")), "bad-value", "supplies")
    assert supplies.column("quantity").null_count == 3
    unparseable = {
        table: instance.get_latest_materialization_event(__import__("dagster").AssetKey(["staging", table]))
        .asset_materialization.metadata["unparseable_values"]
        .value
        for table in ("supplies", "encounters", "conditions")
    }
    assert unparseable == {"supplies": {"quantity": 1}, "encounters": {"base_encounter_cost": 1}, "conditions": {}}
    assert {t.table: t.quarantined for t in report.tables}["encounters"] == 1


@pytest.mark.slow
def test_rows_sharing_a_key_keep_the_later_one_and_quarantine_the_other(instance, export, tmp_path):
    header, rows = read_rows(export / "encounters.csv")
    variant = list(rows[0])
    variant[header.index("DESCRIPTION")] = "Corrected description"
    (export / "encounters.csv").write_text("\n".join(",".join(r) for r in [header, rows[0], variant, *rows[1:]]) + "\n")
    lake = Lake(str(tmp_path / "lake"))
    report = run_upload(str(export), lake.root, "conflict", instance=instance)
    assert report.success and not report.errors, report.errors
    account = {t.table: t for t in report.tables}["encounters"]
    assert (account.rows_in, account.quarantined, account.duplicates_dropped, account.rows_out) == (428, 1, 0, 427)
    kept = staged(lake, "conflict", "encounters").to_pylist()
    assert next(r["description"] for r in kept if r["id"] == rows[0][0]) == "Corrected description"
    [row] = quarantined(lake, "conflict", "encounters")
    assert (row["file"], row["line_number"], row["text"]) == ("encounters.csv", 2, ",".join(rows[0]))
    assert row["reason"] == "key conflict with kept row: the kept row comes later in the upload"


@pytest.mark.slow
def test_release_2_5_encounters_hold_the_organization_in_provider(instance, export, tmp_path):
    header, rows = read_rows(export / "encounters.csv")
    organization, provider = header.index("ORGANIZATION"), header.index("PROVIDER")
    old = [[v for i, v in enumerate(r) if i != organization] for r in rows]
    for new_row, row in zip(old, rows, strict=False):
        new_row[provider - 1] = row[organization]
    old_header = [h for h in header if h != "ORGANIZATION"]
    (export / "encounters.csv").write_text("\n".join(",".join(r) for r in [old_header, *old]) + "\n")
    report = run_upload(str(export), str(tmp_path / "lake"), "release-2.5", instance=instance)
    assert report.success and not report.errors, report.errors
    encounters = staged(Lake(str(tmp_path / "lake")), "release-2.5", "encounters")
    assert sorted(encounters.column("organization").to_pylist()) == sorted(r[organization] for r in rows)
    assert encounters.column("provider").null_count == len(rows)


def test_missing_required_column_fails_the_run_naming_table_file_and_line(instance, export, tmp_path):
    text = (export / "conditions.csv").read_text().replace("PATIENT", "PATIENT_ID", 1)
    (export / "conditions.csv").write_text(text)
    report = run_upload(str(export), str(tmp_path / "lake"), "bad-header", instance=instance)
    assert not report.success
    assert report.errors == [
        (
            "table conditions: conditions.csv, line 1: missing required column(s) PATIENT "
            "(header START,STOP,PATIENT_ID,ENCOUNTER,CODE,DESCRIPTION)"
        )
    ]
    assert not Path(tmp_path / "lake" / "raw").exists(), (
        "a table that cannot be read fails the run before any data is read"
    )
    assert [p.name for p in (tmp_path / "lake" / "staging").iterdir()] == ["uploads"]  # the log says it failed
    state = CatalogResource().upload_states(Lake(str(tmp_path / "lake")))["bad-header"]
    assert (state["state"], state["last_run_note"]) == ("failed", report.errors[0])


def cli(*args, cwd, env=None):
    environment = {**os.environ, "DAGSTER_HOME": str(cwd / "dagster"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "synthea_pipeline.cli", *args],
        cwd=cwd,
        env=environment,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.omop  # what the README's first command runs: every layer, the OMOP tables and the dashboard
def test_cli_runs_the_shipped_sample_into_the_default_lake(tmp_path):
    result = cli("run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "upload v3.3_au_11p (Synthea 3.3-3.4)" in result.stdout
    assert re.search(r"^omop \(all uploads\): .*, person 11, ", result.stdout, re.MULTILINE), result.stdout
    assert result.stdout.splitlines()[-1] == f"dashboard: {tmp_path / 'lake' / 'reports' / 'dashboard.html'}"
    assert any(line.split() == ["observations", "4272", "0", "14", "4258"] for line in result.stdout.splitlines())
    assert (tmp_path / "lake" / "staging" / "patients" / "metadata" / "version-hint.text").is_file()
    assert (tmp_path / "dagster" / "history" / "runs.db").exists()


@pytest.mark.slow  # two command-line runs, each importing Dagster and PySpark
def test_cli_refuses_invalid_upload_id_and_missing_folder(tmp_path):
    result = cli("run", str(SAMPLE), "--upload-id", "a,b", cwd=tmp_path)
    assert result.returncode == 2 and "invalid upload id 'a,b'" in result.stderr
    result = cli("run", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr


@pytest.mark.slow  # a command-line run importing Dagster and PySpark
def test_cli_refuses_a_different_export_under_a_derived_id(tmp_path):
    first, second = tmp_path / "a" / "csv", tmp_path / "b" / "csv"
    shutil.copytree(SAMPLES["2.7"], first)
    shutil.copytree(SAMPLES["3.0"], second)
    upload_export(str(first), LocalStorage(str(tmp_path / "lake" / "source")), "csv", replace=False)
    upload_export(str(first), LocalStorage(str(tmp_path / "lake" / "source")), "csv", replace=False)
    result = cli("run", str(second), "--lake", str(tmp_path / "lake"), cwd=tmp_path)
    assert result.returncode == 2
    assert "upload id 'csv' already holds a different export" in result.stderr
    assert (tmp_path / "lake" / "source" / "csv" / "patients.csv").read_bytes() == (first / "patients.csv").read_bytes()


@pytest.mark.slow
def test_cli_failure_exits_1_with_the_reason(tmp_path, export):
    (export / "patients.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    result = cli("run", str(export), "--lake", str(tmp_path / "lake"), cwd=tmp_path)
    assert result.returncode == 1
    assert "error: table patients: patients.csv, line 1: header is not UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 2, result.stderr
    assert "--verbose prints it here" in result.stderr.splitlines()[-1]


@pytest.mark.unit
def test_command_line_mistakes_get_one_line_that_says_what_to_do(tmp_path, capsys):
    lake = str(tmp_path / "lake")
    mistakes = {
        ("query", "", "--lake", lake): 'no SQL given: pass a statement, e.g. synthea-pipeline query "SELECT',
        ("backfill", "--all", "ward", "--lake", lake): "pass either upload ids or --all, not both",
        ("backfill", "--lake", lake): "name the uploads to recompute (`synthea-pipeline uploads` lists them)",
        ("run", str(SAMPLE / "patients.csv"), "--lake", lake): "is a file: pass the folder of the export",
    }
    for arguments, message in mistakes.items():
        assert main(list(arguments)) == 2, arguments
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and error.count("\n") == 1, error
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0
    assert capsys.readouterr().out == f"synthea-pipeline {metadata.version('synthea-pipeline')} (dagster 1.13.27)\n"


@pytest.mark.unit
def test_durations_print_as_they_are_given():
    assert [_age(_duration(text)) for text in ("7d", "12h", "90m", "0s", "1.5d")] == ["7d", "12h", "90m", "0s", "36h"]


@pytest.mark.unit
def test_the_aws_region_resolves_as_the_aws_sdks_do(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert aws_region() == "eu-west-3" == aws_client("s3").meta.region_name
    monkeypatch.delenv("AWS_REGION")
    assert aws_region() == "us-west-2" == aws_client("glue").meta.region_name


@pytest.mark.unit
def test_definitions_load_without_credentials_or_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    code = (
        "from synthea_pipeline.definitions import defs; g = defs.resolve_asset_graph(); "
        "keys = g.get_all_asset_keys(); print(len(keys), sorted({g.get(k).group_name for k in keys}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, check=False, capture_output=True, text=True, timeout=120
    )
    assert (
        result.stdout.split("\n")[0] == "101 ['bi', 'marts', 'omop', 'raw', 'reports', 'source', 'staging', 'synthea']"
    ), result.stderr
