"""What every asset declares besides its key: kinds, owner and a code version derived from the table contract
and the transform code that computes it, so the UI marks an asset whose code changed since it was materialized."""

import hashlib
import inspect
from collections.abc import Iterable, Sequence
from datetime import timedelta

from dagster import AssetCheckSpec, AssetKey, CodeReferencesMetadataValue, FreshnessPolicy, LocalFileCodeReference

from synthea_pipeline.transforms import (
    bi,
    catalog,
    cdm,
    dashboard,
    dqd,
    generation,
    iceberg,
    layers,
    marts,
    omop,
    raw,
    staging,
    uploads,
    vocabulary,
)
from synthea_pipeline.transforms.checks import Check

OWNERS = ["team:data-engineering"]
LAYER_KINDS = {
    "synthea": {"java", "csv"},
    "source": {"csv"},
    "raw": {"parquet", "pyarrow"},
    "staging": {"spark", "iceberg"},
    "marts": {"spark", "iceberg"},
    "omop": {"spark", "iceberg"},
    "bi": {"duckdb", "athena"},
    "reports": {"html"},
}
LAYER_CODE = {
    "synthea": (generation, uploads),
    "source": (raw, uploads),
    "raw": (raw,),
    "staging": (staging, layers, iceberg),
    "marts": (marts, layers, iceberg),
    "omop": (omop, vocabulary, cdm, dqd, layers, iceberg),
    "bi": (bi, catalog),
    "reports": (dashboard, bi),
}
STEP_ORDER = {"marts": 2, "omop": 1}
"""When a run has several steps ready, the marts go first (readers wait for them), then the OMOP build, then the
BI step, whose dashboard summarises the OMOP build's DQD results: Dagster's executors start ready steps in the order
of their `dagster/priority` tag (default 0). An order, not a dependency: a run without a vocabulary skips the OMOP
assets, and a dependency on them would skip the dashboard too."""


def step_order_tags(step: str) -> dict[str, str]:
    return {"dagster/priority": str(STEP_ORDER[step])}


MARTS_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(days=7), warn_window=timedelta(days=1))
"""Uploads are followed by a rebuild of the marts and BI views: a day without one warns, a week fails."""


def code_version(layer: str, contract: Iterable[object] = ()) -> str:
    """A digest of the layer's transform modules and of the contract entries (tables, marts, SQL) it computes."""
    digest = hashlib.sha256()
    for module in LAYER_CODE[layer]:
        digest.update(inspect.getsource(module).encode())
    for entry in contract:
        digest.update(repr(entry).encode())
    return digest.hexdigest()[:16]


def transform_references(layer: str) -> CodeReferencesMetadataValue:
    """Links to the transform modules that compute the layer (the asset function's own link is added by
    `with_source_code_references` in the definitions)."""
    return CodeReferencesMetadataValue(
        code_references=[
            LocalFileCodeReference(file_path=inspect.getsourcefile(module), line_number=1, label=module.__name__)
            for module in LAYER_CODE[layer]
        ]
    )


def layer_spec_fields(layer: str, contract: Iterable[object] = (), **metadata) -> dict:
    """The AssetSpec fields every asset of a layer shares, with the asset's own metadata."""
    return {
        "group_name": layer,
        "kinds": LAYER_KINDS[layer],
        "owners": OWNERS,
        "code_version": code_version(layer, contract),
        "metadata": {"dagster/code_references": transform_references(layer), **metadata},
    }


def check_specs(checks: Sequence[Check], **fields) -> list[AssetCheckSpec]:
    """One Dagster check spec per declared check and table, so names, descriptions and severity stay declared once."""
    return [
        AssetCheckSpec(
            check.name,
            asset=AssetKey([check.layer, table]),
            description=check.description,
            blocking=check.blocking,
            **fields,
        )
        for check in checks
        for table in check.tables
    ]
