"""What every worker in one process shares for one fleet job: the buckets, the manifest, the plan and its items,
the processor, and the job's transitions (written through the one state writer, events/lifecycle.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa

from bucketrun.events import aconditional, keys, meter
from bucketrun.events.errors import BucketrunError, IllegalTransition, NotFound, StaleAttempt
from bucketrun.events.failures import FailureClass, error_detail
from bucketrun.events.fleet import claims
from bucketrun.events.fleet.plan import (Plan, PlanError, list_items, load_items, plan_source, read_items_file,
                                         read_plan, write_plan)
from bucketrun.events.kinds import get_kind
from bucketrun.events.kinds.fleet import FleetBody
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.lifecycle import JobState, JobView, append_transition, read_view
from bucketrun.events.manifest import JobManifest
from bucketrun.events.retry import record_failure
from bucketrun.events.storage import open_bucket
from bucketrun.events.storage.aio import open_async_bucket

from .commit import PartsListing, list_parts_early, list_shards, read_ledgers
from .processors import Processor, ProcessorContext, ProcessorError, make_processor, schema_of
from .quarantine import Quarantine
from .tail import TailLook

log = logging.getLogger("bucketrun.fleet")
LEDGER_LOOK_S = 2.0  # a process reads new ledgers at most this often
DATASET_POLL_S = 1.0  # once a worker of this process is idle, it looks for the committed dataset this often
FRESH_WAIT_S = 2.0  # another process's never-claimed shard is left to its owner this long (ripe())


class FleetStopped(Exception):
    """The job is over for this worker (terminal, cancelled, or on another attempt): stop without writing."""


class FleetJob:
    def __init__(self, bucket_url: str, job_id: str, writer: str, device: str = "cpu"):
        self.bucket_url, self.job_id, self.writer, self.device = bucket_url, job_id, writer, device
        self.sync = open_bucket(bucket_url)  # the lifecycle's writer is synchronous; called in a thread
        self.bucket: Any = None
        self.source: Any = None
        self.manifest: JobManifest | None = None
        self.body: FleetBody | None = None
        self.plan: Plan | None = None
        self.items: list[str] = []
        self.processor: Processor | None = None
        self.schema: pa.Schema | None = None
        self.view: JobView | None = None
        self.plan_existed = False  # True when another process planned: the fleet may be under way
        self._listings: dict[str, tuple[float, int, Any]] = {}
        self._listing_locks: dict[str, asyncio.Lock] = {}
        self.unavailable: set[str] = set()  # shards this process's workers picked, claimed, lost or saw taken
        self.leased: set[str] = set()  # shards known to have a lease
        self.marker_cache: dict[str, dict[str, Any]] = {}  # done markers are write-once: read each once
        self.unledgered: dict[str, dict[str, Any]] = {}  # markers this process won since its last ledger
        self.ledgers = 0
        self.workers: list[Any] = []  # this process's workers (images/fleet/worker.py), for what they hold
        self.picked: dict[str, float] = {}  # shards a worker here picked (fetching, not yet claimed), and when
        self.taking: set[str] = set()  # lapsed leases a worker here is taking over right now
        # lease keys this process's previous life held when it died, released at the restart: its workers take
        # them over before anything else (Worker.take_back), so a kill -9 costs its shards now, not in the tail
        self.handed_back: list[str] = []
        self._tail: TailLook | None = None
        self._ledger_lock = asyncio.Lock()
        self._ledgers_at = -1e9
        self.ledgers_seen: set[str] = set()
        self.ledger_requests: dict[str, dict[str, int]] = {}  # each ledger read: what its process spent on the job
        self._parts: PartsListing | None = None
        self._children: set[str] = set()
        self._children_of = 0  # markers of the cache (in insertion order) whose children are counted
        self.finished = asyncio.Event()  # the dataset is committed: every worker of this process leaves
        self.finalizing = asyncio.Lock()  # one worker of this process at a time goes for the finalize role
        self.straggling = asyncio.Lock()  # one idle worker of this process at a time looks (Worker.straggler)
        self.straggler: Any = None  # the worker holding it
        self._own: set[str] | None = None  # the shards of this process's own runs (keep_to_own_runs)
        self.role_seen = False  # the finalize role exists: look at it by a read, not a losing create
        self.beat_started = asyncio.Event()  # a worker here claimed: the process beats (images/fleet/beat.py)
        self.fresh_since: dict[str, float] = {}  # shard -> when a listing first showed it never claimed
        self._dataset_watch: asyncio.Task | None = None
        self._quarantine: Quarantine | None = None
        self._stack = AsyncExitStack()
        self._tmp = tempfile.TemporaryDirectory(prefix="bucketrun-fleet-")

    @property
    def output_prefix(self) -> str:
        return keys.fleet_output_prefix(self.job_id, self.body.output.prefix)

    @property
    def attempt(self) -> int:
        return self.view.attempt if self.view else 0

    async def __aenter__(self) -> "FleetJob":
        self.bucket = await self._stack.enter_async_context(open_async_bucket(self.bucket_url))
        return self

    @property
    def workdir(self) -> Path:
        return Path(self._tmp.name)

    async def __aexit__(self, *exc) -> None:
        if self._dataset_watch is not None:
            self._dataset_watch.cancel()
        if self._quarantine is not None:
            await self._quarantine.close()
        if self.processor is not None:
            self.processor.close()
        await self._stack.aclose()
        self._tmp.cleanup()

    async def open(self) -> None:
        """Read the job; stop unless it is launched or running; plan (or follow the plan); make the processor."""
        try:
            self.manifest = await asyncio.to_thread(load_job_manifest, self.sync, self.job_id)
        except NotFound as exc:
            raise FleetStopped(f"job {self.job_id} has no manifest") from exc
        self.body = self.manifest.body
        await self.refresh_view()
        self.check_live()
        items_src = self.body.items
        self.source = self.bucket
        if items_src.bucket:
            self.source = await self._stack.enter_async_context(open_async_bucket(items_src.bucket))
        try:
            self.plan = await read_plan(self.bucket, self.job_id)
            self.plan_existed = self.plan is not None and not self.plan.ours
            if self.plan is None:
                if items_src.inline is not None:
                    items = list(items_src.inline)
                elif items_src.file:
                    items = await read_items_file(self.bucket, items_src.file)
                else:
                    items = await list_items(self.source, items_src.prefix or "", items_src.suffix)
                if not items:
                    where = items_src.file or f"{items_src.bucket or 'this bucket'}/{items_src.prefix}"
                    raise PlanError(f"no items found in {where}" + (f" ending in {items_src.suffix!r}"
                                                                     if items_src.suffix else ""))
                self.plan = await write_plan(self.bucket, self.job_id, items, self.body.shard_size,
                                             plan_source(items_src), self.writer)
                self.items = items if self.plan.ours else await load_items(self.bucket, self.plan)
            else:
                self.items = await load_items(self.bucket, self.plan)
        except PlanError as exc:
            await self.fail(FailureClass.BAD_INPUT, str(exc), where="plan")
            raise FleetStopped(str(exc)) from exc
        ctx = ProcessorContext(self.source, self.workdir, self.device, self.writer, output=self.sync,
                               output_prefix=self.output_prefix, job_id=self.job_id, attempt=self.attempt)
        try:
            self.processor = make_processor(self.body.processor.factory, self.body.processor.options, ctx)
            self.schema = schema_of(self.processor)
        except ProcessorError as exc:
            await self.fail(FailureClass.CONFIG_ERROR, str(exc), where="processor")
            raise FleetStopped(str(exc)) from exc
        await self.mark_running()

    async def shared_listing(self, name: str, list_fn, min_age_s: float, s_per_page: float):
        """A listing (`name`: "both" leases and done markers, or "leases"), made once for all the workers of this
        process and no more often than its last size allows (`s_per_page` seconds per page of 1,000 keys, at
        least `min_age_s`): a LIST is the store's most expensive request, and a full one grows with the plan."""
        lock = self._listing_locks.setdefault(name, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            cached = self._listings.get(name)
            if cached is not None:
                at, pages, found = cached
                if now - at <= max(min_age_s, s_per_page * pages):
                    return found
            found = await list_fn()
            self._listings[name] = (time.monotonic(), sum(-(-len(part) // 1000) for part in found), found)
            return found

    def watch_for_dataset(self) -> None:
        """Started by the first worker of this process with nothing left to claim: one HEAD a second for the
        whole process, so that idle workers leave within a second or two of the dataset's commit."""
        if self._dataset_watch is None:
            self._dataset_watch = asyncio.create_task(self._watch_dataset())

    async def _watch_dataset(self) -> None:
        key = keys.fleet_dataset_key(self.output_prefix)
        while not self.finished.is_set():
            try:
                await self.bucket.head(key)
                self.finished.set()
                return
            except NotFound:
                pass
            except BucketrunError as exc:
                log.warning("looking for %s: %s", key, exc)
            await asyncio.sleep(DATASET_POLL_S * random.uniform(0.8, 1.2))

    @property
    def quarantine(self) -> Quarantine:
        """This process's quarantine child; it gets what it needs to make the processor: URLs and names only."""
        if self._quarantine is None:
            self._quarantine = Quarantine(self.workdir, {
                "bucket_url": self.bucket_url, "source_url": self.body.items.bucket or self.bucket_url,
                "job_id": self.job_id, "worker": self.writer, "device": self.device, "attempt": self.attempt,
                "factory": self.body.processor.factory, "options": self.body.processor.options,
                "output_prefix": self.output_prefix})
        return self._quarantine

    @property
    def tail(self) -> TailLook:
        """This process's one look at the last shards (images/fleet/tail.py)."""
        if self._tail is None:
            self._tail = TailLook(self.bucket, self.job_id, self.marker_cache)
        return self._tail

    def keep_to_own_runs(self) -> None:
        """Until a listing shows a shard never claimed (ripe()), this process's workers claim only in the runs
        they start on (claims.start_point): a run elsewhere looks free only because its owner, in another
        process, has not been seen claiming it, and a jump into it lost a claim to that owner. Called once the
        process's workers exist."""
        shards, count = self.plan.base_shards(), self.body.workers.count
        starts = [claims.spread_start(w.id, count, len(shards)) for w in self.workers]
        if not starts or None in starts:  # ids the launcher did not spread evenly: no runs of their own
            return
        share = max(1, math.ceil(len(shards) / count))
        self._own = {s for lo in starts for s in shards[lo:lo + share]}
        self.unavailable |= set(shards) - self._own

    async def list_both(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Done markers and leases, a request per 1,000 keys each: what `shared_listing("both", ...)` holds."""
        return (await list_shards(self.bucket, keys.fleet_done_prefix(self.job_id)),
                await list_shards(self.bucket, keys.fleet_leases_prefix(self.job_id)))

    def ripe(self, fresh: list[str]) -> tuple[set[str], float]:
        """Of the shards a listing shows never claimed, those this process may claim now: its own runs' at once,
        another process's only once unclaimed for FRESH_WAIT_S (its owner may be a process still starting: a
        hundred workers over forty shards lost four claims in ten to owners that came a second late). Also the
        seconds until the next one ripens."""
        now = time.monotonic()
        ripe, wait = set(), FRESH_WAIT_S
        for s in fresh:
            since = self.fresh_since.setdefault(s, now)
            if self._own is None or s in self._own or now - since >= FRESH_WAIT_S:
                ripe.add(s)
            else:
                wait = min(wait, FRESH_WAIT_S - (now - since))
        return ripe, wait

    def held_or_picked(self, pick_s: float) -> set[str]:
        """Shards this process's own workers hold or are about to claim: they need no look from the bucket. A pick
        older than `pick_s` (a lease's life) is not counted: its picker is stuck in the shard before it, and a
        sibling with nothing to do may claim it (the picker's own claim then loses, as to any other worker)."""
        now = time.monotonic()
        picked = {s for s, at in self.picked.items() if now - at < pick_s}
        return picked.union(*(w.holding for w in self.workers))

    async def learn_ledgers(self) -> None:
        """Other processes' won markers from their ledgers (one LIST page, a GET per new ledger), into this
        process's marker cache, at most every LEDGER_LOOK_S: what a straggler needs to see the tail is near,
        for a fraction of a full listing of done markers."""
        async with self._ledger_lock:
            if time.monotonic() - self._ledgers_at < LEDGER_LOOK_S:
                return
            await read_ledgers(self.bucket, self.job_id, self.marker_cache, self.ledgers_seen, self.ledger_requests)
            self._ledgers_at = time.monotonic()

    def parts_listing(self) -> PartsListing:
        """This process's one early listing of parts/ for its finalizer (commit.py), started anew if it failed."""
        t = self._parts.task if self._parts is not None else None
        if t is None or (t.done() and (t.cancelled() or t.exception() is not None)):
            self._parts = list_parts_early(self.bucket, self.output_prefix)
        return self._parts

    def children(self) -> set[str]:
        """Shards named as children by the markers this process knows (won, from ledgers, looked up): a shard a
        worker here never listed, such as a remainder offered by a drained or split shard."""
        cache = self.marker_cache
        if len(cache) != self._children_of:
            for marker in itertools.islice(cache.values(), self._children_of, None):
                self._children |= {keys.shard_id(c[0], c[1]) for c in marker.get("children") or []}
            self._children_of = len(cache)
        return self._children

    def won(self, shard: str, marker: dict[str, Any]) -> None:
        self.marker_cache[shard] = marker
        self.unledgered[shard] = marker

    async def write_ledger(self, writer: str) -> None:
        """The markers this process won, as one write-once object (a new one each time it falls idle with more)."""
        if not self.unledgered:
            return
        batch, self.unledgered = self.unledgered, {}
        key = keys.fleet_ledger_key(self.job_id, writer, self.ledgers)
        self.ledgers += 1
        # what this process spent on the job since its last ledger, and this create: the finalizer sums them
        spent = meter.take(self.job_id)
        requests = meter.add(spent, {meter.A: 1})
        try:
            await aconditional.create_json(self.bucket, key, {"markers": batch, "requests": requests})
        except BucketrunError:
            meter.give_back(self.job_id, spent)
            self.unledgered.update(batch)  # the finalizer reads those markers one by one instead; nothing is lost
            return
        meter.settle(self.job_id, {meter.A: 1})

    def spent_by_workers(self) -> dict[str, int]:
        """The ledgers' requests, summed, for the terminal transition: this process's own since its last ledger
        are added by append_transition itself."""
        total = dict.fromkeys(meter.CLASSES, 0)
        for rec in self.ledger_requests.values():
            total = meter.add(total, rec)
        return {**total, "ledgers": len(self.ledger_requests)}

    async def refresh_view(self) -> JobView:
        self.view = await asyncio.to_thread(read_view, self.sync, self.job_id, self.view)
        return self.view

    def check_live(self) -> None:
        state = self.view.state if self.view else None
        if state not in (JobState.LAUNCHED, JobState.RUNNING):
            raise FleetStopped(f"job {self.job_id} is {state.value if state else 'unknown'}")

    async def mark_running(self) -> None:
        """The first worker up writes `running`; the others find it written."""
        if self.view.state is not JobState.LAUNCHED:
            return
        try:
            _, self.view = await asyncio.to_thread(append_transition, self.sync, self.job_id, JobState.RUNNING,
                                                   writer=self.writer, attempt=self.attempt,
                                                   expect=JobState.LAUNCHED, view=self.view)
        except (IllegalTransition, StaleAttempt):
            await self.refresh_view()
            self.check_live()

    async def succeed(self, detail: dict[str, Any]) -> bool:
        try:
            _, self.view = await asyncio.to_thread(append_transition, self.sync, self.job_id, JobState.SUCCEEDED,
                                                   writer=self.writer, attempt=self.attempt,
                                                   expect={JobState.RUNNING, JobState.LAUNCHED}, view=self.view,
                                                   detail=detail)
            return True
        except (IllegalTransition, StaleAttempt) as exc:
            log.info("succeeded not written by %s: %s", self.writer, exc)
            return False

    def spec_verify(self, result: dict[str, Any]) -> list[str]:
        return get_kind("fleet").verify(self.manifest, result)

    async def fail_code(self, message: str, where: str = "finalize") -> None:
        await self.fail(FailureClass.CODE_ERROR, message, where=where)

    async def fail(self, cls: FailureClass, message: str, where: str) -> None:
        error = error_detail(cls, message[:500], where=where)["error"]
        try:
            await asyncio.to_thread(record_failure, self.sync, self.job_id, error, writer=self.writer,
                                    attempt=self.attempt, max_attempts=self.manifest.resources.max_attempts,
                                    view=self.view)
        except (IllegalTransition, StaleAttempt) as exc:
            log.info("failure not recorded (the job moved on): %s", exc)
