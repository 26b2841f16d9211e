"""Asset checks, each declared once (name, description, severity, the assets it is on) beside the code that
computes it: the Dagster check specs are generated from these declarations (`assets/specs.check_specs`) and every
result is reported against its declaration, so a check is added in one place."""

from dataclasses import dataclass

from synthea_pipeline.tables import TABLES


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    layer: str
    tables: tuple[str, ...]
    blocking: bool = False

    @property
    def severity(self) -> str:
        return "ERROR" if self.blocking else "WARN"

    def on(self, table: str) -> str:
        """The asset key (`layer/table`) of this check's result for `table`, one of the tables it is declared on."""
        if table not in self.tables:
            raise ValueError(f"{self.name} is not declared on {self.layer}/{table}")
        return f"{self.layer}/{table}"


UPLOAD_CHECK_TABLE = "patients"
"""Checks of the whole upload are on `staging/patients` (every upload has patients)."""

RAW_QUARANTINE = Check(
    "no_quarantined_rows",
    "Every source line could be split into the header's fields (warning only).",
    "raw",
    tuple(TABLES),
)
STAGING_QUARANTINE = Check(
    "no_quarantined_rows",
    "Every row was staged or dropped as an exact duplicate (warning: "
    "quarantined rows, with their reasons, are in the quarantine table).",
    "staging",
    tuple(TABLES),
)
HISTORY_PRESERVED = Check(
    "history_preserved",
    "Upload-level: the commit removes no history it supersedes (patients "
    "moving from earlier uploads or from the upload's previous load): no table they had is "
    "absent, no file is cut, no table of their history shrinks beyond the lake's limit. "
    "Unconfirmed (`--replace`) losses refuse the commit; confirmed ones warn here.",
    "staging",
    (UPLOAD_CHECK_TABLE,),
)
EXPORT_COMPLETE = Check(
    "export_complete",
    "Upload-level: every table the upload's Synthea release writes by default "
    "is present (warning: absent tables are empty for this upload).",
    "staging",
    (UPLOAD_CHECK_TABLE,),
)
UPLOAD_CHECKS = (HISTORY_PRESERVED, EXPORT_COMPLETE)
"""Computed by the ingest step's reports (`layers`), like the quarantine warnings."""
