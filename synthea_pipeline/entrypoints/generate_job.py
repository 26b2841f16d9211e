"""Pipes entry script of one shard of a Synthea population: the command of the generation image's ECS task
(infra/dagster-ecs.yaml). Dagster passes the bootstrap parameters as environment variables and the population as
Pipes extras (context in S3); the script runs Synthea, stores the shard as an upload in the lake's `source/` on
S3 and reports it back as a Pipes message. `--resolve RELEASE` resolves a release into $SYNTHEA_CACHE (the image
build runs it, so tasks start without Maven or network).

Imports only dagster_pipes and the project's transforms, which is all the image needs."""

import argparse
import os
import sys

from dagster_pipes import PipesEnvVarParamsLoader, PipesS3ContextLoader, PipesS3MessageWriter, open_dagster_pipes

from synthea_pipeline.transforms.generation import (
    CACHE_VARIABLE,
    DEFAULT_CACHE,
    JAR_VARIABLE,
    MAVEN_CENTRAL,
    REPOSITORY_VARIABLE,
    Population,
    find_synthea,
    generate_shard,
    resolve_release,
)
from synthea_pipeline.transforms.lake import Lake, aws_client
from synthea_pipeline.transforms.storage import storage_for


def cache() -> str:
    return os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE


def repository() -> str:
    return os.environ.get(REPOSITORY_VARIABLE) or MAVEN_CENTRAL


def run_with_pipes() -> int:
    s3 = aws_client("s3")
    with open_dagster_pipes(
        params_loader=PipesEnvVarParamsLoader(),
        context_loader=PipesS3ContextLoader(s3),
        message_writer=PipesS3MessageWriter(s3, interval=2),
    ) as pipes:
        population = Population(**pipes.extras["population"])
        shard = population.shards()[pipes.extras["shard"]]
        synthea = find_synthea(population.release, os.environ.get(JAR_VARIABLE) or None, cache(), repository())
        generated = generate_shard(
            synthea,
            population,
            shard,
            storage_for(Lake(pipes.extras["lake_root"]).uri("source")),
            log=pipes.log.info,
        )
        pipes.report_custom_message(generated.as_dict())
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="generate_job.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolve", metavar="RELEASE", nargs="+", help="resolve these releases into the cache")
    args = parser.parse_args(argv)
    if args.resolve:
        for release in args.resolve:
            print(f"Synthea {release}: {len(resolve_release(release, cache(), repository()))} jars in {cache()}")
        return 0
    return run_with_pipes()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
