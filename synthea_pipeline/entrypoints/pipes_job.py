"""The body shared by the layer entry scripts. Inside a Glue or EMR Serverless job it opens Dagster Pipes (Glue
passes the bootstrap parameters as job arguments, EMR Serverless as driver environment variables; context and
messages go through S3), runs the layer on the job's Spark session and reports back. With `--standalone` it runs
the layer without Dagster and prints the reports as JSON lines, for debugging on a cluster or locally.

Imports only dagster_pipes, pyspark and the project's transforms, which is all a job needs shipped."""

import argparse
import json
import logging
import sys
import uuid
from dataclasses import asdict

from dagster_pipes import (
    PipesCliArgsParamsLoader,
    PipesEnvVarParamsLoader,
    PipesS3ContextLoader,
    PipesS3MessageWriter,
    open_dagster_pipes,
)
from pyspark.sql import SparkSession

from synthea_pipeline.transforms.iceberg import CATALOGS
from synthea_pipeline.transforms.lake import aws_client
from synthea_pipeline.transforms.layers import LAYERS, AssetReport, LayerFailed
from synthea_pipeline.transforms.staging import configure

CLI_CONTEXT_ARGUMENT = "--dagster-pipes-context"


def spark_session() -> SparkSession:
    """The job's session (Glue, EMR), or a Spark Connect one when SPARK_REMOTE is set."""
    spark = SparkSession.builder.appName("synthea-pipeline").getOrCreate()
    configure(spark)
    return spark


def report(pipes, item) -> None:
    if isinstance(item, AssetReport):
        pipes.report_asset_materialization(asset_key=item.asset_key, metadata=item.metadata)
    else:
        pipes.report_asset_check(
            check_name=item.check_name,
            passed=item.passed,
            severity=item.severity,
            metadata=item.metadata,
            asset_key=item.asset_key,
        )


def run_with_pipes(layer: str) -> int:
    s3 = aws_client("s3")
    params_loader = PipesCliArgsParamsLoader() if CLI_CONTEXT_ARGUMENT in sys.argv else PipesEnvVarParamsLoader()
    with open_dagster_pipes(
        params_loader=params_loader,
        context_loader=PipesS3ContextLoader(s3),
        message_writer=PipesS3MessageWriter(s3, interval=2),
    ) as pipes:
        pipes.log.info(f"{layer} layer starting: {json.dumps(pipes.extras)}")
        try:
            reports = LAYERS[layer](spark_session(), pipes.log, **pipes.extras)
        except LayerFailed as failure:
            for item in failure.reports:
                report(pipes, item)
            raise
        for item in reports:
            report(pipes, item)
    return 0


def run_standalone(layer: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{layer}_job.py --standalone")
    parser.add_argument("--standalone", action="store_true")
    parser.add_argument("--lake", required=True, help="lake root, s3://bucket/prefix or a folder")
    parser.add_argument(
        "--catalog",
        choices=CATALOGS,
        default="glue",
        help="how the session names the Iceberg tables (default: glue, the Glue Data Catalog)",
    )
    if layer == "staging":
        parser.add_argument("--upload-id", required=True)
        parser.add_argument("--load-id", default=f"standalone-{uuid.uuid4().hex[:12]}")
    else:
        parser.add_argument("--build-id", default=f"standalone-{uuid.uuid4().hex[:12]}")
    if layer == "marts":
        parser.add_argument("--include-identifiers", action="store_true")
        parser.add_argument("--full-rebuild", action="store_true", help="rewrite every upload's rows")
    if layer == "omop":
        parser.add_argument("--vocabulary", required=True, help="the vocabulary folder or s3:// prefix (Athena's)")
    args = parser.parse_args(argv)
    if layer == "staging":
        params = {"lake_root": args.lake, "upload_id": args.upload_id, "load_id": args.load_id}
    elif layer == "omop":
        params = {"lake_root": args.lake, "build_id": args.build_id, "vocabulary": args.vocabulary}
    else:
        params = {
            "lake_root": args.lake,
            "build_id": args.build_id,
            "include_identifiers": args.include_identifiers,
            "full_rebuild": args.full_rebuild,
        }
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        reports = LAYERS[layer](spark_session(), logging.getLogger(layer), table_catalog=args.catalog, **params)
    except LayerFailed as failure:
        for item in failure.reports:
            print(json.dumps({"kind": type(item).__name__, **asdict(item)}))
        print(f"error: {failure}", file=sys.stderr)
        return 1
    for item in reports:
        print(json.dumps({"kind": type(item).__name__, **asdict(item)}))
    return 0


def main(layer: str) -> int:
    argv = sys.argv[1:]
    return run_standalone(layer, argv) if "--standalone" in argv else run_with_pipes(layer)
