"""Scale a real sample to N patients, then time `synthea-pipeline run` against two one-script references: a
DuckDB script (`reference_duckdb.py`, the fastest thing a user could write instead) and a PySpark-on-Sail script
(`reference.py`).

Each runs as a child process of this one, so each gets its own wall time and the peak RSS of its whole process
tree (wait4 reports the largest descendant; the pipeline runs in one process). Prints a table and both ratios;
the targets are pipeline/DuckDB <= 1.5 at 10k patients and <= 3 at 1k, peak RSS under 8 GB at 100k.

The pipeline runs as a user runs it, with the OMOP build (the shipped vocabulary, which covers the scaled
sample's codes). `--generated N...` adds real Synthea populations of N living patients beside the replicated
sample (generated once and cached, `generated_population.py`), their generation time reported apart from the
pipeline's. `--without-omop` also runs it with SYNTHEA_OMOP_VOCABULARY=none, which the DuckDB script's work
(CSV to marts) compares with like for like, and prints what the OMOP build added.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
SAMPLE = HERE.parent / "synthea_pipeline_tests" / "fixtures" / "v3.0.0_27p"


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:3]} failed with exit code {os.waitstatus_to_exitcode(status)}")
    return elapsed, usage.ru_maxrss / 1024 / 1024


def run_pipeline(source: Path, work: str, patients: int, env: dict[str, str]) -> tuple[float, float]:
    """`synthea-pipeline run` of the scaled export into a new lake and Dagster home under `work`, deleted after
    (at 100k a lake holds about 20 GB: a copy of the upload, raw and staging)."""
    command = [sys.executable, "-m", "synthea_pipeline.cli", "run", str(source), "--lake", f"{work}/lake"]
    try:
        return measure([*command, "--upload-id", f"bench-{patients}"], {**env, "DAGSTER_HOME": f"{work}/dagster"})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def target(patients: int, floor_s: float, duck_s: float, duck_rss: float) -> tuple[float, float | None]:
    """The pipeline's target for this size: seconds, and peak RSS (GB) where one is set."""
    if patients <= 1000:
        return floor_s + 3 * duck_s, None
    if patients <= 10000:
        return 1.5 * duck_s, None
    return 1.2 * duck_s, duck_rss / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument(
        "--generated",
        type=int,
        nargs="*",
        default=[],
        help="also real Synthea populations of these many living patients (generated once, cached in --data)",
    )
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument(
        "--skip-sail",
        action="store_true",
        help="leave out the Sail reference (at 100k it needs "
        "more memory than the pipeline, for a ratio nobody targets)",
    )
    parser.add_argument(
        "--without-omop",
        action="store_true",
        help="also run the pipeline without the OMOP build, and print both",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from generated_population import describe, generated_export
    from scale_sample import scale

    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    args.data.mkdir(parents=True, exist_ok=True)
    floor_s, _ = measure([sys.executable, str(HERE / "dagster_floor.py"), "--home", str(args.data)], env)
    sources = []
    for patients in args.patients:
        source = args.data / f"p{patients}"
        if not (source / "patients.csv").exists():
            scale(SAMPLE, patients, source)
        sources.append((str(patients), patients, source))
    generations = []
    for living in args.generated:
        source, figures = generated_export(living, args.data)
        sources.append((f"{figures['patients']}g", figures["patients"], source))
        generations.append(figures)
    rows = []
    for label, patients, source in sources:
        size = sum(p.stat().st_size for p in source.glob("*.csv")) / 1e9
        with tempfile.TemporaryDirectory(dir=args.data) as work:
            duckdb_reference = measure(
                [sys.executable, str(HERE / "reference_duckdb.py"), str(source), f"{work}/duckdb"], env
            )
            reference = (
                None
                if args.skip_sail
                else measure([sys.executable, str(HERE / "reference.py"), str(source), f"{work}/ref"], env)
            )
            pipeline = run_pipeline(source, f"{work}/omop", patients, env)
            without_omop = (
                run_pipeline(source, f"{work}/none", patients, {**env, "SYNTHEA_OMOP_VOCABULARY": "none"})
                if args.without_omop
                else None
            )
            shutil.rmtree(work, ignore_errors=True)
        rows.append((label, patients, size, duckdb_reference, reference, pipeline, without_omop))
    for figures in generations:
        print(f"generated (not in the times below): {describe(figures)}")
    print(f"Dagster floor (the same steps without data work, imports included): {floor_s:.1f} s")
    print(
        f"{'patients':>9}{'CSV GB':>8}{'DuckDB s':>10}{'Sail s':>8}{'pipeline s':>12}{'/DuckDB':>9}{'/Sail':>7}"
        f"{'RSS GB DuckDB / Sail / pipeline':>33}  {'target':<24}"
    )
    for label, patients, size, (duck_s, duck_rss), sail, (pipe_s, pipe_rss), without_omop in rows:
        sail_s, sail_rss = sail or (float("nan"), float("nan"))
        goal_s, goal_rss = target(patients, floor_s, duck_s, duck_rss)
        met = pipe_s <= goal_s and (goal_rss is None or pipe_rss <= goal_rss)
        goal = f"{goal_s:.1f} s" + (f", {goal_rss:.1f} GB" if goal_rss else "") + (" met" if met else " missed")
        print(
            f"{label:>9}{size:>8.2f}{duck_s:>10.1f}{sail_s:>8.1f}{pipe_s:>12.1f}{pipe_s / duck_s:>9.2f}"
            f"{pipe_s / sail_s:>7.2f}{f'{duck_rss:.2f} / {sail_rss:.2f} / {pipe_rss:.2f}':>33}  {goal}"
        )
        if without_omop:
            bare_s, bare_rss = without_omop
            print(
                f"{'':>9}without the OMOP build: {bare_s:.1f} s ({bare_s / duck_s:.2f}x DuckDB), {bare_rss:.2f} GB; "
                f"the OMOP build added {pipe_s - bare_s:.1f} s ({(pipe_s - bare_s) / duck_s:.2f}x DuckDB)"
            )


if __name__ == "__main__":
    main()
