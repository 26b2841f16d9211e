"""A real Synthea population for the benchmarks: generated once (shards in parallel up to the cores, each shard one
Synthea process) into `<data>/generated-<release>-p<N>/`, its shards merged into one export folder (the tables every
shard shares, organizations, providers and payers, once per id; the shards then deleted), and its generation
figures kept beside it, so a cached population still reports what generating it cost.

    .venv/bin/python benchmarks/generated_population.py 1000 [--data benchmarks/data]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from scale_sample import SHARED_TABLES

from synthea_pipeline.transforms.generation import (
    CACHE_VARIABLE,
    DEFAULT_CACHE,
    DEFAULT_RELEASE,
    HEAP_PERCENT,
    JAR_VARIABLE,
    Population,
    find_synthea,
    generate_shard,
    generate_shards,
)
from synthea_pipeline.transforms.storage import storage_for

REFERENCE_DATE = "2025-06-01"


def merge(shard_folders: list[Path], export: Path) -> None:
    """One export from the shards' CSV files: rows concatenated, shared tables' rows once per id."""
    export.mkdir(parents=True, exist_ok=True)
    names = sorted({p.name for folder in shard_folders for p in folder.glob("*.csv")})
    for name in names:
        shared = name.removesuffix(".csv") in SHARED_TABLES
        seen: set[bytes] = set()
        with open(export / name, "wb") as out:
            header_written = False
            for folder in shard_folders:
                if not (folder / name).exists():
                    continue
                header, _, body = (folder / name).read_bytes().partition(b"\n")
                if not header_written:
                    out.write(header + b"\n")
                    header_written = True
                for row in body.splitlines(keepends=True):
                    key = row.split(b",", 1)[0]
                    if shared and key in seen:
                        continue
                    seen.add(key)
                    out.write(row)


def generated_export(patients: int, data: Path, release: str = DEFAULT_RELEASE, seed: int = 42) -> tuple[Path, dict]:
    """The export folder of the population and its generation figures, generating it when not cached."""
    folder = data / f"generated-{release}-p{patients}"
    figures_file = folder / "generation.json"
    if figures_file.exists():
        return folder / "export", json.loads(figures_file.read_text())
    cores = os.cpu_count() or 1
    population = Population(
        population=patients,
        seed=seed,
        release=release,
        reference_date=REFERENCE_DATE,
        shard_size=math.ceil(patients / cores),
    ).resolved()
    synthea = find_synthea(release, os.environ.get(JAR_VARIABLE), os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE)
    storage = storage_for(str(folder / "shards"))
    started = time.perf_counter()
    shards = generate_shards(
        population.shards(),
        lambda shard: generate_shard(synthea, population, shard, storage, print, HEAP_PERCENT // cores),
        cores,
    )
    seconds = time.perf_counter() - started
    merge([folder / "shards" / shard.upload_id for shard in shards], folder / "export")
    shutil.rmtree(folder / "shards")
    figures = {
        "release": release,
        "patients": sum(shard.patients for shard in shards),
        "living_patients": patients,
        "shards": len(shards),
        "cores": cores,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(sum(shard.cpu_seconds for shard in shards), 1),
        "peak_memory_mb": max(shard.peak_memory_mb for shard in shards),
        "csv_mb": round(sum(shard.bytes for shard in shards) / 1e6, 1),
    }
    figures_file.write_text(json.dumps(figures, indent=1))
    return folder / "export", figures


def describe(figures: dict) -> str:
    rate = figures["patients"] / figures["seconds"]
    cpu = figures["cpu_seconds"] / figures["patients"]
    return (
        f"Synthea {figures['release']}: {figures['patients']} patients ({figures['living_patients']} living asked) "
        f"in {figures['seconds']:.1f} s on {figures['cores']} cores ({figures['shards']} shards), {rate:.2f} "
        f"patients/s, {cpu:.2f} CPU s per patient, {figures['csv_mb']:.0f} MB of CSV, peak "
        f"{figures['peak_memory_mb']:.0f} MB per process"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patients", type=int)
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--release", default=DEFAULT_RELEASE)
    args = parser.parse_args()
    export, figures = generated_export(args.patients, args.data, args.release)
    print(f"{export}: {describe(figures)}")


if __name__ == "__main__":
    main()
