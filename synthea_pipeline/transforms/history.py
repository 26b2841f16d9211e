"""What committing an upload would do to the history already in the lake, worked out before the commit.

The marts take each patient's whole history from the latest upload that contains them (`marts`), so a commit
moves patients: from earlier uploads that also contain them, and, for a re-upload, from the upload's own previous
load (to the new one, or back to an earlier upload when the new one lacks them). A truncated or partial re-upload
therefore replaces full histories with shorter ones. `compare` counts, for each upload a commit supersedes, the
patients that move and the rows of their history before and after; `HistoryChange.losses` names what of that
removes history without the user's word (`--replace`): a table the superseded version had that this upload lacks,
a file whose last line is cut, a table of their history shrinking by more than the allowed share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from synthea_pipeline.tables import TABLES
from synthea_pipeline.transforms.iceberg import STAGING_LAYER, IcebergTables, UploadLog
from synthea_pipeline.transforms.sql import literal

TRUNCATED_LINE = "truncated last line"
"""The raw pass's reason for a last line without its line break: the file was cut."""
SHRINK_LIMIT_PERCENT = 10
"""By default a table of the superseded patients' history may lose up to this share of its rows unconfirmed."""
LEFT_THE_LAKE = ""
"""Where a patient moves when no upload in the lake contains them any more."""


@dataclass
class Superseded:
    """Patients of `upload_id` (for the committing upload: of its previous load) whose history the commit replaces,
    where they move to, and the rows of their history per table, (before, after)."""

    upload_id: str
    patients: int
    moved_to: dict[str, int]
    rows: dict[str, tuple[int, int]]


@dataclass
class HistoryChange:
    upload_id: str
    superseded: list[Superseded] = field(default_factory=list)
    previous_load_rows: dict[str, int] = field(default_factory=dict)
    """Rows per table of the upload's own previous load (a re-upload), which the commit replaces."""

    def losses(self, present: set[str], truncated: list[str], shrink_limit_percent: float) -> list[str]:
        """What the commit would remove without being asked to: nothing when it supersedes nothing (a first
        upload's missing tables are warnings, not losses)."""
        if not self.superseded and not self.previous_load_rows:
            return []
        found = [
            f"{table}.csv is absent (its previous load had {rows:,} rows)"
            for table, rows in self.previous_load_rows.items()
            if rows and table not in present
        ]
        for entry in self.superseded:
            whose = "its previous load" if entry.upload_id == self.upload_id else f"upload {entry.upload_id}"
            for table, (before, after) in entry.rows.items():
                if entry.upload_id != self.upload_id and before and table not in present:
                    found.append(
                        f"{table}.csv is absent ({whose} had {before:,} rows for the {entry.patients:,} "
                        "patients this upload takes over)"
                    )
                elif before and after < before * (1 - shrink_limit_percent / 100):
                    found.append(
                        f"{table}: {before:,} -> {after:,} rows ({(after - before) / before:+.0%}) for the "
                        f"{entry.patients:,} patients of {whose}, more than the {shrink_limit_percent:g}% "
                        "allowed"
                    )
        found += [f"the last line of {file} is cut (the file was truncated)" for file in truncated]
        return found

    def as_metadata(self) -> dict:
        return {
            entry.upload_id: {
                "patients": entry.patients,
                "moved_to": entry.moved_to,
                "rows": {t: {"before": b, "after": a} for t, (b, a) in entry.rows.items()},
            }
            for entry in self.superseded
        }

    def describe(self) -> list[str]:
        """One line per superseded upload: patients moved and rows of their history removed or added."""
        lines = []
        for entry in self.superseded:
            whose = (
                f"its previous load ({entry.patients:,} patients)"
                if entry.upload_id == self.upload_id
                else f"upload {entry.upload_id} ({entry.patients:,} patients moved)"
            )
            changes = [
                f"{table} {after - before:+,}" for table, (before, after) in entry.rows.items() if before != after
            ]
            lines.append(f"supersedes {whose}: " + (", ".join(changes) or "no rows removed or added"))
        return lines


def _partitions(loads: set[tuple[str, str]]) -> str:
    return " OR ".join(f"(upload_id = {literal(u)} AND load_id = {literal(load)})" for u, load in sorted(loads))


def _owner(holders: dict[str, set[str]], loads: dict[str, str], rank: dict[str, int]) -> dict[str, str]:
    """For each patient, the latest-ranked upload among `loads` that contains them."""
    owners = {}
    for patient, uploads in holders.items():
        candidates = [u for u in uploads if u in loads]
        if candidates:
            owners[patient] = max(candidates, key=rank.__getitem__)
    return owners


def compare(spark: SparkSession, lake: IcebergTables, log: UploadLog, upload_id: str, load_id: str) -> HistoryChange:
    """What committing `load_id` of `upload_id` would supersede, from the uploads log as it is before the commit.
    A first upload whose patients no other upload holds costs one read of the patients' ids; an empty lake none."""
    current = log.current()
    change = HistoryChange(upload_id)
    if not current:
        return change
    order = log.order()
    rank = {u: position for position, u in enumerate(order)}
    rank.setdefault(upload_id, len(order))
    before = {u: record.load_id for u, record in current.items()}
    after = {**before, upload_id: load_id}
    patients = spark.table(lake.open(spark, STAGING_LAYER, "patients"))
    loads = set(before.items()) | set(after.items())
    relevant = patients.where(_partitions(loads)).select("id", "upload_id", "load_id")
    affected = relevant.where(F.col("upload_id") == upload_id).select("id").distinct()
    holders: dict[str, set[str]] = {}
    for row in relevant.join(affected, "id", "left_semi").collect():
        if before.get(row["upload_id"]) == row["load_id"] and row["upload_id"] != upload_id:
            holders.setdefault(row["id"], set()).add(row["upload_id"])
        elif row["upload_id"] == upload_id:
            holders.setdefault(row["id"], set()).add("new" if row["load_id"] == load_id else "previous")
    if upload_id in before:
        change.previous_load_rows = _load_rows(spark, lake, upload_id, before[upload_id])
    rank = {**rank, "previous": rank[upload_id], "new": rank[upload_id]}
    others = {u: u for u in before if u != upload_id}
    owner_before = _owner(holders, {**others, **({"previous": upload_id} if upload_id in before else {})}, rank)
    owner_after = _owner(holders, {**others, "new": upload_id}, rank)
    moves = [
        (patient, was, owner_after.get(patient))
        for patient, was in owner_before.items()
        if was == "previous" or owner_after.get(patient) != was
    ]
    if not moves:
        return change
    load_of = {**before, "previous": before.get(upload_id), "new": load_id}
    upload_of = {**{u: u for u in before}, "previous": upload_id, "new": upload_id}
    owners = spark.createDataFrame(
        [
            (patient, upload_of[was], load_of[was], upload_of[now] if now else None, load_of[now] if now else None)
            for patient, was, now in moves
        ],
        "patient string, was_upload string, was_load string, now_upload string, now_load string",
    )
    needed = {(upload_of[w], load_of[w]) for _, w, _ in moves} | {(upload_of[n], load_of[n]) for _, _, n in moves if n}
    counts = _history_rows(spark, lake, needed).join(F.broadcast(owners), "patient")
    is_before = (F.col("upload_id") == F.col("was_upload")) & (F.col("load_id") == F.col("was_load"))
    is_after = (F.col("upload_id") == F.col("now_upload")) & (F.col("load_id") == F.col("now_load"))
    totals = (
        counts.groupBy("table_name", "was_upload")
        .agg(
            F.sum(F.when(is_before, F.col("rows")).otherwise(0)).alias("before"),
            F.sum(F.when(is_after, F.col("rows")).otherwise(0)).alias("after"),
        )
        .collect()
    )
    rows: dict[str, dict[str, tuple[int, int]]] = {}
    for row in totals:
        rows.setdefault(row["was_upload"], {})[row["table_name"]] = (int(row["before"]), int(row["after"]))
    by_upload: dict[str, list[tuple[str, str | None]]] = {}
    for _, was, now in moves:
        by_upload.setdefault(upload_of[was], []).append((was, now))
    for superseded, entries in sorted(by_upload.items(), key=lambda item: (item[0] != upload_id, item[0])):
        moved_to: dict[str, int] = {}
        for _, now in entries:
            destination = upload_of[now] if now else LEFT_THE_LAKE
            moved_to[destination] = moved_to.get(destination, 0) + 1
        table_rows = {t: rows.get(superseded, {}).get(t, (0, 0)) for t in TABLES if TABLES[t].patient_column}
        table_rows["patients"] = (len(entries), sum(1 for _, now in entries if now))
        change.superseded.append(Superseded(superseded, len(entries), moved_to, table_rows))
    return change


def _history_rows(spark: SparkSession, lake: IcebergTables, loads: set[tuple[str, str]]) -> DataFrame:
    """Rows per (table, patient, upload, load) of every patient-scoped staging table, in the given loads."""
    frames = []
    for table in TABLES.values():
        identifier = lake.open(spark, STAGING_LAYER, table.name)
        if identifier and table.patient_column and table.name != "patients":
            frames.append(
                spark.table(identifier)
                .where(_partitions(loads))
                .groupBy(F.col(table.patient_column).alias("patient"), "upload_id", "load_id")
                .count()
                .select(
                    F.lit(table.name).alias("table_name"),
                    "patient",
                    "upload_id",
                    "load_id",
                    F.col("count").alias("rows"),
                )
            )
    return reduce(lambda left, right: left.unionByName(right), frames)


def _load_rows(spark: SparkSession, lake: IcebergTables, upload_id: str, load_id: str) -> dict[str, int]:
    """Rows per staging table of one load."""
    frames = []
    for table in TABLES:
        identifier = lake.open(spark, STAGING_LAYER, table)
        if identifier:
            frames.append(
                spark.table(identifier)
                .where(_partitions({(upload_id, load_id)}))
                .select(F.lit(table).alias("table_name"))
            )
    counts = reduce(lambda left, right: left.unionByName(right), frames).groupBy("table_name").count().collect()
    return {row["table_name"]: int(row["count"]) for row in counts}
