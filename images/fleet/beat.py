"""One heartbeat object per worker process, not per worker: `heartbeats/<first worker id>.json` holds where the
process runs (what the registration used to say) and every one of its workers' states, counts and holdings.

A hundred workers over four processes wrote a hundred registrations and a beat each every heartbeat_s; now four
processes write one beat each. Liveness is the object's Last-Modified, the same for every worker of a process,
as it is in fact: a process dies whole. Lazy: a process writes nothing until one of its workers claims a shard,
so a process that never works costs no request. A restarted process (same worker ids, as a relaunched instance
is given) finds its last beat by key and hands back what each worker held.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from datetime import timedelta
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.fleet import claims

from . import host

log = logging.getLogger("bucketrun.fleet")


def worker_entry(w) -> dict[str, Any]:
    """A worker (images/fleet/worker.py) in its process's beat: state, counts, current shard, holdings."""
    recent_items = sum(n for n, _ in w.recent)
    recent_s = sum(s for _, s in w.recent)
    if w.recent and w.state != "finished":  # a shard (or a wait for one) running past the usual shard's time
        usual = recent_s / len(w.recent)  # counts that time: a worker stuck on an item, or idle with nothing to
        recent_s += max(0.0, time.monotonic() - w.current_started - usual)  # do, reports a falling rate rather
        # than its last one, so the fleet's live rate and ETA follow what it does now
    state = "draining" if w.state == "running" and w.stop.draining.is_set() else w.state
    return {"worker": w.id, "state": state, **w.stats,
            "items_per_s": round(recent_items / recent_s, 3) if recent_s > 0 else None,
            "current_shard": w.current, "current_since": w.current_since if w.current else None,
            "holding": [{"shard": s, "generation": lease.generation} for s, lease in w.holding.items()]}


class ProcessBeat:
    def __init__(self, job, worker_ids: list[str]):
        self.job, self.ids = job, list(worker_ids)
        self.key = keys.fleet_heartbeat_key(job.job_id, self.ids[0])
        self.started: asyncio.Event = job.beat_started  # a worker here claimed a shard: the process beats
        self.written = False
        self.config: dict[str, Any] | None = None
        self.last_at: str | None = None  # when the previous life (same ids) last beat

    def _config(self) -> dict[str, Any]:
        if self.config is None:
            body = self.job.body
            self.config = {"worker": self.ids[0], "process": True, "host": os.uname().nodename, "pid": os.getpid(),
                           "processor": body.processor.name or body.processor.entry_point,
                           "batch_size": body.shard_size, "device": self.job.device, "gpu": host.gpu(),
                           "version": host.version(), "started_at": codec.iso(codec.now())}
        return self.config

    async def last(self) -> dict[str, dict[str, Any]]:
        """Each worker's entry in this process's last beat (a previous life under the same ids), else {}."""
        try:
            body = codec.loads((await self.job.bucket.get(self.key)).data)
        except NotFound:
            return {}
        workers = body.get("workers") if isinstance(body, dict) else None
        self.last_at = body.get("at") if isinstance(body, dict) and body.get("state") != "offline" else None
        return {w: e for w, e in (workers or {}).items() if w in self.ids and isinstance(e, dict)}

    async def reclaim(self) -> int:
        """A previous life that died (no `offline` beat) held, besides what its last beat names, the shards it
        claimed after that beat. They would wait out their leases (lease_s, a kill -9's whole tail); instead the
        process lists leases and markers (the listing its workers then share) and reads each lease written since
        that beat and not done (the fleet's in-flight shards, about one per worker): ours go back, a death each,
        and this process's workers take them over first (FleetJob.handed_back). Returns how many."""
        if self.last_at is None:
            return 0
        # A listing's LastModified has whole seconds on S3 (moto too: ".000Z"): a lease claimed later in the same
        # second as the beat lists as older than it. A second's margin costs a read of the few leases claimed then.
        since = codec.parse_iso(self.last_at) - timedelta(seconds=1)
        done, leases = await self.job.shared_listing("both", self.job.list_both, 0.0, 0.0)
        recent = [info.key for s, info in leases.items()
                  if s not in done and info.last_modified is not None and info.last_modified >= since]
        sem, released = asyncio.Semaphore(16), 0

        async def one(key: str) -> None:
            nonlocal released
            async with sem:
                snap = await claims.read(self.job.bucket, key)
                holder = (snap.body.get("holder") if snap is not None else None) or ""
                if holder in self.ids and snap.state == claims.HELD and \
                        await claims.release_stale(self.job.bucket, key, holder, snap.generation):
                    released += 1
                    self.job.handed_back.append(key)

        await asyncio.gather(*(one(k) for k in recent))
        if released:
            log.info("released %d shards held by this process's previous life since its last beat", released)
        return released

    def body(self) -> dict[str, Any]:
        entries = {w.id: worker_entry(w) for w in self.job.workers if w.id in self.ids}
        states = {e["state"] for e in entries.values()}
        state = "running" if states - {"offline", "finished"} else ("finished" if states == {"finished"}
                                                                     else "offline")
        return {**self._config(), "state": state, "at": codec.iso(codec.now()), "workers": entries}

    async def write(self, final: bool = False) -> None:
        try:
            await self.job.bucket.put(self.key, codec.dumps(self.body()), "application/json")
            self.written = True
        except BucketrunError as exc:
            if final:
                raise
            log.warning("heartbeat not written: %s", exc)

    async def loop(self) -> None:
        """The first beat as soon as a worker here claims; then one every heartbeat_s (jittered)."""
        await self.started.wait()
        await self.write()
        every = self.job.body.heartbeat_s
        while True:
            await asyncio.sleep(every * random.uniform(0.8, 1.2))
            await self.write()

    async def final(self) -> None:
        """The workers' last states, if this process ever beat: a process that never worked stays silent."""
        if self.written or self.started.is_set():
            try:
                await self.write(final=True)
            except BucketrunError as exc:
                log.warning("last heartbeat not written: %s", exc)
