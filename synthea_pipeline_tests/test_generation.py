"""Real Synthea as the first asset: releases resolved from Maven Central (cached across runs in SYNTHEA_CACHE),
real Java, a handful of patients per population, a real Dagster instance, staging on Sail."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from dagster import build_sensor_context

from synthea_pipeline import runs
from synthea_pipeline.cli import main
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.sensors import upload_sensor
from synthea_pipeline.transforms.generation import (
    DEFAULT_CACHE,
    GenerationError,
    Population,
    Synthea,
    conflict_pins,
    find_synthea,
)
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.marts import UNKNOWN_KEY
from synthea_pipeline.transforms.raw import find_source_files
from synthea_pipeline.transforms.uploads import GENERATION_FIELD, manifest_key
from synthea_pipeline_tests.conftest import catalog_rows, fresh_instance, live_processes, wait_for

REFERENCE_DATE = "2025-06-01"


def population(**fields) -> dict:
    return {"population": 2, "seed": 7, "reference_date": REFERENCE_DATE, **fields}


def data_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip()) - 1


def manifest(lake_root: str, upload_id: str) -> dict:
    return json.loads((Path(lake_root) / "source" / manifest_key(upload_id)).read_text())


@pytest.mark.unit
def test_conflicting_versions_pinned_to_the_highest_within_the_major():
    """From Synthea 2.7.0's real dependency tree: Maven keeps jackson-annotations 2.8.0 beside jackson-databind
    2.11.2 (NoClassDefFoundError at run time); slf4j 2.0.0 is not downgraded to a 1.7 asked elsewhere."""
    tree = """
+- org.mitre.synthea:synthea:jar:2.7.0:compile
|  +- com.fasterxml.jackson.core:jackson-databind:jar:2.11.2:runtime
|  |  +- (com.fasterxml.jackson.core:jackson-annotations:jar:2.11.2:runtime - omitted for conflict with 2.8.0)
|  \\- com.fasterxml.jackson.core:jackson-annotations:jar:2.8.0:runtime
|  +- org.slf4j:slf4j-api:jar:2.0.0:runtime
|  |  \\- (org.slf4j:slf4j-api:jar:1.7.33:runtime - omitted for conflict with 2.0.0)
|  +- com.google.guava:guava:jar:31.0.1-jre:runtime
|  |  \\- (com.google.guava:guava:jar:31.1-jre:runtime - omitted for conflict with 31.0.1-jre)
"""
    assert conflict_pins(tree) == {
        ("com.fasterxml.jackson.core", "jackson-annotations"): "2.11.2",
        ("com.google.guava", "guava"): "31.1-jre",
    }


@pytest.mark.unit
def test_every_release_takes_the_same_config():
    """2.7.0 has no end date flag; the rest of the command is the same, and the population decides the seeds,
    dates, place and exporters whatever the release."""
    people = Population(
        population=5,
        seed=3,
        state="Utah",
        city="Salt Lake City",
        min_age=20,
        max_age=40,
        gender="F",
        modules=["*asthma*"],
        exporters=["fhir_bulk"],
        reference_date="2025-01-02",
    ).resolved()
    shard = people.shards()[0]
    old = Synthea("java", ("a.jar",), "2.7.0", has_end_date=False, java_major=17).command(people, shard, "out/")
    new = Synthea("java", ("a.jar",), "3.3.0", has_end_date=True, java_major=17).command(people, shard, "out/")
    assert "-e" not in old and new[new.index("-e") + 1] == "20250102"
    end = new.index("-e")
    assert new[:end] + new[end + 2 :] == old
    for flag, value in {"-p": "5", "-s": "3", "-cs": "3", "-r": "20250102", "-g": "F", "-a": "20-40"}.items():
        assert new[new.index(flag) + 1] == value
    assert new[-2:] == ["Utah", "Salt Lake City"]
    assert "--exporter.fhir.bulk_data=true" in new and "--exporter.csv.export=true" in new


@pytest.mark.unit
def test_shards_split_the_population_with_derived_seeds():
    people = Population(population=5, seed=9, shard_size=2, reference_date=REFERENCE_DATE).resolved()
    shards = people.shards()
    assert [s.population for s in shards] == [2, 2, 1]
    assert len({s.seed for s in shards}) == 3 and len({s.upload_id for s in shards}) == 3
    assert shards == Population(population=5, seed=9, shard_size=2, reference_date=REFERENCE_DATE).resolved().shards()
    other = Population(population=5, seed=10, shard_size=2, reference_date=REFERENCE_DATE).resolved().shards()
    assert not {s.seed for s in shards} & {s.seed for s in other}
    whole = Population(population=5, seed=9, reference_date=REFERENCE_DATE).resolved().shards()
    assert [(s.seed, s.upload_id) for s in whole] == [(9, whole[0].upload_id)]
    assert not whole[0].upload_id.endswith("of1")


@pytest.mark.unit
@pytest.mark.parametrize(
    "fields, message",
    [
        ({"population": 0}, "population must be at least 1"),
        ({"release": "3.1.1"}, "release 3.1.1 is not on Maven Central"),
        ({"gender": "X"}, "gender must be M or F"),
        ({"min_age": 50, "max_age": 10}, "age range 50-10"),
        ({"exporters": ["ccda"]}, "unknown exporters ccda"),
        ({"reference_date": "2025-13-01"}, "reference_date '2025-13-01' is not a date"),
        ({"modules": ["a:b"]}, "module pattern 'a:b'"),
    ],
)
def test_bad_parameters_are_named(fields, message):
    with pytest.raises(GenerationError, match=message):
        Population(**fields).resolved()


@pytest.fixture(scope="module")
def instance():
    with fresh_instance() as instance:
        yield instance


@pytest.mark.slow
def test_oldest_and_newest_release_staged_row_for_row(tmp_path, instance):
    """A few patients of 2.7.0 and 3.3.0 (fresh from Synthea) into one lake: staging accounts for every line of
    every CSV file Synthea wrote, and the marts hold every patient of both."""
    lake_root = str(tmp_path / "lake")
    upload_ids = []
    for release in ("2.7.0", "3.3.0"):
        report = runs.generate(population(release=release), lake_root, instance)
        assert report.success, report.errors
        (shard,) = report.shards
        assert shard["upload_id"].startswith(f"synthea-{release}-massachusetts-p2-s7-")
        upload_ids.append(shard["upload_id"])
    reports = runs.backfill(upload_ids, lake_root, instance=instance)
    assert [r.success for r in reports] == [True, True], [r.errors for r in reports]
    for upload_id, report in zip(upload_ids, reports, strict=True):
        source = Path(lake_root) / "source" / upload_id
        files, other = find_source_files(str(source))
        assert other == []
        for account in report.tables:
            lines = sum(data_lines(source / name) for name in files.get(account.table, []))
            assert account.rows_in == lines, (upload_id, account.table)
            assert account.rows_in == account.rows_out + account.quarantined + account.duplicates_dropped
        assert next(t for t in report.tables if t.table == "patients").rows_in >= 2
    patients = sum(data_lines(Path(lake_root) / "source" / u / "patients.csv") for u in upload_ids)
    facts = catalog_rows(
        Lake(lake_root), f"SELECT count(*) AS n FROM synthea_marts.patient_fact WHERE patient_key <> '{UNKNOWN_KEY}'"
    )
    assert facts.column("n")[0].as_py() == patients
    assert reports[0].release == "2.7" and reports[1].release.startswith("3.3")


@pytest.mark.slow
def test_shards_are_uploads_and_shared_tables_count_once(tmp_path, instance):
    """Four patients in two shards: two uploads, run through the pipeline, providers and payers (every shard
    has them) once each in the marts. A shard lost from source/ is generated again alone, to the same bytes; the
    one still there is reused, its manifest untouched."""
    lake_root = str(tmp_path / "lake")
    fields = population(population=4, shard_size=2, seed=21)
    report = runs.generate(fields, lake_root, instance)
    assert report.success, report.errors
    assert [s["upload_id"].rsplit("-", 1)[1] for s in report.shards] == ["shard1of2", "shard2of2"]
    upload_ids = [s["upload_id"] for s in report.shards]
    runs_ = runs.backfill(upload_ids, lake_root, instance=instance)
    assert all(r.success for r in runs_), [r.errors for r in runs_]
    lake = Lake(lake_root)
    for table, mart, key in (("providers", "provider_dim", "provider_key"), ("payers", "payer_dim", "payer_key")):
        ids = set()
        for upload_id in upload_ids:
            lines = (Path(lake_root) / "source" / upload_id / f"{table}.csv").read_text().splitlines()[1:]
            ids |= {line.split(",")[0] for line in lines if line}
        rows = catalog_rows(lake, f"SELECT {key} FROM synthea_marts.{mart} WHERE {key} <> '{UNKNOWN_KEY}'")
        assert sorted(rows.column(key).to_pylist()) == sorted(ids), table
    kept, lost = upload_ids
    kept_manifest = manifest(lake_root, kept)
    assert kept_manifest[GENERATION_FIELD]["parameters"]["shard"]["index"] == 0
    shutil.rmtree(Path(lake_root) / "source" / lost)
    (Path(lake_root) / "source" / manifest_key(lost)).unlink()
    again = runs.generate(fields, lake_root, instance)
    assert [s["reused"] for s in again.shards] == [True, False]
    assert [s["checksum"] for s in again.shards] == [s["checksum"] for s in report.shards]
    assert manifest(lake_root, kept) == kept_manifest


@pytest.mark.slow
def test_fhir_lands_beside_the_csv_files_and_is_not_read_as_a_table(tmp_path, instance):
    """Bulk FHIR in the upload's fhir/ folder, listed in the manifest apart from the CSV files; the upload sensor
    starts the run of the generated upload as of any other."""
    lake_root = str(tmp_path / "lake")
    report = runs.generate(population(population=1, exporters=["fhir_bulk"]), lake_root, instance)
    assert report.success, report.errors
    upload_id = report.shards[0]["upload_id"]
    source = Path(lake_root) / "source" / upload_id
    bulk = sorted(p.name for p in (source / "fhir").iterdir())
    assert "Patient.ndjson" in bulk and report.shards[0]["fhir_files"] == len(bulk)
    listed = manifest(lake_root, upload_id)
    assert sorted(a["name"] for a in listed["attachments"]) == [f"fhir/{name}" for name in bulk]
    files, other = find_source_files(str(source))
    assert "patients" in files and other == []
    context = build_sensor_context(
        instance=instance, resources={"lake": LakeResource(root=lake_root), "catalog": CatalogResource()}
    )
    (request,) = upload_sensor(context).run_requests
    assert request.partition_key == upload_id


@pytest.mark.slow
def test_missing_java_maven_network_or_jar_each_say_what_to_do(tmp_path, monkeypatch, capsys):
    """Each failure is one line on stderr naming what to install or set, and no traceback; a population Synthea
    refuses gets Synthea's own reason, not its stack trace."""
    lake = str(tmp_path / "lake")
    no_java, java_only = tmp_path / "bin", tmp_path / "java-only"
    no_java.mkdir()
    java_only.mkdir()
    (java_only / "java").symlink_to(os.path.realpath(shutil.which("java")))
    cases = {
        "Java is not installed": {"PATH": str(no_java), "JAVA_HOME": ""},
        "SYNTHEA_JAR=/nowhere/synthea.jar does not exist": {"SYNTHEA_JAR": "/nowhere/synthea.jar"},
        "Maven is not installed": {
            "PATH": str(java_only),
            "SYNTHEA_CACHE": str(tmp_path / "cache-no-maven"),
        },
        "could not resolve Synthea 3.3.0 from http://127.0.0.1:9/maven2 (is the network up?": {
            "SYNTHEA_CACHE": str(tmp_path / "cache-offline"),
            "SYNTHEA_MAVEN_REPOSITORY": "http://127.0.0.1:9/maven2",
        },
    }
    for message, environment in cases.items():
        with monkeypatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            status = main(["generate", "--population", "1", "--lake", lake])
        err = capsys.readouterr().err
        assert status == 1, message
        assert message in err and "Traceback" not in err, err
    assert not (Path(lake) / "source").exists() or not any((Path(lake) / "source").iterdir())
    status = main(["generate", "--population", "1", "--state", "Utah", "--city", "Gotham", "--lake", lake])
    err = capsys.readouterr().err
    assert status == 1 and "Synthea 3.3.0: The city Gotham was not found in the demographics file for state Utah" in err


@pytest.mark.slow
def test_a_jar_the_user_names_runs_instead_of_maven(tmp_path, monkeypatch):
    """SYNTHEA_JAR: here the resolved 3.3.0 classpath merged into one jar, as GitHub's synthea-with-dependencies.jar
    is; its command line is read from its own usage text (it has -e)."""
    classpath = find_synthea("3.3.0", None, os.path.expanduser(DEFAULT_CACHE)).classpath
    manifest_file = tmp_path / "MANIFEST.MF"
    entries = "Class-Path: " + " ".join(os.path.relpath(p, tmp_path) for p in classpath)
    lines = [entries[:70]] + [" " + entries[i : i + 69] for i in range(70, len(entries), 69)]
    manifest_file.write_text("Manifest-Version: 1.0\n" + "\n".join(lines) + "\n")
    jar = tmp_path / "synthea-with-dependencies.jar"
    import zipfile

    with zipfile.ZipFile(jar, "w") as archive:
        archive.write(manifest_file, "META-INF/MANIFEST.MF")
    synthea = find_synthea("3.3.0", str(jar), str(tmp_path / "unused-cache"))
    assert synthea.classpath == (str(jar),) and synthea.has_end_date
    assert re.fullmatch(r"synthea-with-dependencies\.jar sha256:[0-9a-f]{16}", synthea.release)
    assert not (tmp_path / "unused-cache").exists()


@pytest.mark.slow
def test_shards_on_ecs_through_pipes_match_local_generation(tmp_path, instance, moto_endpoint, bucket, monkeypatch):
    """The generation task definition of infra/dagster-ecs.yaml, registered in moto; its command really runs (the
    local ECS stand-in), opens Dagster Pipes from the environment the Pipes ECS client set, writes each shard to
    the S3 lake's source/ and reports it back. Generated again locally into another lake, the same parameters give
    the same upload ids and the same bytes (checksum over every file). One task at a time, as configured."""
    import boto3

    from synthea_pipeline.resources import synthea as synthea_resource
    from synthea_pipeline.transforms.lake import aws_client
    from synthea_pipeline_tests.aws_jobs import LocalECS
    from synthea_pipeline_tests.cloudformation import INFRA, load_template

    resources = load_template(INFRA / "dagster-ecs.yaml")["Resources"]
    (container,) = resources["GeneratorTaskDefinition"]["Properties"]["ContainerDefinitions"]
    ecs = boto3.client("ecs")
    ecs.create_cluster(clusterName="synthea-dagster")
    family = ecs.register_task_definition(
        family="synthea-pipeline-synthea-generate",
        containerDefinitions=[
            {"name": container["Name"], "image": "generator", "memory": 4096, "command": container["Command"]}
        ],
    )["taskDefinition"]["family"]
    local_ecs = LocalECS(
        {"SYNTHEA_CACHE": os.path.expanduser(DEFAULT_CACHE), "PYTHONPATH": str(Path(__file__).parents[1])}
    )
    monkeypatch.setattr(
        synthea_resource, "aws_client", lambda service: local_ecs if service == "ecs" else aws_client(service)
    )
    for name, value in {
        "SYNTHEA_GENERATOR": "ecs",
        "SYNTHEA_ECS_CLUSTER": "synthea-dagster",
        "SYNTHEA_ECS_TASK_DEFINITION": family,
        "SYNTHEA_ECS_SUBNETS": "subnet-1,subnet-2",
        "SYNTHEA_ECS_SECURITY_GROUPS": "sg-1",
        "SYNTHEA_ECS_CONCURRENCY": "1",
    }.items():
        monkeypatch.setenv(name, value)
    fields = population(population=2, shard_size=1, seed=31)
    on_ecs = runs.generate(fields, f"s3://{bucket}/lake", instance)
    assert on_ecs.success, on_ecs.errors
    assert len(local_ecs.started) == 2
    assert [started["running_before"] for started in local_ecs.started] == [0, 0]
    for started in local_ecs.started:
        assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(started["environment"])
        assert started["launchType"] == "FARGATE"
        assert started["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == ["subnet-1", "subnet-2"]
        assert {"key": "dagster/run-id", "value": on_ecs.run_id} in started["tags"]
    s3 = boto3.client("s3")
    for shard in on_ecs.shards:
        stored = json.loads(
            s3.get_object(Bucket=bucket, Key=f"lake/source/{manifest_key(shard['upload_id'])}")["Body"].read()
        )
        assert stored["checksum"] == shard["checksum"] and shard["patients"] >= 1 and not shard["reused"]
    monkeypatch.setenv("SYNTHEA_GENERATOR", "local")
    local = runs.generate(fields, str(tmp_path / "lake"), instance)
    assert [(s["upload_id"], s["checksum"]) for s in local.shards] == [
        (s["upload_id"], s["checksum"]) for s in on_ecs.shards
    ]


def _synthea_processes_of(parent: int) -> list[int]:
    """Live Synthea JVMs whose parent is `parent`."""
    found = []
    for pid, fields in live_processes().items():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and b"App" in command:
            found.append(pid)
    return found


@pytest.mark.slow
def test_a_killed_generation_leaves_no_jvm_and_the_next_one_finishes_it(tmp_path):
    """kill -9 of `generate` while Synthea runs 300 patients (about a minute of work): its JVM ends with it at
    once, nothing keeps generating into a folder no one reads; the next `generate` deletes the dead process's
    work folder and stores its population."""
    lake = str(tmp_path / "lake")
    command = [sys.executable, "-m", "synthea_pipeline.cli", "generate", "--seed", "3"]
    command += ["--reference-date", REFERENCE_DATE, "--lake", lake]
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    os.makedirs(environment["DAGSTER_HOME"])
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(
            [*command, "--population", "300"], env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    jvms = wait_for(lambda: _synthea_processes_of(killed.pid), "Synthea to start", [killed], timeout=120)
    workdirs = list(Path(tempfile.gettempdir()).glob(f"synthea-generate-{killed.pid}-*"))
    assert workdirs
    killed.kill()
    killed.wait()
    wait_for(lambda: not set(jvms) & set(live_processes()), "the JVMs to end with it", [], timeout=15)
    finished = subprocess.run(
        [*command, "--population", "1"], env=environment, capture_output=True, text=True, timeout=600
    )
    assert finished.returncode == 0, finished.stderr
    assert "generated in" in finished.stdout
    assert not any(path.exists() for path in workdirs)
