"""Generate a population with every Synthea release on Maven Central (2.7.0 to 3.3.0) into one lake, run every
upload through the pipeline, and check that staging accounts for every line Synthea wrote: rows in equal the
data lines of each CSV file, and rows in = rows out + quarantined + duplicates dropped. Each release gets its own
seed (`--seed` plus its position): Synthea derives patient ids from the seed, and 3.0.0 and 3.1.0 give the same
ids for the same seed, so the second would supersede the first's patients. Generation time (the
`synthea/population` asset, Synthea itself) is reported apart from pipeline time (staging of every upload, then
the marts and the OMOP build once).

    .venv/bin/python benchmarks/generate_releases.py [--patients 40] [--seed 42]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from synthea_pipeline.transforms.generation import RELEASES
from synthea_pipeline.transforms.raw import find_source_files


def data_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip()) - 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reference-date", default="2025-06-01")
    parser.add_argument("--releases", nargs="+", default=list(RELEASES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="generate-releases-") as work:
        os.environ["DAGSTER_HOME"] = f"{work}/dagster"
        os.makedirs(os.environ["DAGSTER_HOME"])
        from synthea_pipeline import runs

        lake_root = f"{work}/lake"
        generated = {}
        for index, release in enumerate(args.releases):
            started = time.perf_counter()
            report = runs.generate(
                {
                    "population": args.patients,
                    "seed": args.seed + index,
                    "release": release,
                    "reference_date": args.reference_date,
                },
                lake_root,
            )
            if not report.success:
                print(f"Synthea {release}: {'; '.join(report.errors)}", file=sys.stderr)
                return 1
            generated[release] = (report.shards[0], time.perf_counter() - started)
        started = time.perf_counter()
        reports = runs.backfill([shard["upload_id"] for shard, _ in generated.values()], lake_root)
        pipeline_seconds = time.perf_counter() - started
        print(
            f"{'release':<9}{'generate s':>11}{'patients':>9}{'CSV MB':>8}{'rows in':>10}{'quarantined':>12}"
            f"{'duplicates':>11}{'rows out':>10}  accounted"
        )
        failures = 0
        for (release, (shard, seconds)), report in zip(generated.items(), reports, strict=False):
            source = Path(lake_root) / "source" / shard["upload_id"]
            files, _ = find_source_files(str(source))
            exact = report.success and all(
                t.rows_in == sum(data_lines(source / name) for name in files.get(t.table, []))
                and t.rows_in == t.rows_out + t.quarantined + t.duplicates_dropped
                for t in report.tables
            )
            failures += not exact
            totals = [sum(getattr(t, name) for t in report.tables) for name in ("rows_in", "quarantined")]
            duplicates = sum(t.duplicates_dropped for t in report.tables)
            rows_out = sum(t.rows_out for t in report.tables)
            print(
                f"{release:<9}{seconds:>11.1f}{shard['patients']:>9}{shard['bytes'] / 1e6:>8.1f}{totals[0]:>10}"
                f"{totals[1]:>12}{duplicates:>11}{rows_out:>10}  {'yes' if exact else 'NO'}"
            )
            quarantined = [f"{t.table} {t.quarantined}" for t in report.tables if t.quarantined]
            if quarantined:
                print(f"{'':<9}quarantined: {', '.join(quarantined)}")
        print(f"pipeline (staging of {len(reports)} uploads, then marts, OMOP, BI once): {pipeline_seconds:.1f} s")
        if len(reports) < len(generated) or not all(r.success for r in reports):
            print("error: " + "; ".join(e for r in reports for e in r.errors), file=sys.stderr)
            return 1
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
