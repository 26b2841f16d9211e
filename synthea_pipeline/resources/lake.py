"""The lake resource: where every layer is written (a local folder, or s3://bucket/prefix)."""

from __future__ import annotations

import os
from typing import Optional

from dagster import ConfigurableResource

from synthea_pipeline.transforms.lake import Lake

LAKE_ENV = "SYNTHEA_LAKE_ROOT"
DEFAULT_LAKE = "lake"


class LakeResource(ConfigurableResource):
    """`root` is the lake root; when unset it is read from SYNTHEA_LAKE_ROOT at run time, defaulting to the
    folder `./lake`."""

    root: Optional[str] = None

    def layout(self) -> Lake:
        root = self.root or os.environ.get(LAKE_ENV) or DEFAULT_LAKE
        return Lake(root if root.startswith("s3://") else os.path.abspath(root))
