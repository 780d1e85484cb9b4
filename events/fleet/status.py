"""What `bucketrun fleet status` shows, read from the bucket alone: each worker from its heartbeat (alive,
stale or offline, by the store's Last-Modified; `stopping` once the fleet has ended but its last beat has not
come), and the totals from the done markers' listing.

The rate: while the fleet runs, the sum of its alive workers' recent rates. Once it has ended (succeeded, failed,
cancelled) its workers are offline and that sum is 0, so it is the fleet's average instead: items done over the
wall time, from the job's first `running` transition (written by the first worker up, once it holds the plan and
its processor and is about to claim: the moment work started) to its terminal transition."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .. import codec, keys
from ..cost import recorded_requests
from ..errors import NotFound
from ..kinds.validate import load_job_manifest
from ..lifecycle import read_view


def covered_items(done_shards) -> int:
    """Items in the union of the done shards' ranges (a partial commit's remainder lies inside its parent)."""
    total, reach = 0, -1
    for lo, hi in sorted(keys.parse_shard_id(s) for s in done_shards):
        if hi <= reach:
            continue
        total += hi - max(lo, reach)
        reach = hi
    return total


def worker_state(beat: dict[str, Any], age_s: float, heartbeat_s: float) -> str:
    """offline (it said so), stale (silent past two beats), draining (told to stop: it finishes its shard and
    claims no other) or alive."""
    if beat.get("state") in ("offline", "finished"):
        return "offline"
    if age_s >= 2 * heartbeat_s:
        return "stale"
    return "draining" if beat.get("state") == "draining" else "alive"


def wall_clock(history) -> tuple[str | None, str | None]:
    """(started_at, ended_at) of the work, from the job's transitions: the first `running` (a retry's later
    `running` comes after work already done, which the done markers still count) and the terminal transition
    (None while the job has not ended, or when it never ran)."""
    started = next((t.at for t in history if t.state.value == "running"), None)
    ended = history[-1].at if history and history[-1].state.terminal else None
    return started, ended


def _seconds(a: str, b: str) -> float:
    return (codec.parse_iso(b) - codec.parse_iso(a)).total_seconds()


def _get(bucket, key: str) -> dict[str, Any] | None:
    try:
        return codec.loads(bucket.get(key).data)
    except NotFound:
        return None


def worker_row(worker: str | None, beat: dict[str, Any], age_s: float, heartbeat_s: float) -> dict[str, Any]:
    """One worker as `fleet status` and the dashboard show it, from its heartbeat and the beat's age."""
    return {"worker": worker, "state": worker_state(beat, age_s, heartbeat_s),
            "heartbeat_age_s": round(age_s, 1), "current_shard": beat.get("current_shard"),
            "current_since": beat.get("current_since"),
            "items_per_s": beat.get("items_per_s"), "items_done": beat.get("items_done", 0),
            "items_failed": beat.get("items_failed", 0), "shards_written": beat.get("shards_written", 0),
            "dead_lettered": beat.get("dead_lettered", 0),
            "last_error": beat.get("last_error")}


def heartbeat_worker(key: str, prefix: str, beat: dict[str, Any]) -> str | None:
    """A beat's key names its process's first worker (keys.fleet_heartbeat_key), whatever the body says (never
    a process's writer, fleet:w0001,w0002,...)."""
    return key[len(prefix):-len(".json")] if key.endswith(".json") else beat.get("worker")


def beat_workers(key: str, prefix: str, beat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Worker id -> its beat. A process writes one beat for all its workers (images/fleet/beat.py), each entry
    beside the process's own fields (host, GPU, version); a beat from before that named one worker."""
    entries = beat.get("workers")
    if not isinstance(entries, dict):
        return {heartbeat_worker(key, prefix, beat) or "?": beat}
    shared = {k: v for k, v in beat.items() if k != "workers"}
    return {w: {**shared, **e, "worker": w} for w, e in entries.items() if isinstance(e, dict)}


def summarize(job_id: str, view, plan: dict[str, Any] | None, done_shards, workers: list[dict[str, Any]],
              cost: dict[str, Any] | None) -> dict[str, Any]:
    """The fleet's totals from what was read (no reads here): the job's view, the plan, the done markers'
    shard ids, the worker rows (`worker_row`) and cost.json. `fleet status` and the dashboard both call this."""
    total = plan["total"] if plan else None
    done = list(done_shards)
    dataset = None
    if view.state is not None and view.state.value == "succeeded":
        dataset = view.latest.detail.get("dataset")
    items_done = dataset["items_covered"] if dataset else (min(total, covered_items(done)) if total else 0)
    state = view.state.value if view.state else None
    ended = view.state is not None and view.state.terminal
    if ended:  # a beat from before the end is not a live worker: it is on its way out, its counts not yet final
        for w in workers:
            if w["state"] in ("alive", "draining"):
                w["state"] = "stopping"
    alive = [w for w in workers if w["state"] == "alive"]
    working = alive + [w for w in workers if w["state"] == "draining"]  # a draining worker finishes its shard
    started_at, ended_at = wall_clock(view.history)
    wall = max(0.0, _seconds(started_at, ended_at)) if started_at and ended_at else None
    if ended:  # the average over the wall time (None if it never ran); no ETA
        rate = items_done / wall if wall else None
        eta = None
    else:  # live: the recent rates of the workers still at work
        rate = sum(w["items_per_s"] or 0.0 for w in working)
        left = (total - items_done) if total is not None else None
        eta = round(left / rate, 1) if rate and left else None
    return {
        "job_id": job_id, "state": state, "planned": plan is not None,
        "items_total": total, "items_done": items_done,
        "items_failed": dataset["items_failed"] if dataset else sum(w["items_failed"] for w in workers),
        "dead_lettered": dataset["dead_letters"] if dataset else sum(w["dead_lettered"] for w in workers),
        "shards_done": len(done), "shards_planned": plan["n_shards"] if plan else None,
        "items_per_s": round(rate, 2) if rate is not None else None, "eta_s": eta,
        "rate": "average" if ended else "live",
        "started_at": started_at, "ended_at": ended_at, "wall_s": round(wall, 3) if wall is not None else None,
        "workers": sorted(workers, key=lambda w: w["worker"] or ""),
        "workers_alive": len(alive), "workers_stopping": sum(w["state"] == "stopping" for w in workers),
        "dataset": dataset, "cost": cost,
        "requests": _requests(view, total),
    }


def _requests(view, items: int | None) -> dict[str, Any]:
    """The requests the fleet's writers recorded in its history (events/cost.py), and per item once it has items."""
    req = recorded_requests(view)
    per = round(req["total"] / items, 6) if items else None
    return {"a": req["a"], "b": req["b"], "d": req["d"], "total": req["total"], "per_item": per}


def fleet_status(bucket, job_id: str, now: datetime | None = None) -> dict[str, Any]:
    now = now or codec.now()
    body = load_job_manifest(bucket, job_id).body
    view = read_view(bucket, job_id)
    plan = _get(bucket, keys.fleet_plan_key(job_id))
    done_prefix = keys.fleet_done_prefix(job_id)
    done = [s for s in (keys.fleet_shard_of(i.key, done_prefix) for i in bucket.list(done_prefix)) if s]
    workers = []
    hb_prefix = keys.fleet_heartbeats_prefix(job_id)
    for info in bucket.list(hb_prefix):
        beat = _get(bucket, info.key)
        if beat is None:
            continue
        age = (now - info.last_modified).total_seconds() if info.last_modified else float("inf")
        workers += [worker_row(w, b, age, body.heartbeat_s) for w, b in beat_workers(info.key, hb_prefix, beat).items()]
    cost = _get(bucket, keys.fleet_prefix(job_id) + "cost.json")
    return summarize(job_id, view, plan, done, workers, cost)
