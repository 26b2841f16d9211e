"""The lake's daily upkeep."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from synthea_pipeline.jobs import maintain_lake_job

maintain_lake_schedule = ScheduleDefinition(
    job=maintain_lake_job,
    cron_schedule="0 4 * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every day at 04:00: deletes stale loads and builds, expires snapshots older than 7 days and "
    "deletes the files no kept snapshot needs.",
)
