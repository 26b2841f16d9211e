"""The Synthea resource: generates a population's shards as uploads in the lake's `source/`, on this machine
(Synthea processes, shards in parallel up to the cores) or on ECS (a task per shard of the generation image,
through Dagster Pipes). The asset sees only `generate`."""

from __future__ import annotations

import os

from dagster import AssetExecutionContext, ConfigurableResource
from pydantic import Field, create_model

from synthea_pipeline.settings import SYNTHEA_FIELDS
from synthea_pipeline.transforms.generation import (
    HEAP_PERCENT,
    GeneratedShard,
    GenerationError,
    Population,
    find_synthea,
    generate_shard,
    generate_shards,
)
from synthea_pipeline.transforms.lake import Lake, aws_client
from synthea_pipeline.transforms.storage import storage_for

GENERATE_CONTAINER = "synthea"
"""The container of the generation task definition (infra/dagster-ecs.yaml) that runs Synthea."""


class SyntheaGeneratorResource(ConfigurableResource):
    """`SyntheaResource` adds a field per setting (`settings.SYNTHEA_FIELDS`)."""

    def generate(self, context: AssetExecutionContext, population: Population, lake: Lake) -> list[GeneratedShard]:
        if self.generator == "local":
            return self._generate_locally(context, population, lake)
        if self.generator == "ecs":
            return self._generate_on_ecs(context, population, lake)
        raise GenerationError(f"unknown Synthea generator {self.generator!r}: choose local or ecs")

    def _generate_locally(
        self, context: AssetExecutionContext, population: Population, lake: Lake
    ) -> list[GeneratedShard]:
        synthea = find_synthea(population.release, self.jar or None, self.cache, self.maven_repository)
        storage = storage_for(lake.uri("source"))
        shards = population.shards()
        workers = min(len(shards), os.cpu_count() or 1)
        return generate_shards(
            shards,
            lambda shard: generate_shard(
                synthea, population, shard, storage, context.log.info, HEAP_PERCENT // workers
            ),
            workers,
            context.log.info,
        )

    def _generate_on_ecs(
        self, context: AssetExecutionContext, population: Population, lake: Lake
    ) -> list[GeneratedShard]:
        """A task per shard, up to `ecs_concurrency` at once; each reports its upload as a Pipes message."""
        from dagster_aws.pipes import PipesECSClient

        from synthea_pipeline.engines.pipes import s3_exchange

        missing = [name for name in ("ecs_cluster", "ecs_task_definition", "ecs_subnets") if not getattr(self, name)]
        if missing:
            raise GenerationError(
                "the ecs generator needs "
                + ", ".join(SYNTHEA_FIELDS[name].env_var for name in missing)
                + " (the outputs of infra/dagster-ecs.yaml)"
            )
        if not lake.on_s3:
            raise GenerationError("the ecs generator writes to the lake's source/ on S3: set SYNTHEA_LAKE_ROOT=s3://…")
        network = {
            "awsvpcConfiguration": {
                "subnets": self.ecs_subnets.split(","),
                "securityGroups": [group for group in self.ecs_security_groups.split(",") if group],
                "assignPublicIp": "DISABLED",
            }
        }

        def run_task(shard) -> GeneratedShard:
            injector, reader = s3_exchange("", {"lake_root": lake.root}, aws_client("s3"))
            client = PipesECSClient(client=aws_client("ecs"), context_injector=injector, message_reader=reader)
            try:
                invocation = client.run(
                    context=context,
                    run_task_params={
                        "cluster": self.ecs_cluster,
                        "taskDefinition": self.ecs_task_definition,
                        "launchType": "FARGATE",
                        "networkConfiguration": network,
                        "count": 1,
                    },
                    extras={"population": population.parameters(), "shard": shard.index, "lake_root": lake.root},
                    pipes_container_name=GENERATE_CONTAINER,
                )
            except RuntimeError as error:
                raise GenerationError(f"ECS task of {shard.upload_id}: {error}") from None
            reported = [message for message in invocation.get_custom_messages() if message]
            if not reported:
                raise GenerationError(f"the ECS task of {shard.upload_id} ended without reporting its upload")
            return GeneratedShard(**reported[-1])

        return generate_shards(population.shards(), run_task, self.ecs_concurrency, context.log.info)


SyntheaResource = create_model(
    "SyntheaResource",
    __base__=SyntheaGeneratorResource,
    __module__=__name__,
    __doc__="Where and with which Synthea populations are generated (`settings.SYNTHEA_FIELDS`).",
    **{
        name: (
            int if setting.integer else str,
            Field(
                default=int(setting.default) if setting.integer else setting.default, description=setting.description
            ),
        )
        for name, setting in SYNTHEA_FIELDS.items()
    },
)
