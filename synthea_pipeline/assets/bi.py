"""The BI assets: the catalog registration, the four BI views (each with a preview table and chart in the UI)
and the dashboard page, rebuilt after the marts."""

import datetime
import decimal
import json
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

from synthea_pipeline.assets.marts import MARTS_POOL
from synthea_pipeline.assets.specs import MARTS_FRESHNESS, layer_spec_fields
from synthea_pipeline.automation import after_marts
from synthea_pipeline.resources.catalog import CatalogResource
from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.transforms.bi import BI_VIEW_READS, BI_VIEWS, TOP_CONDITIONS, view_sql
from synthea_pipeline.transforms.catalog import uploads_query
from synthea_pipeline.transforms.dashboard import DQD_CATEGORIES, headline_figures, render_dashboard
from synthea_pipeline.transforms.dqd import DQD_RESULTS_FILE
from synthea_pipeline.transforms.lake import read_text, write_text

PREVIEW_ROWS = 10
DASHBOARD = AssetKey(["reports", "dashboard"])
VIEW_DESCRIPTIONS = {
    "bi_demographics": "Patients, deaths, mean age, encounters and claim costs by age band and gender.",
    "bi_encounter_trends": "Encounters, patients, claim costs and payer coverage per month and encounter class.",
    "bi_diagnosis_breakdown": f"The top {TOP_CONDITIONS} conditions (by patients) by age band and gender.",
    "bi_medication_insights": "Every medication with prescriptions, dispenses, cost, payer coverage and cost rank.",
}
PREVIEW_ORDER = {
    "bi_demographics": lambda r: (str(r["age_band"]), str(r["gender"])),
    "bi_encounter_trends": lambda r: (-r["month"].toordinal() if r["month"] else 0, str(r["encounter_class"])),
    "bi_diagnosis_breakdown": lambda r: (r["condition_rank"], str(r["age_band"]), str(r["gender"])),
    "bi_medication_insights": lambda r: r["cost_rank"],
}
"""Previews show the first rows in each view's natural order: by band, latest months, by rank."""
RECENT_UPLOADS = 5
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


def preview_table(rows: list[dict], order) -> MetadataValue:
    columns = list(rows[0]) if rows else []
    shown = sorted(rows, key=order)[:PREVIEW_ROWS]
    kinds = {c: next((type(_cell(r[c])).__name__ for r in rows if r[c] is not None), "null") for c in columns}
    return MetadataValue.table(
        records=[TableRecord({c: _cell(row[c]) for c in columns}) for row in shown],
        schema=TableSchema(columns=[TableColumn(c, kinds[c]) for c in columns]),
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


CHART_TITLES = {
    "bi_demographics": "Patients by age band and gender",
    "bi_encounter_trends": "Encounters by class",
    "bi_diagnosis_breakdown": "Top diagnoses by patients",
    "bi_medication_insights": "Medication costs",
}


def dashboard_preview(
    views: dict[str, list[dict]], uploads: list[str], location: str, dqd: dict | None
) -> MetadataValue:
    """The dashboard's figures and charts as markdown, which the UI opens from the asset in one click (a
    `file://` link to the page would not open from an http page)."""
    figures = headline_figures(views, uploads, dqd)
    table = [
        "| " + " | ".join(label for label, _ in figures) + " |",
        "|" + "---:|" * len(figures),
        "| " + " | ".join(value for _, value in figures) + " |",
    ]
    parts = [f"**Synthea population dashboard** · `{location}`", "\n".join(table)]
    for view, rows in views.items():
        label, measure = CHARTS[view]
        parts += [f"**{CHART_TITLES[view]}** (`{view}`)", bar_chart(rows, label, measure).value]
    if dqd:
        overview = dqd["Overview"]
        checks = ["| DQD category | passed | failed |", "|---|---:|---:|"]
        checks += [f"| {c} | {overview[f'countPassed{c}']} | {overview[f'countFailed{c}']} |" for c in DQD_CATEGORIES]
        parts += [f"**Data quality of the OMOP tables** (OHDSI DQD, build of {dqd['endTimestamp']})", "\n".join(checks)]
    return MetadataValue.md("\n\n".join(parts))


def build_bi_assets():
    @multi_asset(
        name="bi",
        pool=MARTS_POOL,
        specs=[
            AssetSpec(
                AssetKey(["bi", view]),
                **layer_spec_fields("bi", [BI_VIEWS[view]]),
                description=VIEW_DESCRIPTIONS[view],
                deps=[AssetKey(["marts", m]) for m in BI_VIEW_READS[view]],
                freshness_policy=MARTS_FRESHNESS,
                automation_condition=after_marts(),
            )
            for view in BI_VIEWS
        ]
        + [
            AssetSpec(
                DASHBOARD,
                **layer_spec_fields("reports"),
                deps=[AssetKey(["bi", v]) for v in BI_VIEWS],
                freshness_policy=MARTS_FRESHNESS,
                automation_condition=after_marts(),
                description="Self-contained HTML dashboard: population pyramid, encounters over time, top "
                "diagnoses, medication costs. Written to `<lake>/reports/dashboard.html`; its `preview` "
                "entry shows the same figures in the UI.",
            ),
        ],
    )
    def bi(context: AssetExecutionContext, lake: LakeResource, catalog: CatalogResource) -> Iterator:
        """Registers the catalog views over the lake's Iceberg tables (Athena views in Glue for an S3 lake, a
        DuckDB file for a local one), computes the BI views and draws the dashboard from them. Shares the marts
        pool, so one run at a time rewrites the catalog."""
        layout = lake.layout()
        databases = catalog.databases()
        with catalog.registered(layout) as (engine, registered):
            views = catalog.view_rows(engine)
            uploads = engine.sql(uploads_query(databases.staging)).to_arrow_table().column("upload_id").to_pylist()
        changed = {name: what for name, what in registered.items() if what != "unchanged"}
        context.log.info(f"catalog: {len(registered)} views, {len(changed)} created, updated or written")
        marts = databases.marts
        for view, rows in views.items():
            label, measure = CHARTS[view]
            yield MaterializeResult(
                asset_key=AssetKey(["bi", view]),
                metadata={
                    "dagster/row_count": len(rows),
                    "catalog_view": f"{marts}.{view}",
                    "preview": preview_table(rows, PREVIEW_ORDER[view]),
                    "chart": bar_chart(rows, label, measure),
                    "athena_sql": MetadataValue.md(f"```sql\n{view_sql(view, marts)}\n```"),
                },
            )
        dqd_location = layout.uri("reports", DQD_RESULTS_FILE)
        dqd = json.loads(text) if (text := read_text(dqd_location)) else None
        location = layout.uri("reports", "dashboard.html")
        write_text(location, render_dashboard(views, layout.root, uploads, (dqd, dqd_location) if dqd else None))
        yield MaterializeResult(
            asset_key=DASHBOARD,
            metadata={
                "preview": dashboard_preview(views, uploads, location, dqd),
                "path": MetadataValue.path(location),
                "uploads": len(uploads),
                "latest_uploads": uploads[-RECENT_UPLOADS:],
            },
        )

    return bi
