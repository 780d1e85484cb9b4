"""The fleet's last step: once every shard is done, one elected worker commits the dataset manifest (built and
checked row by row in commit.py), then `succeeded`; the others wait for it or take the role over if it lapses."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from bucketrun.events import keys
from bucketrun.events.errors import CorruptObject
from bucketrun.events.fleet import claims

from .commit import build_dataset

log = logging.getLogger("bucketrun.fleet")
ROLE_LOOK_MAX_S = 20.0  # a worker waiting on another's finalize looks again at least this often


async def finalize(w: Any) -> str | None:
    """`w` (a Worker) saw every shard done: elect one writer of the dataset manifest, and `succeeded`. One worker
    of a process at a time goes for the role; the others wait for the dataset (a hundred idle workers each
    trying the role cost two requests apiece, 0.015 a item at 20,000 items)."""
    if w.job.finalizing.locked():
        await w.sleep(1.0 + w.rng.uniform(0, 1))  # the process's dataset watch wakes it when the dataset is in
        return None
    async with w.job.finalizing:
        return await _finalize(w)


async def _finalize(w: Any) -> str | None:
    key = keys.fleet_singleton_lease_key(w.job.job_id, "finalize")
    ttl = max(30.0, w.body.lease_s)
    role = None if w.job.role_seen else await claims.claim_fresh(w.bucket, key, w.id, ttl)
    snap = None
    if role is None:
        w.job.role_seen = True  # the role object exists now: later looks read it, without a losing create
        snap = await claims.read(w.bucket, key)
        if snap is not None and not snap.live:
            role = await claims.take_over(w.bucket, w.id, ttl, snap)
    if role is None:  # someone is writing the dataset: look again when its role could have lapsed
        left = snap.body["ttl_s"] - (snap.age_s or 0) if snap is not None and snap.live else 1.0
        await w.sleep(min(ROLE_LOOK_MAX_S, max(1.0, left)) + w.rng.uniform(0, 1))
        return None
    w.roles[key] = role  # renewed by renew_loop while the markers are read: the role never lapses mid-way
    try:
        cov, dataset = await build_dataset(w.bucket, w.job.job_id, w.job.plan, w.job.output_prefix,
                                           w.id, w.job.marker_cache, w.job.ledgers_seen, w.job.parts_listing(),
                                           ledger_requests=w.job.ledger_requests)
    except CorruptObject as exc:  # write-once objects that do not check never will: say so, do not wait
        await w.job.fail_code(f"dataset check failed: {exc}")
        w.job.finished.set()
        return "finished"
    finally:
        w.roles.pop(key, None)
    if key in w.lost:
        w.lost.discard(key)
        return None
    if dataset is None:
        log.info("%s: %d shards still pending; not final yet", w.id, len(cov.pending))
        w.all_done = False
        w.done -= set(cov.pending)
        w.shards = sorted(set(w.shards) | set(cov.pending))  # a pending child this worker never knew of
        w.unavailable -= set(cov.pending)
        await claims.release(w.bucket, role)
        return None
    summary = {k: dataset[k] for k in ("items_total", "items_covered", "items_failed", "rows", "bytes")}
    summary.update(key=keys.fleet_dataset_key(w.job.output_prefix), shards=len(dataset["shards"]),
                   dead_letters=len(dataset["dead_letters"]))
    stored = (await w.bucket.get(summary["key"])).data  # the manifest as the bucket holds it
    artifact = {"key": summary["key"], "format": "dataset", "bytes": len(stored),
                "sha256": hashlib.sha256(stored).hexdigest()}
    problems = w.job.spec_verify({"dataset": summary})
    if problems:
        await w.job.fail_code("dataset check failed: " + "; ".join(problems))
    else:
        await w.job.succeed({"dataset": summary, "artifacts": [artifact],
                             "ledger_requests": w.job.spent_by_workers()})
    w.job.finished.set()  # this process's other workers leave now
    return "finished"

