"""The host agents as their heartbeats (index/hosts/<agent>.json) tell them: who is alive, on which labels, running
what, able to run which kinds. Read by `bucketrun agents`, and by an agent deciding whether an offer it cannot run
has anyone else to take it."""

from __future__ import annotations

from typing import Any

from . import codec, keys
from .errors import CorruptObject, NotFound
from .storage import Bucket

HOST_SILENT_S = 120.0  # an agent whose heartbeat is older holds nothing: the launcher calls its attempt lost


def read_hosts(bucket: Bucket) -> list[dict[str, Any]]:
    """Every agent's last heartbeat, with its age by the store's clock and `status`: alive (online and fresh),
    stale (online but silent past HOST_SILENT_S: killed, or its machine is gone) or offline (it said so)."""
    hosts = []
    for info in bucket.list(keys.HOSTS):
        if not info.key.endswith(".json"):
            continue
        try:
            body = codec.loads(bucket.get(info.key).data)
        except (NotFound, CorruptObject):  # gone since the listing, or half a heartbeat: not an agent to count
            continue
        now = info.store_time or codec.now()
        age = max(0.0, (now - info.last_modified).total_seconds()) if info.last_modified else None
        fresh = age is not None and age < HOST_SILENT_S
        status = "offline" if body.get("state") == "offline" else "alive" if fresh else "stale"
        hosts.append({**body, "heartbeat_age_s": round(age, 1) if age is not None else None, "status": status})
    return hosts


def can_run(host: dict[str, Any], kind: str) -> bool:
    """An agent that predates advertising its kinds (no `kinds` field) is taken to run any."""
    return "kinds" not in host or kind in host["kinds"]


def runners(hosts: list[dict[str, Any]], label: str, kind: str, besides: str | None = None) -> list[str]:
    """The ids of the live agents on `label` that can run `kind` (other than `besides`)."""
    return [h["agent"] for h in hosts if h["status"] == "alive" and label in h.get("labels", [])
            and can_run(h, kind) and h.get("agent") != besides]
