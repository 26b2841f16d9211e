"""The fastest thing a user could write instead of the pipeline: one DuckDB script that reads each CSV once,
casts it to the contract types (trimmed text, empty strings as null), drops exact duplicates, writes zstd
Parquet, then builds the patient fact and its dimensions from that Parquet. No layers, quarantine, checks,
catalog or Dagster."""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

from synthea_pipeline.tables import TABLES

DUCKDB_TYPES = {
    "string": "VARCHAR",
    "code_system": "VARCHAR",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "year_or_timestamp": "TIMESTAMP",
    "money": "DECIMAL(18,2)",
    "double": "DOUBLE",
    "int": "INTEGER",
}

MARTS = {
    "encounter_dim": """
        SELECT e.id AS encounter_key, e.patient AS patient_key, coalesce(p.id, 'unknown') AS provider_key,
               coalesce(o.id, 'unknown') AS organization_key, coalesce(y.id, 'unknown') AS payer_key,
               e.encounterclass AS encounter_class, e.code AS encounter_code, e.description AS encounter_description,
               e.start AS start_ts, e.stop AS stop_ts, CAST(e.start AS DATE) AS start_date,
               CAST(epoch(e.stop) - epoch(e.start) AS INTEGER) // 60 AS duration_minutes,
               e.base_encounter_cost, e.total_claim_cost, e.payer_coverage, e.reasoncode AS reason_code
        FROM encounters e JOIN patients pt ON e.patient = pt.id
        LEFT JOIN providers p ON e.provider = p.id LEFT JOIN organizations o ON e.organization = o.id
        LEFT JOIN payers y ON e.payer = y.id""",
    "condition_dim": """
        SELECT md5(c::VARCHAR) AS condition_key, c.patient AS patient_key, c.encounter AS encounter_key,
               c.code AS condition_code, c.description AS condition_description, c.start AS start_date,
               c.stop AS stop_date, c.stop IS NULL AS is_active
        FROM conditions c JOIN patients pt ON c.patient = pt.id""",
    "procedure_dim": """
        SELECT md5(c::VARCHAR) AS procedure_key, c.patient AS patient_key, c.encounter AS encounter_key,
               c.code AS procedure_code, c.description AS procedure_description, c.start AS start_ts,
               c.stop AS stop_ts, CAST(c.start AS DATE) AS start_date, c.base_cost
        FROM procedures c JOIN patients pt ON c.patient = pt.id""",
    "medication_dim": """
        SELECT md5(c::VARCHAR) AS medication_key, c.patient AS patient_key, c.encounter AS encounter_key,
               coalesce(y.id, 'unknown') AS payer_key, c.code AS medication_code,
               c.description AS medication_description, c.start AS start_ts, c.stop AS stop_ts,
               CAST(c.start AS DATE) AS start_date, c.dispenses, c.base_cost, c.totalcost AS total_cost
        FROM medications c JOIN patients pt ON c.patient = pt.id LEFT JOIN payers y ON c.payer = y.id""",
    "provider_dim": """
        SELECT p.id AS provider_key, coalesce(o.id, 'unknown') AS organization_key, p.gender,
               p.speciality AS specialty, md5(concat_ws('|', p.city, p.state, p.zip)) AS location_key,
               p.lat, p.lon, p.utilization
        FROM providers p LEFT JOIN organizations o ON p.organization = o.id""",
    "organization_dim": """
        SELECT id AS organization_key, name AS organization_name,
               md5(concat_ws('|', city, state, zip)) AS location_key, lat, lon, phone, revenue, utilization
        FROM organizations""",
    "payer_dim": "SELECT id AS payer_key, name AS payer_name, revenue FROM payers",
    "location_dim": """
        SELECT DISTINCT ON (location_key) * FROM (
            SELECT md5(concat_ws('|', city, county, state, zip)) AS location_key, city, county, state, zip, fips
            FROM patients
            UNION ALL SELECT md5(concat_ws('|', city, state, zip)), city, NULL, state, zip, NULL FROM providers
            UNION ALL SELECT md5(concat_ws('|', city, state, zip)), city, NULL, state, zip, NULL FROM organizations)""",
    "patient_fact": """
        WITH e AS (SELECT patient_key, count(*) AS encounter_count, sum(total_claim_cost) AS total_claim_cost,
                          min(start_date) AS first_encounter_date, max(start_date) AS last_encounter_date
                   FROM encounter_dim GROUP BY ALL),
             c AS (SELECT patient_key, count(*) AS condition_count, sum(is_active::INT) AS active_condition_count
                   FROM condition_dim GROUP BY ALL),
             m AS (SELECT patient_key, count(*) AS medication_count FROM medication_dim GROUP BY ALL),
             p AS (SELECT patient_key, count(*) AS procedure_count FROM procedure_dim GROUP BY ALL),
             i AS (SELECT patient AS patient_key, count(*) AS immunization_count FROM immunizations GROUP BY ALL),
             as_of AS (SELECT max(start_date) AS as_of_date FROM encounter_dim)
        SELECT pt.id AS patient_key, pt.birthdate AS birth_date, pt.deathdate AS death_date,
               date_diff('year', pt.birthdate, coalesce(pt.deathdate, as_of.as_of_date)) AS age, pt.gender, pt.race,
               pt.ethnicity, md5(concat_ws('|', pt.city, pt.county, pt.state, pt.zip)) AS location_key, pt.income,
               coalesce(encounter_count, 0) AS encounter_count, coalesce(condition_count, 0) AS condition_count,
               coalesce(active_condition_count, 0) AS active_condition_count,
               coalesce(medication_count, 0) AS medication_count, coalesce(procedure_count, 0) AS procedure_count,
               coalesce(immunization_count, 0) AS immunization_count, coalesce(total_claim_cost, 0) AS total_claim_cost,
               first_encounter_date, last_encounter_date
        FROM patients pt CROSS JOIN as_of LEFT JOIN e ON e.patient_key = pt.id LEFT JOIN c ON c.patient_key = pt.id
        LEFT JOIN m ON m.patient_key = pt.id LEFT JOIN p ON p.patient_key = pt.id
        LEFT JOIN i ON i.patient_key = pt.id""",
}


def typed(name: str, header: str, column_type: str) -> str:
    value = f"nullif(trim(\"{header}\"), '')"
    if column_type in ("timestamp", "year_or_timestamp"):
        return f"coalesce(try_strptime({value}, '%Y-%m-%dT%H:%M:%SZ'), try_cast({value} AS TIMESTAMP)) AS {name}"
    return f"try_cast({value} AS {DUCKDB_TYPES[column_type]}) AS {name}"


def main(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    db = duckdb.connect()
    for path in sorted(source.glob("*.csv")):
        table = TABLES[path.stem]
        header = path.open().readline().strip().split(",")
        mapping = table.match_header(header).mapping
        headers = {canonical: name for name, canonical in mapping.items()}
        columns = ", ".join(
            typed(c.name, headers[c.name], c.type) if c.name in headers else f"NULL::{DUCKDB_TYPES[c.type]} AS {c.name}"
            for c in table.columns
        )
        varchar = "{" + ", ".join(f"'{h}': 'VARCHAR'" for h in header) + "}"
        db.execute(f"""COPY (SELECT DISTINCT {columns} FROM read_csv('{path}', header=true, quote='',
                       columns={varchar})) TO '{out}/{table.name}.parquet' (FORMAT parquet, COMPRESSION zstd)""")
        db.execute(f"CREATE VIEW {table.name} AS SELECT * FROM '{out}/{table.name}.parquet'")
    for name, query in MARTS.items():
        db.execute(f"COPY ({query}) TO '{out}/{name}.parquet' (FORMAT parquet, COMPRESSION zstd)")
        db.execute(f"CREATE VIEW {name} AS SELECT * FROM '{out}/{name}.parquet'")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
