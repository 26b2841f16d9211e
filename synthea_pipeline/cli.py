"""`synthea-pipeline`: run an upload through the pipeline from the command line."""

from __future__ import annotations

import argparse
import sys

from synthea_pipeline.resources.lake import DEFAULT_LAKE, LAKE_ENV
from synthea_pipeline.resources.spark import ENGINES
from synthea_pipeline.transforms.lake import InvalidUploadId, upload_id_for_folder, validate_upload_id


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthea-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="process one Synthea CSV folder as one upload")
    run.add_argument("source_dir", nargs="?", help="Synthea CSV folder (default: the sample shipped with the project)")
    run.add_argument("--lake", help=f"lake root (default: ${LAKE_ENV}, else ./{DEFAULT_LAKE})")
    run.add_argument("--upload-id", help="partition key (default: derived from the folder name)")
    run.add_argument("--engine", choices=ENGINES, help="Spark engine (default: $SYNTHEA_SPARK_ENGINE, else sail)")
    run.add_argument("--include-identifiers", action="store_true",
                     help="write direct identifiers (SSN, names, addresses, ...) to the marts")
    return parser


def run_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.resources.lake import LakeResource
    from synthea_pipeline.runs import SAMPLE_DIR, UploadConflict, run_upload

    source_dir = args.source_dir or str(SAMPLE_DIR)
    try:
        upload_id = validate_upload_id(args.upload_id) if args.upload_id else upload_id_for_folder(source_dir)
    except InvalidUploadId as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lake_root = LakeResource(root=args.lake).layout().root
    try:
        report = run_upload(source_dir, lake_root, upload_id, engine=args.engine,
                            include_identifiers=args.include_identifiers, replace=bool(args.upload_id))
    except (FileNotFoundError, UploadConflict) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"upload {report.upload_id} (Synthea {report.release}), Dagster run {report.run_id}")
    print(f"{'table':<22}{'rows in':>10}{'quarantined':>13}{'duplicates':>12}{'rows out':>10}")
    for t in report.tables:
        print(f"{t.table:<22}{t.rows_in:>10}{t.quarantined:>13}{t.duplicates_dropped:>12}{t.rows_out:>10}")
    print(f"staging Parquet: {lake_root}/staging/<table>/upload_id={upload_id}/")
    if report.marts:
        print("marts (all uploads): " + ", ".join(f"{name} {rows}" for name, rows in report.marts.items()))
        print(f"mart Parquet: {lake_root}/marts/<table>/")
    if not report.success or report.errors:
        for error in report.errors or ["the run failed; see the Dagster run log"]:
            print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"run": run_command}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
