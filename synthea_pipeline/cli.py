"""`synthea-pipeline`: upload Synthea exports, run them through the pipeline, reprocess them."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from synthea_pipeline.resources.spark import ENGINES
from synthea_pipeline.settings import LAKE_ROOT, SPARK_ENGINE
from synthea_pipeline.transforms.lake import InvalidUploadId, upload_id_for_folder, validate_upload_id

LAKE_HELP = f"lake root (default: ${LAKE_ROOT.env_var}, else ./{LAKE_ROOT.default})"
ENGINE_HELP = f"Spark engine (default: ${SPARK_ENGINE.env_var}, else {SPARK_ENGINE.default})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthea-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="process one Synthea CSV folder as one upload")
    run.add_argument("source_dir", nargs="?", help="Synthea CSV folder (default: the sample shipped with the project)")
    run.add_argument("--lake", help=LAKE_HELP)
    run.add_argument("--upload-id", help="partition key (default: derived from the folder name)")
    run.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    run.add_argument("--include-identifiers", action="store_true",
                     help="write direct identifiers (SSN, names, addresses, ...) to the marts")
    upload = commands.add_parser("upload", help="copy a Synthea CSV folder to source/<upload_id>/ with a manifest")
    upload.add_argument("source_dir", help="Synthea CSV folder (the output/csv of run_synthea)")
    upload.add_argument("--to", help=f"where uploads land: s3://BUCKET/PREFIX or a folder (default: the lake's "
                        f"source/, ${LAKE_ROOT.env_var}/source, else ./{LAKE_ROOT.default}/source)")
    upload.add_argument("--upload-id", help="partition key (default: derived from the folder name)")
    backfill = commands.add_parser("backfill", help="recompute registered uploads from source, then the marts")
    backfill.add_argument("upload_ids", nargs="*", help="uploads to recompute")
    backfill.add_argument("--all", action="store_true", help="recompute every registered upload")
    backfill.add_argument("--lake", help=LAKE_HELP)
    backfill.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    backfill.add_argument("--include-identifiers", action="store_true",
                          help="write direct identifiers (SSN, names, addresses, ...) to the marts")
    query = commands.add_parser("query", help="run SQL on the catalog (DuckDB locally, Athena for an S3 lake)")
    query.add_argument("sql", help='e.g. "SELECT * FROM bi_demographics" (default database: the marts)')
    query.add_argument("--lake", help=LAKE_HELP)
    query.add_argument("--format", choices=("table", "csv"), default="table")
    query.add_argument("--as-of", type=_timestamp, metavar="TIMESTAMP",
                       help="read the marts as they were then (Iceberg time travel), e.g. 2026-11-27T09:30:00Z; "
                       "UTC when no offset is given")
    remove = commands.add_parser("remove", help="take an upload out of the lake, then rebuild the marts")
    remove.add_argument("upload_id")
    remove.add_argument("--lake", help=LAKE_HELP)
    remove.add_argument("--purge-source", action="store_true", help="also delete source/<upload_id>/")
    remove.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    maintain = commands.add_parser("maintain", help="expire old Iceberg snapshots and delete files no one needs")
    maintain.add_argument("--lake", help=LAKE_HELP)
    maintain.add_argument("--older-than", type=_duration, default=_duration("7d"), metavar="AGE",
                          help="keep snapshots (time travel) and unreferenced files this recent, e.g. 7d or 12h "
                          "(default: 7d; keep it longer than the longest run: files of runs still writing are "
                          "younger than that)")
    maintain.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    deploy = commands.add_parser("deploy", help="upload the Spark job code and create or update the Glue jobs")
    deploy.add_argument("--bucket", required=True, help="bucket for the job code")
    deploy.add_argument("--prefix", default="code", help="key prefix for the job code (default: code)")
    deploy.add_argument("--glue-role", help="IAM role ARN for Glue jobs that do not exist yet (infra/ creates the jobs with one role each)")
    deploy.add_argument("--job-prefix", default="synthea-pipeline",
                        help="Glue job names are <job-prefix>-staging and <job-prefix>-marts")
    deploy.add_argument("--workers", type=int, default=2, help="G.1X workers of Glue jobs created (default: 2); existing jobs keep theirs")
    deploy.add_argument("--dry-run", action="store_true", help="print what would be uploaded and created")
    dagster_deploy = commands.add_parser(
        "deploy-dagster", help="build and push the image to ECR, then create or update the Dagster stack "
        "(infra/dagster-ecs.yaml) with the lake stack's outputs; run from the repository's root")
    dagster_deploy.add_argument("--stack", default="synthea-pipeline-dagster", help="the Dagster stack's name")
    dagster_deploy.add_argument("--lake-stack", default="synthea-pipeline",
                                help="the stack made from infra/synthea-pipeline.yaml")
    dagster_deploy.add_argument("--vpc-id", required=True)
    dagster_deploy.add_argument("--subnets", required=True,
                                help="comma-separated private subnet ids (two availability zones or more)")
    dagster_deploy.add_argument("--allowed-cidr", required=True, help="the only network that may open the UI")
    dagster_deploy.add_argument("--repository-name", default="synthea-pipeline", help="ECR repository (created "
                                "when absent)")
    dagster_deploy.add_argument("--tag", help="image tag (default: the commit and the time)")
    dagster_deploy.add_argument("--dry-run", action="store_true", help="print the image, commands and parameters")
    return parser


def _timestamp(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a timestamp: {text!r} (e.g. 2026-11-27T09:30:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _duration(text: str) -> dt.timedelta:
    number, unit = text[:-1], text[-1:]
    try:
        return dt.timedelta(seconds=float(number) * DURATION_UNITS[unit])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 7d, 12h, 30m, 0s)") from None


def query_command(args: argparse.Namespace) -> int:
    import csv

    from synthea_pipeline.resources.lake import LakeResource
    from synthea_pipeline.runs import catalog_from_environment

    try:
        lake = LakeResource(root=LAKE_ROOT.current(args.lake)).layout()
        columns, rows = catalog_from_environment().query(lake, args.sql, args.as_of)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - SQL errors are the user's to read, without a traceback
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return 0
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(f"({len(rows)} rows)")
    return 0


def deploy_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.deploy import deploy

    try:
        plan = deploy(args.bucket, args.prefix, args.job_prefix, args.glue_role, args.workers, args.dry_run)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(("dry run, nothing uploaded or created\n" if args.dry_run else "") + plan.describe())
    return 0


def deploy_dagster_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.deploy_dagster import DeployError, deploy_dagster

    try:
        plan = deploy_dagster(args.stack, args.lake_stack, args.vpc_id, args.subnets.split(","), args.allowed_cidr,
                              repository_name=args.repository_name, tag=args.tag, dry_run=args.dry_run)
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(("dry run, nothing built, pushed or deployed\n" if args.dry_run else "") + plan.describe())
    return 0


def _upload_id(args: argparse.Namespace, source_dir: str) -> str:
    return validate_upload_id(args.upload_id) if args.upload_id else upload_id_for_folder(source_dir)


def _print_report(report, lake_root: str) -> bool:
    print(f"upload {report.upload_id} (Synthea {report.release}), Dagster run {report.run_id}")
    print(f"{'table':<22}{'rows in':>10}{'quarantined':>13}{'duplicates':>12}{'rows out':>10}")
    for t in report.tables:
        print(f"{t.table:<22}{t.rows_in:>10}{t.quarantined:>13}{t.duplicates_dropped:>12}{t.rows_out:>10}")
    print(f"staging (Iceberg): {lake_root}/staging/<table>/, load {report.run_id} of upload {report.upload_id}")
    if report.marts:
        print("marts (all uploads): " + ", ".join(f"{name} {rows}" for name, rows in report.marts.items()))
        print(f"marts (Iceberg): {lake_root}/marts/<table>/")
    for name, metadata in report.warnings.items():
        print(f"warning: {name}: {', '.join(f'{k} {v}' for k, v in metadata.items())}")
    if report.dashboard:
        print(f"dashboard: {report.dashboard}")
    if not report.success or report.errors:
        for error in report.errors or ["the run failed; see the Dagster run log"]:
            print(f"error: {error}", file=sys.stderr)
        return False
    return True


def run_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.resources.lake import LakeResource
    from synthea_pipeline.runs import SAMPLE_DIR, run_upload
    from synthea_pipeline.transforms.storage import UploadVerificationError
    from synthea_pipeline.transforms.uploads import UploadError

    source_dir = args.source_dir or str(SAMPLE_DIR)
    try:
        upload_id = _upload_id(args, source_dir)
        lake_root = LakeResource(root=LAKE_ROOT.current(args.lake)).layout().root
        report = run_upload(source_dir, lake_root, upload_id, engine=args.engine,
                            include_identifiers=args.include_identifiers, replace=bool(args.upload_id))
    except (InvalidUploadId, UploadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UploadVerificationError as error:
        print(f"error: upload not verified, nothing was run: {error}", file=sys.stderr)
        return 1
    return 0 if _print_report(report, lake_root) else 1


def upload_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.resources.lake import LakeResource
    from synthea_pipeline.transforms.storage import UploadVerificationError, storage_for
    from synthea_pipeline.transforms.uploads import UploadError, manifest_key, upload_export

    try:
        upload_id = _upload_id(args, args.source_dir)
        storage = storage_for(args.to) if args.to else LakeResource(root=LAKE_ROOT.current()).source_storage()
        manifest = upload_export(args.source_dir, storage, upload_id, replace=bool(args.upload_id))
    except (InvalidUploadId, UploadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UploadVerificationError as error:
        print(f"error: upload not verified, nothing was marked complete: {error}", file=sys.stderr)
        return 1
    size = sum(f["size"] for f in manifest["files"])
    print(f"uploaded {len(manifest['files'])} files ({size / 1e6:.1f} MB, Synthea {manifest['synthea_release']}) "
          f"to {storage.uri(upload_id)}/")
    print(f"manifest {storage.uri(manifest_key(upload_id))}, checksum {manifest['checksum'][:16]}")
    return 0


def backfill_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.resources.lake import LakeResource
    from synthea_pipeline.runs import backfill

    if bool(args.all) == bool(args.upload_ids):
        print("error: name the uploads to recompute, or pass --all", file=sys.stderr)
        return 2
    lake_root = LakeResource(root=LAKE_ROOT.current(args.lake)).layout().root
    try:
        reports = backfill(None if args.all else args.upload_ids, lake_root, engine=args.engine,
                           include_identifiers=args.include_identifiers)
    except (KeyError, ValueError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    printed = [_print_report(report, lake_root) for report in reports]
    if not all(printed):
        print(f"error: backfill stopped at {reports[-1].upload_id}; the marts were not rebuilt", file=sys.stderr)
        return 1
    return 0


def remove_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.resources.lake import LakeResource
    from synthea_pipeline.runs import remove

    lake_root = LakeResource(root=LAKE_ROOT.current(args.lake)).layout().root
    try:
        report = remove(validate_upload_id(args.upload_id), lake_root, engine=args.engine,
                        purge_source=args.purge_source)
    except (InvalidUploadId, KeyError, ValueError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    print(f"removed upload {args.upload_id} from {lake_root}" + (", and its source" if args.purge_source else ""))
    return 0 if _print_report(report, lake_root) else 1


def maintain_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.resources.lake import LakeResource
    from synthea_pipeline.runs import maintain

    lake_root = LakeResource(root=LAKE_ROOT.current(args.lake)).layout().root
    try:
        summary = maintain(lake_root, args.older_than.total_seconds() / 86400, engine=args.engine)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"lake {lake_root}: deleted {summary['stale_loads']} stale loads and {summary['stale_builds']} stale "
          f"builds; expired {summary['snapshots_expired']} snapshots older than {args.older_than}; deleted "
          f"{summary['files_deleted']} files ({summary['bytes_deleted'] / 1e6:.1f} MB) in {summary['tables']} tables")
    return 0


def main(argv: list[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    args = _parser().parse_args(argv)
    commands = {"run": run_command, "upload": upload_command, "backfill": backfill_command,
                "query": query_command, "deploy": deploy_command,
                "deploy-dagster": deploy_dagster_command, "remove": remove_command,
                "maintain": maintain_command}
    try:
        return commands[args.command](args)
    except (BotoCoreError, ClientError) as error:
        print(f"error: AWS: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader stopped reading (`| head`): what it wanted was written. Point stdout at /dev/null so the
        # interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
