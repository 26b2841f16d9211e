"""The dashboard: one self-contained HTML page (inline SVG and CSS, no scripts or fonts from the network) drawn
from the four BI views: a population pyramid, encounters per month by class, top diagnoses, medication costs; and,
when the lake has an OMOP build, the summary of its OHDSI DQD results."""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import datetime, timezone

WIDTH = 720
COLORS = ["#3b6ea5", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#6c757d"]
AGE_BAND_ORDER = ["0-17", "18-34", "35-49", "50-64", "65-79", "80+"]


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _money(value) -> str:
    return f"${float(value):,.0f}"


def _svg(title: str, height: int, body: list[str]) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{_esc(title)}" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def _bar(x: float, y: float, width: float, height: float, color: str, label: str, value) -> str:
    return (
        f'<rect class="mark" data-value="{_esc(value)}" x="{x:.1f}" y="{y:.1f}" width="{max(width, 0.5):.1f}" '
        f'height="{height:.1f}" fill="{color}"><title>{_esc(label)}</title></rect>'
    )


def _text(x: float, y: float, text, anchor: str = "start", size: int = 11, cls: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"'
        f"{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{_esc(text)}</text>"
    )


def population_pyramid(demographics: list[dict]) -> str:
    """Patients by age band, men to the left, women to the right."""
    counts = defaultdict(int)
    for row in demographics:
        counts[(row["age_band"], row["gender"])] += int(row["patients"])
    bands = [b for b in AGE_BAND_ORDER if any(k[0] == b for k in counts)] + sorted(
        {k[0] for k in counts} - set(AGE_BAND_ORDER), key=str
    )
    peak = max(counts.values(), default=1)
    row_height, top, middle, half = 26, 30, WIDTH / 2, WIDTH / 2 - 70
    body = [_text(middle - 40, 18, "Men", "end", 12, "legend"), _text(middle + 40, 18, "Women", "start", 12, "legend")]
    for index, band in enumerate(bands):
        y = top + index * row_height
        men, women = counts.get((band, "M"), 0), counts.get((band, "F"), 0)
        men_width, women_width = half * men / peak, half * women / peak
        body.append(_bar(middle - 30 - men_width, y, men_width, row_height - 6, COLORS[0], f"{band}, men: {men}", men))
        body.append(_bar(middle + 30, y, women_width, row_height - 6, COLORS[1], f"{band}, women: {women}", women))
        body.append(_text(middle, y + row_height / 2, band, "middle"))
        body.append(_text(middle - 34 - men_width, y + row_height / 2, men, "end", 10))
        body.append(_text(middle + 34 + women_width, y + row_height / 2, women, "start", 10))
    return _svg("Population pyramid", top + len(bands) * row_height + 10, body)


def encounter_trends(trends: list[dict], classes: int = 6, max_points: int = 120) -> str:
    """Encounters over time, one line per encounter class (the busiest classes): per month, or per year when
    the months would be more than `max_points` (Synthea histories span decades)."""
    months_seen = {row["month"] for row in trends if row["month"] is not None}
    by_year = len(months_seen) > max_points
    by_class: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for row in trends:
        if row["month"] is not None:
            period = row["month"].year if by_year else row["month"]
            by_class[row["encounter_class"] or "unknown"][period] += int(row["encounters"])
    ranked = sorted(by_class, key=lambda c: (-sum(by_class[c].values()), c))[:classes]
    months = sorted({m for c in ranked for m in by_class[c]})
    height, left, right, top, bottom = 300, 50, WIDTH - 130, 20, 260
    peak = max((v for c in ranked for v in by_class[c].values()), default=1)
    body = [
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>',
        _text(left - 6, top + 4, peak, "end", 10),
        _text(left - 6, bottom, 0, "end", 10),
    ]
    if months:
        body += [_text(left, bottom + 16, months[0], "start", 10), _text(right, bottom + 16, months[-1], "end", 10)]
    span = max(len(months) - 1, 1)
    position = {m: left + (right - left) * i / span for i, m in enumerate(months)}
    for index, encounter_class in enumerate(ranked):
        color = COLORS[index % len(COLORS)]
        points = " ".join(
            f"{position[m]:.1f},{bottom - (bottom - top) * by_class[encounter_class].get(m, 0) / peak:.1f}"
            for m in months
        )
        total = sum(by_class[encounter_class].values())
        body.append(
            f'<polyline class="mark" data-value="{total}" fill="none" stroke="{color}" stroke-width="1.5" '
            f'points="{points}"><title>{_esc(encounter_class)}: {total} encounters</title></polyline>'
        )
        if len(months) == 1:
            x, y = points.split(",")
            body.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{color}"/>')
        body.append(f'<rect x="{right + 14}" y="{top + index * 20}" width="10" height="10" fill="{color}"/>')
        body.append(_text(right + 30, top + index * 20 + 9, f"{encounter_class} ({total})", "start", 11, "legend"))
    return _svg(f"Encounters per {'year' if by_year else 'month'} by class", height, body)


def _horizontal_bars(title: str, rows: list[tuple[str, float, float | None]], value_label, colors=COLORS) -> str:
    """Labelled horizontal bars; an optional second value is drawn inside the first (e.g. the covered part)."""
    row_height, label_width, top = 24, 300, 10
    peak = max((v for _, v, _ in rows), default=1) or 1
    scale = (WIDTH - label_width - 90) / peak
    body = []
    for index, (label, value, inner) in enumerate(rows):
        y = top + index * row_height
        short = label if len(label) <= 48 else label[:46] + "..."
        body.append(_text(label_width - 8, y + row_height / 2 + 1, short, "end"))
        body.append(
            _bar(label_width, y + 3, value * scale, row_height - 8, colors[0], f"{label}: {value_label(value)}", value)
        )
        if inner is not None:
            body.append(
                f'<rect x="{label_width}" y="{y + 3:.1f}" width="{max(inner * scale, 0):.1f}" '
                f'height="{row_height - 8}" fill="{colors[3]}"><title>covered: {value_label(inner)}</title></rect>'
            )
        body.append(_text(label_width + value * scale + 6, y + row_height / 2 + 1, value_label(value), "start", 10))
    return _svg(title, top + len(rows) * row_height + 10, body)


def top_diagnoses(breakdown: list[dict], top: int = 12) -> str:
    patients, names, ranks = defaultdict(int), {}, {}
    for row in breakdown:
        code = row["condition_code"]
        patients[code] += int(row["patients"])
        names[code], ranks[code] = row["condition_description"] or code, int(row["condition_rank"])
    ordered = sorted(patients, key=lambda c: ranks[c])[:top]
    return _horizontal_bars(
        "Top diagnoses", [(names[c], patients[c], None) for c in ordered], lambda v: f"{int(v)} patients"
    )


def medication_costs(insights: list[dict], top: int = 12) -> str:
    ordered = sorted(insights, key=lambda r: int(r["cost_rank"]))[:top]
    return _horizontal_bars(
        "Medication costs",
        [
            (
                row["medication_description"] or row["medication_code"],
                float(row["total_cost"] or 0),
                float(row["payer_coverage"] or 0),
            )
            for row in ordered
        ],
        _money,
    )


DQD_CATEGORIES = ("Plausibility", "Conformance", "Completeness")
PASSED_COLOR, FAILED_COLOR = "#66a182", "#d1495b"


def dqd_chart(overview: dict) -> str:
    """Passed and failed DQD checks per category (DQD's Kahn categories), as one stacked bar each."""
    row_height, label_width, top = 28, 130, 10
    peak = max((overview[f"countTotal{c}"] for c in DQD_CATEGORIES), default=1) or 1
    scale = (WIDTH - label_width - 200) / peak
    body = []
    for index, category in enumerate(DQD_CATEGORIES):
        y = top + index * row_height
        passed, failed = overview[f"countPassed{category}"], overview[f"countFailed{category}"]
        body.append(_text(label_width - 8, y + row_height / 2 + 1, category, "end"))
        x = label_width
        for count, color, outcome in ((passed, PASSED_COLOR, "passed"), (failed, FAILED_COLOR, "failed")):
            body.append(_bar(x, y + 4, count * scale, row_height - 10, color, f"{category}: {count} {outcome}", count))
            x += count * scale
        note = f"{passed} passed, {failed} failed"
        body.append(_text(label_width + (passed + failed) * scale + 6, y + row_height / 2 + 1, note, "start", 10))
    return _svg("OHDSI DQD checks by category", top + len(DQD_CATEGORIES) * row_height + 10, body)


def failed_checks_table(results: dict, top: int = 10) -> str:
    """The failed checks with the most violated rows first: what to look at in DQD's viewer."""
    failed = sorted(
        (r for r in results["CheckResults"] if r.get("failed") == 1),
        key=lambda r: (-float(r.get("pctViolatedRows") or 0), r["checkId"]),
    )
    if not failed:
        return "<p>Every check passed.</p>"
    rows = "".join(
        f"<tr><td>{_esc(r['checkName'])}</td><td>{_esc(r['cdmTableName'].lower())}"
        f"{_esc('.' + r['cdmFieldName'].lower() if r.get('cdmFieldName') else '')}</td>"
        f"<td class=num>{100 * float(r.get('pctViolatedRows') or 0):.1f}%</td>"
        f"<td class=num>{_esc(r.get('thresholdValue'))}%</td></tr>"
        for r in failed[:top]
    )
    more = f"<p>{len(failed) - top} more in the results file.</p>" if len(failed) > top else ""
    return (
        '<table class="checks"><tr><th>failed check</th><th>table.field</th><th class=num>rows violating</th>'
        f"<th class=num>threshold</th></tr>{rows}</table>{more}"
    )


def dqd_card(results: dict, location: str) -> tuple[str, str, str]:
    """The data-quality card: the overview by category and the worst failed checks of the lake's OMOP build."""
    overview = results["Overview"]
    description = (
        f"OHDSI Data Quality Dashboard checks of the OMOP build of {results['endTimestamp']}: "
        f"{overview['countPassed']} of {overview['countTotal']} passed ({overview['percentPassed']}%). "
        f"The full results, {location}, open in DQD's viewer."
    )
    return "Data quality of the OMOP tables", description, dqd_chart(overview) + failed_checks_table(results)


PAGE_SCRIPT = """
// Records on the body element how many charts drew visible marks, and any script error: what a browser test reads.
window.__dashboardErrors = [];
window.addEventListener('error', function (e) { window.__dashboardErrors.push(String(e.message)); });
document.addEventListener('DOMContentLoaded', function () {
  var charts = document.querySelectorAll('section.chart-card');
  var drawn = 0;
  charts.forEach(function (card) {
    var visible = Array.prototype.filter.call(card.querySelectorAll('.mark'), function (mark) {
      var box = mark.getBBox();
      return box.width > 0 || box.height > 0;
    });
    if (visible.length > 0) { drawn += 1; }
  });
  document.body.setAttribute('data-charts', String(charts.length));
  document.body.setAttribute('data-charts-with-data', String(drawn));
  document.body.setAttribute('data-errors', window.__dashboardErrors.join(' | '));
});
"""

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; background: #f5f6f8; color: #222; }
header { background: #1f3b5c; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; } header p { margin: 0; opacity: .85; font-size: 13px; }
.kpis { display: flex; gap: 16px; padding: 18px 28px 0; flex-wrap: wrap; }
.kpi { background: #fff; border-radius: 8px; padding: 12px 18px; box-shadow: 0 1px 3px rgba(0,0,0,.1); }
.kpi b { display: block; font-size: 22px; } .kpi span { font-size: 12px; color: #666; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(640px, 1fr)); gap: 18px; padding: 18px 28px; }
section.chart-card { background: #fff; border-radius: 8px; padding: 14px 18px; box-shadow: 0 1px 3px rgba(0,0,0,.1); }
section.chart-card h2 { font-size: 15px; margin: 0 0 2px; }
section.chart-card p { font-size: 12px; color: #666; margin: 0 0 8px; }
table.checks { border-collapse: collapse; font-size: 12px; margin-top: 8px; width: 100%; }
table.checks th, table.checks td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e3e5e8; }
table.checks .num { text-align: right; }
text { fill: #333; } footer { padding: 0 28px 24px; font-size: 12px; color: #777; }
"""


def headline_figures(
    views: dict[str, list[dict]], uploads: list[str], dqd: dict | None = None
) -> list[tuple[str, str]]:
    """The figures the dashboard leads with, as (label, formatted value); the DQD pass rate when there are results."""
    patients = sum(int(r["patients"]) for r in views["bi_demographics"])
    encounters = sum(int(r["encounters"]) for r in views["bi_encounter_trends"])
    claims = sum(float(r["total_claim_cost"] or 0) for r in views["bi_encounter_trends"])
    medication = sum(float(r["total_cost"] or 0) for r in views["bi_medication_insights"])
    return [
        ("patients", f"{patients:,}"),
        ("encounters", f"{encounters:,}"),
        ("claim costs", _money(claims)),
        ("medication costs", _money(medication)),
        ("uploads", str(len(uploads))),
        *([("OMOP DQD checks passed", f"{dqd['Overview']['percentPassed']}%")] if dqd else []),
    ]


def render_dashboard(
    views: dict[str, list[dict]], lake_root: str, uploads: list[str], dqd: tuple[dict, str] | None = None
) -> str:
    """The whole page from the rows of the four BI views, and the OMOP build's DQD results (the parsed results
    file and where it is) when the lake has them."""
    demographics = views["bi_demographics"]
    cards = [
        ("Population pyramid", "Patients by age band and gender (bi_demographics).", population_pyramid(demographics)),
        (
            "Encounters over time",
            (
                "Encounters per month (per year over long histories) for the busiest encounter "
                "classes (bi_encounter_trends)."
            ),
            encounter_trends(views["bi_encounter_trends"]),
        ),
        (
            "Top diagnoses",
            "Conditions by number of patients diagnosed (bi_diagnosis_breakdown).",
            top_diagnoses(views["bi_diagnosis_breakdown"]),
        ),
        (
            "Medication costs",
            ("Total cost per medication; the darker part is what payers covered (bi_medication_insights)."),
            medication_costs(views["bi_medication_insights"]),
        ),
        *([dqd_card(*dqd)] if dqd else []),
    ]
    kpis = headline_figures(views, uploads, dqd[0] if dqd else None)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<title>Synthea population dashboard</title>",
            f"<style>{STYLE}</style>",
            f"<script>{PAGE_SCRIPT}</script></head><body>",
            (
                f"<header><h1>Synthea population dashboard</h1><p>Lake {_esc(lake_root)} · {len(uploads)} uploads, "
                f"latest {_esc(', '.join(uploads[-3:]))} · generated {generated}</p></header>"
            ),
            '<div class="kpis">'
            + "".join(f'<div class="kpi"><b>{v}</b><span>{_esc(k)}</span></div>' for k, v in kpis)
            + "</div>",
            "<main>"
            + "".join(
                f'<section class="chart-card"><h2>{_esc(t)}</h2><p>{_esc(d)}</p>{svg}</section>' for t, d, svg in cards
            )
            + "</main>",
            (
                "<footer>Synthetic data generated by Synthea. Built by synthea-pipeline from the marts; the same views "
                "are in the catalog for Athena, Power BI and QuickSight.</footer>"
            ),
            "</body></html>",
        ]
    )
