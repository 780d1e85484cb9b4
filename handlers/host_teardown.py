"""Stopping a rented training host after its window: only once the checkpoint's mirror is verified in the
bucket and the host runs nothing else, so the only copy of a checkpoint is never on a stopped machine. The
sweep does it because it holds the provider keys; the host only asks (index/teardown/<agent>.json)."""

from __future__ import annotations

import logging
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.lifecycle import read_view
from bucketrun.events.storage import Bucket

from .launchers.base import Launcher, Routes, as_routes

log = logging.getLogger("bucketrun.sweep")


def decide(request: dict[str, Any], job_state: str | None, mirror: dict[str, Any] | None,
           host: dict[str, Any] | None) -> tuple[str, str]:
    """("stop" | "wait" | "drop", why), from the request and what the bucket holds."""
    if not mirror or not mirror.get("verified"):
        return "drop", "its checkpoint has no verified mirror in the bucket: the host keeps the only copy"
    if job_state not in ("succeeded", "failed", "cancelled"):
        return "wait", f"job {request['job_id']} is still {job_state}"
    busy = [t for t in (host or {}).get("tasks", []) if t.get("job_id") != request["job_id"]]
    if busy:
        return "wait", f"the host is running {busy[0]['job_id']}"
    return "stop", f"the checkpoint is verified at {mirror.get('prefix')}"


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
    view = read_view(bucket, request["job_id"])
    action, why = decide(request, view.state.value if view.state else None,
                         _read(bucket, request["mirror_manifest"]), _read(bucket, keys.host_key(request["agent"])))
    if action == "wait":
        return None
    inst = request["instance"]
    record = {**request, "action": action, "why": why, "at": codec.iso(codec.now())}
    if action == "stop":
        from .launchers.fleet import FleetLauncher

        fleet = as_routes(launchers).for_kind("fleet")
        if not isinstance(fleet, FleetLauncher):
            return None
        fleet.backend(inst["backend"]).terminate(inst["id"])
        log.info("stopped %s %s after %s: %s", inst["backend"], inst["id"], request["job_id"], why)
    bucket.put(keys.host_teardown_record_key(request["job_id"]), codec.dumps(record), "application/json")
    bucket.delete(key)
    return {"job_id": request["job_id"], "step": "host-teardown", "action": action, "instance": inst["id"]}
