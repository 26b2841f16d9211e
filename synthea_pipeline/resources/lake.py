"""The lake resource: where every layer is written (a local folder, or s3://bucket/prefix)."""

from __future__ import annotations

import os

from dagster import ConfigurableResource

from synthea_pipeline.transforms.lake import Lake
from synthea_pipeline.transforms.storage import Storage, storage_for

LAKE_ENV = "SYNTHEA_LAKE_ROOT"
DEFAULT_LAKE = "lake"


class LakeResource(ConfigurableResource):
    """`root` is the lake root, a local folder or `s3://bucket/prefix`; when unset it is read from
    SYNTHEA_LAKE_ROOT at run time, defaulting to the folder `./lake`. Assets see only paths and `Storage`, never
    which of the two it is."""

    root: str | None = None

    def layout(self) -> Lake:
        root = self.root or os.environ.get(LAKE_ENV) or DEFAULT_LAKE
        return Lake(root if root.startswith("s3://") else os.path.abspath(root))

    def source_storage(self) -> Storage:
        """Where uploads land: `<root>/source/`."""
        return storage_for(self.layout().uri("source"))
