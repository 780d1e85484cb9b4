"""Fleet teardown, from the sweep: stop every instance once the job has ended (its dataset committed and
checked, or cancelled, or failed), and any instance whose worker went silent past the stall limit, so no
GPU-second is spent idling on a dead worker. Each instance's cost is recorded on the job.

`decide` is pure (state, instances, heartbeat ages -> what to stop); `teardown_fleet` applies it."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.fleet.instances import fleet_cost, read_instances
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.storage import Bucket

from .launchers.base import Launcher
from .launchers.fleet import FleetLauncher, terminate
from .launchers.routes import Routes, as_routes

log = logging.getLogger("bucketrun.fleet")


def decide(state: JobState | None, instances: list[dict[str, Any]], heartbeat_age_s: dict[str, float],
           stall_s: float, now: datetime) -> list[tuple[dict[str, Any], str]]:
    """Which running instances to stop, and why."""
    running = [i for i in instances if not i.get("terminated_at")]
    if state is None or state.terminal:
        return [(i, f"job {state.value if state else 'gone'}") for i in running]
    out = []
    for inst in running:
        up_s = (now - codec.parse_iso(inst["started_at"])).total_seconds()
        silent = heartbeat_age_s.get(inst["worker"], up_s)
        if up_s > stall_s and silent > stall_s:
            out.append((inst, f"worker {inst['worker']} silent for {silent:.0f} s (stall limit {stall_s:.0f} s)"))
    return out


def heartbeat_ages(bucket: Bucket, job_id: str, now: datetime) -> dict[str, float]:
    """Seconds since each worker's heartbeat was written, from one listing (Last-Modified, no reads). A beat's
    key names its process's first worker: an instance runs one process, named by its instance's worker."""
    prefix = keys.fleet_heartbeats_prefix(job_id)
    return {info.key[len(prefix):-len(".json")]: (now - info.last_modified).total_seconds()
            for info in bucket.list(prefix) if info.last_modified is not None}


def teardown_fleet(bucket: Bucket, job_id: str, launcher: FleetLauncher, now: datetime | None = None) -> dict | None:
    now = now or codec.now()
    view = read_view(bucket, job_id)
    try:
        workers = load_job_manifest(bucket, job_id).body.workers
    except NotFound:
        bucket.delete(keys.fleet_index_key(job_id))
        return {"job_id": job_id, "step": "unindex-fleet"}
    instances = read_instances(bucket, job_id)
    actions = decide(view.state, instances, heartbeat_ages(bucket, job_id, now), workers.stall_s, now)
    backend = launcher.backend(workers.backend)
    stopped = {a[0]["instance_id"]: terminate(bucket, job_id, a[0], backend, a[1]) for a in actions}
    instances = [stopped.get(i["instance_id"], i) for i in instances]
    ended = view.state is None or view.state.terminal
    if ended or stopped:
        bucket.put(keys.fleet_prefix(job_id) + "cost.json", codec.dumps(fleet_cost(instances, now)),
                   "application/json")
    if ended and all(i.get("terminated_at") for i in instances):
        bucket.delete(keys.fleet_index_key(job_id))
    if not stopped:
        return None
    return {"job_id": job_id, "step": "teardown", "stopped": [{"instance": k, "reason": v.get("reason")}
                                                              for k, v in stopped.items()]}


def sweep_fleets(bucket: Bucket, launchers: Routes | Launcher) -> list[dict[str, Any]]:
    """Every fleet with instances to watch (index/fleet/): a listing per thousand fleets."""
    outcomes = []
    for info in bucket.list(keys.FLEET_INDEX):
        job_id = keys.job_id_from_index(info.key, keys.FLEET_INDEX)
        if not job_id:
            continue
        try:
            launcher = as_routes(launchers).for_kind("fleet")
            if not isinstance(launcher, FleetLauncher):
                continue
            outcome = teardown_fleet(bucket, job_id, launcher)
        except BucketrunError as exc:
            log.error("fleet teardown of %s failed: %s", job_id, exc)
            outcome = {"job_id": job_id, "error": str(exc)}
        if outcome:
            outcomes.append(outcome)
    return outcomes
