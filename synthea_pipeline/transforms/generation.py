"""Real Synthea as a program: resolve a release (from Maven Central into a cache, or a jar the user names), run it
for a population or one shard of it, and put its CSV export in the lake's `source/` as an upload with the manifest
`upload` writes. The same parameters give the same bytes: every seed and date is fixed, and each Synthea process
runs one thread (its threads number claim transactions and write patients in the order they finish); shards give
the parallelism.

Pure Python and the `java`/`mvn` programs; no Dagster, so a generation container needs only this package."""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from synthea_pipeline.transforms.storage import Storage
from synthea_pipeline.transforms.uploads import GENERATION_FIELD, read_manifest, upload_export

RELEASES = ("2.7.0", "3.0.0", "3.1.0", "3.2.0", "3.3.0")
"""The releases on Maven Central as org.mitre.synthea:synthea (3.1.1 is not)."""
DEFAULT_RELEASE = RELEASES[-1]
MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"
EXPORTERS = ("csv", "fhir", "fhir_bulk")
FHIR_FOLDER = "fhir"
JAVA_OPENS = ("java.base/java.util", "java.base/java.lang", "java.base/java.util.concurrent.atomic")
"""Packages Synthea 2.7.0's libraries reflect into: closed to them from Java 17 on unless opened."""
HEAP_PERCENT = 75
"""Of the machine's or container's memory, what Synthea's heap may take, shared by the shards that run at once
(Java's default is a quarter: 1 GB in a 4 GB task)."""
DATE_FORMAT = "%Y-%m-%d"
JAR_VARIABLE = "SYNTHEA_JAR"
CACHE_VARIABLE = "SYNTHEA_CACHE"
REPOSITORY_VARIABLE = "SYNTHEA_MAVEN_REPOSITORY"
DEFAULT_CACHE = "~/.cache/synthea-pipeline/synthea"
SHARD_RETRIES = 1
PR_SET_PDEATHSIG = 1
WORKDIR_PREFIX = "synthea-generate-"
"""How many more times a failed shard is generated before the population fails (the other shards are kept)."""


class GenerationError(Exception):
    """Synthea could not be found, resolved or run: the message says what to install or set. `retry` when trying
    again may succeed (a process killed, storage failing); Synthea's own errors come back with the same seeds."""

    def __init__(self, message: str, retry: bool = False):
        super().__init__(message)
        self.retry = retry


SYNTHEA_EXCEPTION = re.compile(r"(?:^|\s)(?:[\w$]+\.)+[\w$]*(?:Exception|Error): (?P<message>.+)")


def _option(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class Population:
    """What to generate: the `generate_population` asset's config and `synthea-pipeline generate`'s options."""

    population: int = _option(10, "living patients to generate (Synthea's -p; the dead of their families come too)")
    seed: int = _option(42, "random seed of the population (Synthea's -s)")
    clinician_seed: int | None = _option(None, "random seed of the clinicians (Synthea's -cs; default: the seed)")
    state: str = _option("Massachusetts", "US state the population lives in")
    city: str | None = _option(None, "city in that state (default: the whole state)")
    min_age: int | None = _option(None, "youngest age (Synthea's -a; default 0)")
    max_age: int | None = _option(None, "oldest age (Synthea's -a; default 140)")
    gender: str | None = _option(None, "M or F (default: both)")
    release: str = _option(DEFAULT_RELEASE, f"Synthea release from Maven Central: {', '.join(RELEASES)}")
    modules: list[str] | None = field(
        default=None,
        metadata={"help": "disease modules to keep, as file name patterns (e.g. '*asthma*'; default: all)"},
    )
    years_of_history: int = _option(10, "years of history exported per patient (0: the whole life)")
    reference_date: str | None = _option(None, "the simulation's reference date, YYYY-MM-DD (default: today, UTC)")
    end_date: str | None = _option(None, "the simulation's end date, YYYY-MM-DD (default: the reference date)")
    exporters: list[str] | None = field(
        default=None, metadata={"help": f"exporters: {', '.join(EXPORTERS)} (default: csv; csv is always on)"}
    )
    shard_size: int | None = _option(None, "living patients per Synthea run; each shard is its own upload")

    def __post_init__(self):
        self.modules = list(self.modules or [])
        self.exporters = sorted({"csv", *(self.exporters or [])})

    def resolved(self, today: dt.date | None = None) -> Population:
        """The population with every default that depends on the day or another field filled in, validated: the
        parameters its upload id and its data derive from."""
        reference = self.reference_date or (today or dt.datetime.now(dt.timezone.utc).date()).strftime(DATE_FORMAT)
        resolved = dataclasses.replace(
            self,
            clinician_seed=self.seed if self.clinician_seed is None else self.clinician_seed,
            reference_date=reference,
            end_date=self.end_date or reference,
        )
        resolved.validate()
        return resolved

    def validate(self) -> None:
        problems = []
        if self.population < 1:
            problems.append("population must be at least 1")
        if self.shard_size is not None and self.shard_size < 1:
            problems.append("shard_size must be at least 1")
        if self.gender not in (None, "M", "F"):
            problems.append(f"gender must be M or F, not {self.gender!r}")
        if not 0 <= (self.min_age or 0) <= (140 if self.max_age is None else self.max_age) <= 140:
            problems.append(f"age range {self.min_age}-{self.max_age} is not within 0-140, youngest first")
        if self.release not in RELEASES:
            problems.append(f"release {self.release} is not on Maven Central; choose one of {', '.join(RELEASES)}")
        if unknown := sorted(set(self.exporters) - set(EXPORTERS)):
            problems.append(f"unknown exporters {', '.join(unknown)}; choose from {', '.join(EXPORTERS)}")
        if self.years_of_history < 0:
            problems.append("years_of_history must be 0 (whole life) or more")
        for module in self.modules:
            if not re.fullmatch(r"[A-Za-z0-9_*?./-]+", module):
                problems.append(f"module pattern {module!r} may hold letters, digits and _ * ? . / - only")
        for name in ("reference_date", "end_date"):
            value = getattr(self, name)
            try:
                value and dt.datetime.strptime(value, DATE_FORMAT)
            except ValueError:
                problems.append(f"{name} {value!r} is not a date as YYYY-MM-DD")
        if not problems and self.end_date and self.reference_date and self.end_date < self.reference_date:
            problems.append(f"end_date {self.end_date} is before reference_date {self.reference_date}")
        if problems:
            raise GenerationError("; ".join(problems))

    def parameters(self) -> dict:
        return dataclasses.asdict(self)

    def upload_id(self) -> str:
        """Readable parts (release, place, size, seed) and a hash of every parameter: equal parameters, equal id."""
        digest = hashlib.sha256(json.dumps(self.parameters(), sort_keys=True).encode()).hexdigest()[:10]
        place = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(filter(None, [self.state, self.city]))).strip("-").lower()
        return f"synthea-{self.release}-{place[:40]}-p{self.population}-s{self.seed}-{digest}"

    def shards(self) -> list[Shard]:
        """One Synthea run per `shard_size` living patients (the last takes the rest), seeds derived from the
        population's; one shard keeps the population's own seed and upload id. Every shard shares the clinician
        seed, so providers, organizations and payers are the same rows in every shard."""
        size = self.shard_size or self.population
        counts = [min(size, self.population - start) for start in range(0, self.population, size)]
        if len(counts) == 1:
            return [Shard(0, 1, self.population, self.seed, self.upload_id())]
        width = len(str(len(counts)))
        return [
            Shard(
                index,
                len(counts),
                count,
                int.from_bytes(hashlib.sha256(f"{self.seed}/{index}".encode()).digest()[:6], "big"),
                f"{self.upload_id()}-shard{index + 1:0{width}d}of{len(counts)}",
            )
            for index, count in enumerate(counts)
        ]


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    population: int
    seed: int
    upload_id: str

    def parameters(self, population: Population) -> dict:
        """What the shard's upload records as its origin: the population's parameters and the shard's own."""
        return {
            **population.parameters(),
            "shard": {"index": self.index, "count": self.count, "population": self.population, "seed": self.seed},
        }


@dataclass(frozen=True)
class Synthea:
    """A runnable Synthea: the java program, the classpath, the release (or the jar and its checksum) and what its
    command line accepts."""

    java: str
    classpath: tuple[str, ...]
    release: str
    has_end_date: bool
    java_major: int

    def command(self, population: Population, shard: Shard, output: str, heap_percent: int = HEAP_PERCENT) -> list[str]:
        """The command line of one shard, its heap at most `heap_percent` of the memory. Releases differ in
        flags: 2.7.0 has no end date (-e)."""
        jvm = [f"-XX:MaxRAMPercentage={heap_percent}"] if self.java_major >= 10 else []
        if self.java_major >= 9:
            jvm += [f"--add-opens={package}=ALL-UNNAMED" for package in JAVA_OPENS]
        fhir = bool({"fhir", "fhir_bulk"} & set(population.exporters))
        reference = population.reference_date.replace("-", "")
        arguments = ["-p", str(shard.population), "-s", str(shard.seed), "-cs", str(population.clinician_seed)]
        arguments += ["-r", reference]
        if self.has_end_date:
            arguments += ["-e", population.end_date.replace("-", "")]
        if population.gender:
            arguments += ["-g", population.gender]
        if population.min_age is not None or population.max_age is not None:
            arguments += [
                "-a",
                f"{population.min_age or 0}-{140 if population.max_age is None else population.max_age}",
            ]
        if population.modules:
            arguments += ["-m", os.pathsep.join(population.modules)]
        settings = {
            "exporter.baseDirectory": output,
            "exporter.csv.export": "true",
            "exporter.csv.append_mode": "false",
            "exporter.csv.folder_per_run": "false",
            "exporter.fhir.export": str(fhir).lower(),
            "exporter.fhir.bulk_data": str("fhir_bulk" in population.exporters).lower(),
            "exporter.hospital.fhir.export": str(fhir).lower(),
            "exporter.practitioner.fhir.export": str(fhir).lower(),
            "exporter.years_of_history": str(population.years_of_history),
            "generate.thread_pool_size": "1",
        }
        arguments += [f"--{key}={value}" for key, value in settings.items()]
        place = [population.state] + ([population.city] if population.city else [])
        return [self.java, *jvm, "-cp", os.pathsep.join(self.classpath), "App", *arguments, *place]


def find_java() -> tuple[str, int]:
    """The java program ($JAVA_HOME/bin/java, else the one on PATH) and its major version."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home and os.path.isfile(os.path.join(home, "bin", "java")) else None
    java = java or shutil.which("java")
    if not java:
        raise GenerationError(
            "Java is not installed: Synthea needs a Java 11+ runtime (Debian/Ubuntu: apt-get install "
            "openjdk-17-jre-headless; macOS: brew install openjdk@17), on PATH or in $JAVA_HOME"
        )
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(?:1\.)?(\d+)', version)
    return java, int(match[1]) if match else 0


def find_synthea(release: str, jar: str | None, cache: str, repository: str = MAVEN_CENTRAL) -> Synthea:
    """Synthea from `jar` (a synthea-with-dependencies.jar) when given, else `release` resolved from the Maven
    repository into `cache`. The command line it accepts is read from its own usage text."""
    java, java_major = find_java()
    if jar:
        if not os.path.isfile(jar):
            raise GenerationError(
                f"SYNTHEA_JAR={jar} does not exist: point it at a synthea-with-dependencies.jar "
                "(github.com/synthetichealth/synthea/releases) or unset it to use a release from Maven Central"
            )
        classpath = (os.path.abspath(jar),)
    else:
        classpath = tuple(resolve_release(release, cache, repository))
    usage = subprocess.run([java, "-cp", os.pathsep.join(classpath), "App", "-h"], capture_output=True, text=True)
    text = usage.stdout + usage.stderr
    if "run_synthea" not in text:
        source = f"SYNTHEA_JAR={jar}" if jar else f"Synthea {release} in {cache}"
        raise GenerationError(f"{source} does not run Synthea's App: {_last_line(text)}")
    return Synthea(java, classpath, _jar_identity(jar) if jar else release, "-e endDate" in text, java_major)


def _jar_identity(jar: str) -> str:
    """A jar as its uploads record it: its name and the start of its SHA-256, so another build is another origin."""
    digest = hashlib.sha256()
    with open(jar, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{os.path.basename(jar)} sha256:{digest.hexdigest()[:16]}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def version_key(version: str) -> tuple:
    return tuple((1, int(part), "") if part.isdigit() else (0, 0, part) for part in re.split(r"[.-]", version))


TREE_ENTRY = re.compile(
    r"(?P<omitted>\()?(?P<group>[\w.-]+):(?P<artifact>[\w.-]+):(?:jar|bundle):(?:[\w.-]+:)?(?P<version>[\w.-]+):"
    r"(?:compile|runtime)(?: - omitted for conflict with (?P<winner>[\w.-]+))?"
)


def conflict_pins(tree: str) -> dict[tuple[str, str], str]:
    """From `mvn dependency:tree -Dverbose`: for each artifact asked for in several versions, the highest version
    asked within the major of the one Maven chose, when Maven chose a lower one. Maven keeps the nearest version
    (for Synthea 2.7.0-3.1.0, jackson-annotations 2.8 beside jackson-databind 2.11: NoClassDefFoundError);
    Synthea's own Gradle build takes the highest."""
    asked: dict[tuple[str, str], set[str]] = {}
    chosen: dict[tuple[str, str], str] = {}
    for match in TREE_ENTRY.finditer(tree):
        key = (match["group"], match["artifact"])
        asked.setdefault(key, set()).add(match["version"])
        if match["winner"]:
            asked[key].add(match["winner"])
        elif not match["omitted"]:
            chosen[key] = match["version"]
    pins = {}
    for key, version in chosen.items():
        major = version.split(".")[0]
        best = max((v for v in asked[key] if v.split(".")[0] == major), key=version_key)
        if best != version:
            pins[key] = best
    return pins


def _pom(release: str, pins: dict[tuple[str, str], str]) -> str:
    managed = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for (g, a), v in sorted(pins.items())
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>synthea-pipeline</groupId><artifactId>synthea-classpath</artifactId><version>1</version>"
        "<packaging>pom</packaging>"
        f"<dependencyManagement><dependencies>{managed}</dependencies></dependencyManagement>"
        "<dependencies><dependency><groupId>org.mitre.synthea</groupId><artifactId>synthea</artifactId>"
        f"<version>{release}</version></dependency></dependencies></project>"
    )


def resolve_release(release: str, cache: str, repository: str = MAVEN_CENTRAL) -> list[str]:
    """The classpath of a Synthea release: resolved once with Maven from `repository` (Maven Central, or a mirror)
    into `cache`, then read from there. Processes resolving at once wait for each other."""
    folder = Path(cache).expanduser().resolve() / release
    listing = folder / "classpath.txt"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if listing.exists():
            paths = listing.read_text().split(os.pathsep)
            if all(os.path.isfile(path) for path in paths):
                return paths
        mvn = shutil.which("mvn")
        if not mvn:
            raise GenerationError(
                f"Maven is not installed: install it (Debian/Ubuntu: apt-get install maven; macOS: brew install "
                f"maven) to resolve Synthea {release} from Maven Central, or set SYNTHEA_JAR to a "
                "synthea-with-dependencies.jar (github.com/synthetichealth/synthea/releases)"
            )
        (folder / "settings.xml").write_text(
            '<settings xmlns="http://maven.apache.org/SETTINGS/1.0.0">'
            f"<localRepository>{folder.parent / 'maven'}</localRepository>"
            f"<mirrors><mirror><id>synthea</id><mirrorOf>*</mirrorOf><url>{repository}</url></mirror></mirrors>"
            "</settings>"
        )
        (folder / "pom.xml").write_text(_pom(release, {}))
        _maven(mvn, folder, release, repository, "dependency:tree", "-Dverbose", "-DoutputFile=tree.txt")
        (folder / "pom.xml").write_text(_pom(release, conflict_pins((folder / "tree.txt").read_text())))
        _maven(mvn, folder, release, repository, "dependency:build-classpath", "-Dmdep.outputFile=classpath.tmp")
        os.replace(folder / "classpath.tmp", listing)
        return listing.read_text().split(os.pathsep)


def _maven(mvn: str, folder: Path, release: str, repository: str, *goal: str) -> None:
    result = subprocess.run([mvn, "-B", "-q", "-s", "settings.xml", *goal], cwd=folder, capture_output=True, text=True)
    if result.returncode:
        errors = [line for line in result.stdout.splitlines() if line.startswith("[ERROR]")] or [result.stderr]
        raise GenerationError(
            f"could not resolve Synthea {release} from {repository} (is the network up? a mirror can be set with "
            f"SYNTHEA_MAVEN_REPOSITORY; or set SYNTHEA_JAR): {_last_line(errors[0].removeprefix('[ERROR]'))}"
        )


@dataclass
class GeneratedShard:
    """One shard's upload and what generating it cost."""

    upload_id: str
    shard: int
    patients: int
    files: int
    bytes: int
    checksum: str
    generation_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    fhir_files: int = 0
    reused: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _die_with_parent():
    """What the Synthea process runs before it starts, on Linux: end it when the thread that started it (which
    waits for it) dies, even by SIGKILL, so a killed run leaves no JVM generating into a folder nobody reads.
    `prctl` is looked up here, before the fork: the child only calls it."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_synthea(command: list[str], workdir: str) -> tuple[float, float, float]:
    """Run one Synthea process; its wall and CPU seconds and its peak memory (MB). Its output goes to
    `synthea.log` in `workdir`."""
    started = time.monotonic()
    with open(os.path.join(workdir, "synthea.log"), "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        with open(os.path.join(workdir, "synthea.log"), encoding="utf-8", errors="replace") as log:
            output = log.read()
        if process.returncode < 0 or process.returncode > 128:
            raise GenerationError(f"Synthea was killed (exit status {process.returncode})", retry=True)
        reported = SYNTHEA_EXCEPTION.search(output)
        raise GenerationError(reported["message"].strip() if reported else f"Synthea failed: {_last_line(output)}")
    return time.monotonic() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def remove_abandoned_workdirs() -> None:
    """Delete the work folders of generating processes that died without cleaning up (killed): each folder's name
    carries its process id."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name.removeprefix(WORKDIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and sys.platform == "linux":
            shutil.rmtree(path, ignore_errors=True)


def existing_upload(storage: Storage, shard: Shard, population: Population, synthea: Synthea) -> GeneratedShard | None:
    """The shard's upload when `source/` already holds it, generated by the same Synthea with the same
    parameters."""
    manifest = read_manifest(storage, shard.upload_id)
    origin = (manifest or {}).get(GENERATION_FIELD) or {}
    if origin.get("parameters") != shard.parameters(population) or origin.get("synthea") != synthea.release:
        return None
    patients = origin["patients"]
    return GeneratedShard(
        shard.upload_id,
        shard.index,
        patients,
        len(manifest["files"]),
        sum(f["size"] for f in manifest["files"]),
        manifest["checksum"],
        fhir_files=len(manifest.get("attachments", [])),
        reused=True,
    )


def generate_shard(
    synthea: Synthea,
    population: Population,
    shard: Shard,
    storage: Storage,
    log: Callable[[str], None] = print,
    heap_percent: int = HEAP_PERCENT,
) -> GeneratedShard:
    """Generate one shard with Synthea and store it as upload `shard.upload_id` in `storage` (the lake's
    `source/`); nothing to do when that upload already holds this shard. FHIR output lands in the upload's
    `fhir/` folder, which the pipeline never reads as CSV."""
    if existing := existing_upload(storage, shard, population, synthea):
        log(f"{shard.upload_id}: already generated with these parameters, checksum {existing.checksum[:16]}")
        return existing
    remove_abandoned_workdirs()
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as workdir:
        output = os.path.join(workdir, "output")
        command = synthea.command(population, shard, output + os.sep, heap_percent)
        log(f"{shard.upload_id}: Synthea {synthea.release}, {shard.population} patients, seed {shard.seed}")
        try:
            seconds, cpu_seconds, peak_mb = run_synthea(command, workdir)
        except GenerationError as error:
            raise GenerationError(f"Synthea {synthea.release}: {error}", error.retry) from None
        csv_folder = Path(output) / "csv"
        if not (csv_folder / "patients.csv").is_file():
            raise GenerationError(f"Synthea wrote no patients.csv under {output}: see its log")
        with open(csv_folder / "patients.csv", "rb") as listing:
            patients = sum(1 for _ in listing) - 1
        fhir_folder = Path(output) / FHIR_FOLDER
        attachments = {FHIR_FOLDER: str(fhir_folder)} if fhir_folder.is_dir() else {}
        origin = {"parameters": shard.parameters(population), "synthea": synthea.release, "patients": patients}
        manifest = upload_export(
            str(csv_folder), storage, shard.upload_id, generated_by=origin, attachments=attachments
        )
    log(f"{shard.upload_id}: {patients} patients in {seconds:.1f} s ({cpu_seconds:.1f} CPU s)")
    return GeneratedShard(
        shard.upload_id,
        shard.index,
        patients,
        len(manifest["files"]),
        sum(f["size"] for f in manifest["files"]),
        manifest["checksum"],
        round(seconds, 2),
        round(cpu_seconds, 2),
        round(peak_mb),
        len(manifest.get("attachments", [])),
    )


def generate_shards(
    shards: list[Shard],
    generate_one: Callable[[Shard], GeneratedShard],
    workers: int,
    log: Callable[[str], None] = print,
    retries: int = SHARD_RETRIES,
) -> list[GeneratedShard]:
    """Every shard, `workers` at a time; a shard that failed for a reason that may pass (killed, storage) is tried
    again alone, up to `retries` more times. Shards that still fail are named in one error once the others are
    stored, so generating the population again generates only them (the stored ones are found by their
    parameters)."""

    def attempt(shard: Shard) -> GeneratedShard | GenerationError:
        for attempt_number in range(retries + 1):
            try:
                return generate_one(shard)
            except GenerationError as error:
                failure = error
            except Exception as error:  # storage and network: worth another try
                failure = GenerationError(f"{type(error).__name__}: {error}", retry=True)
            log(f"{shard.upload_id}: attempt {attempt_number + 1} failed: {failure}")
            if not failure.retry:
                break
        return failure

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(shards)))) as pool:
        outcomes = list(pool.map(attempt, shards))
    failed = [(shard, o) for shard, o in zip(shards, outcomes, strict=True) if isinstance(o, GenerationError)]
    if len(shards) == 1 and failed:
        raise GenerationError(f"{shards[0].upload_id}: {failed[0][1]}")
    if failed:
        raise GenerationError(
            f"{len(failed)} of {len(shards)} shards failed ({', '.join(s.upload_id for s, _ in failed)}): "
            f"{failed[0][1]}; the others are stored: generate again to retry only the failed ones"
        )
    return outcomes
