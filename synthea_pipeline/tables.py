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


PATIENT_COLUMNS = ("patient", "patientid", "patient_id")
"""The canonical names Synthea gives the column that names a row's patient."""


def release_index(release: str) -> int:
    return RELEASES.index(release)


EMPTY_FILES_OMITTED_SINCE = "3.4"
"""From this release on, Synthea writes no CSV file for an empty table."""


def may_omit_empty_files(release: str) -> bool:
    """Whether `release` (one, a range such as `3.3-3.4`, or `unknown`) may be one that writes no file for an
    empty table, so an absent table may just be empty."""
    last = release.split("-")[-1]
    return last not in RELEASES or release_index(last) >= release_index(EMPTY_FILES_OMITTED_SINCE)


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
    def patient_column(self) -> str | None:
        """The column naming the patient a row belongs to (`id` of patients itself); None for the tables every
        Synthea run shares (providers, organizations, payers)."""
        if self.name == "patients":
            return "id"
        return next((c for c in PATIENT_COLUMNS if c in self.column_index), None)

    def written_by(self, release: str) -> bool:
        """Whether `release` (one, or a range such as `3.3-3.4`: its first) writes this table by default; for an
        `unknown` release, whether any release does."""
        first = release.split("-", 1)[0]
        if first not in RELEASES:
            return self.default
        return self.default and release_index(first) >= release_index(self.since)

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


def _system(since: str) -> Column:
    return C(
        "SYSTEM",
        "code_system",
        since=since,
        description="Code system, normalized to a short name (SNOMED-CT, RxNorm, LOINC, CVX) where known.",
    )


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
                C("PREFIX", description="Name prefix such as Mr., Mrs. or Ms. (direct identifier)."),
                C("FIRST", description="Given name (direct identifier)."),
                C("MIDDLE", since="3.3", description="Middle name (direct identifier)."),
                C("LAST", description="Family name (direct identifier)."),
                C("SUFFIX", description="Name suffix (direct identifier)."),
                C("MAIDEN", description="Maiden name, null when none (direct identifier)."),
                C("MARITAL", description="M, S, D, W or null."),
                C("RACE", description="Race, lower case: white, black, asian, native, hawaiian or other."),
                C("ETHNICITY", description="hispanic or nonhispanic."),
                C("GENDER", description="M or F."),
                C("BIRTHPLACE", description="Place of birth as 'City  State  Country' (commas written as spaces)."),
                C("ADDRESS", description="Street address (direct identifier)."),
                C("CITY", description="City of residence."),
                C("STATE", description="State of residence."),
                C("COUNTY", description="County of residence."),
                C("FIPS", since="3.2", description="County FIPS code."),
                C("ZIP", description="ZIP code of the residence as text (leading zeros kept), may be empty or 00000."),
                C("LAT", "double", description="Latitude of the residence (decimal degrees)."),
                C("LON", "double", description="Longitude of the residence (decimal degrees)."),
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
                C("BASE_ENCOUNTER_COST", "money", description="Cost of the encounter itself, without its line items."),
                C("TOTAL_CLAIM_COST", "money", description="Total cost of the encounter's claim, line items included."),
                C("PAYER_COVERAGE", "money", description="Part of the claim cost the payer covered."),
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
                _system("3.3"),
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
                C("START", "timestamp", required=True, description="Start of the prescription (UTC)."),
                C("STOP", "timestamp", description="End of the prescription (UTC), null while ongoing."),
                PATIENT,
                C("PAYER", description="Payer id."),
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                C("BASE_COST", "money", description="Line item cost of one dispense."),
                C("PAYER_COVERAGE", "money", description="Part of the cost the payer covered."),
                C("DISPENSES", "int", description="Number of times the prescription was filled."),
                C("TOTALCOST", "money", description="Total cost of the prescription, all dispenses included."),
                *REASON,
            ),
        ),
        Table(
            "observations",
            grain="one row per observation (QALY/DALY/QOLS rows have no encounter)",
            columns=(
                C("DATE", "timestamp", required=True, description="When the observation was made (UTC)."),
                PATIENT,
                C("ENCOUNTER", description="Encounter id; null on yearly QALY/DALY/QOLS rows."),
                C("CATEGORY", since="3.0", description="vital-signs, laboratory, survey, social-history, exam, ..."),
                _code(),
                DESCRIPTION,
                C("VALUE", description="Value as written (numeric values %.1f, or text)."),
                C("UNITS", description="Units of the value (UCUM, e.g. mg/dL; `a` for QALY/DALY years)."),
                C("TYPE", description="numeric, text or boolean."),
            ),
        ),
        Table(
            "procedures",
            grain="one row per procedure performed",
            columns=(
                C(
                    "START",
                    "timestamp",
                    required=True,
                    old_headers=(("DATE", "2.7"),),
                    description="Start (UTC); DATE before 3.0.",
                ),
                C("STOP", "timestamp", since="3.0", description="End (UTC)."),
                PATIENT,
                ENCOUNTER,
                _system("3.3"),
                _code(),
                DESCRIPTION,
                C("BASE_COST", "money", description="Line item cost of the procedure."),
                *REASON,
            ),
        ),
        Table(
            "immunizations",
            grain="one row per vaccination",
            columns=(
                C("DATE", "timestamp", required=True, description="When the vaccine was given (UTC)."),
                PATIENT,
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                C("BASE_COST", "money", description="Line item cost of the immunization."),
            ),
        ),
        Table(
            "allergies",
            grain="one row per allergy or intolerance",
            columns=(
                C("START", "date", required=True, description="Date the allergy was diagnosed (local date)."),
                C("STOP", "date", description="Date the allergy ended (local date), null while active."),
                PATIENT,
                ENCOUNTER,
                _code(),
                _system("3.0"),
                DESCRIPTION,
                C("TYPE", since="3.0", description="allergy or intolerance."),
                C("CATEGORY", since="3.0", description="food, environment, medication or drug."),
                C("REACTION1", since="3.0", description="SNOMED-CT code of the first reaction, if any."),
                C("DESCRIPTION1", since="3.0", description="Display text of the first reaction."),
                C("SEVERITY1", since="3.0", description="Severity of the first reaction: MILD, MODERATE or SEVERE."),
                C("REACTION2", since="3.0", description="SNOMED-CT code of the second reaction, if any."),
                C("DESCRIPTION2", since="3.0", description="Display text of the second reaction."),
                C("SEVERITY2", since="3.0", description="Severity of the second reaction: MILD, MODERATE or SEVERE."),
            ),
        ),
        Table(
            "careplans",
            key=("id",),
            grain="one row per care plan",
            columns=(
                ID,
                C("START", "date", required=True, description="Date the care plan began (local date)."),
                C("STOP", "date", description="Date the care plan ended (local date), null while active."),
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
                C("START", "timestamp", required=True, description="When the device was affixed (UTC)."),
                C("STOP", "timestamp", description="When the device was removed (UTC), null while in use."),
                PATIENT,
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                C("UDI", description="Unique Device Identifier (GS1 format)."),
            ),
        ),
        Table(
            "supplies",
            since="2.6",
            grain="one row per supply line",
            columns=(
                C("DATE", "date", required=True, description="Date the supplies were used (local date)."),
                PATIENT,
                ENCOUNTER,
                _code(),
                DESCRIPTION,
                C("QUANTITY", "int", description="Number of units supplied."),
            ),
        ),
        Table(
            "imaging_studies",
            key=("id", "series_uid", "instance_uid"),
            grain="one row per imaging instance (Id repeats across series and instances)",
            columns=(
                ID,
                C("DATE", "timestamp", required=True, description="When the study was made (UTC)."),
                PATIENT,
                ENCOUNTER,
                C("SERIES_UID", since="2.7", description="DICOM UID of the series."),
                C("BODYSITE_CODE", description="SNOMED-CT code of the body site imaged."),
                C("BODYSITE_DESCRIPTION", description="Display text of the body site code."),
                C("MODALITY_CODE", description="DICOM modality code, e.g. DX or US."),
                C("MODALITY_DESCRIPTION", description="Display text of the modality code."),
                C("INSTANCE_UID", since="2.7", description="DICOM UID of the instance."),
                C("SOP_CODE", description="DICOM SOP class UID of the instance."),
                C("SOP_DESCRIPTION", description="Display text of the SOP class."),
                C("PROCEDURE_CODE", since="2.7", description="SNOMED-CT code of the imaging procedure."),
            ),
        ),
        Table(
            "organizations",
            key=("id",),
            grain="one row per organization",
            columns=(
                ID,
                C("NAME", description="Name of the organization."),
                C("ADDRESS", description="Street address of the organization."),
                C("CITY", description="City of the organization."),
                C("STATE", description="State of the organization."),
                C("ZIP", description="ZIP code of the organization as text."),
                C("LAT", "double", description="Latitude of the organization (decimal degrees)."),
                C("LON", "double", description="Longitude of the organization (decimal degrees)."),
                C("PHONE", description="Phone number as written, may be empty."),
                C("REVENUE", "money", description="Revenue of the organization over the whole simulation."),
                C("UTILIZATION", "int", description="Number of encounters the organization performed."),
                C("NPI", since="4.1", description="National Provider Identifier of the organization."),
            ),
        ),
        Table(
            "providers",
            key=("id",),
            grain="one row per provider",
            columns=(
                ID,
                C("ORGANIZATION", required=True, description="Organization id (organizations.id) of the provider."),
                C("NAME", description="Name of the clinician (direct identifier)."),
                C("GENDER", description="M or F."),
                C("SPECIALITY", description="Specialty, e.g. GENERAL PRACTICE (Synthea's spelling of the header)."),
                C("ADDRESS", description="Street address of the provider (direct identifier)."),
                C("CITY", description="City of the provider."),
                C("STATE", description="State of the provider."),
                C("ZIP", description="ZIP code of the provider as text."),
                C("LAT", "double", description="Latitude of the provider (decimal degrees)."),
                C("LON", "double", description="Longitude of the provider (decimal degrees)."),
                C("UTILIZATION", "int", until="3.1", description="Number of encounters the provider performed."),
                C("ENCOUNTERS", "int", since="3.2", description="Number of encounters the provider performed."),
                C("PROCEDURES", "int", since="3.2", description="Number of procedures the provider performed."),
                C("NPI", since="4.1", description="National Provider Identifier of the provider."),
            ),
        ),
        Table(
            "payers",
            key=("id",),
            grain="one row per payer",
            columns=(
                ID,
                C("NAME", description="Name of the payer; NO_INSURANCE stands for no insurance."),
                C("OWNERSHIP", since="3.2", description="GOVERNMENT, PRIVATE or NO_INSURANCE."),
                C("ADDRESS", description="Street address of the headquarters (empty from 3.2)."),
                C("CITY", description="City of the headquarters (empty from 3.2)."),
                C("STATE_HEADQUARTERED", description="State of the headquarters (empty from 3.2)."),
                C("ZIP", description="ZIP code of the headquarters as text (empty from 3.2)."),
                C("PHONE", description="Phone number (empty from 3.2)."),
                C("AMOUNT_COVERED", "money", description="Amount the payer paid to organizations."),
                C("AMOUNT_UNCOVERED", "money", description="Amount the payer did not cover, paid by patients."),
                C("REVENUE", "money", description="Revenue of the payer over the whole simulation."),
                C("COVERED_ENCOUNTERS", "int", description="Number of encounters the payer paid for."),
                C("UNCOVERED_ENCOUNTERS", "int", description="Number of encounters the payer did not pay for."),
                C("COVERED_MEDICATIONS", "int", description="Number of medications the payer paid for."),
                C("UNCOVERED_MEDICATIONS", "int", description="Number of medications the payer did not pay for."),
                C("COVERED_PROCEDURES", "int", description="Number of procedures the payer paid for."),
                C("UNCOVERED_PROCEDURES", "int", description="Number of procedures the payer did not pay for."),
                C("COVERED_IMMUNIZATIONS", "int", description="Number of immunizations the payer paid for."),
                C("UNCOVERED_IMMUNIZATIONS", "int", description="Number of immunizations the payer did not pay for."),
                C("UNIQUE_CUSTOMERS", "int", description="Number of distinct patients enrolled with the payer."),
                C("QOLS_AVG", "double", description="Mean quality of life score of its patients; null without any."),
                C("MEMBER_MONTHS", "int", description="Total months patients were enrolled with the payer."),
            ),
        ),
        Table(
            "payer_transitions",
            grain="one row per patient coverage period",
            columns=(
                PATIENT,
                C("MEMBERID", since="3.0", description="Member id of the patient's insurance plan."),
                C(
                    "START_DATE",
                    "year_or_timestamp",
                    required=True,
                    old_headers=(("START_YEAR", "3.1"),),
                    description="Start of coverage (UTC); before 3.0 a bare year, read as its first instant.",
                ),
                C(
                    "END_DATE",
                    "year_or_timestamp",
                    old_headers=(("END_YEAR", "3.1"),),
                    description="End of coverage (UTC); before 3.0 a bare year, read as its first instant.",
                ),
                C("PAYER", required=True, description="Primary payer id (payers.id)."),
                C("SECONDARY_PAYER", since="3.0", description="Secondary payer id, mostly null."),
                C(
                    "PLAN_OWNERSHIP",
                    old_headers=(("OWNERSHIP", "3.1"),),
                    description="Who owns the plan: Self, Spouse or Guardian.",
                ),
                C(
                    "OWNER_NAME",
                    since="3.0",
                    old_headers=(("OWNERNAME", "3.1"),),
                    description="Name of the plan owner.",
                ),
            ),
        ),
        Table(
            "claims",
            key=("id",),
            since="3.0",
            grain="one row per claim",
            columns=(
                ID,
                C("PATIENTID", required=True, description="Patient id (patients.id)."),
                C("PROVIDERID", description="Provider id (providers.id)."),
                C("PRIMARYPATIENTINSURANCEID", null_tokens=("0",), description="Payer id; 3.0/3.1 `0` is null."),
                C("SECONDARYPATIENTINSURANCEID", null_tokens=("0",), description="Payer id; 3.0/3.1 `0` is null."),
                C("DEPARTMENTID", "int", description="Department placeholder (the encounter type's number)."),
                C("PATIENTDEPARTMENTID", "int", description="Patient department placeholder (as DEPARTMENTID)."),
                *(
                    C(f"DIAGNOSIS{i}", description=f"SNOMED-CT code of diagnosis {i} of the claim, if any.")
                    for i in range(1, 9)
                ),
                C("REFERRINGPROVIDERID", description="Referring provider id; Synthea leaves it empty."),
                C("APPOINTMENTID", description="Encounter id."),
                C("CURRENTILLNESSDATE", "timestamp", description="When the symptoms began (UTC)."),
                C("SERVICEDATE", "timestamp", description="Date of the services on the claim (UTC)."),
                C("SUPERVISINGPROVIDERID", description="Supervising provider id (providers.id)."),
                C("STATUS1", description="Status at the primary insurance: BILLED, CLOSED or null."),
                C("STATUS2", description="Status at the secondary insurance: BILLED, CLOSED or null."),
                C("STATUSP", description="Status with the patient: BILLED, CLOSED or null."),
                C("OUTSTANDING1", "money", description="Amount still owed by the primary insurance."),
                C("OUTSTANDING2", "money", description="Amount still owed by the secondary insurance."),
                C("OUTSTANDINGP", "money", description="Amount still owed by the patient."),
                C("LASTBILLEDDATE1", "timestamp", description="When the primary insurance was last billed (UTC)."),
                C("LASTBILLEDDATE2", "timestamp", description="When the secondary insurance was last billed (UTC)."),
                C("LASTBILLEDDATEP", "timestamp", description="When the patient was last billed (UTC)."),
                C(
                    "HEALTHCARECLAIMTYPEID1",
                    "int",
                    description="Claim type at the primary insurance: 1 professional, 2 institutional, 0 none.",
                ),
                C(
                    "HEALTHCARECLAIMTYPEID2",
                    "int",
                    description="Claim type at the secondary insurance: 1 professional, 2 institutional, 0 none.",
                ),
            ),
        ),
        Table(
            "claims_transactions",
            key=("id",),
            since="3.0",
            grain="one row per claim transaction",
            columns=(
                C("ID", required=True, description="Transaction id."),
                C("CLAIMID", required=True, description="Claim id (claims.id)."),
                C("CHARGEID", "int", description="Number of the charge within the claim."),
                C("PATIENTID", required=True, description="Patient id (patients.id)."),
                C("TYPE", description="CHARGE, PAYMENT, ADJUSTMENT, TRANSFERIN or TRANSFEROUT."),
                C("AMOUNT", "money", description="Amount of a CHARGE or transfer."),
                C("METHOD", description="Payment method: CASH, CHECK, ECHECK, COPAY, CC or SYSTEM."),
                C("FROMDATE", "timestamp", description="Start of the service (UTC)."),
                C("TODATE", "timestamp", description="End of the service (UTC)."),
                C("PLACEOFSERVICE", description="Organization id where the service took place."),
                C("PROCEDURECODE", description="Code of the service (SNOMED-CT, RxNorm or CVX)."),
                C("MODIFIER1", description="Procedure code modifier; Synthea leaves it empty."),
                C("MODIFIER2", description="Second procedure code modifier; Synthea leaves it empty."),
                *(
                    C(f"DIAGNOSISREF{i}", "int", description="Which of the claim's diagnoses (1-8) applies, if any.")
                    for i in range(1, 5)
                ),
                C("UNITS", "int", description="Number of units of the service."),
                C("DEPARTMENTID", "int", description="Department placeholder (the encounter type's number)."),
                C("NOTES", description="Description of the service or transaction."),
                C("UNITAMOUNT", "money", description="Cost per unit."),
                C("TRANSFEROUTID", "int", description="For a TRANSFERIN, the CHARGEID of its TRANSFEROUT."),
                C("TRANSFERTYPE", description="Transferred to: 1 primary insurance, 2 secondary insurance, p patient."),
                C("PAYMENTS", "money", description="Amount of a PAYMENT."),
                C("ADJUSTMENTS", "money", description="Amount of an ADJUSTMENT."),
                C("TRANSFERS", "money", description="Amount of a TRANSFERIN or TRANSFEROUT."),
                C("OUTSTANDING", "money", description="Amount left unpaid after this transaction."),
                C("APPOINTMENTID", description="Encounter id."),
                C("LINENOTE", description="Line note; Synthea leaves it empty."),
                C(
                    "PATIENTINSURANCEID",
                    description="Insurance member id from 3.4; before, the patient id (never a MEMBERID).",
                ),
                C("FEESCHEDULEID", description="Fee schedule id; always 1."),
                C("PROVIDERID", description="Provider id (providers.id)."),
                C("SUPERVISINGPROVIDERID", description="Supervising provider id (providers.id)."),
            ),
        ),
        Table(
            "patient_expenses",
            since="3.2",
            default=False,
            grain="one row per patient, year and payer",
            columns=(
                C("PATIENT_ID", required=True, description="Patient id (patients.id)."),
                C("YEAR", "timestamp", required=True, description="Start of the year (Synthea writes a timestamp)."),
                C("PAYER_ID", description="Payer id (payers.id)."),
                C("HEALTHCARE_EXPENSES", "money", description="Cost of care the patient paid that year."),
                C("INSURANCE_COSTS", "money", description="Insurance premiums the patient paid that year."),
                C("COVERED_COSTS", "money", description="Cost of care the payer covered that year."),
            ),
        ),
    )
}


DEFAULT_TABLES = tuple(name for name, t in TABLES.items() if t.default)
"""The 18 tables Synthea writes by default; every table in TABLES is staged when an upload has it."""


def _release_range(releases: set[str]) -> str:
    ordered = sorted(releases, key=release_index)
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}"


def release_note(headers: dict[str, list[str]]) -> str:
    """Why `detect_release` names no release (empty when it names one): the tables' headers match different
    releases (an export edited, merged from two runs, or from a fork), or none."""
    if detect_release(headers) != "unknown":
        return ""
    groups: dict[str, list[str]] = {}
    for table, header in headers.items():
        matching = TABLES[table].releases_matching(header)
        groups.setdefault(_release_range(matching) if matching else "no release", []).append(table)
    parts = [f"{', '.join(sorted(tables))} match {releases}" for releases, tables in sorted(groups.items())]
    return "the tables' headers match different Synthea releases: " + "; ".join(parts)


def detect_release(headers: dict[str, list[str]]) -> str:
    """Name the Synthea release(s) consistent with every table's header, e.g. "2.7" or "3.3-3.4"."""
    candidates = set(RELEASES)
    for table, header in headers.items():
        matching = TABLES[table].releases_matching(header)
        if matching:
            candidates &= matching
    return _release_range(candidates) if candidates else "unknown"
