"""Shard leases for fleet workers: the lease of events/lease.py (generation fencing, expiry by the store's
clock), awaited, plus two counts that isolate an item that kills its worker without charging its neighbours:

- `deaths`: times a holder died while the shard was under way. A worker claims a shard only when it starts it,
  so a held lease always means work in progress; but the other workers of a dying process die with it, so a
  death is only a suspicion, and a suspected shard runs in quarantine (a process of its own).
- `kills`: deaths in quarantine of a shard of one item: attributable, and `max_item_attempts` of them
  dead-letter the item.

A fresh shard is claimed with one create-if-absent and no read first: a lost create means someone took it (or,
after a retried request, that our own create landed, which the write token tells). Only a straggler (an expired
or released lease) is read and taken over by compare-and-swap.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .. import aconditional, codec, keys
from ..errors import ConditionalConflict, NotFound, PreconditionFailed, StorageError
from ..lease import HELD, RELEASED, RENEW_FRACTION, LeaseLost, Snapshot, _age, _check_body


@dataclass
class ShardLease:
    """A held lease on a shard (or on a one-writer role: progress, finalize)."""

    key: str
    body: dict[str, Any]
    etag: str
    written_at: float  # monotonic, taken before the write was sent
    # One rewrite at a time: a renewal racing a kill count or a release on the same ETag would lose to our own
    # write, and the worker would take its live shard for lost (then leave it to expire, a death charged).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    @property
    def shard(self) -> str:
        return self.key.rsplit("/", 1)[-1][:-len(".json")]

    generation = property(lambda self: self.body["generation"])
    deaths = property(lambda self: self.body.get("deaths", 0))
    kills = property(lambda self: self.body.get("kills", 0))
    ttl_s = property(lambda self: self.body["ttl_s"])

    @property
    def quarantined(self) -> bool:
        """A holder died inside this shard once: it runs alone in a process of its own from now on."""
        return self.deaths > 0 or self.kills > 0

    def due(self) -> bool:
        """Renewed once a third of lease_s passed (the same rule as events/lease.py), only while it still runs."""
        return time.monotonic() - self.written_at >= self.ttl_s * RENEW_FRACTION


def _body(holder: str, ttl_s: float, generation: int, deaths: int, kills: int = 0,
          state: str = HELD) -> dict[str, Any]:
    stamp = codec.iso(codec.now())
    return {"holder": holder, "ttl_s": ttl_s, "state": state, "generation": generation, "deaths": deaths,
            "kills": kills, "acquired_at": stamp, "renewed_at": stamp}


async def read(bucket, key: str) -> Snapshot | None:
    try:
        blob = await bucket.get(key)
    except NotFound:
        return None
    age, clock = _age(blob.last_modified, blob.store_time)
    return Snapshot(key, _check_body(key, codec.loads(blob.data)), blob.etag, age, clock)


async def claim_fresh(bucket, key: str, holder: str, ttl_s: float) -> ShardLease | None:
    """One request: a create-if-absent. A 412 means taken, unless the lease holds our own write token: the
    client retried a create whose first try landed. Without that read-back the lease would sit unprocessed,
    held by nobody who knows it, until it expired (the fleet's tail waited on such leases). A 412 that cannot
    answer a resend (the folder backend's) is a loss for certain, and needs no read."""
    body = {**_body(holder, ttl_s, 1, 0), aconditional.TOKEN: aconditional.new_token()}
    started = time.monotonic()
    try:
        etag = await bucket.create(key, codec.dumps(body), aconditional.JSON)
    except (PreconditionFailed, ConditionalConflict) as exc:  # a 409: a racing create the store could not order
        if isinstance(exc, PreconditionFailed) and not exc.retried:
            return None
        current, etag = await aconditional.read_json(bucket, key)
        if current is None or current.get(aconditional.TOKEN) != body[aconditional.TOKEN]:
            return None
        body = current
    except StorageError:  # failed past the client's retries: the create may still have landed
        current, etag = await aconditional.read_json(bucket, key)
        if current is None:
            raise
        if current.get(aconditional.TOKEN) != body[aconditional.TOKEN]:
            return None
        body = current
    return ShardLease(key, body, etag, started)


async def take_over(bucket, holder: str, ttl_s: float, snap: Snapshot) -> ShardLease | None:
    """Take an expired or released lease by CAS on the ETag read; the generation goes up by one, and an expired
    holder counts as a death (a lease is held only while its shard is under way, and it stopped without
    releasing). None if someone else got there first."""
    if snap.live or snap.state not in (HELD, RELEASED):
        return None
    deaths = snap.body.get("deaths", 0) + (1 if snap.state == HELD else 0)
    started = time.monotonic()
    body = {**_body(holder, ttl_s, snap.generation + 1, deaths, snap.body.get("kills", 0)),
            "taken_from": snap.body.get("holder")}  # who held it before: whose death a death was
    out = await aconditional.replace_json(bucket, snap.key, body, snap.etag)
    return ShardLease(snap.key, out.body, out.etag, started) if out.won else None


async def _rewrite(bucket, lease: ShardLease, **change: Any) -> None:
    """`change` maps a field to a value, or to a function of the lease's current body (applied under the lock)."""
    async with lease.lock:
        body = {**lease.body, **{k: v(lease.body) if callable(v) else v for k, v in change.items()},
                "renewed_at": codec.iso(codec.now())}
        started = time.monotonic()
        out = await aconditional.replace_json(bucket, lease.key, body, lease.etag)
        if not out.won:
            now = out.body or {}
            raise LeaseLost(f"{lease.key}: generation {lease.generation} lost to {now.get('holder')!r} "
                            f"(generation {now.get('generation')}, {now.get('state')})")
        lease.body, lease.etag, lease.written_at = out.body, out.etag, started


async def renew(bucket, lease: ShardLease) -> None:
    """LeaseLost if taken over: the holder must stop and will find its commit refused anyway."""
    await _rewrite(bucket, lease)


async def release(bucket, lease: ShardLease, died: bool = False) -> None:
    """Hand the shard back at once (no waiting for expiry). `died`: the holder's previous life held it."""
    await _rewrite(bucket, lease, state=RELEASED, deaths=lambda b: b.get("deaths", 0) + (1 if died else 0))


async def record_kill(bucket, lease: ShardLease) -> None:
    """The shard's quarantine process died inside its one item: a death that is the item's own, kept in the
    lease (still held) so that a holder dying in turn does not lose the count."""
    await _rewrite(bucket, lease, kills=lambda b: b.get("kills", 0) + 1)


async def offer(bucket, job_id: str, shard: str, deaths: int = 0, kills: int = 0) -> bool:
    """Create a new shard (a remainder or a split-off part) as a released lease, so any worker can claim it."""
    return await aconditional.create_once(bucket, keys.fleet_lease_key(job_id, shard),
                                          codec.dumps(_body("", 1.0, 0, deaths, kills, RELEASED)))


async def release_stale(bucket, key: str, holder: str, generation: int) -> bool:
    """A restarted worker hands back what its previous life held, a death each (a lease is held only while its
    shard is under way): only if the bucket still shows it as ours."""
    snap = await read(bucket, key)
    if snap is None or snap.state != HELD or snap.body.get("holder") != holder or snap.generation != generation:
        return False
    lease = ShardLease(key, snap.body, snap.etag, time.monotonic())
    try:
        await release(bucket, lease, died=True)
    except LeaseLost:
        return False
    return True


def spread_start(worker_id: str, count: int, n_shards: int) -> int | None:
    """A launcher id's start (w0000.. or w0001.. up to the manifest's count), spread evenly over the shard
    order, so each worker has a run of its own; None for any other id."""
    m = re.fullmatch(r"w(\d+)", worker_id)
    if m and 1 < count and int(m[1]) <= count:
        return (int(m[1]) % count) * n_shards // count
    return None


def start_point(worker_id: str, count: int, n_shards: int, digest: int) -> int:
    """Where a worker starts in the shard order: a launcher id's spread start, any other id's by its hash."""
    start = spread_start(worker_id, count, n_shards)
    return start if start is not None else digest % max(1, n_shards)


JUMP_CHOICES = 8  # a worker out of its own run jumps into one of this many longest free runs


def pick(shards: list[str], unavailable: set[str], cursor: int | None, rng: random.Random) -> int | None:
    """Go on from the cursor while its shards are free; else jump to the last shard of one of the longest runs
    of free shards, to work down it (the caller steps by -1 after a jump): the run's owner works its way up
    from its start, so the two meet once, at most one lost claim a run, where a jump into its middle lost one
    at each end."""
    n = len(shards)
    if cursor is not None and 0 <= cursor < n and shards[cursor] not in unavailable:
        return cursor
    runs, run_start = [], None
    for i in range(n + 1):
        free = i < n and shards[i] not in unavailable
        if free and run_start is None:
            run_start = i
        elif not free and run_start is not None:
            runs.append((i - run_start, run_start))
            run_start = None
    if not runs:
        return None
    runs.sort(reverse=True)
    cut = runs[min(len(runs), JUMP_CHOICES) - 1][0]  # ties at the cut all count: in the tail every run is one
    length, start = rng.choice([r for r in runs if r[0] >= cut])
    return start + length - 1
