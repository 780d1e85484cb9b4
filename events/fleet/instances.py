"""A fleet's instance records (jobs/<id>/fleet/instances/<instance>.json): written when the launcher starts an
instance and again when it is stopped, with its $/h, hours and cost. The launcher (handlers/launchers/fleet.py)
and the sweep's teardown (handlers/fleet_teardown.py) both read and write them here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .. import codec, keys
from ..errors import NotFound


def instance_name(instance_id: str) -> str:
    """A provider's instance id as a key segment."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in instance_id)[:200]


def read_instances(bucket, job_id: str) -> list[dict[str, Any]]:
    out = []
    for info in bucket.list(keys.fleet_instances_prefix(job_id)):
        try:
            out.append(codec.loads(bucket.get(info.key).data))
        except NotFound:
            continue
    return out


def record_instance(bucket, job_id: str, instance: dict[str, Any], attempt: int) -> None:
    """A started instance (`Instance.to_json()`): not terminated, running since now."""
    body = {**instance, "attempt": attempt, "started_at": codec.iso(codec.now()), "terminated_at": None}
    bucket.put(keys.fleet_instance_key(job_id, instance_name(instance["instance_id"])), codec.dumps(body),
               "application/json")


def record_stopped(bucket, job_id: str, inst: dict[str, Any], reason: str) -> dict[str, Any]:
    """The instance's record once its provider stopped it: when, why, its hours and cost."""
    ended = codec.now()
    hours = max(0.0, (ended - codec.parse_iso(inst["started_at"])).total_seconds() / 3600)
    price = inst.get("price_per_hour")
    body = {**inst, "terminated_at": codec.iso(ended), "reason": reason, "hours": round(hours, 4),
            "cost_usd": round(price * hours, 4) if price is not None else None}
    bucket.put(keys.fleet_instance_key(job_id, instance_name(inst["instance_id"])), codec.dumps(body),
               "application/json")
    return body


def fleet_cost(instances: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """$/h of each instance and the total so far (running ones counted up to now)."""
    rows, total = [], 0.0
    for inst in instances:
        end = codec.parse_iso(inst["terminated_at"]) if inst.get("terminated_at") else now
        hours = max(0.0, (end - codec.parse_iso(inst["started_at"])).total_seconds() / 3600)
        cost = (inst.get("price_per_hour") or 0.0) * hours
        total += cost
        rows.append({"instance_id": inst["instance_id"], "worker": inst["worker"], "provider": inst["provider"],
                     "price_per_hour": inst.get("price_per_hour"), "hours": round(hours, 4),
                     "cost_usd": round(cost, 4), "running": not inst.get("terminated_at")})
    return {"instances": rows, "total_usd": round(total, 4), "at": codec.iso(now)}
