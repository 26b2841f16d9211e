"""Scale a real Synthea export up by whole copies, re-keying patient-scoped ids so every copy is new patients.

Organizations, providers and payers are shared by every copy (as in a real larger run), so they are written once.
Each other UUID gets a copy number in its first 8 hex digits; a template with a placeholder there makes each
copy one `bytes.replace`.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

SHARED_TABLES = ("organizations", "providers", "payers")
UUID = re.compile(rb"\b[0-9a-f]{8}(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")
PLACEHOLDER = b"\x00COPY\x00"


def scale(sample: Path, patients: int, out: Path, first_copy: int = 0) -> int:
    """Write enough copies of `sample` to `out` for at least `patients` patients; returns the patient count.
    Copies are numbered from `first_copy`, so exports scaled with disjoint numbers hold different patients."""
    with open(sample / "patients.csv", "rb") as lines:
        per_copy = sum(1 for _ in lines) - 1
    copies = math.ceil(patients / per_copy)
    shared_ids = set()
    for table in SHARED_TABLES:
        for line in (sample / f"{table}.csv").read_bytes().splitlines()[1:]:
            shared_ids.add(line.split(b",", 1)[0])
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(sample.glob("*.csv")):
        header, _, body = path.read_bytes().partition(b"\n")
        with open(out / path.name, "wb") as target:
            target.write(header + b"\n")
            if path.stem in SHARED_TABLES:
                target.write(body)
                continue
            template = UUID.sub(lambda m: m[0] if m[0] in shared_ids else PLACEHOLDER + m[1], body)
            target.writelines(
                template.replace(PLACEHOLDER, b"%08x" % copy) for copy in range(first_copy, first_copy + copies)
            )
    return copies * per_copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sample", type=Path)
    parser.add_argument("patients", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--first-copy", type=int, default=0, help="number of the first copy (default 0)")
    args = parser.parse_args()
    print(scale(args.sample, args.patients, args.out, args.first_copy))


if __name__ == "__main__":
    main()
