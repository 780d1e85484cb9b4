"""One fleet worker: an asyncio loop of pick (ahead, with the inputs prefetched), claim, process, commit.

A shard is claimed only when its work starts, so a held lease always means a shard under way: a holder that
dies charges a death to that shard alone, never to one it had merely picked. A shard charged a death runs in
quarantine (quarantine.py). It exits when no work is left, when the job ends, or after SIGTERM (finish the
item, commit what is done). images/fleet/run.py runs one or more of them in a process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import random
import time
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.fleet import claims
from bucketrun.events.lease import LeaseLost

from . import finalize, quarantine, tail
from .commit import RowsDoNotCheck, commit_shard, list_shards
from .job import FleetJob
from .processors import CURRENT_WORKER
from .shardwork import Candidate, FetchFailed, ShardWork, Stop

log = logging.getLogger("bucketrun.fleet")
GRACE_S = 25.0
MAX_IDLE_SLEEP_S = 20.0  # a waiting worker looks again at least this often
LISTING_MAX_AGE_S = 1.0  # workers of one process share a listing this young...
LISTING_S_PER_PAGE = 0.5  # ...or younger by this much per page it took: 22 pages (10,000 shards) are shared 11 s
LEDGER_BATCH = 50  # a process hands its won markers to the others and the finalizer in ledgers of this many
PARTS_EARLY = 256  # pending shards from which a process lists parts/ for its finalizer
READS_PER_LOOK = 4  # candidate leases an idle worker reads per look
MAX_ERRORS = 50  # store failures past botocore's own retries before a worker gives up


class Worker:
    def __init__(self, job: FleetJob, worker_id: str, stop: Stop):
        self.job, self.id, self.stop = job, worker_id, stop
        self.body = job.body
        self.bucket = job.bucket
        self.shards: list[str] = job.plan.base_shards()
        self.base = frozenset(self.shards)
        # Shared by this process's workers: a shard one picked, claimed or lost is never chased by the others.
        self.unavailable: set[str] = job.unavailable
        self.leased: set[str] = job.leased  # shards known to have a lease (listed, won or lost): never deleted
        self.done: set[str] = set()
        self.seen_etags: dict[str, str] = {}
        digest = int(hashlib.sha256(worker_id.encode()).hexdigest(), 16)
        self.cursor: int | None = claims.start_point(worker_id, job.body.workers.count, len(self.shards), digest)
        self.step = 1  # up its own run; down a run it jumped into (claims.pick)
        self.rng = random.Random(digest)
        self.holding: dict[str, claims.ShardLease] = {}
        self.roles: dict[str, claims.ShardLease] = {}  # one-writer duties held now (finalize), by key
        self.collisions = 0  # lost creates in a row
        self.lost: set[str] = set()
        self.state = "starting"
        self.current: str | None = None
        self.current_since: str | None = None  # when it started the current shard (the dashboard's "for how long")
        self.stats = {"items_done": 0, "items_failed": 0, "shards_written": 0, "parquet_bytes": 0,
                      "claims_lost": 0, "commits_refused": 0, "takeovers": 0, "dead_lettered": 0,
                      "quarantined": 0, "quarantine_kills": 0, "last_error": None}
        self.recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=10)
        self.current_started = 0.0  # monotonic start of the current shard or of the wait for one (beat.py)
        self.idle_s = 0.5
        self.errors = 0
        self.all_done = False
        job.workers.append(self)

    # -- start ---------------------------------------------------------------------------------------
    async def recover(self, last: dict[str, Any] | None) -> None:
        """A restarted worker (same id) hands back what its last life held, a death each, then learns the fleet.
        `last` is its entry in its process's last beat (images/fleet/beat.py)."""
        if last and last.get("state") not in ("offline", "finished"):
            for held in last.get("holding", []):
                key = keys.fleet_lease_key(self.job.job_id, held["shard"])
                if await self.bucket_has(keys.fleet_done_key(self.job.job_id, held["shard"])):
                    continue  # committed after that heartbeat: nothing was under way
                if await claims.release_stale(self.bucket, key, self.id, held["generation"]):
                    log.info("%s: released %s held by its previous life", self.id, held["shard"])
                    self.job.handed_back.append(key)
        if last or self.job.plan_existed:  # joining a fleet under way: learn what is taken before claiming
            await self.learn()

    async def learn(self) -> dict[str, Any]:
        """Leases and done markers (a request per thousand shards each), shared by this process's workers."""
        return self._absorb(*await self.job.shared_listing("both", self.job.list_both, LISTING_MAX_AGE_S,
                                                           LISTING_S_PER_PAGE))

    async def learn_leases(self) -> None:
        """A claimer whose view proved stale needs only what is taken: the leases, half a full listing, shared."""
        leases = await self.job.shared_listing("leases", self._list_leases, LISTING_MAX_AGE_S, LISTING_S_PER_PAGE)
        self._absorb({}, leases[0])

    async def _relearn(self) -> None:
        """Two lost claims in a row: our view of what is free is stale. With few shards free in it, read those
        (images/fleet/tail.py); else list the leases. In the tail a hundred workers colliding on the last free
        shards made these listings most of the time from 99% done to the end."""
        free = [s for s in self.shards if s not in self.unavailable]
        if len(free) > tail.tail_limit(len(self.shards)):
            return await self.learn_leases()
        look = await self.job.tail.look(free, self.job.held_or_picked(self.body.lease_s))
        taken = {s for s, snap in look.leases.items() if snap is not None}
        self.done |= look.done
        self.unavailable |= look.done | taken
        self.leased |= taken

    async def _list_leases(self) -> tuple[dict[str, Any]]:
        return (await list_shards(self.bucket, keys.fleet_leases_prefix(self.job.job_id)),)

    def _absorb(self, done: dict[str, Any], leases: dict[str, Any]) -> dict[str, Any]:
        self.done |= set(done)
        new = set(leases) - set(self.shards)
        if new:
            self.shards = sorted(set(self.shards) | new)
        self.unavailable |= set(leases) | set(done)
        self.leased |= set(leases)
        for shard, info in leases.items():
            if shard in self.base:  # a planned shard's lease is someone's claim: read it only once it ages
                self.seen_etags.setdefault(shard, info.etag)
        return leases

    # -- claim ---------------------------------------------------------------------------------------
    async def prefetch(self) -> Candidate | None:
        """The next shard to work on, its inputs fetched; None when nothing is free in this worker's view."""
        if self.stop.any:
            return None
        i = claims.pick(self.shards, self.unavailable, self.cursor, self.rng)
        if i is None:
            return None
        if i != self.cursor:
            self.step = -1
        shard = self.shards[i]
        self.unavailable.add(shard)
        self.job.picked[shard] = time.monotonic()
        lo, hi = keys.parse_shard_id(shard)
        try:
            return Candidate(i, shard, lo, hi, await self._fetch(lo, hi))
        except BaseException:
            self.job.picked.pop(shard, None)
            raise

    async def claim(self, cand: Candidate) -> ShardWork | None:
        """Claim the picked shard as its work starts; None if it was taken."""
        self.job.picked.pop(cand.shard, None)  # from here on it is held (the holding map) or someone else's
        lease = await claims.claim_fresh(self.bucket, keys.fleet_lease_key(self.job.job_id, cand.shard), self.id,
                                         self.body.lease_s)
        self.leased.add(cand.shard)  # won or lost, the lease exists from here on
        if lease is None:  # taken: jump to the middle of the longest run we think free; after a second loss in
            self.stats["claims_lost"] += 1  # a row our view is stale: one listing (a request per thousand
            self.collisions += 1  # shards) shows what is taken
            self._discard(cand.payloads)
            self.cursor = None
            if self.collisions >= 2:
                await self._relearn()
                self.collisions = 0
            return None
        self.collisions = 0
        self.cursor = cand.index + self.step
        self.holding[lease.shard] = lease
        self.job.beat_started.set()  # this process beats from its first claim on (images/fleet/beat.py)
        return ShardWork(lease, cand.lo, cand.hi, cand.payloads)

    async def _fetch(self, lo: int, hi: int) -> list[Any]:
        if not getattr(self.job.processor, "fetches", True):
            return [None] * (hi - lo)

        async def one(item: str) -> Any:
            try:
                return await self.job.processor.fetch(item)
            except Exception as exc:  # noqa: BLE001 - a bad item is a row with its error, not a dead shard
                return FetchFailed(f"fetch failed: {type(exc).__name__}: {exc}"[:500])

        return list(await asyncio.gather(*(one(self.job.items[i]) for i in range(lo, hi))))

    def _discard(self, payloads: list[Any]) -> None:
        """Free prefetched inputs that will not be processed (a processor's optional `discard`)."""
        discard = getattr(self.job.processor, "discard", None)
        for payload in (p for p in payloads if discard is not None and not isinstance(p, FetchFailed)):
            discard(payload)

    async def take_back(self) -> ShardWork | None:
        """A shard this process's previous life held when it died, released at the restart: taken over before any
        fresh claim (a read and a CAS), so its work is redone now, not left for the tail's looks at the end."""
        while self.job.handed_back and not self.stop.any:
            key = self.job.handed_back.pop()
            snap = await claims.read(self.bucket, key)
            if snap is None or snap.live:
                continue
            lease = await claims.take_over(self.bucket, self.id, self.body.lease_s, snap)
            if lease is not None:
                self.leased.add(lease.shard)
                self.unavailable.add(lease.shard)
                return await self._prepare(lease)
        return None

    async def _prepare(self, lease: claims.ShardLease) -> ShardWork:
        """A shard taken over (counted here): a suspected one's inputs are fetched by its quarantine process."""
        self.stats["takeovers"] += 1
        self.holding[lease.shard] = lease
        self.job.beat_started.set()
        lo, hi = keys.parse_shard_id(lease.shard)
        return ShardWork(lease, lo, hi, [] if lease.quarantined else await self._fetch(lo, hi))

    async def straggler(self) -> ShardWork | str | None:
        """Nothing left to claim fresh: one worker of a process at a time looks for expired or released leases
        and new shards, finishes the dataset if all is done, or waits until the earliest lease could expire. The
        others nap and pick from what it found: 25 idle workers each walking every shard's state twice a second
        took a fifth of a process's CPU from the workers still at work."""
        self.job.watch_for_dataset()  # from here on this process looks for the committed dataset every second
        if self.job.finished.is_set():
            return "finished"
        if self.job.straggling.locked():
            await self.sleep(0.5 + self.rng.uniform(0, 0.25))
            return None
        await self.job.straggling.acquire()
        self.job.straggler = self
        try:
            return await self._straggler()
        finally:
            self._stop_straggling()

    def _stop_straggling(self) -> None:
        """Let go of the process's look (at the end of it, or as its nap begins: a worker that just committed one
        of the last shards must not wait out the looker's nap to see the fleet done)."""
        if self.job.straggler is self:
            self.job.straggler = None
            self.job.straggling.release()

    async def _straggler(self) -> ShardWork | str | None:
        if self.all_done:  # seen complete once: wait for the dataset without listing again
            return await self.finalize()
        if self.job.children() - set(self.shards):  # remainders and split-off parts named by known markers
            self.shards = sorted(set(self.shards) | self.job.children())
        pending = [s for s in self.shards if s not in self.done and s not in self.job.marker_cache]
        limit = tail.tail_limit(len(self.shards))
        if len(pending) > limit:  # the other processes' ledgers may show the tail is near
            await self.job.learn_ledgers()
            pending = [s for s in pending if s not in self.job.marker_cache]
        if len(pending) <= limit:
            return await self._tail(pending)
        leases = await self.learn()
        pending = [s for s in self.shards if s not in self.done]
        if not pending:
            self.all_done = True
            return await self.finalize()
        if len(pending) <= limit:  # the listing shows the tail: look at it now rather than nap past its end
            return await self._tail([s for s in pending if s not in self.job.marker_cache])
        # Never claimed, as far as anyone here knows. A shard we lost a claim on is leased even if the (older)
        # listing does not show it: counting it fresh again would spin on 412s and starve the takeovers below.
        fresh = [s for s in pending if s not in leases and s not in self.leased]
        if fresh:
            return await self._free_ripe(fresh)
        await self.job.write_ledger(self.id)  # nothing left to claim fresh: hand the finalizer our markers
        now = codec.now()
        wake = MAX_IDLE_SLEEP_S
        candidates = []  # leases that changed (maybe released) or aged past lease_s (maybe expired)
        for shard in pending:
            info = leases.get(shard)
            if info is None:  # leased since the listing was taken: the next listing shows its age
                continue
            age = (now - info.last_modified).total_seconds() if info.last_modified else 0.0
            if self.seen_etags.get(shard) == info.etag and age < self.body.lease_s:
                wake = min(wake, self.body.lease_s - age + 0.5)
                continue
            candidates.append((shard, info))
        # Each idle worker reads a few candidates, in its own random order: a hundred workers reading every
        # candidate would fill the connection pool and starve the renewals and commits of the workers at work.
        self.rng.shuffle(candidates)
        if len(candidates) > READS_PER_LOOK:
            wake = min(wake, 1.0)
        for shard, info in candidates[:READS_PER_LOOK]:
            snap = await claims.read(self.bucket, info.key)
            if snap is None:
                continue
            self.seen_etags[shard] = info.etag
            if snap.live:
                wake = min(wake, max(0.5, snap.body["ttl_s"] - (snap.age_s or 0) + 0.5))
                continue
            if await self.bucket_has(keys.fleet_done_key(self.job.job_id, shard)):
                self.done.add(shard)
                continue
            lease = await claims.take_over(self.bucket, self.id, self.body.lease_s, snap)
            if lease is not None:
                self.idle_s = 0.5
                return await self._prepare(lease)
        if candidates:
            self.idle_s = 0.5  # there is work about to free up: look again soon
        if len(pending) <= 2 * limit:  # the tail is near (the listing may be a second old): a nap past the
            await self.sleep(0.25 + self.rng.uniform(0, 0.25))  # last commit held `succeeded` back 1.7 s
            return None
        await self.sleep(min(MAX_IDLE_SLEEP_S, max(self.idle_s, wake)) + self.rng.uniform(0, 1))
        self.idle_s = min(MAX_IDLE_SLEEP_S, self.idle_s * 2)
        return None

    async def _tail(self, pending: list[str]) -> ShardWork | str | None:
        """Few shards left: read them one by one (images/fleet/tail.py), one look for this process's workers,
        rather than list every lease and marker again; claim one never claimed, take one over that lapsed."""
        await self.job.write_ledger(self.id)  # first: a finalizer elsewhere reads ledgers, not our markers
        await self.job.learn_ledgers()  # a look over a stale, long pending list held a process for 15 s
        pending = [s for s in pending if s not in self.job.marker_cache]
        if len(pending) <= PARTS_EARLY:
            self.job.parts_listing()  # the finalizer's listing of parts/, under way while the last shards run
        look = await self.job.tail.look(pending, self.job.held_or_picked(self.body.lease_s))
        self.done |= look.done
        if look.children - set(self.shards):
            self.shards = sorted(set(self.shards) | look.children)
        if not any(s not in self.done and s not in self.job.marker_cache for s in self.shards):
            self.all_done = True
            return await self.finalize()
        mine = self.job.held_or_picked(self.body.lease_s)
        fresh = {s for s, snap in look.leases.items() if snap is None} - mine
        if fresh:  # never claimed as of the look: a create-if-absent tells whether someone was first
            return await self._free_ripe(sorted(fresh))
        lapsed = [(s, snap) for s, snap in look.leases.items() if snap is not None and not snap.live
                  and s not in self.job.taking]
        self.rng.shuffle(lapsed)
        for shard, snap in lapsed:
            self.job.taking.add(shard)
            try:
                lease = await claims.take_over(self.bucket, self.id, self.body.lease_s, snap)
            finally:
                self.job.taking.discard(shard)
                self.job.tail.forget(shard)
            if lease is not None:
                return await self._prepare(lease)
        await self.sleep(self.job.tail.interval(len(pending)) + self.rng.uniform(0, 0.5))
        return None

    async def _free_ripe(self, fresh: list[str]) -> None:
        """Make the ripe ones of the shards seen never claimed (FleetJob.ripe) free to pick; with none ripe, a
        short nap rather than the whole wait: the listing may be older than their claims, and the tail may end
        meanwhile."""
        ripe, wait = self.job.ripe(fresh)
        self.unavailable -= ripe
        self.leased -= ripe
        if not ripe:
            await self.sleep(min(wait, 0.5) + self.rng.uniform(0, 0.2))

    async def bucket_has(self, key: str) -> bool:
        try:
            await self.bucket.head(key)
            return True
        except NotFound:
            return False

    async def sleep(self, seconds: float) -> None:
        """Idle until `seconds` pass, SIGTERM, the job leaves this attempt, or the dataset is committed: a worker
        leaves a finished fleet within about a second, not at the end of its nap."""
        self._stop_straggling()
        waits = [asyncio.create_task(e.wait()) for e in (self.stop.draining, self.stop.stopped, self.job.finished)]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()

    # -- process and commit --------------------------------------------------------------------------
    @staticmethod
    def _rows(i: int, item: str, out: list[dict[str, Any]] | None, error: str | None) -> list[dict[str, Any]]:
        """An item's rows, each with its ordinal within the item; a failed item is one row with its error."""
        if error is not None:
            return [{"item_index": i, "item_row": 0, "item": item, "error": error}]
        return [{**r, "item_index": i, "item_row": n, "item": item, "error": None} for n, r in enumerate(out or [{}])]

    async def process(self, work: ShardWork) -> None:
        lease, lo, hi = work.lease, work.lo, work.hi
        self.current, self.current_since = lease.shard, codec.iso(codec.now())
        self.current_started = time.monotonic()
        if lease.quarantined:
            await self._quarantine(work)
            return
        proc, items, started = self.job.processor, self.job.items, time.monotonic()
        rows: list[dict[str, Any]] = []
        failed, k = 0, lo
        for i in range(lo, hi):
            if self.stop.any or lease.shard in self.lost:
                break
            item, payload = items[i], work.payloads[i - lo]
            try:
                if isinstance(payload, FetchFailed):
                    raise RuntimeError(payload.error)
                out = (await asyncio.to_thread(proc.process, item, payload) if proc.blocking
                       else proc.process(item, payload))
                rows += self._rows(i, item, out, None)
            except Exception as exc:  # noqa: BLE001 - the item's error is its row
                failed += 1
                self.stats["last_error"] = error = f"{type(exc).__name__}: {exc}"[:1000]
                rows += self._rows(i, item, None, error)
            k = i + 1
        self._discard(work.payloads[k - lo:])  # items left to the shard's next holder
        if lease.shard in self.lost or self.stop.stopped.is_set():
            self.holding.pop(lease.shard, None)
            return
        if k == lo:  # drained before the first item: hand it back whole
            await self._release(lease)
            return
        await self._commit(work, k, rows, failed, started)

    async def _commit(self, work: ShardWork, k: int, rows: list[dict[str, Any]], failed: int, started: float,
                      children: list[tuple[int, ...]] | None = None, dead: list[dict[str, Any]] = ()) -> None:
        """Commit items [lo, k) with their rows; by default the rest of the shard is offered as a new shard."""
        lease, lo, hi = work.lease, work.lo, work.hi
        try:
            result = await commit_shard(self.bucket, self.job.job_id, self.job.output_prefix, lease, self.id,
                                        (lo, k) if k > lo else None, rows, self.job.schema, items_failed=failed,
                                        children=[(k, hi)] if children is None and k < hi else children or [],
                                        dead=dead)
        except RowsDoNotCheck as exc:  # a bug in making rows: retrying would make them again
            self.holding.pop(lease.shard, None)
            await self.job.fail_code(str(exc), where="commit")
            self.stop.stopped.set()
            return
        self.holding.pop(lease.shard, None)
        self.done.add(lease.shard)
        if not result.won:
            self.stats["commits_refused"] += 1
            log.warning("%s: shard %s was committed by generation %s first; our part was removed", self.id,
                        lease.shard, result.marker.get("generation"))
            return
        self.job.won(lease.shard, result.marker)
        self.job.tail.nudge()
        if len(self.job.unledgered) >= LEDGER_BATCH:
            await self.job.write_ledger(self.id)
        self.stats["dead_lettered"] += len(dead)
        if k > lo:
            self.stats["items_done"] += k - lo - failed
            self.stats["items_failed"] += failed
            self.stats["shards_written"] += 1
            self.stats["parquet_bytes"] += result.marker["part"]["bytes"]
            self.recent.append((k - lo, time.monotonic() - started))

    async def _quarantine(self, work: ShardWork) -> None:
        """A suspected shard (a holder died inside it) runs alone in a child process. If the child dies, the
        item under way killed it: a longer shard commits the items before it and splits it off as a suspected
        shard of one (the rest runs as usual); a shard of one counts the kill and, after max_item_attempts, is
        dead-lettered. The items of every other shard are never charged."""
        lease, lo, hi = work.lease, work.lo, work.hi
        limit = self.body.max_item_attempts
        while lease.kills < limit or hi - lo > 1:
            self.stats["quarantined"] += 1
            started = time.monotonic()
            out = await self.job.quarantine.run(lo, self.job.items[lo:hi],
                                                lambda: self.stop.any or lease.shard in self.lost, self.id)
            if lease.shard in self.lost or self.stop.stopped.is_set():
                self.holding.pop(lease.shard, None)
                return
            rows, failed, k = [], 0, lo
            while k in out.outputs:
                result, error = out.outputs[k]
                rows += self._rows(k, self.job.items[k], result, error)
                failed, k = failed + (error is not None), k + 1
            culprit = out.under_way if out.died else None
            if culprit is None:  # finished, drained, or died outside any item (nobody's fault): as a drain
                if k == lo:
                    if out.died:  # the caller hands the shard back, and pauses
                        raise quarantine.QuarantineFailed(f"the quarantine process of {lease.shard} exited "
                                                          f"{out.returncode} before its first item")
                    await self._release(lease)
                    return
                await self._commit(work, k, rows, failed, started)
                return
            self.stats["quarantine_kills"] += 1
            if hi - lo > 1:
                log.warning("%s: item %d (%s) killed the quarantine process of shard %s; split off", self.id,
                            culprit, self.job.items[culprit], lease.shard)
                children = [(culprit, culprit + 1, max(1, lease.deaths), 0)]
                children += [(culprit + 1, hi, 0, 0)] if culprit + 1 < hi else []
                await self._commit(work, k, rows, failed, started, children=children)
                return
            await claims.record_kill(self.bucket, lease)
            log.warning("%s: item %d (%s) killed its quarantine process (%d of %d)", self.id, lo,
                        self.job.items[lo], lease.kills, limit)
        dead = [{"index": lo, "item": self.job.items[lo],
                 "reason": f"it killed its worker process {lease.kills} time{'s' if lease.kills != 1 else ''}, "
                           "alone in its shard and in quarantine"}]
        log.warning("%s: item %d (%s) dead-lettered", self.id, lo, self.job.items[lo])
        await self._commit(work, lo, [], 0, time.monotonic(), children=[], dead=dead)

    async def _drop(self, lease: claims.ShardLease, exc: Exception) -> None:
        """The store failed past its retries mid-shard: hand the shard back rather than let it wait out its lease."""
        log.warning("%s: shard %s abandoned: %s", self.id, lease.shard, exc)
        self.stats["last_error"] = f"{type(exc).__name__}: {exc}"[:1000]
        with contextlib.suppress(BucketrunError):  # _release already let go of it here
            await self._release(lease)

    async def _pause(self, exc: Exception) -> None:
        """A request failed past botocore's retries (the store is struggling): note it and go round again,
        after a pause, instead of dying; every step is safe to repeat."""
        log.warning("%s: %s", self.id, exc)
        self.stats["last_error"] = f"{type(exc).__name__}: {exc}"[:1000]
        self.errors += 1
        if self.errors > MAX_ERRORS:
            raise exc
        await self.sleep(min(MAX_IDLE_SLEEP_S, 0.25 * 2 ** min(self.errors, 6)))
        return None

    async def _release(self, lease: claims.ShardLease) -> None:
        self.holding.pop(lease.shard, None)
        try:
            await claims.release(self.bucket, lease)
        except LeaseLost:
            pass

    async def renew_loop(self) -> None:
        """Renew a held lease only once a third of lease_s has passed, so a short shard costs no renewal."""
        while True:
            await asyncio.sleep(max(0.2, self.body.lease_s / 9))
            for shard, lease in [*self.holding.items(), *self.roles.items()]:
                if lease.due():
                    try:
                        await claims.renew(self.bucket, lease)
                    except LeaseLost as exc:
                        log.warning("%s: %s", self.id, exc)
                        self.lost.add(shard)
                        self.holding.pop(shard, None)
                        self.roles.pop(shard, None)
                    except BucketrunError as exc:  # transient: try again next round, before it lapses
                        log.warning("%s: renewing %s failed: %s", self.id, shard, exc)

    # -- finish --------------------------------------------------------------------------------------
    async def finalize(self) -> str | None:
        """Every shard is done: one elected writer commits the dataset manifest, then `succeeded`."""
        return await finalize.finalize(self)

    # -- the loop ------------------------------------------------------------------------------------
    async def work_on(self, work: ShardWork) -> None:
        """One shard, fresh, taken over or taken back: whatever happens, the worker is idle after it."""
        try:
            await self.process(work)
        except BucketrunError as exc:  # the store failed past its retries: the shard is handed back
            await self._drop(work.lease, exc)
            if isinstance(exc, quarantine.QuarantineFailed):
                await self._pause(exc)
        self.current, self.current_started = None, time.monotonic()  # idle from now: see beat.worker_entry()

    async def run(self, last: dict[str, Any] | None = None) -> str:
        CURRENT_WORKER.set(self.id)  # this task's context (and its to_thread calls): rows name this worker
        await self.recover(last)
        self.state = "running"
        tasks = [asyncio.create_task(self.renew_loop())]
        outcome = "stopped"
        ahead: asyncio.Task | None = None
        try:
            ahead = asyncio.create_task(self.prefetch())
            while True:
                try:
                    cand = await ahead
                except BucketrunError as exc:
                    cand = await self._pause(exc)
                ahead = None
                if self.stop.any:
                    outcome = "drained" if self.stop.draining.is_set() else "stopped"
                    break
                work: ShardWork | str | None = None
                try:
                    while self.job.handed_back and (back := await self.take_back()) is not None:
                        await self.work_on(back)  # the picked candidate waits, its shard kept from the others
                    work = await (self.claim(cand) if cand is not None else self.straggler())
                except BucketrunError as exc:
                    await self._pause(exc)
                if work == "finished":
                    outcome = "finished"
                    break
                ahead = asyncio.create_task(self.prefetch())  # the next shard's inputs while this one runs
                if work is not None:
                    await self.work_on(work)
        finally:
            if ahead is not None:
                ahead.cancel()
                try:
                    await ahead
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a picked shard is not claimed
                    pass
            for lease in list(self.holding.values()):
                await self._release(lease)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.state = "offline" if outcome != "finished" else "finished"
            self.current = None  # the process's last beat (run.py) says so
        return outcome
