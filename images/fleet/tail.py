"""The fleet's tail: once few shards are left, a process looks them up one by one instead of listing.

A full listing of leases and done markers costs two LISTs per 1,000 shards and grows with the plan (on moto each
page also scans every key of the bucket), so in the tail, when a worker polls for the last few shards, it became
the tail itself: 27 s of 82 s from 99% to `succeeded` at 507,387 items went on seeing that all was done. Here each
pending shard costs one GET of its done marker per look (a marker also names the children it offered), and a GET
of its lease only when the lease could have changed state: never read, expired by now, or not live when last read.
One look is shared by all the workers of a process.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from bucketrun.events import aconditional, keys
from bucketrun.events.fleet import claims
from bucketrun.events.lease import Snapshot

# Pending shards up to which direct reads beat a full listing: S3 and R2 price a LIST as 12.5 GETs, and a full
# look by listing is two listings (leases, done markers) of a page per 1,000 shards: 25 reads a page. So 10,000
# shards (22 pages) read up to 512 one by one, and a fleet of 1,000 shards or fewer only its last 25: reading
# all 400 shards of a 20,000-item fleet at every look was a third of its requests. A look drops each shard it
# finds done, so only the first one reads that many. (A process counts as pending the markers of other
# processes not yet in their ledgers, up to LEDGER_BATCH each.)
TAIL_SHARDS = 512
TAIL_SHARDS_PER_PAGE = 25
LOOK_MIN_S = 1.0  # a process looks at most this often...
LOOK_S_PER_SHARD = 0.01  # ...or less often by this much per shard it reads
READ_CONCURRENCY = 8  # per process: the tail's reads must leave the store to the last commits
NUDGE_PENDING = 4  # a commit with this few shards left pending at the last look makes the next look now


def tail_limit(n_shards: int) -> int:
    """Pending shards from which a process reads them one by one rather than list: see TAIL_SHARDS_PER_PAGE."""
    return min(TAIL_SHARDS, TAIL_SHARDS_PER_PAGE * max(1, math.ceil(n_shards / 1000)))


@dataclass
class Look:
    """What one look found: shards now known done, and each still pending shard's lease as last read (None:
    never claimed)."""

    done: set[str] = field(default_factory=set)
    leases: dict[str, Snapshot | None] = field(default_factory=dict)
    children: set[str] = field(default_factory=set)  # shards offered by a marker (remainders, split-off parts)


class TailLook:
    def __init__(self, bucket: Any, job_id: str, markers: dict[str, dict[str, Any]]):
        self.bucket, self.job_id = bucket, job_id
        self.markers = markers  # the process's marker cache: what is read here the finalizer need not read
        self.snaps: dict[str, Snapshot | None] = {}
        self.reread_at: dict[str, float] = {}  # monotonic time from which a shard's lease is worth reading again
        self.last = Look()
        self.at = -math.inf
        self.lock = asyncio.Lock()
        self.reads = 0

    def interval(self, n: int) -> float:
        return max(LOOK_MIN_S, LOOK_S_PER_SHARD * n)

    async def look(self, pending: Iterable[str], mine: set[str]) -> Look:
        """The state of `pending` (minus `mine`, held by this process's workers, which know their own), read at
        most once per interval for the whole process."""
        pending = [s for s in pending if s not in mine]
        async with self.lock:
            if time.monotonic() - self.at < self.interval(len(pending)):
                return self._cached(pending)
            found = Look()
            sem = asyncio.Semaphore(READ_CONCURRENCY)
            await asyncio.gather(*(self._one(s, found, sem) for s in pending))
            self.at = time.monotonic()
            self.last = found
            return found

    def _cached(self, pending: list[str]) -> Look:
        out = Look(done={s for s in pending if s in self.markers}, children=set(self.last.children))
        out.leases = {s: self.snaps.get(s) for s in pending if s not in self.markers and s in self.snaps}
        return out

    async def _one(self, shard: str, found: Look, sem: asyncio.Semaphore) -> None:
        async with sem:
            marker = self.markers.get(shard)
            if marker is None:
                marker, _ = await aconditional.read_json(self.bucket, keys.fleet_done_key(self.job_id, shard))
                self.reads += 1
            if marker is not None:
                self.markers.setdefault(shard, marker)
                found.done.add(shard)
                found.children |= {keys.shard_id(a, b) for a, b, *_ in marker.get("children") or []}
                self.snaps.pop(shard, None)
                return
            now = time.monotonic()
            if shard not in self.snaps or now >= self.reread_at.get(shard, 0.0):
                snap = await claims.read(self.bucket, keys.fleet_lease_key(self.job_id, shard))
                self.reads += 1
                self.snaps[shard] = snap
                # A live lease cannot change state before it could expire, unless its holder releases it (a
                # drain, a failed quarantine): read it again at its expiry, or within a lease's third.
                if snap is not None and snap.live:
                    left = math.ceil(snap.body["ttl_s"]) - (snap.age_s or 0.0)
                    self.reread_at[shard] = now + max(0.5, min(left + 1.0, snap.body["ttl_s"] / 3))
                else:
                    self.reread_at[shard] = now
            found.leases[shard] = self.snaps[shard]

    def nudge(self) -> None:
        """A worker here just committed one of the last shards: look again now, not at the next interval. The
        process that commits the fleet's last shard then sees every other marker at once and finalizes, where
        waiting out the interval held `succeeded` back by up to 1.5 s; the look reads a few markers at most."""
        if self.at > -math.inf and len(self.last.leases) <= NUDGE_PENDING:
            self.at = -math.inf

    def forget(self, shard: str) -> None:
        """A take-over was tried on this shard: its lease changed, read it afresh next time."""
        self.reread_at[shard] = 0.0
