"""A lease on one bucket object, with a fencing generation.

One holder at a time per key. Expiry is judged by the STORE's clock (its `Date` against the object's
Last-Modified), never by timestamps a worker wrote, so a skewed worker cannot steal a live lease. Every
takeover bumps `generation`; the holder's final write (`commit`) is a compare-and-swap of the lease object
itself, so a holder that was paused and taken over is refused by the bucket, not by a read-then-write check.
Every write goes through events.conditional, so a lost response (412 on our own write) or a 409 is decided
by reading back our write token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import codec, conditional
from .errors import CorruptObject, JobError, NotFound, StaleAttempt
from .storage import Bucket

HELD, RELEASED, COMMITTED = "held", "released", "committed"
STATES = (HELD, RELEASED, COMMITTED)
RENEW_FRACTION = 1 / 3  # renew once a third of the ttl has passed: two more tries before it lapses
ACQUIRE_ROUNDS = 5


class LeaseError(JobError):
    """A lease rule was broken (e.g. renewing a lease this holder already released)."""


class LeaseHeld(LeaseError):
    """Someone else holds a live lease on the key; `body` is what the bucket holds."""

    def __init__(self, key: str, body: dict[str, Any] | None):
        self.key, self.body = key, body or {}
        super().__init__(f"{key}: lease held by {self.body.get('holder')!r} "
                         f"(generation {self.body.get('generation')}, {self.body.get('state')})")


class LeaseCommitted(LeaseHeld):
    """The lease was committed: its work is done for good, it never expires. `body['payload']` is the result."""


class LeaseLost(LeaseError, StaleAttempt):
    """The bucket refused this holder's write: the lease was taken over (a newer generation) or ended.
    A StaleAttempt too, so code that already stops stale writers stops this one."""


def _age(last_modified: datetime | None, store_time: datetime | None) -> tuple[float | None, str]:
    """Seconds since the object was last written, by the store's clock, and which clock judged it."""
    if last_modified is None:
        return None, "none"  # cannot judge: treated as live, never stolen on a guess
    if store_time is None:
        # The store did not say what time it is (no Date header): fall back to this machine's clock, the
        # one case where a skewed worker clock can make a live lease look expired.
        return (codec.now() - last_modified).total_seconds(), "local"
    return (store_time - last_modified).total_seconds(), "store"


@dataclass(frozen=True)
class Snapshot:
    """One read of a lease: its body, the ETag to compare-and-swap on, and its age by the store's clock."""

    key: str
    body: dict[str, Any]
    etag: str
    age_s: float | None
    clock: str  # "store", "local" (fallback) or "none"

    @property
    def state(self) -> str:
        return self.body["state"]

    @property
    def generation(self) -> int:
        return self.body["generation"]

    @property
    def expired(self) -> bool:
        """Only a held lease expires. The ttl is rounded up to whole seconds: S3's Last-Modified and Date
        are truncated to the second, and with a whole-second ttl `floor(D) - floor(L) > ttl` still implies
        that more than ttl really passed, so a lease never looks expired early."""
        if self.state != HELD or self.age_s is None:
            return False
        return self.age_s > math.ceil(self.body["ttl_s"])

    @property
    def live(self) -> bool:
        return self.state == HELD and not self.expired


def _check_body(key: str, body: Any) -> dict[str, Any]:
    ok = (isinstance(body, dict) and body.get("state") in STATES and isinstance(body.get("generation"), int)
          and isinstance(body.get("ttl_s"), (int, float)) and not isinstance(body.get("generation"), bool))
    if not ok:
        raise CorruptObject(f"{key}: not a lease object")
    return body


def read_lease(bucket: Bucket, key: str) -> Snapshot | None:
    """The lease as the bucket holds it now, or None if there never was one."""
    try:
        blob = bucket.get(key)
    except NotFound:
        return None
    age, clock = _age(blob.last_modified, blob.store_time)
    return Snapshot(key, _check_body(key, codec.loads(blob.data)), blob.etag, age, clock)


class Lease:
    """What a holder keeps: the body and ETag of its last write and when (monotonic) it was sent.

    Pass `generation` along with every side write so readers can tell a stale writer's objects apart."""

    def __init__(self, bucket: Bucket, key: str, body: dict[str, Any], etag: str, written_at: float):
        self.bucket, self.key, self.body, self.etag = bucket, key, body, etag
        self.written_at = written_at  # time.monotonic() before the last successful write was sent

    holder = property(lambda self: self.body["holder"])
    generation = property(lambda self: self.body["generation"])
    ttl_s = property(lambda self: self.body["ttl_s"])
    state = property(lambda self: self.body["state"])

    def __repr__(self) -> str:
        return f"Lease({self.key!r}, holder={self.holder!r}, generation={self.generation}, {self.state})"

    def remaining(self) -> float:
        """Seconds left by the holder's own monotonic count. Conservative: it starts before the write was
        sent, and the store rounds the ttl up. Wall-clock changes cannot move it."""
        return self.ttl_s - (time.monotonic() - self.written_at)

    def due(self) -> bool:
        return time.monotonic() - self.written_at >= self.ttl_s * RENEW_FRACTION

    def maybe_renew(self) -> bool:
        """Renew if due (call it from the work loop); True if it wrote. LeaseLost if taken over."""
        if not self.due():
            return False
        self.renew()
        return True

    def renew(self) -> None:
        """Rewrite the lease, same generation, If-Match on our last ETag. LeaseLost if taken over."""
        self._write(HELD)

    def release(self) -> None:
        """End the lease by writing a released body (not a delete, so the next generation is still +1)."""
        self._write(RELEASED)

    def commit(self, payload: Any = None) -> None:
        """The fenced commit: CAS the lease itself into `committed` with the payload. If a newer generation
        took over, our ETag no longer matches and the bucket refuses it: LeaseLost. Committed never expires."""
        self._write(COMMITTED, payload=payload, committed_at=codec.iso(codec.now()))

    def _write(self, state: str, **extra: Any) -> None:
        if self.state != HELD:
            raise LeaseError(f"{self.key}: this lease was already {self.state} by this holder")
        body = {**self.body, **extra, "state": state, "renewed_at": codec.iso(codec.now())}
        started = time.monotonic()
        out = conditional.replace_json(self.bucket, self.key, body, self.etag)
        if not out.won:  # the bucket said no; nothing is cached, so every later write asks the bucket again
            now = out.body or {}
            raise LeaseLost(f"{self.key}: lease generation {self.generation} lost to {now.get('holder')!r} "
                            f"(generation {now.get('generation')}, {now.get('state')})")
        self.body, self.etag, self.written_at = out.body, out.etag, started


def acquire(bucket: Bucket, key: str, holder: str, ttl_s: float) -> Lease:
    """Create the lease (If-None-Match, generation 1), or take over an expired or released one by CAS on
    the ETag just read (generation + 1). LeaseHeld if live, LeaseCommitted if committed."""
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    current: dict[str, Any] | None = None
    for _ in range(ACQUIRE_ROUNDS):
        snap = read_lease(bucket, key)
        stamp = codec.iso(codec.now())  # informational only: nobody judges expiry by it
        body = {"holder": holder, "ttl_s": ttl_s, "state": HELD, "acquired_at": stamp, "renewed_at": stamp}
        started = time.monotonic()
        if snap is None:
            out = conditional.create_json(bucket, key, {**body, "generation": 1})
        elif snap.state == COMMITTED:
            raise LeaseCommitted(key, snap.body)
        elif snap.live:
            raise LeaseHeld(key, snap.body)
        else:
            out = conditional.replace_json(bucket, key, {**body, "generation": snap.generation + 1}, snap.etag)
        if out.won:
            return Lease(bucket, key, out.body, out.etag, started)
        current = out.body  # someone else wrote first: read again and judge their lease
    raise LeaseHeld(key, current)


def check_fence(bucket: Bucket, key: str, generation: int) -> Snapshot:
    """Is `generation` still the live holder? For a writer about to make side writes. LeaseLost if not.

    Time-of-check/time-of-use: the answer is stale as soon as it returns; a takeover can land between this
    check and the side write. Use it to stop early, key side writes by generation so they are harmless, and
    let commit() (decided by the bucket) be the only write that makes the result count."""
    snap = read_lease(bucket, key)
    if snap is None or snap.generation != generation or not snap.live:
        found = "no lease" if snap is None else f"generation {snap.generation}, {snap.state}" + (
            ", expired" if snap.expired else "")
        raise LeaseLost(f"{key}: fence for generation {generation} failed ({found})")
    return snap
