"""Declarative automation of the marts, BI views and dashboard: the upload sensor's runs stop at staging, and the
`marts_automation` sensor (evaluated by the daemon, e.g. under `dagster dev`) rebuilds everything downstream in
one run once no staged upload is in progress, so a batch of uploads landing together is built into the marts once.
"""

from dagster import AssetSelection, AutomationCondition, AutomationConditionSensorDefinition, DefaultSensorStatus

DOWNSTREAM_OF_STAGING = AssetSelection.groups("marts", "omop", "bi", "reports")


def ready_to_build() -> AutomationCondition:
    """Nothing the asset reads is being written, it is not being rebuilt itself, and what it reads passed its
    blocking checks (an unpartitioned asset reading a partitioned one: some partition passed, so an upload that
    failed its checks does not hold the marts back; its load is never committed, so the marts cannot read it)."""
    return (
        ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & AutomationCondition.all_deps_blocking_checks_passed()
    )


def after_staging() -> AutomationCondition:
    """The marts: rebuilt when a staging partition was updated since the marts were last requested, once no
    upload is in progress. Only a request resets it, not a materialization: a build reads the lake when it
    begins and is recorded when it ends, so a staging commit in between is not in it and must start the next
    build. The trigger is the deps' bare `newly_updated`, which carries each commit's time, so a commit after
    the request outweighs the request when one tick sees both; `any_deps_updated()` (as in `eager()`) loses the
    times, and with them that commit. The price: a run that also rebuilt the marts itself (`ingest_upload`,
    `synthea-pipeline run` on the same instance) is followed by one more rebuild."""
    staging_updated = AutomationCondition.any_deps_match(AutomationCondition.newly_updated())
    return (staging_updated.since(AutomationCondition.newly_requested()) & ready_to_build()).with_label(
        "staging updated since the last request, nothing in progress, blocking checks passed"
    )


def after_marts() -> AutomationCondition:
    """The BI views and the dashboard: in the same run as the marts they read whenever those are requested, and
    after a run that rebuilt the marts without them (e.g. materialized by hand)."""
    return (
        (
            AutomationCondition.any_deps_match(AutomationCondition.will_be_requested())
            | AutomationCondition.any_deps_updated().since_last_handled()
        )
        & ready_to_build()
    ).with_label("marts requested or updated, nothing in progress, blocking checks passed")


marts_automation = AutomationConditionSensorDefinition(
    "marts_automation",
    target=DOWNSTREAM_OF_STAGING,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,  # a tick costs about a second; every 15 s an upload waited twice as long for its marts
    description="Rebuilds the marts, BI views and dashboard in one run after uploads were staged, once none is in "
    "progress: a batch of uploads is built into the marts once.",
)
