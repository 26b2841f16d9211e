"""The table contract: one source of truth for every Synthea table the pipeline knows.

Each column is declared once with its canonical (staging) name, its type and the Synthea releases that write
it, including the header names older releases used. Release detection, raw header checks, staging casts, keys
and the Dagster column schemas are all derived from this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RELEASES = ("2.5", "2.6", "2.7", "3.0", "3.1", "3.2", "3.3", "3.4", "4.1")
"""Releases whose CSV headers differ from their predecessor's (3.4 differs only by absent/split files; 4.1
stands for the exporter after 4.0 that appends NPI)."""

TYPES = ("string", "code_system", "date", "timestamp", "year_or_timestamp", "money", "double", "int")
"""Logical column types. `money` is decimal(18,2); `year_or_timestamp` is a UTC timestamp that 2.x wrote as a
bare year (payer_transitions); `code_system` is a string normalized to a short system name."""

SPARK_TYPES = {
    "string": "string",
    "code_system": "string",
    "date": "date",
    "timestamp": "timestamp",
    "year_or_timestamp": "timestamp",
    "money": "decimal(18,2)",
    "double": "double",
    "int": "int",
}


UNKNOWN_MEMBER_KEY = "unknown"
"""The key of the marts' unknown members; an id with this value is not staged (it is reserved)."""


def release_index(release: str) -> int:
    return RELEASES.index(release)


@dataclass(frozen=True)
class Column:
    """One canonical column. `header` is the newest Synthea header name; `old_headers` maps an older header
    name to the last release that wrote it (e.g. START_YEAR until 3.1). An `optional` column is one that some
    Synthea builds add on request and no release writes by default: staged when present, ignored when
    detecting the release."""

    header: str
    type: str = "string"
    since: str = "2.5"
    until: str | None = None
    old_headers: tuple[tuple[str, str], ...] = ()
    required: bool = False
    null_tokens: tuple[str, ...] = ()
    description: str = ""
    optional: bool = False

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"unknown column type {self.type!r} for {self.header}")

    @property
    def name(self) -> str:
        return self.header.lower()

    @property
    def spark_type(self) -> str:
        return SPARK_TYPES[self.type]

    def header_at(self, release: str) -> str | None:
        """The header name this column had in `release`, or None when that release did not write it."""
        r = release_index(release)
        if self.optional or r < release_index(self.since) or (self.until and r > release_index(self.until)):
            return None
        for old, last in self.old_headers:
            if r <= release_index(last):
                return old
        return self.header

    def all_headers(self) -> tuple[str, ...]:
        return (self.header, *(old for old, _ in self.old_headers))


@dataclass(frozen=True)
class Table:
    """One Synthea CSV table. `key` are the canonical columns that identify a row; tables with no natural key
    get the content hash `row_key` as key. `moved_when_absent` holds (column, holder) pairs: when a file lacks
    `column`, an older release wrote its values into `holder`, whose own meaning that file then lacks."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ("row_key",)
    grain: str = ""
    since: str = "2.5"
    default: bool = True
    moved_when_absent: tuple[tuple[str, str], ...] = ()
    column_index: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "column_index", {c.name: c for c in self.columns})
        missing = [k for k in self.key if k != "row_key" and k not in self.column_index]
        if missing:
            raise ValueError(f"{self.name}: key columns {missing} are not declared")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def has_natural_key(self) -> bool:
        return self.key != ("row_key",)

    @property
    def required_columns(self) -> list[Column]:
        return [c for c in self.columns if c.required]

    def header_at(self, release: str) -> list[str] | None:
        if release_index(release) < release_index(self.since):
            return None
        return [h for h in (c.header_at(release) for c in self.columns) if h]

    def match_header(self, header: list[str]) -> HeaderMatch:
        """Map a file's header names (case-insensitive) to canonical columns, and list what is unknown."""
        by_upper = {h.upper(): c for c in self.columns for h in c.all_headers()}
        mapping: dict[str, str] = {}
        unknown: list[str] = []
        for name in header:
            column = by_upper.get(name.upper())
            if column is None or column.name in mapping.values():
                unknown.append(name)
            else:
                mapping[name] = column.name
        present = set(mapping.values())
        missing_required = [c.header for c in self.required_columns if c.name not in present]
        return HeaderMatch(mapping, unknown, missing_required)

    def releases_matching(self, header: list[str]) -> set[str]:
        """Releases whose exporter writes exactly these (known) columns; unknown extra names are ignored."""
        by_release = {x.upper() for c in self.columns if not c.optional for x in c.all_headers()}
        known = {h.upper() for h in header if h.upper() in by_release}
        return {r for r in RELEASES if (cols := self.header_at(r)) and {c.upper() for c in cols} == known}


@dataclass(frozen=True)
class HeaderMatch:
    mapping: dict[str, str]
    unknown: list[str]
    missing_required: list[str]


C = Column

ID = C("Id", required=True, description="Synthea identifier (UUID).")
PATIENT = C("PATIENT", required=True, description="Patient id (patients.id).")
ENCOUNTER = C("ENCOUNTER", required=True, description="Encounter id (encounters.id).")


def _code(required: bool = True) -> Column:
    return C("CODE", required=required, description="Clinical code (SNOMED-CT, RxNorm, LOINC, CVX by table).")


DESCRIPTION = C("DESCRIPTION", description="Display text of the code.")
REASON = (
    C("REASONCODE", description="Code of the condition that caused this event."),
    C("REASONDESCRIPTION", description="Display text of the reason code."),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "patients",
            key=("id",),
            grain="one row per patient",
            columns=(
                ID,
                C("BIRTHDATE", "date", required=True, description="Date of birth (local date)."),
                C("DEATHDATE", "date", description="Date of death, null while alive."),
                C("SSN", description="Synthetic social security number (direct identifier)."),
                C("DRIVERS", description="Driver's licence number (direct identifier)."),
                C("PASSPORT", description="Passport number (direct identifier)."),
                C("PREFIX"),
                C("FIRST", description="Given name (direct identifier)."),
                C("MIDDLE", since="3.3", description="Middle name (direct identifier)."),
                C("LAST", description="Family name (direct identifier)."),
                C("SUFFIX"),
                C("MAIDEN"),
                C("MARITAL", description="M, S, D, W or null."),
                C("RACE"),
                C("ETHNICITY"),
                C("GENDER", description="M or F."),
                C("BIRTHPLACE"),
                C("ADDRESS", description="Street address (direct identifier)."),
                C("CITY"),
                C("STATE"),
                C("COUNTY"),
                C("FIPS", since="3.2", description="County FIPS code."),
                C("ZIP"),
                C("LAT", "double"),
                C("LON", "double"),
                C("HEALTHCARE_EXPENSES", "money", description="Lifetime cost of health care to the patient."),
                C("HEALTHCARE_COVERAGE", "money", description="Lifetime cost of health care covered by payers."),
                C("INCOME", "int", since="3.1", description="Annual household income."),
            ),
        ),
        Table(
            "encounters",
            key=("id",),
            moved_when_absent=(("organization", "provider"),),
            grain="one row per encounter",
            columns=(
                ID,
                C("START", "timestamp", required=True, description="Start (UTC)."),
                C("STOP", "timestamp", description="End (UTC)."),
                PATIENT,
                C("ORGANIZATION", since="2.6", description="Organization id."),
                C("PROVIDER", description="Provider id (held the organization id before 2.6)."),
                C("PAYER", description="Payer id."),
                C("ENCOUNTERCLASS", description="ambulatory, wellness, outpatient, emergency, inpatient, ..."),
                _code(),
                DESCRIPTION,
                C("BASE_ENCOUNTER_COST", "money"),
                C("TOTAL_CLAIM_COST", "money"),
                C("PAYER_COVERAGE", "money"),
                *REASON,
            ),
        ),
        Table(
            "conditions",
            grain="one row per diagnosed condition episode",
            columns=(
                C("START", "date", required=True, description="Onset (local date)."),
                C("STOP", "date", description="Resolution (local date), null while active."),
                PATIENT,
                ENCOUNTER,
                C("SYSTEM", "code_system", since="3.3"),
                _code(),
                DESCRIPTION,
                C("ICD10_CODE", optional=True, description="ICD-10 code, when the Synthea build writes one."),
                C("ICD10_DESCRIPTION", optional=True, description="Display text of the ICD-10 code."),
            ),
        ),
        Table(
            "medications",
            grain="one row per medication order",
            columns=(
                C("START", "timestamp", required=True),
                C("STOP", "timestamp"),
                PATIENT,
                C("PAYER"),
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                C("BASE_COST", "money"),
                C("PAYER_COVERAGE", "money"),
                C("DISPENSES", "int"),
                C("TOTALCOST", "money"),
                *REASON,
            ),
        ),
        Table(
            "observations",
            grain="one row per observation (QALY/DALY/QOLS rows have no encounter)",
            columns=(
                C("DATE", "timestamp", required=True),
                PATIENT,
                C("ENCOUNTER", description="Encounter id; null on yearly QALY/DALY/QOLS rows."),
                C("CATEGORY", since="3.0"),
                _code(),
                DESCRIPTION,
                C("VALUE", description="Value as written (numeric values %.1f, or text)."),
                C("UNITS"),
                C("TYPE", description="numeric, text or boolean."),
            ),
        ),
        Table(
            "procedures",
            grain="one row per procedure performed",
            columns=(
                C("START", "timestamp", required=True, old_headers=(("DATE", "2.7"),)),
                C("STOP", "timestamp", since="3.0"),
                PATIENT,
                ENCOUNTER,
                C("SYSTEM", "code_system", since="3.3"),
                _code(),
                DESCRIPTION,
                C("BASE_COST", "money"),
                *REASON,
            ),
        ),
        Table(
            "immunizations",
            grain="one row per vaccination",
            columns=(
                C("DATE", "timestamp", required=True),
                PATIENT,
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                C("BASE_COST", "money"),
            ),
        ),
        Table(
            "allergies",
            grain="one row per allergy or intolerance",
            columns=(
                C("START", "date", required=True),
                C("STOP", "date"),
                PATIENT,
                ENCOUNTER,
                _code(),
                C("SYSTEM", "code_system", since="3.0"),
                DESCRIPTION,
                C("TYPE", since="3.0"),
                C("CATEGORY", since="3.0"),
                C("REACTION1", since="3.0"),
                C("DESCRIPTION1", since="3.0"),
                C("SEVERITY1", since="3.0"),
                C("REACTION2", since="3.0"),
                C("DESCRIPTION2", since="3.0"),
                C("SEVERITY2", since="3.0"),
            ),
        ),
        Table(
            "careplans",
            key=("id",),
            grain="one row per care plan",
            columns=(
                ID,
                C("START", "date", required=True),
                C("STOP", "date"),
                PATIENT,
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                *REASON,
            ),
        ),
        Table(
            "devices",
            since="2.6",
            grain="one row per device use",
            columns=(
                C("START", "timestamp", required=True),
                C("STOP", "timestamp"),
                PATIENT,
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                C("UDI"),
            ),
        ),
        Table(
            "supplies",
            since="2.6",
            grain="one row per supply line",
            columns=(
                C("DATE", "date", required=True),
                PATIENT,
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                C("QUANTITY", "int"),
            ),
        ),
        Table(
            "imaging_studies",
            key=("id", "series_uid", "instance_uid"),
            grain="one row per imaging instance (Id repeats across series and instances)",
            columns=(
                ID,
                C("DATE", "timestamp", required=True),
                PATIENT,
                ENCOUNTER,
                C("SERIES_UID", since="2.7"),
                C("BODYSITE_CODE"),
                C("BODYSITE_DESCRIPTION"),
                C("MODALITY_CODE"),
                C("MODALITY_DESCRIPTION"),
                C("INSTANCE_UID", since="2.7"),
                C("SOP_CODE"),
                C("SOP_DESCRIPTION"),
                C("PROCEDURE_CODE", since="2.7"),
            ),
        ),
        Table(
            "organizations",
            key=("id",),
            grain="one row per organization",
            columns=(
                ID,
                C("NAME"),
                C("ADDRESS"),
                C("CITY"),
                C("STATE"),
                C("ZIP"),
                C("LAT", "double"),
                C("LON", "double"),
                C("PHONE"),
                C("REVENUE", "money"),
                C("UTILIZATION", "int"),
                C("NPI", since="4.1"),
            ),
        ),
        Table(
            "providers",
            key=("id",),
            grain="one row per provider",
            columns=(
                ID,
                C("ORGANIZATION", required=True),
                C("NAME"),
                C("GENDER"),
                C("SPECIALITY"),
                C("ADDRESS"),
                C("CITY"),
                C("STATE"),
                C("ZIP"),
                C("LAT", "double"),
                C("LON", "double"),
                C("UTILIZATION", "int", until="3.1"),
                C("ENCOUNTERS", "int", since="3.2"),
                C("PROCEDURES", "int", since="3.2"),
                C("NPI", since="4.1"),
            ),
        ),
        Table(
            "payers",
            key=("id",),
            grain="one row per payer",
            columns=(
                ID,
                C("NAME"),
                C("OWNERSHIP", since="3.2"),
                C("ADDRESS"),
                C("CITY"),
                C("STATE_HEADQUARTERED"),
                C("ZIP"),
                C("PHONE"),
                C("AMOUNT_COVERED", "money"),
                C("AMOUNT_UNCOVERED", "money"),
                C("REVENUE", "money"),
                C("COVERED_ENCOUNTERS", "int"),
                C("UNCOVERED_ENCOUNTERS", "int"),
                C("COVERED_MEDICATIONS", "int"),
                C("UNCOVERED_MEDICATIONS", "int"),
                C("COVERED_PROCEDURES", "int"),
                C("UNCOVERED_PROCEDURES", "int"),
                C("COVERED_IMMUNIZATIONS", "int"),
                C("UNCOVERED_IMMUNIZATIONS", "int"),
                C("UNIQUE_CUSTOMERS", "int"),
                C("QOLS_AVG", "double"),
                C("MEMBER_MONTHS", "int"),
            ),
        ),
        Table(
            "payer_transitions",
            grain="one row per patient coverage period",
            columns=(
                PATIENT,
                C("MEMBERID", since="3.0"),
                C("START_DATE", "year_or_timestamp", required=True, old_headers=(("START_YEAR", "3.1"),)),
                C("END_DATE", "year_or_timestamp", old_headers=(("END_YEAR", "3.1"),)),
                C("PAYER", required=True),
                C("SECONDARY_PAYER", since="3.0"),
                C("PLAN_OWNERSHIP", old_headers=(("OWNERSHIP", "3.1"),)),
                C("OWNER_NAME", since="3.0", old_headers=(("OWNERNAME", "3.1"),)),
            ),
        ),
        Table(
            "claims",
            key=("id",),
            since="3.0",
            grain="one row per claim",
            columns=(
                ID,
                C("PATIENTID", required=True),
                C("PROVIDERID"),
                C("PRIMARYPATIENTINSURANCEID", null_tokens=("0",), description="Payer id; 3.0/3.1 `0` is null."),
                C("SECONDARYPATIENTINSURANCEID", null_tokens=("0",), description="Payer id; 3.0/3.1 `0` is null."),
                C("DEPARTMENTID", "int"),
                C("PATIENTDEPARTMENTID", "int"),
                *(C(f"DIAGNOSIS{i}") for i in range(1, 9)),
                C("REFERRINGPROVIDERID"),
                C("APPOINTMENTID", description="Encounter id."),
                C("CURRENTILLNESSDATE", "timestamp"),
                C("SERVICEDATE", "timestamp"),
                C("SUPERVISINGPROVIDERID"),
                C("STATUS1"),
                C("STATUS2"),
                C("STATUSP"),
                C("OUTSTANDING1", "money"),
                C("OUTSTANDING2", "money"),
                C("OUTSTANDINGP", "money"),
                C("LASTBILLEDDATE1", "timestamp"),
                C("LASTBILLEDDATE2", "timestamp"),
                C("LASTBILLEDDATEP", "timestamp"),
                C("HEALTHCARECLAIMTYPEID1", "int"),
                C("HEALTHCARECLAIMTYPEID2", "int"),
            ),
        ),
        Table(
            "claims_transactions",
            key=("id",),
            since="3.0",
            grain="one row per claim transaction",
            columns=(
                C("ID", required=True, description="Transaction id."),
                C("CLAIMID", required=True),
                C("CHARGEID", "int"),
                C("PATIENTID", required=True),
                C("TYPE"),
                C("AMOUNT", "money"),
                C("METHOD"),
                C("FROMDATE", "timestamp"),
                C("TODATE", "timestamp"),
                C("PLACEOFSERVICE"),
                C("PROCEDURECODE"),
                C("MODIFIER1"),
                C("MODIFIER2"),
                *(C(f"DIAGNOSISREF{i}", "int") for i in range(1, 5)),
                C("UNITS", "int"),
                C("DEPARTMENTID", "int"),
                C("NOTES"),
                C("UNITAMOUNT", "money"),
                C("TRANSFEROUTID", "int"),
                C("TRANSFERTYPE"),
                C("PAYMENTS", "money"),
                C("ADJUSTMENTS", "money"),
                C("TRANSFERS", "money"),
                C("OUTSTANDING", "money"),
                C("APPOINTMENTID"),
                C("LINENOTE"),
                C("PATIENTINSURANCEID"),
                C("FEESCHEDULEID"),
                C("PROVIDERID"),
                C("SUPERVISINGPROVIDERID"),
            ),
        ),
        Table(
            "patient_expenses",
            since="3.2",
            default=False,
            grain="one row per patient, year and payer",
            columns=(
                C("PATIENT_ID", required=True),
                C("YEAR", "timestamp", required=True, description="Start of the year (Synthea writes a timestamp)."),
                C("PAYER_ID"),
                C("HEALTHCARE_EXPENSES", "money"),
                C("INSURANCE_COSTS", "money"),
                C("COVERED_COSTS", "money"),
            ),
        ),
    )
}

DEFAULT_TABLES = tuple(name for name, t in TABLES.items() if t.default)
"""The 18 tables Synthea writes by default; every table in TABLES is staged when an upload has it."""


def detect_release(headers: dict[str, list[str]]) -> str:
    """Name the Synthea release(s) consistent with every table's header, e.g. "2.7" or "3.3-3.4"."""
    candidates = set(RELEASES)
    for table, header in headers.items():
        matching = TABLES[table].releases_matching(header)
        if matching:
            candidates &= matching
    if not candidates:
        return "unknown"
    ordered = sorted(candidates, key=release_index)
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}"
