"""The two Spark layers of a run, staging and marts, as plain functions of a Spark session: they write their
outputs and return what happened as reports in the Dagster Pipes message format. The same function runs
in-process (Sail, JVM Spark) or inside a Glue / EMR Serverless job, and Dagster shows the same metadata either
way."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyspark.sql import SparkSession

from synthea_pipeline.tables import (
    EMPTY_FILES_OMITTED_SINCE,
    TABLES,
    Table,
    detect_release,
    may_omit_empty_files,
    release_note,
)
from synthea_pipeline.transforms.cdm import cdm_schema
from synthea_pipeline.transforms.checks import (
    EXPORT_COMPLETE,
    HISTORY_PRESERVED,
    RAW_QUARANTINE,
    STAGING_QUARANTINE,
    UPLOAD_CHECK_TABLE,
)
from synthea_pipeline.transforms.dqd import DQD_RESULTS_FILE, DqdResult, results_json, table_rows
from synthea_pipeline.transforms.history import SHRINK_LIMIT_PERCENT, TRUNCATED_LINE, HistoryChange, compare
from synthea_pipeline.transforms.iceberg import (
    ABANDONED_AFTER,
    LOAD_PARTITIONING,
    MARTS_DATABASE,
    OMOP_DATABASE,
    OMOP_LAYER,
    QUARANTINE,
    QUARANTINE_COLUMNS,
    STAGING_DATABASE,
    STAGING_LAYER,
    CommitLog,
    IcebergTables,
    LoadRecord,
    now,
)
from synthea_pipeline.transforms.lake import Lake, delete_folder, sizes_in, write_text
from synthea_pipeline.transforms.marts import (
    MARTS,
    Mart,
    check_marts,
    current_loads,
    discard_build,
    discard_stale_builds,
    plan_build,
    write_marts,
)
from synthea_pipeline.transforms.omop import (
    DOMAIN_TABLES,
    OMOP_CHECKS,
    OMOP_DQD,
    OMOP_FOREIGN_KEYS,
    OMOP_PRIMARY_KEY,
    build_omop,
    cdm_source_row,
    committed_vocabulary_load,
    discard_omop_build,
    discard_stale_omop_builds,
    ensure_vocabulary,
    mapping_report,
    omop_checks,
    record_vocabulary,
    scratch_folder,
    vocabulary_for,
    write_omop,
)
from synthea_pipeline.transforms.raw import (
    RawPlan,
    RawResult,
    TableError,
    find_source_files,
    plan_table,
    write_raw,
)
from synthea_pipeline.transforms.staging import (
    discard_load,
    discard_stale_loads,
    stage_table,
    staging_checks,
    staging_columns,
)
from synthea_pipeline.transforms.vocabulary import VOCABULARY_TABLES, VocabularyError, find_vocabulary

PARALLEL_TABLES = 2
PATH_KEYS = {"location"}
SCHEMA_KEY = "dagster/column_schema"


class LayerFailed(Exception):
    """The layer ran but its outputs must not be used (blocking checks failed); the message says which, and
    `reports` holds every check result, so each failed check shows where it failed."""

    def __init__(self, message: str, reports: list | None = None):
        super().__init__(message)
        self.reports = reports or []


class MartSchemaMismatch(LayerFailed):
    """A written mart's columns differ from the ones `marts.MARTS` declares: a bug in the pipeline (or a mart table
    left by an older version of it), never a problem of the source data."""


@dataclass
class AssetReport:
    asset_key: str
    metadata: dict


@dataclass
class CheckReport:
    asset_key: str
    check_name: str
    passed: bool
    severity: str = "ERROR"
    metadata: dict = field(default_factory=dict)


Report = AssetReport | CheckReport


class Log(Protocol):
    """What a layer needs from a logger; Dagster's context.log and Pipes' context.log both fit."""

    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...
    def error(self, msg: str) -> Any: ...


def plain(value: Any) -> Any:
    """JSON-ready values: engines return numpy numbers for counts."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def external_metadata(metadata: dict) -> dict:
    """Plain values as Pipes metadata (`{"raw_value", "type"}`): paths and the column schema typed explicitly,
    everything else by its Python type."""
    typed = {}
    for key, value in plain(metadata).items():
        if key in PATH_KEYS:
            kind = "path"
        elif key == SCHEMA_KEY:
            kind = "table_schema"
        elif value is None:
            kind = "null"
        elif isinstance(value, bool):
            kind = "bool"
        elif isinstance(value, int):
            kind = "int"
        elif isinstance(value, float):
            kind = "float"
        elif isinstance(value, str):
            kind = "text"
        else:
            kind = "json"
        typed[key] = {"raw_value": value, "type": kind}
    return typed


def table_schema(table: Table) -> dict:
    """A staging table's columns as a Pipes `table_schema` value."""
    return {
        "columns": [
            {
                "name": c.name,
                "type": c.spark_type,
                "description": c.description,
                "constraints": {"nullable": c.nullable},
            }
            for c in staging_columns(table)
        ]
    }


def mart_schema(mart: Mart) -> dict:
    """A mart's declared columns as a Pipes `table_schema` value, known before the mart is first built."""
    return {
        "columns": [
            {
                "name": c.name,
                "type": c.type,
                "description": c.description,
                **({"constraints": {"nullable": False}} if c.name == mart.key else {}),
            }
            for c in mart.columns
        ]
    }


def written_columns(spark: SparkSession, table: str) -> list[tuple[str, str]]:
    """A mart table's (name, Spark simple type) columns, without the build column that readers never see."""
    return [(f.name, f.dataType.simpleString()) for f in spark.table(table).drop("build_id").schema]


def schema_differences(mart: Mart, written: list[tuple[str, str]]) -> list[str]:
    """How a written mart's (name, type) columns differ from the declared ones, one sentence per difference."""
    declared = {c.name: c.type for c in mart.columns}
    actual = dict(written)
    differences = [
        f"{mart.name}.{name} is {actual[name]} in the written table but declared {kind}"
        if name in actual
        else f"{mart.name}.{name} (declared {kind}) is not in the written table"
        for name, kind in declared.items()
        if actual.get(name) != kind
    ]
    differences += [
        f"{mart.name}.{name} ({kind}) is written but not declared"
        for name, kind in actual.items()
        if name not in declared
    ]
    if not differences and list(actual) != list(declared):
        differences.append(f"{mart.name} columns are written in the order {list(actual)}, declared {list(declared)}")
    return differences


def raw_reports(table: Table, raw: RawResult, raw_uri: str) -> list[Report]:
    """What the raw pass did to one table, as the raw asset's materialization and its warning check."""
    key = f"raw/{table.name}"
    return [
        AssetReport(
            key,
            external_metadata(
                {
                    "dagster/row_count": raw.rows_out,
                    "rows_in": raw.rows_in,
                    "quarantined": raw.quarantined,
                    "quarantine_reasons": raw.quarantine_reasons,
                    "blank_lines": raw.blank_lines,
                    "files": raw.files,
                    "bytes": raw.bytes_in,
                    "unknown_columns": raw.unknown_columns,
                    "dropped_columns": raw.dropped_columns,
                    "releases_matching_header": raw.releases,
                    "location": raw_uri,
                }
            ),
        ),
        CheckReport(
            RAW_QUARANTINE.on(table.name),
            RAW_QUARANTINE.name,
            raw.quarantined == 0,
            RAW_QUARANTINE.severity,
            external_metadata({"quarantined": raw.quarantined, "reasons": raw.quarantine_reasons}),
        ),
    ]


def plan_upload(source_uri: str, upload_id: str) -> list[RawPlan]:
    """Every table's raw plan, largest files first (so the largest table starts first and the others fill in
    around it), with the upload's release detected from the headers the plans read; LayerFailed naming each
    table that cannot be processed at all, before any data is read."""
    files, _ = find_source_files(source_uri)
    if "patients" not in files:
        raise LayerFailed(f"upload {upload_id}: no patients.csv under {source_uri}")
    sizes = sizes_in(source_uri)
    plans, errors = [], []
    for table in TABLES.values():
        try:
            plans.append(plan_table(table, source_uri, files.get(table.name, [])))
        except TableError as error:
            errors.append(str(error))
    if errors:
        raise LayerFailed("\n".join(errors))
    headers = {plan.table.name: plan.result.header for plan in plans if plan.result.header}
    release, note = detect_release(headers), release_note(headers)
    for plan in plans:
        plan.result.upload_release, plan.result.release_note = release, note
    return sorted(plans, key=lambda p: -sum(sizes.get(file, 0) for file, *_ in p.headers))


def run_staging(
    spark: SparkSession,
    log: Log,
    lake_root: str,
    upload_id: str,
    load_id: str,
    table_catalog: str = "path",
    staging_database: str = STAGING_DATABASE,
    marts_database: str = MARTS_DATABASE,
    upload_checksum: str | None = None,
    upload_token: str | None = None,
    replace_history: bool = False,
    history_shrink_limit_percent: float = SHRINK_LIMIT_PERCENT,
) -> list[Report]:
    """Reads the upload's CSV files into raw Parquet and types every table into the staging Iceberg tables under
    a new load, table by table, two at a time, so one table's raw pass (pyarrow, where the data is: this
    process, or the Glue / EMR driver) overlaps another's Spark queries; checks each, and commits the load for
    the whole upload at once (one record in the uploads log) only when every blocking check of every table
    passes and, unless `replace_history`, the commit would not remove history (`history`). A load that is not
    committed (refused, failed or interrupted) is deleted with its raw files and was never visible; the log says
    why."""
    layout = Lake(lake_root)
    lake = IcebergTables(lake_root, table_catalog, staging_database, marts_database)
    commits = CommitLog(spark, lake)
    begun = now()
    commits.record(LoadRecord(upload_id, load_id, "begun", begun, upload_token=upload_token))

    def discard(note: str) -> None:
        discard_load(spark, lake, list(TABLES), upload_id, load_id)
        commits.record(LoadRecord(upload_id, load_id, "discarded", now(), upload_token=upload_token, note=note[:2000]))

    try:
        plans = plan_upload(layout.source(upload_id), upload_id)
    except LayerFailed as failure:
        commits.record(
            LoadRecord(upload_id, load_id, "discarded", now(), upload_token=upload_token, note=str(failure)[:2000])
        )
        raise
    try:
        reports = _stage_and_check(spark, log, lake, layout, plans, upload_id, load_id)
        checks = [r for r in reports if isinstance(r, CheckReport)]
        failed = [f"{c.asset_key}:{c.check_name}" for c in checks if c.severity == "ERROR" and not c.passed]
        if failed:
            raise LayerFailed(f"upload {upload_id} not committed, blocking checks failed: {', '.join(failed)}", checks)
        outcomes = {p.table.name: p.result for p in plans}
        change = compare(spark, lake, commits.uploads(), upload_id, load_id)
        present = {name for name, raw in outcomes.items() if raw.files}
        truncated = [
            file for raw in outcomes.values() if raw.quarantine_reasons.get(TRUNCATED_LINE) for file in raw.files
        ]
        losses = change.losses(present, truncated, history_shrink_limit_percent)
        reports += upload_reports(change, losses, present, plans[0].result.upload_release, replace_history)
        for line in change.describe():
            log.info(f"upload {upload_id} {line}")
        if losses and not replace_history:
            raise LayerFailed(
                f"upload {upload_id} not committed: it would remove history: {'; '.join(losses)}. If that is what you "
                f"mean, confirm with --replace: `synthea-pipeline run EXPORT --upload-id {upload_id} --replace`, or "
                f"`synthea-pipeline upload EXPORT --upload-id {upload_id} --replace` for the upload sensor and the UI",
                [r for r in reports if isinstance(r, CheckReport)],
            )
    except LayerFailed as failure:
        discard(str(failure))
        raise
    except BaseException:
        discard("interrupted before its commit")
        raise
    at = now()
    commits.record(
        LoadRecord(
            upload_id,
            load_id,
            "committed",
            at,
            commits.uploads().registered_at(upload_id, at),
            upload_checksum,
            plans[0].result.upload_release,
            upload_token,
            patients=staged_rows(reports, "patients"),
        )
    )
    discard_stale_loads(spark, lake, commits, begun, upload_id)
    log.info(f"committed load {load_id} of upload {upload_id} ({len(plans)} tables)")
    return reports


def staged_rows(reports: list[Report], table: str) -> int:
    """The rows a load staged into `table`, as its materialization reports them."""
    [report] = [r for r in reports if isinstance(r, AssetReport) and r.asset_key == f"staging/{table}"]
    return report.metadata["rows_out"]["raw_value"]


def upload_reports(
    change: HistoryChange, losses: list[str], present: set[str], release: str, replace_history: bool
) -> list[Report]:
    """The upload-level results, on `staging/patients` (every upload has patients): what the commit supersedes
    and whether it removes history (`history_preserved`), and the default tables of its release it lacks
    (`export_complete`). Both warn: a refused commit fails the step itself."""
    absent = [t for t, table in TABLES.items() if table.written_by(release) and t not in present]
    return [
        CheckReport(
            HISTORY_PRESERVED.on(UPLOAD_CHECK_TABLE),
            HISTORY_PRESERVED.name,
            not losses,
            HISTORY_PRESERVED.severity,
            external_metadata(
                {
                    "losses": losses,
                    "summary": change.describe(),
                    "supersedes": change.as_metadata(),
                    "confirmed_with_replace": replace_history,
                }
            ),
        ),
        CheckReport(
            EXPORT_COMPLETE.on(UPLOAD_CHECK_TABLE),
            EXPORT_COMPLETE.name,
            not absent,
            EXPORT_COMPLETE.severity,
            external_metadata(
                {
                    "absent_tables": absent,
                    "synthea_release": release,
                    "note": f"Synthea {EMPTY_FILES_OMITTED_SINCE}+ writes no file for an empty table"
                    if absent and may_omit_empty_files(release)
                    else "",
                }
            ),
        ),
    ]


def _stage_and_check(
    spark: SparkSession, log: Log, lake: IcebergTables, layout: Lake, plans: list[RawPlan], upload_id: str, load_id: str
) -> list[Report]:
    """Every table's raw pass and staging under the load, two tables at a time, then each table's materializations
    and checks. An interruption cancels the tables not started yet."""
    lake.ensure(spark, STAGING_LAYER, QUARANTINE, QUARANTINE_COLUMNS, LOAD_PARTITIONING)

    def ingest(plan: RawPlan):
        raw_uri = layout.raw(plan.table.name, upload_id, load_id)
        raw = write_raw(plan, raw_uri)
        for warning in raw.warnings:
            log.warning(f"{plan.table.name}: {warning}")
        return raw, raw_uri, *stage_table(spark, plan.table, raw, raw_uri, lake, upload_id, load_id)

    pool = ThreadPoolExecutor(max_workers=PARALLEL_TABLES)
    try:
        outcomes = dict(zip([p.table.name for p in plans], pool.map(ingest, plans), strict=False))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    materializations: list[Report] = []
    checks: list[Report] = []
    for table in TABLES.values():
        raw, raw_uri, result, facts = outcomes[table.name]
        materializations += raw_reports(table, raw, raw_uri)
        key = f"staging/{table.name}"
        outcome = staging_checks(table, raw, result, facts)
        if result.unparseable_values:
            log.warning(f"{table.name}: unparseable values set to null: {result.unparseable_values}")
        if result.quarantined:
            log.warning(f"{table.name}: {result.quarantined} rows quarantined: {result.quarantine_reasons}")
        materializations.append(
            AssetReport(
                key,
                external_metadata(
                    {
                        "dagster/row_count": int(result.rows_out),
                        SCHEMA_KEY: table_schema(table),
                        "rows_in": raw.rows_in,
                        "rows_read_by_spark": result.rows_read,
                        "rows_out": result.rows_out,
                        "quarantined": result.quarantined,
                        "quarantine_reasons": result.quarantine_reasons,
                        "duplicates_dropped": result.duplicates_dropped,
                        "unparseable_values": result.unparseable_values,
                        "synthea_release": raw.upload_release,
                        **({"synthea_release_note": raw.release_note} if raw.release_note else {}),
                        "source_present": bool(raw.files),
                        "load_id": load_id,
                        "table": lake.identifier("staging", table.name),
                        "location": lake.location("staging", table.name),
                    }
                ),
            )
        )
        checks += [
            CheckReport(check.on(table.name), check.name, passed, check.severity, external_metadata(metadata))
            for check, (passed, metadata) in outcome.items()
        ]
        checks.append(
            CheckReport(
                STAGING_QUARANTINE.on(table.name),
                STAGING_QUARANTINE.name,
                result.quarantined == 0,
                STAGING_QUARANTINE.severity,
                external_metadata(
                    {
                        "quarantined": result.quarantined,
                        "reasons": result.quarantine_reasons,
                        "table": lake.identifier("staging", "quarantine"),
                    }
                ),
            )
        )
    return materializations + checks


def run_marts(
    spark: SparkSession,
    log: Log,
    lake_root: str,
    build_id: str,
    include_identifiers: bool | None = None,
    table_catalog: str = "path",
    staging_database: str = STAGING_DATABASE,
    marts_database: str = MARTS_DATABASE,
    full_rebuild: bool = False,
) -> list[Report]:
    """Builds every mart from the committed loads of every upload in the lake (the latest upload wins) under a
    new build, checks it, and commits the build for all marts at once only when every blocking check passes.
    The build rewrites only the uploads whose load changed since the committed build (`plan_build`) unless
    `full_rebuild`; either way its rows equal a full rebuild's. Direct identifiers are included as in the
    committed build unless `include_identifiers` says otherwise."""
    lake = IcebergTables(lake_root, table_catalog, staging_database, marts_database)
    commits = CommitLog(spark, lake)
    if include_identifiers is None:
        include_identifiers = commits.identifiers_included()
    uploads = commits.uploads()
    order = uploads.order()
    loads = current_loads(spark, uploads)
    plan = plan_build(
        spark, lake, commits, {u: r.load_id for u, r in uploads.current().items()}, include_identifiers, full_rebuild
    )
    commits.record_build(build_id, "begun", include_identifiers)
    try:
        build = write_marts(spark, lake, loads, build_id, include_identifiers, plan)
        written = build.tables
        log.info(f"build {build_id}: {build.plan.reason}")
        differences = [
            d for name in MARTS for d in schema_differences(MARTS[name], written_columns(spark, written[name]))
        ]
        if differences:
            raise MartSchemaMismatch(
                "marts not committed, written columns differ from the declared schema (a "
                "pipeline bug): " + "; ".join(differences)
            )
        checks = check_marts(spark, lake, build, loads)
        reports: list[Report] = [
            CheckReport(c.check.on(c.mart), c.name, c.passed, c.check.severity, external_metadata(c.metadata))
            for c in checks
        ]
        failed = [f"{c.mart}:{c.name} {c.metadata}" for c in checks if c.blocking and not c.passed]
        if failed:
            raise LayerFailed("marts not committed, blocking checks failed: " + "; ".join(failed), reports)
    except BaseException:
        discard_build(spark, lake, build_id)
        commits.record_build(build_id, "discarded", include_identifiers)
        raise
    commits.record_build(build_id, "committed", include_identifiers)
    discard_stale_builds(spark, lake, commits, now() - ABANDONED_AFTER)
    log.info(f"committed build {build_id} of {len(MARTS)} marts over {len(order)} uploads")
    rows = {c.mart: c.metadata["rows"] for c in checks if c.name == "primary_key"}
    return [
        AssetReport(
            f"marts/{name}",
            external_metadata(
                {
                    "dagster/row_count": int(rows[name]),
                    SCHEMA_KEY: mart_schema(MARTS[name]),
                    "build_id": build_id,
                    "table": written[name],
                    "location": lake.location("marts", name),
                    "uploads": order,
                    "includes_identifiers": include_identifiers,
                    "build_plan": build.plan.reason,
                }
            ),
        )
        for name in MARTS
    ] + reports


def omop_check_reports(results: list[DqdResult]) -> list[CheckReport]:
    """The DQD results as the OMOP assets' checks: per table, its primary key, its references to the build's own
    tables (both blocking) and every other DQD check (warning), each failed one named with its numbers."""
    kinds = {
        OMOP_PRIMARY_KEY.name: lambda r: r.check_name == "isPrimaryKey",
        OMOP_FOREIGN_KEYS.name: lambda r: r.check_name == "isForeignKey" and r.blocking,
        OMOP_DQD.name: lambda r: not r.blocking,
    }
    reports = []
    for check in OMOP_CHECKS:
        for table in check.tables:
            own = [r for r in results if r.table == table and kinds[check.name](r)]
            failed = [r for r in own if r.failed]
            metadata = {
                "checks": len(own),
                "failed": len(failed),
                "failed_checks": [
                    {
                        "check": r.check_name,
                        "field": r.field,
                        "violated_rows": r.violated,
                        "percent": round(100 * r.percent, 2),
                        "threshold": r.threshold,
                    }
                    for r in failed
                ],
            }
            reports.append(
                CheckReport(check.on(table), check.name, not failed, check.severity, external_metadata(metadata))
            )
    return reports


def run_omop(
    spark: SparkSession,
    log: Log,
    lake_root: str,
    build_id: str,
    vocabulary: str,
    table_catalog: str = "path",
    staging_database: str = STAGING_DATABASE,
    marts_database: str = MARTS_DATABASE,
    omop_database: str = OMOP_DATABASE,
) -> list[Report]:
    """Builds the OMOP CDM tables from the committed loads of every upload under a new build, mapping codes with
    the vocabulary download at `vocabulary` (loaded into the lake the first time a build uses it), runs the DQD
    checks, writes their results file, and commits the build (one record in the OMOP builds log) only when no
    primary key is broken and every reference between the build's tables resolves. The vocabulary tables are
    reported only by a build that changes the vocabulary readers see."""
    started = now()
    layout = Lake(lake_root)
    lake = IcebergTables(lake_root, table_catalog, staging_database, marts_database, omop_database)
    commits = CommitLog(spark, lake)
    try:
        files = find_vocabulary(vocabulary)
    except VocabularyError as error:
        raise LayerFailed(f"OMOP not built: {error}") from None
    uploads = commits.uploads()
    loads = current_loads(spark, uploads)
    previous_vocabulary = committed_vocabulary_load(spark, lake, commits)
    commits.record_build(build_id, "begun", False, OMOP_LAYER)
    try:
        vocabulary_counts, loaded_now = ensure_vocabulary(spark, lake, files)
        log.info(
            f"vocabulary {files.load_id} from {files.location}: "
            + ("loaded" if loaded_now else "already in the lake")
            + f" ({vocabulary_counts['concept']['rows']} concepts)"
        )
        dictionary = vocabulary_for(spark, lake, files.load_id)
        source = cdm_source_row(dictionary, uploads, files)
        build = build_omop(spark, lake, loads, dictionary, source, scratch_folder(lake, build_id))
        written = write_omop(spark, lake, build.tables, build_id)
        record_vocabulary(spark, lake, files, build_id)
        mapping = mapping_report(build.mapped)
        results = omop_checks(spark, written, build_id, dictionary)
        reports = omop_check_reports(results)
        broken = [f"{r.table}.{r.field} {r.check_name}: {r.violated} rows" for r in results if r.blocking and r.failed]
        if broken:
            raise LayerFailed("OMOP build not committed, keys broken (a pipeline bug): " + "; ".join(broken), reports)
    except BaseException:
        discard_omop_build(spark, lake, build_id)
        commits.record_build(build_id, "discarded", False, OMOP_LAYER)
        raise
    finally:
        delete_folder(scratch_folder(lake, build_id))
    commits.record_build(build_id, "committed", False, OMOP_LAYER)
    write_text(layout.uri("reports", DQD_RESULTS_FILE), results_json(results, source, started, now()))
    discard_stale_omop_builds(spark, lake, commits, now() - ABANDONED_AFTER)
    rows = table_rows(results)
    log.info(f"committed OMOP build {build_id} over {len(uploads.order())} uploads")
    return [
        *[
            AssetReport(
                f"omop/{name}",
                external_metadata(
                    {
                        "dagster/row_count": int(rows.get(name, 0)),
                        SCHEMA_KEY: cdm_schema(name),
                        "build_id": build_id,
                        "table": identifier,
                        "location": lake.location(OMOP_LAYER, name),
                        **(
                            {"mapping": [m for m in mapping if m["domain_table"] == name]}
                            if name in DOMAIN_TABLES.values()
                            else {}
                        ),
                    }
                ),
            )
            for name, identifier in written.items()
        ],
        *[
            AssetReport(
                f"omop/{name}",
                external_metadata(
                    {
                        "dagster/row_count": vocabulary_counts[name]["rows"] - vocabulary_counts[name]["left_out"],
                        SCHEMA_KEY: cdm_schema(name),
                        "vocabulary_load": files.load_id,
                        "vocabulary_source": files.location,
                        "rows_left_out": vocabulary_counts[name]["left_out"],
                        "loaded_by_this_build": loaded_now,
                    }
                ),
            )
            for name in VOCABULARY_TABLES
            if files.load_id != previous_vocabulary
        ],
        *reports,
    ]


LAYERS = {"staging": run_staging, "marts": run_marts, "omop": run_omop}
