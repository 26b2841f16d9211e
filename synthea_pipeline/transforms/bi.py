"""The BI views, defined once in Athena (Trino) SQL over the marts database; sqlglot transpiles them for the
embedded engine (DuckDB), which computes them for the local catalog, the asset previews and the dashboard."""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from synthea_pipeline.transforms.iceberg import MARTS_DATABASE
from synthea_pipeline.transforms.marts import UNKNOWN_KEY

SOURCE_DIALECT = "trino"
LOCAL_DIALECT = "duckdb"
TOP_CONDITIONS = 25

BI_VIEWS = {
    "bi_demographics": """
SELECT
  p.age_band,
  p.gender,
  COUNT(*) AS patients,
  CAST(SUM(CASE WHEN p.is_deceased THEN 1 ELSE 0 END) AS BIGINT) AS deceased,
  CAST(AVG(p.age) AS DOUBLE) AS mean_age,
  CAST(SUM(p.encounter_count) AS BIGINT) AS encounters,
  SUM(p.total_claim_cost) AS total_claim_cost
FROM {marts}.patient_fact AS p
WHERE NOT p.is_unknown
GROUP BY p.age_band, p.gender
""",
    "bi_encounter_trends": """
SELECT
  CAST(date_trunc('month', e.start_date) AS DATE) AS month,
  e.encounter_class,
  COUNT(*) AS encounters,
  COUNT(DISTINCT NULLIF(e.patient_key, '{unknown}')) AS patients,
  SUM(e.total_claim_cost) AS total_claim_cost,
  SUM(e.payer_coverage) AS payer_coverage
FROM {marts}.encounter_dim AS e
WHERE NOT e.is_unknown
GROUP BY CAST(date_trunc('month', e.start_date) AS DATE), e.encounter_class
""",
    "bi_diagnosis_breakdown": """
WITH ranked AS (
  SELECT
    c.condition_code,
    ROW_NUMBER() OVER (ORDER BY COUNT(DISTINCT NULLIF(c.patient_key, '{unknown}')) DESC, c.condition_code)
      AS condition_rank,
    MIN(c.condition_description) AS condition_description
  FROM {marts}.condition_dim AS c
  GROUP BY c.condition_code
)
SELECT
  r.condition_rank,
  r.condition_code,
  r.condition_description,
  p.age_band,
  p.gender,
  COUNT(DISTINCT NULLIF(c.patient_key, '{unknown}')) AS patients,
  COUNT(*) AS diagnoses,
  CAST(SUM(CASE WHEN c.is_active THEN 1 ELSE 0 END) AS BIGINT) AS active
FROM {marts}.condition_dim AS c
JOIN ranked AS r ON c.condition_code = r.condition_code
JOIN {marts}.patient_fact AS p ON c.patient_key = p.patient_key
WHERE r.condition_rank <= {top}
GROUP BY r.condition_rank, r.condition_code, r.condition_description, p.age_band, p.gender
""",
    "bi_medication_insights": """
SELECT
  ROW_NUMBER() OVER (ORDER BY SUM(m.total_cost) DESC, m.medication_code) AS cost_rank,
  m.medication_code,
  MIN(m.medication_description) AS medication_description,
  COUNT(*) AS prescriptions,
  COUNT(DISTINCT NULLIF(m.patient_key, '{unknown}')) AS patients,
  CAST(SUM(m.dispenses) AS BIGINT) AS dispenses,
  SUM(m.total_cost) AS total_cost,
  SUM(m.payer_coverage) AS payer_coverage,
  SUM(m.total_cost) - SUM(m.payer_coverage) AS patient_paid,
  CASE WHEN SUM(m.total_cost) > 0
       THEN CAST(SUM(m.payer_coverage) AS DOUBLE) / CAST(SUM(m.total_cost) AS DOUBLE) END AS coverage_ratio,
  COUNT(DISTINCT NULLIF(m.payer_key, '{unknown}')) AS payers
FROM {marts}.medication_dim AS m
GROUP BY m.medication_code
""",
}
"""Integer sums are cast to BIGINT, what Athena returns for them, so both engines give one schema. Counts of
patients, encounters and payers leave out the marts' unknown members (`is_unknown`, or a reference to one). What each
view answers: demographics by age band and gender; encounters per month and class; the top
conditions (by patients) by age band and gender; every medication with its cost, payer coverage and rank."""


def view_sql(name: str, marts_database: str = MARTS_DATABASE) -> str:
    """A view's Athena (Trino) SQL against the given marts database."""
    return BI_VIEWS[name].format(marts=marts_database, top=TOP_CONDITIONS, unknown=UNKNOWN_KEY).strip()


def local_sql(sql: str) -> str:
    """Athena SQL as the embedded engine's dialect."""
    return sqlglot.transpile(sql, read=SOURCE_DIALECT, write=LOCAL_DIALECT, pretty=True)[0]


def marts_read(sql: str, marts_database: str = MARTS_DATABASE) -> tuple[str, ...]:
    """The tables of the marts database an Athena query reads, sorted; parsed, so the SQL stays the only source."""
    tables = sqlglot.parse_one(sql, read=SOURCE_DIALECT).find_all(exp.Table)
    return tuple(sorted({t.name for t in tables if t.db == marts_database}))


BI_VIEW_READS: dict[str, tuple[str, ...]] = {view: marts_read(view_sql(view)) for view in BI_VIEWS}
"""The marts each BI view reads."""
