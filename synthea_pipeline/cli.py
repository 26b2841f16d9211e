"""`synthea-pipeline`: upload Synthea exports, run them through the pipeline, reprocess, list and remove them."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import traceback

from synthea_pipeline.engines import ENGINES
from synthea_pipeline.settings import LAKE_ROOT, SPARK_ENGINE
from synthea_pipeline.transforms.dqd import DQD_RESULTS_FILE
from synthea_pipeline.transforms.iceberg import OMOP_LAYER
from synthea_pipeline.transforms.lake import InvalidUploadId, Lake, upload_id_for_folder, validate_upload_id

LAKE_HELP = f"lake root (default: ${LAKE_ROOT.env_var}, else ./{LAKE_ROOT.default})"
ENGINE_HELP = f"Spark engine (default: ${SPARK_ENGINE.env_var}, else {SPARK_ENGINE.default})"
EXPORT_HELP = "Synthea CSV export: its folder (the output/csv of run_synthea) or a .zip of it"
REPLACE_HELP = (
    "confirm that this upload may remove history it supersedes (patients of earlier uploads or of its "
    "previous version whose tables are absent, cut or shrink); also replaces an upload id that holds a "
    "different export"
)
INTERRUPTED_EXIT = 130


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside a Dagster run (inside one Dagster turns them into the run's failure)."""


def _interrupt(signum: int, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _version() -> str:
    from importlib.metadata import version

    return f"synthea-pipeline {version('synthea-pipeline')} (dagster {version('dagster')})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthea-pipeline", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--verbose", action="store_true", help="print Dagster's own log and the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="process one Synthea CSV export as one upload, then the marts")
    run.add_argument(
        "source_dir", nargs="?", metavar="EXPORT", help=f"{EXPORT_HELP} (default: the sample shipped with the project)"
    )
    run.add_argument("--lake", help=LAKE_HELP)
    run.add_argument("--upload-id", help="partition key (default: derived from the folder or zip name)")
    run.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    run.add_argument("--replace", action="store_true", help=REPLACE_HELP)
    run.add_argument(
        "--include-identifiers",
        action="store_true",
        help="write direct identifiers (SSN, names, addresses, ...) to the marts",
    )
    upload = commands.add_parser("upload", help="copy a Synthea CSV export to source/<upload_id>/ with a manifest")
    upload.add_argument("source_dir", metavar="EXPORT", help=EXPORT_HELP)
    upload.add_argument(
        "--to",
        help=f"where uploads land: s3://BUCKET/PREFIX or a folder (default: the lake's "
        f"source/, ${LAKE_ROOT.env_var}/source, else ./{LAKE_ROOT.default}/source)",
    )
    upload.add_argument("--upload-id", help="partition key (default: derived from the folder or zip name)")
    upload.add_argument(
        "--replace",
        action="store_true",
        help=REPLACE_HELP + " (written in the manifest, for the upload sensor and the UI)",
    )
    uploads = commands.add_parser("uploads", help="list every upload: waiting, loading, committed, failed, removed")
    uploads.add_argument("--lake", help=LAKE_HELP)
    uploads.add_argument("--format", choices=("table", "csv"), default="table")
    backfill = commands.add_parser("backfill", help="recompute uploads from source, then the marts")
    backfill.add_argument(
        "upload_ids",
        nargs="*",
        metavar="UPLOAD_ID",
        help="uploads to recompute (committed ones, or ones waiting in source/)",
    )
    backfill.add_argument("--all", action="store_true", help="recompute every upload committed in the lake")
    backfill.add_argument("--lake", help=LAKE_HELP)
    backfill.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    backfill.add_argument(
        "--include-identifiers",
        action="store_true",
        help="write direct identifiers (SSN, names, addresses, ...) to the marts",
    )
    query = commands.add_parser("query", help="run SQL on the catalog (DuckDB locally, Athena for an S3 lake)")
    query.add_argument("sql", help='e.g. "SELECT * FROM bi_demographics" (default database: the marts)')
    query.add_argument("--lake", help=LAKE_HELP)
    query.add_argument("--format", choices=("table", "csv"), default="table")
    query.add_argument(
        "--as-of",
        type=_timestamp,
        metavar="TIMESTAMP",
        help="read the marts as they were then (Iceberg time travel), e.g. 2026-11-27T09:30:00Z; "
        "UTC when no offset is given",
    )
    remove = commands.add_parser("remove", help="take an upload out of the lake, then rebuild the marts")
    remove.add_argument("upload_id")
    remove.add_argument("--lake", help=LAKE_HELP)
    remove.add_argument("--purge-source", action="store_true", help="also delete source/<upload_id>/")
    remove.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    maintain = commands.add_parser("maintain", help="expire old Iceberg snapshots and delete files no one needs")
    maintain.add_argument("--lake", help=LAKE_HELP)
    maintain.add_argument(
        "--older-than",
        type=_duration,
        default=_duration("7d"),
        metavar="AGE",
        help="keep snapshots (time travel) and unreferenced files this recent, e.g. 7d or 12h "
        "(default: 7d; keep it longer than the longest run: files of runs still writing are "
        "younger than that)",
    )
    maintain.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    generate = commands.add_parser(
        "generate",
        help="generate a population with real Synthea into the lake's source/ as uploads (the sensor runs them)",
    )
    _population_options(generate)
    generate.add_argument("--lake", help=LAKE_HELP)
    generate.add_argument("--run", action="store_true", help="then run the uploads through every layer here")
    generate.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)
    deploy = commands.add_parser("deploy", help="upload the Spark job code and create or update the Glue jobs")
    deploy.add_argument("--bucket", required=True, help="bucket for the job code")
    deploy.add_argument("--prefix", default="code", help="key prefix for the job code (default: code)")
    deploy.add_argument(
        "--glue-role",
        help="IAM role ARN for Glue jobs that do not exist yet (infra/ creates the jobs with one role each)",
    )
    deploy.add_argument(
        "--job-prefix",
        default="synthea-pipeline",
        help="Glue job names are <job-prefix>-staging and <job-prefix>-marts",
    )
    deploy.add_argument(
        "--workers",
        type=int,
        default=2,
        help="G.1X workers of Glue jobs created (default: 2); existing jobs keep theirs",
    )
    deploy.add_argument("--dry-run", action="store_true", help="print what would be uploaded and created")
    dagster_deploy = commands.add_parser(
        "deploy-dagster",
        help="build and push the image to ECR, then create or update the Dagster stack "
        "(infra/dagster-ecs.yaml) with the lake stack's outputs; run from the repository's root",
    )
    dagster_deploy.add_argument("--stack", default="synthea-pipeline-dagster", help="the Dagster stack's name")
    dagster_deploy.add_argument(
        "--lake-stack", default="synthea-pipeline", help="the stack made from infra/synthea-pipeline.yaml"
    )
    dagster_deploy.add_argument("--vpc-id", required=True)
    dagster_deploy.add_argument(
        "--subnets", required=True, help="comma-separated private subnet ids (two availability zones or more)"
    )
    dagster_deploy.add_argument("--allowed-cidr", required=True, help="the only network that may open the UI")
    dagster_deploy.add_argument(
        "--repository-name", default="synthea-pipeline", help="ECR repository (created when absent)"
    )
    dagster_deploy.add_argument("--tag", help="image tag (default: the commit and the time)")
    dagster_deploy.add_argument(
        "--dry-run", action="store_true", help="print the image, commands and parameters (no credentials needed)"
    )
    return parser


def _population_options(parser: argparse.ArgumentParser) -> None:
    """An option per `Population` field (the asset's config): list fields repeat, e.g. --module A --module B."""
    import dataclasses
    import typing

    from synthea_pipeline.transforms.generation import Population

    hints = typing.get_type_hints(Population)
    for option in dataclasses.fields(Population):
        kind = hints[option.name]
        listed = "list" in str(kind)
        flag = "--" + (option.name[:-1] if listed else option.name).replace("_", "-")
        parser.add_argument(
            flag,
            dest=option.name,
            type=int if int in typing.get_args(kind) or kind is int else str,
            action="append" if listed else "store",
            default=None,
            help=option.metadata["help"] + (" (repeat for several)" if listed else ""),
        )


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


def _age(duration: dt.timedelta) -> str:
    """A duration as `--older-than` takes it: 7d, 12h, 90m, 0s."""
    seconds = duration.total_seconds()
    unit = next((u for u, size in DURATION_UNITS.items() if seconds and seconds % size == 0), "s")
    return f"{seconds / DURATION_UNITS[unit]:g}{unit}"


def _print_rows(columns: list[str], rows: list[list], output_format: str) -> None:
    if output_format == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)))
    print(f"({len(rows)} rows)")


def _runs(args: argparse.Namespace):
    """The module that runs jobs in this process (it imports Dagster and the definitions: only the commands that
    run something pay for that), printing Dagster's own log with --verbose."""
    from synthea_pipeline import runs

    if args.verbose:
        runs.console_log_level = "DEBUG"
    return runs


def _lake_root(args: argparse.Namespace) -> str:
    return Lake.at(LAKE_ROOT.current(getattr(args, "lake", None))).root


def query_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.runs import catalog_from_environment

    if not args.sql.strip():
        print(
            'error: no SQL given: pass a statement, e.g. synthea-pipeline query "SELECT * FROM bi_demographics"',
            file=sys.stderr,
        )
        return 2
    try:
        columns, rows = catalog_from_environment().query(Lake(_lake_root(args)), args.sql, args.as_of)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    _print_rows(columns, rows, args.format)
    return 0


UPLOAD_COLUMNS = (
    "upload_id",
    "state",
    "synthea_release",
    "patients",
    "registered_at",
    "committed_at",
    "removed_at",
    "last_run",
)


def uploads_command(args: argparse.Namespace) -> int:
    rows = _runs(args).list_uploads(_lake_root(args))
    cells = [
        [f"{row[c]:%Y-%m-%d %H:%M:%S}" if isinstance(row.get(c), dt.datetime) else row.get(c) for c in UPLOAD_COLUMNS]
        for row in rows
    ]
    _print_rows(list(UPLOAD_COLUMNS), cells, args.format)
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
        plan = deploy_dagster(
            args.stack,
            args.lake_stack,
            args.vpc_id,
            args.subnets.split(","),
            args.allowed_cidr,
            repository_name=args.repository_name,
            tag=args.tag,
            dry_run=args.dry_run,
        )
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(("dry run, nothing built, pushed or deployed\n" if args.dry_run else "") + plan.describe())
    return 0


def _upload_id(args: argparse.Namespace, source: str) -> str:
    from synthea_pipeline.transforms.uploads import export_name

    return validate_upload_id(args.upload_id) if args.upload_id else upload_id_for_folder(export_name(source))


def _described(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {_described(item)}" for key, item in value.items() if item not in (None, "", [], {}))
    return str(value)


def _warnings_of(report, upload_ids: set[str]) -> list[str]:
    """The warnings that concern the given uploads, each naming its upload: a lake-wide (mart) warning's part for
    them (`by_upload`), every warning of their own staging and raw checks."""
    lines = []
    for name, metadata in report.warnings.items():
        if name.startswith(f"{OMOP_LAYER}/"):
            continue
        if "by_upload" in metadata:
            for upload in sorted(upload_ids & set(metadata["by_upload"])):
                lines.append(f"warning: upload {upload}: {name}: {_described(metadata['by_upload'][upload])}")
        elif report.upload_id in upload_ids:
            lines.append(f"warning: upload {report.upload_id}: {name}: {_described(metadata)}")
    return lines


def _print_report(report, lake_root: str, verbose: bool) -> bool:
    if report.tables:
        release = report.release + (f": {report.release_note}" if report.release_note else "")
        print(f"upload {report.upload_id} (Synthea {release}), Dagster run {report.run_id}")
        print(f"{'table':<22}{'rows in':>10}{'quarantined':>13}{'duplicates':>12}{'rows out':>10}")
        for t in report.tables:
            print(f"{t.table:<22}{t.rows_in:>10}{t.quarantined:>13}{t.duplicates_dropped:>12}{t.rows_out:>10}")
        print(f"staging (Iceberg): {lake_root}/staging/<table>/, load {report.run_id} of upload {report.upload_id}")
    for line in report.supersedes:
        print(f"upload {report.upload_id} {line}")
    if report.marts:
        print("marts (all uploads): " + ", ".join(f"{name} {rows}" for name, rows in report.marts.items()))
        print(f"marts (Iceberg): {lake_root}/marts/<table>/")
    if report.omop:
        from synthea_pipeline.transforms.omop import CLINICAL_TABLES

        built = [table for table in CLINICAL_TABLES if table in report.omop]
        print("omop (all uploads): " + ", ".join(f"{table} {report.omop[table]}" for table in built))
        failed = {name: metadata for name, metadata in report.warnings.items() if name.startswith(f"{OMOP_LAYER}/")}
        print(
            f"omop DQD: {sum(m['failed'] for m in failed.values())} checks over their threshold (warnings) on "
            f"{len(failed)} tables; results for OHDSI's DQD viewer: {lake_root}/reports/{DQD_RESULTS_FILE}"
        )
    for line in _warnings_of(report, {report.upload_id} if report.tables else set()):
        print(line)
    if report.dashboard:
        print(f"dashboard: {report.dashboard}")
    if not report.success or report.errors:
        for error in report.errors or ["the run failed; see the Dagster run log"]:
            print(f"error: {error}", file=sys.stderr)
        if not verbose and not report.interrupted:
            print(
                f"(Dagster run {report.run_id}: `dagster dev` shows its log; --verbose prints it here)", file=sys.stderr
            )
        return False
    return True


def run_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.transforms.uploads import export_folder

    runs = _runs(args)
    source = args.source_dir or str(runs.SAMPLE_DIR)
    upload_id = _upload_id(args, source)
    lake_root = _lake_root(args)
    with export_folder(source) as folder:
        report = runs.run_upload(
            folder,
            lake_root,
            upload_id,
            engine=args.engine,
            include_identifiers=args.include_identifiers,
            replace=bool(args.upload_id) or args.replace,
            replace_history=args.replace,
        )
    return _exit(report, _print_report(report, lake_root, args.verbose))


def _exit(report, succeeded: bool) -> int:
    if report.interrupted:
        return INTERRUPTED_EXIT
    return 0 if succeeded else 1


def upload_command(args: argparse.Namespace) -> int:
    from synthea_pipeline.resources.lake import LakeResource
    from synthea_pipeline.transforms.storage import storage_for
    from synthea_pipeline.transforms.uploads import export_folder, manifest_key, upload_export

    upload_id = _upload_id(args, args.source_dir)
    storage = storage_for(args.to) if args.to else LakeResource(root=LAKE_ROOT.current()).source_storage()
    with export_folder(args.source_dir) as folder:
        manifest = upload_export(
            folder, storage, upload_id, replace=bool(args.upload_id) or args.replace, replace_history=args.replace
        )
    size = sum(f["size"] for f in manifest["files"])
    print(
        f"uploaded {len(manifest['files'])} files ({size / 1e6:.1f} MB, Synthea {manifest['synthea_release']}) "
        f"to {storage.uri(upload_id)}/" + (", confirmed to replace history" if args.replace else "")
    )
    print(f"manifest {storage.uri(manifest_key(upload_id))}, checksum {manifest['checksum'][:16]}")
    return 0


def generate_command(args: argparse.Namespace) -> int:
    import dataclasses

    from synthea_pipeline.transforms.generation import Population

    population = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Population) if getattr(args, f.name) is not None
    }
    Population(**population).resolved()
    lake_root = _lake_root(args)
    runs = _runs(args)
    report = runs.generate(population, lake_root)
    for shard in report.shards:
        done = "already there, reused" if shard["reused"] else f"generated in {shard['generation_seconds']:.1f} s"
        extra = f", {shard['fhir_files']} FHIR files in its fhir/" if shard["fhir_files"] else ""
        print(
            f"upload {shard['upload_id']}: {shard['patients']} patients, {shard['files']} CSV files "
            f"({shard['bytes'] / 1e6:.1f} MB){extra}, {done}"
        )
    if not report.success:
        for error in report.errors or ["the generation failed; see the Dagster run log"]:
            print(f"error: {error}", file=sys.stderr)
        return INTERRUPTED_EXIT if report.interrupted else 1
    upload_ids = [shard["upload_id"] for shard in report.shards]
    print(f"in {lake_root}/source/ (Dagster run {report.run_id})")
    if not args.run:
        print("the upload sensor of `dagster dev` runs them; or: synthea-pipeline backfill " + " ".join(upload_ids))
        return 0
    reports = runs.backfill(upload_ids, lake_root, engine=args.engine)
    printed = [_print_report(run, lake_root, args.verbose) for run in reports]
    return 0 if all(printed) else _exit(reports[-1], False)


def backfill_command(args: argparse.Namespace) -> int:
    if args.all and args.upload_ids:
        print("error: pass either upload ids or --all, not both", file=sys.stderr)
        return 2
    if not args.all and not args.upload_ids:
        print(
            "error: name the uploads to recompute (`synthea-pipeline uploads` lists them), or pass --all",
            file=sys.stderr,
        )
        return 2
    lake_root = _lake_root(args)
    try:
        reports = _runs(args).backfill(
            None if args.all else args.upload_ids,
            lake_root,
            engine=args.engine,
            include_identifiers=args.include_identifiers,
        )
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    printed = [_print_report(report, lake_root, args.verbose) for report in reports]
    if not all(printed):
        print(f"error: backfill stopped at {reports[-1].upload_id}; the marts were not rebuilt", file=sys.stderr)
        return _exit(reports[-1], False)
    return 0


def remove_command(args: argparse.Namespace) -> int:
    lake_root = _lake_root(args)
    upload_id = validate_upload_id(args.upload_id)
    try:
        report = _runs(args).remove(upload_id, lake_root, engine=args.engine, purge_source=args.purge_source)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    if "loads_deleted" in report.outputs:
        source = (
            "its source deleted"
            if args.purge_source
            else "its source kept: the sensor leaves it alone until it is uploaded again"
        )
        print(
            f"removed upload {upload_id} from {lake_root}: {report.outputs['loads_deleted']} loads deleted (staging, "
            f"quarantine and raw rows), its partition removed, {source}"
        )
    return _exit(report, _print_report(report, lake_root, args.verbose))


def maintain_command(args: argparse.Namespace) -> int:
    lake_root = _lake_root(args)
    try:
        summary = _runs(args).maintain(lake_root, args.older_than.total_seconds() / 86400, engine=args.engine)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"lake {lake_root}: deleted {summary['stale_loads']} stale loads and {summary['stale_builds']} stale "
        f"builds; expired {summary['snapshots_expired']} snapshots older than {_age(args.older_than)}; deleted "
        f"{summary['files_deleted']} files ({summary['bytes_deleted'] / 1e6:.1f} MB) in {summary['tables']} tables"
    )
    return 0


COMMANDS = {
    "run": run_command,
    "upload": upload_command,
    "generate": generate_command,
    "uploads": uploads_command,
    "backfill": backfill_command,
    "query": query_command,
    "deploy": deploy_command,
    "deploy-dagster": deploy_dagster_command,
    "remove": remove_command,
    "maintain": maintain_command,
}


def main(argv: list[str] | None = None) -> int:
    """Every failure ends in one line that says what happened and what to do (exit 2 for what the user can fix in
    the command, 1 otherwise, 130 when interrupted); a traceback only with --verbose."""
    from botocore.exceptions import BotoCoreError, ClientError

    from synthea_pipeline.transforms.generation import GenerationError
    from synthea_pipeline.transforms.storage import UploadVerificationError
    from synthea_pipeline.transforms.uploads import UploadError

    args = _parser().parse_args(argv)
    handlers = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader stopped reading (`| head`): what it wanted was written. Point stdout at /dev/null so the
        # interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (
        InvalidUploadId,
        UploadError,
        UploadVerificationError,
        GenerationError,
        ValueError,
        BotoCoreError,
        ClientError,
        KeyboardInterrupt,
    ) as error:
        if args.verbose:
            traceback.print_exception(error)
        message, status = _explained(error)
        print(f"error: {message}", file=sys.stderr)
        return status
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _explained(error: BaseException) -> tuple[str, int]:
    """A failure as one line that says what happened and what to do, and the exit status."""
    from botocore.exceptions import BotoCoreError, ClientError

    from synthea_pipeline.transforms.storage import UploadVerificationError

    if isinstance(error, KeyboardInterrupt):
        signal_name = error.args[0] if error.args else "SIGINT"
        return f"interrupted ({signal_name}): nothing was committed; run the command again to finish", INTERRUPTED_EXIT
    if isinstance(error, UploadVerificationError):
        return f"upload not verified, nothing was run or marked complete: {error}", 1
    if isinstance(error, (BotoCoreError, ClientError)):
        return (
            f"AWS: {error} (credentials and region come from the usual AWS environment: AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID, AWS_REGION)"
        ), 1
    return str(error), 2


if __name__ == "__main__":
    sys.exit(main())
