"""The mart assets: one Spark step builds the star schema over every upload and checks it."""

from collections.abc import Iterator

from dagster import AssetExecutionContext, AssetKey, AssetSpec, Config, multi_asset
from pydantic import Field

from synthea_pipeline.assets.specs import MARTS_FRESHNESS, check_specs, layer_spec_fields, step_order_tags
from synthea_pipeline.automation import after_staging
from synthea_pipeline.metadata import column_schema
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.transforms.layers import SCHEMA_KEY, mart_schema
from synthea_pipeline.transforms.marts import MART_CHECKS, MARTS

MARTS_POOL = "marts"


class MartsConfig(Config):
    include_identifiers: bool | None = Field(
        default=None,
        description="Also write direct identifiers (patient SSN, licence, passport, names, address; provider names"
        " and addresses). Unset: as the committed build, which has none unless a run asked (marts are for"
        " analysis).",
    )
    full_rebuild: bool = Field(
        default=False,
        description="Rewrite every upload's rows. Unset, a build rewrites only the uploads whose committed load"
        " changed since the committed build and keeps the others' rows (the result is the same: a build falls back"
        " to a full rebuild whenever the lake's data ties a changed upload to an unchanged one). The"
        " `rebuild_marts` job sets it.",
    )


def build_mart_assets():
    @multi_asset(
        name="marts",
        pool=MARTS_POOL,
        op_tags=step_order_tags("marts"),
        specs=[
            AssetSpec(
                key=AssetKey(["marts", name]),
                **layer_spec_fields("marts", [mart], **{SCHEMA_KEY: column_schema(mart_schema(mart))}),
                description=f"Star-schema mart over every upload. Grain: {mart.grain}. Key: `{mart.key}`.",
                deps=[AssetKey(["staging", t]) for t in mart.reads],
                freshness_policy=MARTS_FRESHNESS,
                automation_condition=after_staging(),
            )
            for name, mart in MARTS.items()
        ],
        check_specs=check_specs(MART_CHECKS),
    )
    def marts(
        context: AssetExecutionContext,
        config: MartsConfig,
        lake: LakeResource,
        spark: SparkResource,
        catalog: CatalogResource,
    ) -> Iterator:
        """Builds every mart from the committed loads of every upload in the lake (the latest upload wins)
        under this run's build, rewriting only the uploads that changed since the committed build, and commits
        the build for all marts at once only when every blocking check passes, so readers never see a mart that
        failed one nor a mix of two builds. The `marts` pool (limit 1 in dagster.yaml) runs one build at a time
        when many uploads arrive together: the last one to run sees every committed upload."""
        databases = catalog.databases()
        yield from spark.run_layer(
            context,
            "marts",
            {
                "lake_root": lake.layout().root,
                "build_id": context.run_id,
                "include_identifiers": config.include_identifiers,
                "full_rebuild": config.full_rebuild,
                "staging_database": databases.staging,
                "marts_database": databases.marts,
            },
        )

    return marts
