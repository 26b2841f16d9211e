"""One upload never blocks the lake: a lake built from a clean upload, an upload that is not a Synthea export, a
partial export (no encounters.csv) and an export with row-level defects (key conflicts, an unparseable and a
missing required value, a repeated header), plus patient_expenses, zero-padded split files and optional ICD-10
columns. Counts are checked through `synthea-pipeline query` and through the assets' metadata."""

import csv
import io
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter

from synthea_pipeline.cli import _print_report, main
from synthea_pipeline.runs import SAMPLE_DIR, run_upload
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import FOREIGN_KEYS, MARTS, UNKNOWN_KEY
from synthea_pipeline_tests.conftest import BAD_START, SAMPLES, catalog_rows, defective_export, mart, read_rows


def mart_tables(lake):
    return {name: mart(lake, name) for name in MARTS}


@pytest.fixture(scope="module")
def built(instance, tmp_path_factory):
    """The lake after four uploads in order, the marts after the first two, and each run's report."""
    work = tmp_path_factory.mktemp("isolation")
    lake = Lake(str(work / "lake"))

    foreign = work / "foreign"
    foreign.mkdir()
    (foreign / "patients.csv").write_text("name,age\nann,3\n")
    partial = work / "partial"
    shutil.copytree(SAMPLES["3.0"], partial)
    (partial / "encounters.csv").unlink()
    defects = defective_export(SAMPLE_DIR, work / "defects")

    reports = {"clean": run_upload(str(SAMPLES["2.7"]), lake.root, "clean", instance=instance)}
    marts_before = mart_tables(lake)
    reports["foreign"] = run_upload(str(foreign), lake.root, "foreign", instance=instance)
    marts_after_foreign = mart_tables(lake)
    reports["partial"] = run_upload(str(partial), lake.root, "partial", instance=instance)
    reports["defects"] = run_upload(str(work / "defects"), lake.root, "defects", instance=instance)
    return {
        "lake": lake,
        "reports": reports,
        "marts_before": marts_before,
        "marts_after_foreign": marts_after_foreign,
        "defects": defects,
    }


def query(capsys, lake, sql):
    """Rows of `synthea-pipeline query --format csv`, as text."""
    capsys.readouterr()
    assert main(["query", sql, "--lake", lake.root, "--format", "csv"]) == 0
    return list(csv.reader(io.StringIO(capsys.readouterr().out)))[1:]


def staging_metadata(instance, table, upload):
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["staging", table]), asset_partitions=[upload]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


@pytest.mark.slow
def test_every_usable_upload_succeeds_after_an_unusable_one(built):
    reports = built["reports"]
    for upload in ("clean", "partial", "defects"):
        assert reports[upload].success and not reports[upload].errors, (upload, reports[upload].errors)
    assert not reports["foreign"].success
    assert reports["foreign"].errors == [
        "table patients: patients.csv, line 1: missing required column(s) Id, BIRTHDATE (no known column)"
    ]


@pytest.mark.slow
def test_an_unusable_upload_is_not_staged_and_leaves_the_marts_alone(built):
    lake = built["lake"]
    assert catalog_rows(lake, "SELECT * FROM synthea_staging.uploads WHERE upload_id = 'foreign'").num_rows == 0
    assert (
        catalog_rows(lake, "SELECT * FROM synthea_staging_iceberg.patients WHERE upload_id = 'foreign'").num_rows == 0
    )
    for name in MARTS:
        assert built["marts_after_foreign"][name].equals(built["marts_before"][name]), name


@pytest.mark.unit
def test_no_staging_for_an_upload_without_patients_csv(tmp_path, capsys):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "encounters.csv").write_text("Id,START\n")
    assert main(["run", str(tmp_path / "export"), "--lake", str(tmp_path / "lake")]) == 2
    assert "has no patients.csv: not a Synthea CSV export" in capsys.readouterr().err
    assert not (tmp_path / "lake" / "staging").exists()


@pytest.mark.slow
def test_a_hand_copied_upload_without_patients_csv_fails_its_own_run(instance, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    source = Path(lake.source("hand-copied"))
    shutil.copytree(SAMPLES["2.7"], source)
    (source / "patients.csv").unlink()
    report = run_upload(str(source), lake.root, "hand-copied", instance=instance)
    assert not report.success
    assert report.errors == [f"upload hand-copied: no patients.csv under {source}"]
    assert not Path(lake.uri("raw")).exists() and not Path(lake.uri("staging")).exists()


@pytest.mark.slow
def test_marts_hold_every_patient_of_every_upload(built, capsys):
    lake = built["lake"]
    expected = set()
    for release in ("2.7", "3.0"):
        expected |= {row[0] for row in read_rows(SAMPLES[release] / "patients.csv")[1]}
    expected |= {row[0] for row in built["defects"]["patients"]}
    keys = set(mart(lake, "patient_fact").column("patient_key").to_pylist())
    assert keys == expected | {UNKNOWN_KEY}
    [[patients]] = query(capsys, lake, f"SELECT count(*) FROM patient_fact WHERE patient_key <> '{UNKNOWN_KEY}'")
    assert int(patients) == len(expected)


@pytest.mark.slow
def test_unknown_members_are_conformed_so_every_join_of_the_star_keeps_them(built, capsys):
    lake = built["lake"]
    for name, references in FOREIGN_KEYS.items():
        if "is_unknown" in MARTS[name].column_names:
            [member] = [row for row in mart(lake, name).to_pylist() if row["is_unknown"]]
            assert member[MARTS[name].key] == UNKNOWN_KEY
            assert {column: member[column] for column in references} == dict.fromkeys(references, UNKNOWN_KEY)
        for column, target in references.items():
            [[joined, referencing]] = query(
                capsys,
                lake,
                f"""
                SELECT (SELECT count(*) FROM {name} AS m JOIN {target} AS t ON m.{column} = t.{MARTS[target].key}),
                       (SELECT count(*) FROM {name} WHERE {column} IS NOT NULL)""",
            )
            assert joined == referencing, (name, column)
    [[through_encounters, conditions]] = query(
        capsys,
        lake,
        """
        SELECT (SELECT count(*) FROM condition_dim AS c JOIN encounter_dim AS e ON c.encounter_key = e.encounter_key
                JOIN patient_fact AS p ON e.patient_key = p.patient_key),
               (SELECT count(*) FROM condition_dim)""",
    )
    assert through_encounters == conditions
    [[members, unknown, in_views]] = query(
        capsys,
        lake,
        """
        SELECT count(*) FILTER (WHERE NOT is_unknown), count(*) FILTER (WHERE is_unknown),
               (SELECT sum(patients) FROM bi_demographics) FROM patient_fact""",
    )
    assert (members, unknown) == (in_views, "1")


@pytest.mark.slow
def test_a_run_prints_the_warnings_of_its_own_upload_naming_it(built, capsys):
    report = built["reports"]["partial"]
    uploads_warned = {upload for metadata in report.warnings.values() for upload in metadata.get("by_upload", {})}
    assert uploads_warned >= {"clean", "partial"}
    _print_report(report, built["lake"].root, verbose=False)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert warnings and all(line.startswith("warning: upload partial: ") for line in warnings)
    conditions = report.warnings["marts/condition_dim:references_known"]["by_upload"]["partial"]["encounter_key"]
    assert f"warning: upload partial: marts/condition_dim:references_known: encounter_key {conditions}" in warnings
    assert "warning: upload partial: staging/patients:export_complete: absent_tables ['encounters']" in " ".join(
        warnings
    )


@pytest.mark.slow
def test_orphans_of_a_partial_export_point_to_unknown_members_and_are_counted(built, capsys):
    lake, report = built["lake"], built["reports"]["defects"]
    _, conditions = read_rows(SAMPLES["3.0"] / "conditions.csv")
    [[staged, unknown]] = query(
        capsys,
        lake,
        f"""
        SELECT count(*), count(*) FILTER (WHERE encounter_key = '{UNKNOWN_KEY}')
        FROM condition_dim WHERE upload_id = 'partial'""",
    )
    assert int(staged) == int(unknown) == len({tuple(r) for r in conditions})
    [[members]] = query(capsys, lake, f"SELECT count(*) FROM encounter_dim WHERE encounter_key = '{UNKNOWN_KEY}'")
    assert members == "1"
    assert report.checks["marts/condition_dim:foreign_keys_resolve"] is True
    warning = report.warnings["marts/condition_dim:references_known"]
    assert warning["by_upload"]["partial"] == {"encounter_key": int(staged)}
    assert "clean" not in warning["by_upload"]
    assert query(capsys, lake, "SELECT count(*) FROM synthea_staging.encounters WHERE upload_id = 'partial'") == [["0"]]


@pytest.mark.slow
def test_key_conflicts_keep_the_documented_winner_and_quarantine_the_loser(built, instance, capsys):
    lake, providers = built["lake"], built["defects"]["providers"]
    header = read_rows(SAMPLE_DIR / "providers.csv")[0]
    rows = query(
        capsys,
        lake,
        f"""
        SELECT id, speciality, city FROM synthea_staging.providers
        WHERE upload_id = 'defects' AND id IN ('{providers[0][0]}', '{providers[1][0]}')
        ORDER BY id = '{providers[0][0]}' DESC""",
    )
    assert rows == [
        [providers[0][0], "CARDIOLOGY", providers[0][header.index("CITY")]],
        [providers[1][0], providers[1][header.index("SPECIALITY")], providers[1][header.index("CITY")]],
    ]
    quarantined = query(
        capsys,
        lake,
        """
        SELECT file, line_number, reason FROM synthea_staging.quarantine
        WHERE upload_id = 'defects' AND table_name = 'providers' ORDER BY line_number""",
    )
    later = "key conflict with kept row: the kept row comes later in the upload"
    count = len(providers)
    assert quarantined == [
        ["providers.csv", "2", later],
        ["providers.csv", str(count + 2), later],
        ["providers.csv", str(count + 4), "key conflict with kept row: the kept row is more complete"],
        ["providers.csv", str(count + 5), f"field count: expected {len(header)} fields, found {len(header) + 1}"],
    ]
    metadata = staging_metadata(instance, "providers", "defects")
    assert (metadata["rows_in"], metadata["quarantined"], metadata["duplicates_dropped"], metadata["rows_out"]) == (
        count + 4,
        4,
        0,
        count,
    )
    assert metadata["quarantine_reasons"] == {"key conflict with kept row": 3, "field count": 1}


@pytest.mark.slow
def test_absent_payers_and_patients_point_to_unknown_members(built, capsys):
    lake, defects = built["lake"], built["defects"]
    header = read_rows(SAMPLE_DIR / "encounters.csv")[0]
    kept = [e for i, e in enumerate(defects["encounters"]) if i not in defects["quarantined_encounters"]]
    to_absent_payer = sum(e[header.index("PAYER")] == defects["removed_payer"] for e in kept)
    of_absent_patient = sum(e[header.index("PATIENT")] == defects["removed_patient"] for e in kept)
    assert to_absent_payer and of_absent_patient
    counts = query(
        capsys,
        lake,
        f"""
        SELECT count(*) FILTER (WHERE payer_key = '{UNKNOWN_KEY}'),
               count(*) FILTER (WHERE patient_key = '{UNKNOWN_KEY}')
        FROM encounter_dim WHERE upload_id = 'defects'""",
    )
    assert counts == [[str(to_absent_payer), str(of_absent_patient)]]
    assert query(capsys, lake, f"SELECT encounter_count FROM patient_fact WHERE patient_key = '{UNKNOWN_KEY}'") == [
        [str(of_absent_patient)]
    ]
    warning = built["reports"]["defects"].warnings["marts/encounter_dim:references_known"]
    assert warning["by_upload"] == {"defects": {"patient_key": of_absent_patient, "payer_key": to_absent_payer}}


@pytest.mark.slow
def test_unparseable_and_missing_required_values_and_repeated_headers_are_quarantined(built, instance, capsys):
    lake, encounters = built["lake"], built["defects"]["encounters"]
    quarantined = query(
        capsys,
        lake,
        """
        SELECT line_number, reason, text FROM synthea_staging.quarantine
        WHERE upload_id = 'defects' AND table_name = 'encounters' ORDER BY line_number""",
    )
    header = read_rows(SAMPLE_DIR / "encounters.csv")[0]
    assert quarantined == [
        ["5", f"unparseable START: '{BAD_START}'", ",".join(encounters[3])],
        ["8", "missing required PATIENT", ",".join(encounters[6])],
        ["12", "repeated header: the file's header line again (concatenated files?)", ",".join(header)],
    ]
    [[staged]] = query(capsys, lake, "SELECT count(*) FROM synthea_staging.encounters WHERE upload_id = 'defects'")
    assert int(staged) == len(encounters) - 2
    metadata = staging_metadata(instance, "encounters", "defects")
    assert (metadata["rows_in"], metadata["quarantined"], metadata["rows_out"]) == (
        len(encounters) + 1,
        3,
        len(encounters) - 2,
    )
    assert metadata["quarantine_reasons"] == {
        "unparseable START": 1,
        "missing required PATIENT": 1,
        "repeated header": 1,
    }
    reasons = query(capsys, lake, "SELECT reason, count(*) FROM synthea_staging.quarantine GROUP BY 1 ORDER BY 1")
    assert [reason for reason, _ in reasons if not reason.startswith("field count")] == sorted(
        [
            "key conflict with kept row: the kept row comes later in the upload",
            "key conflict with kept row: the kept row is more complete",
            "missing required PATIENT",
            "repeated header: the file's header line again (concatenated files?)",
            f"unparseable START: '{BAD_START}'",
        ]
    )


@pytest.mark.slow
def test_every_table_and_upload_accounts_for_its_rows(built):
    for upload in ("clean", "partial", "defects"):
        for account in built["reports"][upload].tables:
            assert account.rows_in == account.rows_out + account.quarantined + account.duplicates_dropped, (
                upload,
                account,
            )


@pytest.mark.slow
def test_patient_expenses_split_files_and_optional_columns_are_staged(built, capsys):
    lake, defects = built["lake"], built["defects"]
    counts = query(
        capsys,
        lake,
        """
        SELECT (SELECT count(*) FROM synthea_staging.patient_expenses WHERE upload_id = 'defects'),
               (SELECT count(*) FROM synthea_staging.claims WHERE upload_id = 'defects'),
               (SELECT count(*) FROM synthea_staging.conditions WHERE upload_id = 'defects' AND icd10_code = 'J06.9'),
               (SELECT sum(covered_costs) FROM synthea_staging.patient_expenses WHERE upload_id = 'defects')""",
    )
    assert counts == [
        [str(len(defects["expenses"])), str(len(defects["claims"])), "5", f"{80 * len(defects['expenses'])}.00"]
    ]
    assert {t.table for t in built["reports"]["defects"].tables} >= {"patient_expenses", "claims"}
