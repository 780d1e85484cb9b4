"""The fleet's one progress object, jobs/<id>/progress.json, kept by whichever worker holds the `progress` role
lease: one writer at a time (no hot key), and the duty moves on when its holder dies. It is also the job's
sign of life for the sweep, so a fleet is judged stalled only when no worker is left to write it."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError
from bucketrun.events.fleet import claims
from bucketrun.events.fleet.status import covered_items
from bucketrun.events.lease import LeaseLost

from .commit import list_shards

LIST_S_PER_PAGE = 1.0


async def fleet_progress(bucket, job_id: str, total: int, heartbeat_s: float) -> dict[str, Any]:
    """Two listings: done markers (items done) and heartbeats (worker processes alive by the store's
    Last-Modified: a process beats for all its workers, images/fleet/beat.py)."""
    done = await list_shards(bucket, keys.fleet_done_prefix(job_id))
    now = codec.now()
    alive = 0
    async for info in bucket.list(keys.fleet_heartbeats_prefix(job_id)):
        if info.last_modified and (now - info.last_modified).total_seconds() < 2 * heartbeat_s:
            alive += 1
    return {"items_done": min(total, covered_items(done)), "items_total": total, "shards_done": len(done),
            "processes_alive": alive}


class ProgressDuty:
    def __init__(self, job, holder: str):
        self.job, self.holder = job, holder
        self.role: claims.ShardLease | None = None
        self.started = time.monotonic()
        self.last: tuple[float, int] | None = None
        self.every = job.manifest.resources.heartbeat_s
        self.last_shards = 0

    async def _hold(self, tick: int) -> bool:
        key = keys.fleet_singleton_lease_key(self.job.job_id, "progress")
        ttl = 4 * self.every
        if self.role is not None:
            try:
                await claims.renew(self.job.bucket, self.role)
                return True
            except LeaseLost:
                self.role = None
                return False
        if tick == 0:
            self.role = await claims.claim_fresh(self.job.bucket, key, self.holder, ttl)
        elif tick % 3 == 0:  # a non-holder looks only every third beat: the duty moves within ~5 beats
            snap = await claims.read(self.job.bucket, key)
            if snap is None:
                self.role = await claims.claim_fresh(self.job.bucket, key, self.holder, ttl)
            elif not snap.live:
                self.role = await claims.take_over(self.job.bucket, self.holder, ttl, snap)
        return self.role is not None

    async def write(self) -> dict[str, Any]:
        p = await fleet_progress(self.job.bucket, self.job.job_id, self.job.plan.total, self.job.body.heartbeat_s)
        now = time.monotonic()
        rate = None
        if self.last is not None and now > self.last[0]:
            rate = max(0.0, (p["items_done"] - self.last[1]) / (now - self.last[0]))
        self.last = (now, p["items_done"])
        self.last_shards = p["shards_done"]
        left = p["items_total"] - p["items_done"]
        body = {"attempt": self.job.attempt, "stage": f"{p['items_done']}/{p['items_total']} items",
                "percent": round(100.0 * p["items_done"] / max(1, p["items_total"]), 1),
                "elapsed_s": round(now - self.started, 1),
                "eta_s": round(left / rate, 1) if rate else None, "updated_at": codec.iso(codec.now()),
                "processed_s": None, "total_s": None, **p,
                "items_per_s": round(rate, 2) if rate is not None else None}
        await self.job.bucket.put(keys.progress_key(self.job.job_id), codec.dumps(body), "application/json")
        return body

    async def loop(self, stop) -> None:
        tick = 0
        await asyncio.sleep(min(2.0, self.every))
        while not stop.any:
            try:
                if await self._hold(tick):
                    await self.write()
            except BucketrunError:
                pass  # progress is advisory; the next beat tries again
            tick += 1
            await asyncio.sleep(self.pause() * random.uniform(0.8, 1.2))

    def pause(self) -> float:
        """A heartbeat, or longer on a large plan: the write lists every done marker, a page per thousand
        shards, so it comes at most every `LIST_S_PER_PAGE` seconds per page (and at least every two beats,
        well inside the role's ttl)."""
        pages = -(-self.last_shards // 1000) if self.role is not None else 0
        return min(2 * self.every, max(self.every, LIST_S_PER_PAGE * pages))
