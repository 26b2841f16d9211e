"""The loaded definitions as sorted text (assets with their group and parents, checks, jobs, schedules, sensors,
resources), compared with `snapshots/definitions.txt`: a change to the graph is a diff that gets reviewed."""

import os
from pathlib import Path

import pytest

from synthea_pipeline.definitions import defs

pytestmark = pytest.mark.unit

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.txt"
UPDATE_VARIABLE = "SYNTHEA_UPDATE_SNAPSHOTS"


def rendered_definitions() -> str:
    graph = defs.resolve_asset_graph()
    repository = defs.get_repository_def()
    lines = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        parents = ", ".join(sorted(p.to_user_string() for p in node.parent_keys))
        lines.append(f"asset {key.to_user_string()} group={node.group_name} parents=[{parents}]")
    for check in graph.asset_check_keys:
        blocking = "blocking" if graph.get_check_spec(check).blocking else "non-blocking"
        lines.append(f"check {check.asset_key.to_user_string()}:{check.name} {blocking}")
    lines += [f"job {job.name}" for job in repository.get_all_jobs() if not job.name.startswith("__")]
    lines += [f"schedule {s.name} cron={s.cron_schedule} job={s.job_name}" for s in repository.schedule_defs]
    lines += [f"sensor {s.name} {type(s).__name__} default={s.default_status.value}" for s in repository.sensor_defs]
    lines += [f"resource {name} {type(resource).__name__}" for name, resource in (defs.resources or {}).items()]
    return "\n".join(sorted(lines)) + "\n"


def test_definitions_match_the_snapshot():
    rendered = rendered_definitions()
    if os.environ.get(UPDATE_VARIABLE) == "1":
        SNAPSHOT.write_text(rendered)
    assert SNAPSHOT.read_text() == rendered, (
        f"the definitions changed: review the diff and regenerate {SNAPSHOT.name} with {UPDATE_VARIABLE}=1 "
        f".venv/bin/python -m pytest -n 0 {Path(__file__).name}"
    )
