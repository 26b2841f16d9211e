"""The OMOP Common Data Model 5.4 as OHDSI declares it: every table's fields in DDL order, their types, required
fields and keys (the CDM's field-level specification), and the Data Quality Dashboard's checks and thresholds of each
field (DQD's), both shipped beside this module (`CDM_SOURCES.md`). The OMOP tables' schemas, their key checks and
the DQD checks are derived from them, so no CDM fact is declared twice."""

from __future__ import annotations

import csv
import io
import pkgutil
import re
from dataclasses import dataclass
from functools import cache

FIELD_LEVEL_FILE = "OMOP_CDMv5.4_Field_Level.csv"
DQD_FIELD_LEVEL_FILE = "DQD_OMOP_CDMv5.4_Field_Level.csv"
CDM_VERSION = "5.4"
SPARK_TYPES = {"integer": "int", "bigint": "bigint", "float": "double", "date": "date", "datetime": "timestamp"}
"""CDM data types as Spark SQL types; every varchar is a string."""


@dataclass(frozen=True)
class CdmField:
    """One field of a CDM table; `checks` holds the DQD specification's other columns (thresholds, plausible
    values) as written there, empty when not set."""

    table: str
    name: str
    cdm_type: str
    required: bool
    primary_key: bool
    foreign_table: str | None
    checks: dict[str, str]

    @property
    def spark_type(self) -> str:
        return SPARK_TYPES.get(self.cdm_type.lower(), "string")

    def check(self, name: str) -> str | None:
        """A DQD column of this field (`isRequiredThreshold`, `plausibleValueLow`, ...), None when empty or
        `No`."""
        value = self.checks.get(name, "").strip()
        return None if value in ("", "NA", "No") else value


@dataclass(frozen=True)
class CdmTable:
    name: str
    fields: tuple[CdmField, ...]

    @property
    def columns(self) -> str:
        """The table's columns as Spark DDL, in the CDM's order."""
        return ", ".join(f"`{f.name}` {f.spark_type}" for f in self.fields)

    @property
    def primary_key(self) -> str | None:
        keys = [f.name for f in self.fields if f.primary_key]
        return keys[0] if len(keys) == 1 else None

    def field(self, name: str) -> CdmField:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise KeyError(f"{self.name}.{name} is not a CDM {CDM_VERSION} field")


def _flag(value: str) -> bool:
    return value.strip().lower() == "yes"


def _rows(file: str) -> list[dict[str, str]]:
    text = pkgutil.get_data(__name__.rsplit(".", 1)[0], file).decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


@cache
def cdm_tables() -> dict[str, CdmTable]:
    """Every CDM 5.4 table, by lower-case name, with its fields in DDL order and each field's DQD checks."""
    checks = {(r["cdmTableName"].lower(), r["cdmFieldName"].lower()): r for r in _rows(DQD_FIELD_LEVEL_FILE)}
    fields: dict[str, list[CdmField]] = {}
    for row in _rows(FIELD_LEVEL_FILE):
        table, name = row["cdmTableName"].strip().lower(), row["cdmFieldName"].strip().lower()
        foreign = row["fkTableName"].strip().lower()
        fields.setdefault(table, []).append(
            CdmField(
                table,
                name,
                re.sub(r"\(.*\)", "", row["cdmDatatype"]).strip().lower(),
                _flag(row["isRequired"]),
                _flag(row["isPrimaryKey"]),
                foreign if _flag(row["isForeignKey"]) and foreign not in ("", "na") else None,
                {k: (v or "") for k, v in checks.get((table, name), {}).items() if k},
            )
        )
    return {name: CdmTable(name, tuple(columns)) for name, columns in fields.items()}


def cdm_table(name: str) -> CdmTable:
    return cdm_tables()[name]


def cdm_schema(name: str) -> dict:
    """A CDM table's fields as a Pipes `table_schema` value (required fields not nullable)."""
    return {
        "columns": [
            {
                "name": f.name,
                "type": f.spark_type,
                "description": f"CDM {CDM_VERSION} {f.cdm_type}" + (" (primary key)" if f.primary_key else ""),
                "constraints": {"nullable": not f.required},
            }
            for f in cdm_table(name).fields
        ]
    }
