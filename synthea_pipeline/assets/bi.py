"""The BI assets: the catalog registration, the four BI views (each with a preview table and chart in the UI)
and the dashboard page, rebuilt after the marts."""

import datetime
import decimal
from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    multi_asset,
)

from synthea_pipeline.partitions import uploads_partitions
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.transforms.bi import BI_VIEWS, view_sql
from synthea_pipeline.transforms.dashboard import render_dashboard
from synthea_pipeline.transforms.lake import filesystem_for, publish, staging_area
from synthea_pipeline.transforms.marts import MARTS

PREVIEW_ROWS = 10
DASHBOARD = AssetKey(["reports", "dashboard"])
VIEW_DESCRIPTIONS = {
    "bi_demographics": "Patients, deaths, mean age, encounters and claim costs by age band and gender.",
    "bi_encounter_trends": "Encounters, patients, claim costs and payer coverage per month and encounter class.",
    "bi_diagnosis_breakdown": "The top 25 conditions (by patients) by age band and gender.",
    "bi_medication_insights": "Every medication with prescriptions, dispenses, cost, payer coverage and cost rank.",
}
CHARTS = {
    "bi_demographics": (lambda r: f"{r['age_band']} {r['gender']}", "patients"),
    "bi_encounter_trends": (lambda r: r["encounter_class"], "encounters"),
    "bi_diagnosis_breakdown": (lambda r: r["condition_description"], "patients"),
    "bi_medication_insights": (lambda r: r["medication_description"], "total_cost"),
}


def _cell(value):
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def preview_table(rows: list[dict]) -> MetadataValue:
    columns = list(rows[0]) if rows else []
    return MetadataValue.table(
        records=[TableRecord({c: _cell(row[c]) for c in columns}) for row in rows[:PREVIEW_ROWS]],
        schema=TableSchema(columns=[TableColumn(c, type(_cell(rows[0][c])).__name__) for c in columns]),
    )


def bar_chart(rows: list[dict], label, measure: str, top: int = 10) -> MetadataValue:
    """A markdown bar chart (the UI renders markdown, not images): `measure` summed per label, largest first."""
    totals: dict[str, float] = {}
    for row in rows:
        key = str(label(row) or "unknown")
        totals[key] = totals.get(key, 0.0) + float(row[measure] or 0)
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    peak = max((v for _, v in ranked), default=0) or 1
    lines = [f"| {measure} by | {measure} | |", "|---|---:|---|"]
    lines += [f"| {name[:60]} | {value:,.0f} | {'█' * max(1, round(24 * value / peak))} |" for name, value in ranked]
    return MetadataValue.md("\n".join(lines))


def write_text(uri: str, text: str) -> None:
    """Write beside the final place, then swap in, like every other lake output."""
    folder = uri.rsplit("/", 1)[0]
    temp = staging_area(folder)
    fs, temp_path = filesystem_for(temp)
    fs.create_dir(temp_path)
    with fs.open_output_stream(f"{temp_path}/{uri.rsplit('/', 1)[1]}") as out:
        out.write(text.encode("utf-8"))
    publish(temp, folder)


def build_bi_assets():
    @multi_asset(
        name="bi",
        specs=[
            AssetSpec(AssetKey(["bi", view]), group_name="bi", description=VIEW_DESCRIPTIONS[view],
                      deps=[AssetKey(["marts", m]) for m in MARTS])
            for view in BI_VIEWS
        ] + [
            AssetSpec(DASHBOARD, group_name="reports", deps=[AssetKey(["bi", v]) for v in BI_VIEWS],
                      description="Self-contained HTML dashboard: population pyramid, encounters over time, top "
                      "diagnoses, medication costs. Written to <lake>/reports/dashboard.html."),
        ],
    )
    def bi(context: AssetExecutionContext, lake: LakeResource, catalog: CatalogResource) -> Iterator:
        """Registers every staging table, mart and BI view in the catalog (Glue for an S3 lake, DuckDB for a
        local one), computes the views and draws the dashboard from them."""
        layout = lake.layout()
        registered = catalog.register(layout)
        changed = {name: what for name, what in registered.items() if what not in ("unchanged", "registered")}
        context.log.info(f"catalog: {len(registered)} tables and views, changed: {changed or 'none'}")
        views = catalog.view_rows(layout)
        marts = catalog.databases().marts
        for view, rows in views.items():
            label, measure = CHARTS[view]
            yield MaterializeResult(asset_key=AssetKey(["bi", view]), metadata={
                "dagster/row_count": len(rows),
                "catalog_view": f"{marts}.{view}",
                "preview": preview_table(rows),
                "chart": bar_chart(rows, label, measure),
                "athena_sql": MetadataValue.md(f"```sql\n{view_sql(view, marts)}\n```"),
            })
        uploads = context.instance.get_dynamic_partitions(uploads_partitions.name)
        location = layout.uri("reports", "dashboard.html")
        write_text(location, render_dashboard(views, layout.root, uploads))
        yield MaterializeResult(asset_key=DASHBOARD, metadata={
            "path": MetadataValue.path(location),
            "open": MetadataValue.url(location if location.startswith("s3://") else f"file://{location}"),
            "uploads": uploads,
        })

    return bi
