"""Stopping or terminating a rented training host after its window: only once the checkpoint's mirror is verified
in the bucket and the host runs nothing else, so the only copy of a checkpoint is never on a stopped machine, and,
when the manifest says `approve: required`, only after `bucketrun approve JOB`: until then the sweep records the
pending action (the instance, its price, what the action stops billing for and what it destroys) and waits. The
sweep does it because it holds the provider keys; the host only asks (index/teardown/<agent>.json)."""

from __future__ import annotations

import logging
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.lifecycle import read_view
from bucketrun.events.storage import Bucket

from .launchers.base import Launcher
from .launchers.fleet import FleetLauncher
from .launchers.fleet_base import EFFECTS
from .launchers.routes import Routes, as_routes

log = logging.getLogger("bucketrun.sweep")


def decide(request: dict[str, Any], job_state: str | None, mirror: dict[str, Any] | None,
           host: dict[str, Any] | None, approved: bool = True) -> tuple[str, str]:
    """("go" | "ask" | "wait" | "drop", why), from the request and what the bucket holds; "ask": all is safe, and
    the user's approval is what is missing."""
    if not mirror or not mirror.get("verified"):
        return "drop", "its checkpoint has no verified mirror in the bucket: the host keeps the only copy"
    if job_state not in ("succeeded", "failed", "cancelled"):
        return "wait", f"job {request['job_id']} is still {job_state}"
    busy = [t for t in (host or {}).get("tasks", []) if t.get("job_id") != request["job_id"]]
    if busy:
        return "wait", f"the host is running {busy[0]['job_id']}"
    if request.get("approve") == "required" and not approved:
        return "ask", f"the checkpoint is verified at {mirror.get('prefix')}; waiting for bucketrun approve"
    return "go", f"the checkpoint is verified at {mirror.get('prefix')}"


def sweep_hosts(bucket: Bucket, launchers: Routes | Launcher) -> list[dict[str, Any]]:
    outcomes = []
    for info in bucket.list(keys.TEARDOWN):
        try:
            outcome = _one(bucket, info.key, launchers)
        except BucketrunError as exc:
            log.error("host teardown %s failed: %s", info.key, exc)
            outcome = {"teardown": info.key, "error": str(exc)}
        if outcome:
            outcomes.append(outcome)
    return outcomes


def _read(bucket: Bucket, key: str) -> dict[str, Any] | None:
    try:
        return codec.loads(bucket.get(key).data)
    except NotFound:
        return None


def _one(bucket: Bucket, key: str, launchers: Routes | Launcher) -> dict[str, Any] | None:
    request = _read(bucket, key)
    if request is None:
        return None
    job_id = request["job_id"]
    view = read_view(bucket, job_id)
    approval = _read(bucket, keys.host_teardown_approval_key(job_id))
    verdict, why = decide(request, view.state.value if view.state else None,
                          _read(bucket, request["mirror_manifest"]), _read(bucket, keys.host_key(request["agent"])),
                          approved=approval is not None)
    if verdict == "wait":
        return None
    inst, action = request["instance"], request.get("action", "terminate")
    record_key = keys.host_teardown_record_key(job_id)
    record = {**request, "action": action, "why": why, "at": codec.iso(codec.now())}

    fleet = as_routes(launchers).for_kind("fleet")
    if verdict in ("go", "ask") and not isinstance(fleet, FleetLauncher):
        return None  # this sweep holds no provider keys: another (the cloud one) does it
    if verdict == "ask":
        if (_read(bucket, record_key) or {}).get("state") == "pending_approval":
            return None  # recorded already: it waits for the user
        record.update(state="pending_approval", price_per_hour=fleet.backend(inst["backend"]).price(inst["id"]),
                      effects=EFFECTS.get(inst["backend"], {}).get(action), approve_with=f"bucketrun approve {job_id}")
        bucket.put(record_key, codec.dumps(record), "application/json")
        log.info("teardown of %s %s after %s waits for approval", inst["backend"], inst["id"], job_id)
        return {"job_id": job_id, "step": "host-teardown", "state": "pending_approval", "instance": inst["id"]}
    if verdict == "go":
        backend = fleet.backend(inst["backend"])
        backend.stop(inst["id"]) if action == "stop" else backend.terminate(inst["id"])
        record.update(state="done", effects=EFFECTS.get(inst["backend"], {}).get(action), approval=approval)
        log.info("%s of %s %s after %s: %s", action, inst["backend"], inst["id"], job_id, why)
    else:
        record.update(state="dropped")
    bucket.put(record_key, codec.dumps(record), "application/json")
    bucket.delete(key)
    return {"job_id": job_id, "step": "host-teardown", "state": record["state"], "action": action,
            "instance": inst["id"]}
