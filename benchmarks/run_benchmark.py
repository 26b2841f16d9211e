"""Scale a real sample to N patients, then time `synthea-pipeline run` against the plain reference script.

Both run as child processes of this one, so each gets its own wall time and peak RSS (wait4). Prints a table and
the ratios; the target is pipeline/reference <= 1.5 at 10k patients with peak RSS under 4 GB.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--data", type=Path, default=HERE / "data")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from scale_sample import scale

    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    rows = []
    for patients in args.patients:
        source = args.data / f"p{patients}"
        if not (source / "patients.csv").exists():
            scale(SAMPLE, patients, source)
        size = sum(p.stat().st_size for p in source.glob("*.csv")) / 1e9
        with tempfile.TemporaryDirectory(dir=args.data) as work:
            reference = measure([sys.executable, str(HERE / "reference.py"), str(source), f"{work}/ref"], env)
            pipeline = measure(
                [sys.executable, "-m", "synthea_pipeline.cli", "run", str(source), "--lake", f"{work}/lake",
                 "--upload-id", f"bench-{patients}"],
                {**env, "DAGSTER_HOME": f"{work}/dagster"},
            )
            shutil.rmtree(work, ignore_errors=True)
        rows.append((patients, size, reference, pipeline))
    print(f"{'patients':>9}{'CSV GB':>8}{'reference s':>13}{'pipeline s':>12}{'ratio':>7}{'ref RSS GB':>12}{'pipe RSS GB':>13}")
    for patients, size, (ref_s, ref_rss), (pipe_s, pipe_rss) in rows:
        print(f"{patients:>9}{size:>8.2f}{ref_s:>13.1f}{pipe_s:>12.1f}{pipe_s / ref_s:>7.2f}{ref_rss:>12.2f}{pipe_rss:>13.2f}")


if __name__ == "__main__":
    main()
