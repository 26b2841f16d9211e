"""The OMOP assets: one Spark step builds the OMOP CDM 5.4 tables over every upload, maps codes with the user's
vocabulary, runs OHDSI's data-quality checks and commits the build."""

from collections.abc import Iterator

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    multi_asset,
)

from synthea_pipeline.assets.marts import MARTS_POOL
from synthea_pipeline.assets.specs import MARTS_FRESHNESS, check_specs, layer_spec_fields, step_order_tags
from synthea_pipeline.automation import after_staging
from synthea_pipeline.metadata import column_schema
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.resources.spark import SparkResource
from synthea_pipeline.transforms.cdm import cdm_schema
from synthea_pipeline.transforms.layers import SCHEMA_KEY
from synthea_pipeline.transforms.omop import CLINICAL_TABLES, OMOP_CHECKS, OMOP_READS
from synthea_pipeline.transforms.vocabulary import (
    HOW_TO_GET_ONE,
    NO_VOCABULARY,
    VOCABULARY_TABLES,
    vocabulary_location,
)

DESCRIPTIONS = {
    **{
        table: f"OMOP CDM 5.4 `{table}` over every upload (the latest upload of a patient wins)."
        for table in CLINICAL_TABLES
    },
    **{table: f"OMOP vocabulary table `{table}`, as the vocabulary download holds it." for table in VOCABULARY_TABLES},
}


def build_omop_assets():
    @multi_asset(
        name="omop",
        pool=MARTS_POOL,
        op_tags=step_order_tags("omop"),
        specs=[
            AssetSpec(
                key=AssetKey(["omop", table]),
                **layer_spec_fields("omop", [table], **{SCHEMA_KEY: column_schema(cdm_schema(table))}),
                description=DESCRIPTIONS[table],
                deps=[AssetKey(["staging", t]) for t in OMOP_READS],
                freshness_policy=MARTS_FRESHNESS,
                automation_condition=after_staging(),
                skippable=True,
            )
            for table in (*CLINICAL_TABLES, *VOCABULARY_TABLES)
        ],
        check_specs=check_specs(OMOP_CHECKS),
        can_subset=True,
    )
    def omop(
        context: AssetExecutionContext,
        lake: LakeResource,
        spark: SparkResource,
        catalog: CatalogResource,
    ) -> Iterator:
        """Builds the OMOP tables from the committed loads of every upload under this run's build, with the
        vocabulary the `SYNTHEA_OMOP_VOCABULARY` setting names (loaded into the lake when it is new), runs the DQD
        checks and writes their results (`reports/omop_dqd_results.json`), and commits the build only when its
        keys hold. A build writes every table; a run that selected some reports those. With the setting `none` it
        materializes nothing and says how to get a vocabulary."""
        if lake.omop_vocabulary.strip().lower() == NO_VOCABULARY:
            context.log.warning(
                f"OMOP tables skipped: SYNTHEA_OMOP_VOCABULARY is `none`. To build them, {HOW_TO_GET_ONE}"
            )
            return
        layout = lake.layout()
        databases = catalog.databases()
        results = spark.run_layer(
            context,
            "omop",
            {
                "lake_root": layout.root,
                "build_id": context.run_id,
                "vocabulary": vocabulary_location(lake.omop_vocabulary, layout),
                "staging_database": databases.staging,
                "marts_database": databases.marts,
                "omop_database": databases.omop,
            },
        )
        selected, checks = context.selected_asset_keys, context.selected_asset_check_keys
        for result in results:
            if isinstance(result, AssetCheckResult):
                if AssetCheckKey(result.asset_key, result.check_name) in checks:
                    yield result
            elif result.asset_key in selected:
                yield result

    return omop
