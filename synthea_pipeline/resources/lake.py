"""The lake resource: where every layer is written (a local folder, or s3://bucket/prefix)."""

from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, ValidationInfo, field_validator

from synthea_pipeline.run_tags import LAKE_TAG, ORIGIN_TAG, origin_of, tag_run
from synthea_pipeline.settings import (
    HISTORY_SHRINK_LIMIT,
    LAKE_ROOT,
    OMOP_VOCABULARY,
    UPLOAD_BATCH_SIZE,
    UPLOAD_QUIET_SECONDS,
    UPLOAD_SENSOR_BUDGET_SECONDS,
)
from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.storage import Storage, storage_for


class LakeResource(ConfigurableResource):
    """Assets see only paths and `Storage`, never whether the lake is a folder or on S3."""

    root: str = Field(default=LAKE_ROOT.default, description=LAKE_ROOT.description)
    upload_quiet_seconds: int = Field(
        default=int(UPLOAD_QUIET_SECONDS.default), description=UPLOAD_QUIET_SECONDS.description
    )
    upload_sensor_budget_seconds: int = Field(
        default=int(UPLOAD_SENSOR_BUDGET_SECONDS.default), description=UPLOAD_SENSOR_BUDGET_SECONDS.description
    )
    upload_batch_size: int = Field(default=int(UPLOAD_BATCH_SIZE.default), description=UPLOAD_BATCH_SIZE.description)
    history_shrink_limit_percent: int = Field(
        default=int(HISTORY_SHRINK_LIMIT.default), ge=0, le=100, description=HISTORY_SHRINK_LIMIT.description
    )
    omop_vocabulary: str = Field(default=OMOP_VOCABULARY.default, description=OMOP_VOCABULARY.description)

    @field_validator("upload_sensor_budget_seconds", "upload_batch_size", mode="before")
    @classmethod
    def is_positive(cls, value: object, info: ValidationInfo) -> object:
        """Checked on the raw value: an `EnvVar.int` (an int subclass) stands for the setting until Dagster
        resolves it and builds the resource again with the plain int, which is checked then."""
        if type(value) is int and value <= 0:
            raise ValueError(f"{info.field_name} must be positive, not {value}")
        return value

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Tags the run with where it came from and the lake it writes (every job uses the lake), so the runs
        list shows and filters on both."""
        if context.dagster_run is not None:
            tag_run(context, {ORIGIN_TAG: origin_of(context.dagster_run.tags), LAKE_TAG: self.layout().root})

    def layout(self) -> Lake:
        return Lake.at(self.root)

    def source_storage(self) -> Storage:
        """Where uploads land: `<root>/source/`."""
        return storage_for(self.layout().uri("source"))
