"""The lease contract on every backend: the folder, S3 over boto3, and S3 over aioboto3 (through a shim)."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from bucketrun.events import codec
from bucketrun.events.errors import ConditionalConflict, PreconditionFailed, StaleAttempt
from bucketrun.events.lease import (LeaseCommitted, LeaseError, LeaseHeld, LeaseLost, Snapshot, acquire,
                                    check_fence, read_lease)
from bucketrun.events.storage import open_bucket, split_s3_url

from conftest import make_s3_bucket
from test_storage_contract import SyncOverAsync

KEY = "jobs/j1/lease.json"
LONG = 30  # a ttl that cannot lapse during a test


@pytest.fixture(params=["local", "s3", "s3-async"])
def backend(request, tmp_path):
    if request.param == "local":
        return "local", str(tmp_path / "bucket")
    request.getfixturevalue("s3_endpoint")
    return request.param, f"s3://{make_s3_bucket()}/team-a"


def _open(kind, url):
    return SyncOverAsync(*split_s3_url(url)) if kind == "s3-async" else open_bucket(url)


@pytest.fixture
def store(backend):
    bucket = _open(*backend)
    yield bucket
    if isinstance(bucket, SyncOverAsync):
        bucket.close()


def short_ttl(kind):
    return 1 if kind == "local" else 2  # S3 timestamps have 1-second resolution


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def stored(bucket, key=KEY):
    return codec.loads(bucket.get(key).data)


# -- 1. the life of a lease ------------------------------------------------------------------------------

def test_acquire_renew_release_reacquire(store):
    a = acquire(store, KEY, "a", LONG)
    assert (a.generation, a.holder, a.state) == (1, "a", "held")
    snap = read_lease(store, KEY)
    assert snap.clock == "store" and snap.live and snap.etag == a.etag  # judged by the store's Date header
    assert set(snap.body) >= {"holder", "generation", "ttl_s", "state", "acquired_at", "renewed_at", "write_token"}
    with pytest.raises(LeaseHeld) as held:
        acquire(store, KEY, "b", LONG)
    assert held.value.body["holder"] == "a"

    assert not a.due() and not a.maybe_renew()  # renewal is timed by time.monotonic
    a.written_at -= LONG / 2
    before = a.etag
    assert a.due() and a.maybe_renew() and a.etag != before and not a.due()
    a.renew()
    assert store.get(KEY).etag == a.etag and stored(store)["generation"] == 1

    a.release()
    assert stored(store)["state"] == "released" and stored(store)["generation"] == 1
    with pytest.raises(LeaseError):
        a.renew()
    b = acquire(store, KEY, "b", LONG)  # a released lease is free at once, one generation on
    assert (b.generation, stored(store)["holder"]) == (2, "b")
    b.release()
    assert acquire(store, KEY, "a", LONG).generation == 3  # generations never go backwards


# -- 2. racing for one expired lease ---------------------------------------------------------------------

N_RACERS = 8


def _racer(kind, url, barrier, results, i):
    bucket = _open(kind, url)
    barrier.wait()
    try:
        results.put(("won", i, acquire(bucket, KEY, f"racer-{i}", LONG).generation))
    except LeaseHeld:
        results.put(("held", i, None))
    except Exception as exc:  # reported, so the test shows it instead of timing out
        results.put(("error", i, repr(exc)))


def test_racers_take_over_expired_lease_exactly_one_wins(backend, store):
    kind, url = backend
    acquire(store, KEY, "old", short_ttl(kind))
    wait_until(lambda: read_lease(store, KEY).expired)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(N_RACERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(kind, url, barrier, results, i)) for i in range(N_RACERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(i for _, i, _ in outcomes) == list(range(N_RACERS)), outcomes
    winners = [(i, gen) for what, i, gen in outcomes if what == "won"]
    assert len(winners) == 1 and all(what in ("won", "held") for what, _, _ in outcomes), outcomes
    body = stored(store)
    assert (body["holder"], body["generation"]) == (f"racer-{winners[0][0]}", 2) and winners[0][1] == 2


# -- 3. a holder frozen past its expiry ------------------------------------------------------------------

def _frozen_holder(kind, url, ttl, go, results):
    bucket = _open(kind, url)
    lease = acquire(bucket, KEY, "sleeper", ttl)
    results.put(("acquired", lease.generation))
    deadline = time.monotonic() + 60
    while not go.value and time.monotonic() < deadline:  # "working"; frozen here by SIGSTOP
        time.sleep(0.01)
    for name, op in (("commit", lambda: lease.commit({"result": "stale"})), ("renew", lease.renew),
                     ("fence", lambda: check_fence(bucket, KEY, lease.generation))):
        try:
            op()
            results.put((name, "ok"))
        except LeaseLost:
            results.put((name, "lost"))
        except Exception as exc:
            results.put((name, repr(exc)))


def _process_state(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_paused_holder_is_fenced_after_takeover(backend, store):
    kind, url = backend
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.RawValue("b", 0), ctx.Queue()  # no lock: an Event's set() waits for the frozen waiter
    proc = ctx.Process(target=_frozen_holder, args=(kind, url, short_ttl(kind), go, results))
    proc.start()
    try:
        assert results.get(timeout=30) == ("acquired", 1)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: _process_state(proc.pid) == "T", 5)
        go.value = 1  # it cannot see this until it is continued
        wait_until(lambda: read_lease(store, KEY).expired)
        challenger = acquire(store, KEY, "challenger", LONG)
        assert challenger.generation == 2
        os.kill(proc.pid, signal.SIGCONT)
        outcomes = dict(results.get(timeout=30) for _ in range(3))
    finally:
        go.value = 1
        os.kill(proc.pid, signal.SIGCONT)
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    assert outcomes == {"commit": "lost", "renew": "lost", "fence": "lost"}, outcomes
    body = stored(store)
    assert (body["holder"], body["generation"], body["state"]) == ("challenger", 2, "held")
    assert "payload" not in body
    check_fence(store, KEY, 2)
    challenger.commit({"result": "fresh"})
    assert stored(store)["payload"] == {"result": "fresh"}


# -- 4. clock skew ---------------------------------------------------------------------------------------

def test_skewed_clock_cannot_take_over_live_lease(store, monkeypatch):
    acquire(store, KEY, "holder", LONG)
    real_now = codec.now
    monkeypatch.setattr(codec, "now", lambda: real_now() + timedelta(hours=1))  # the challenger's clock
    body = stored(store)
    naive_expiry = codec.parse_iso(body["renewed_at"]) + timedelta(seconds=body["ttl_s"])
    assert naive_expiry < codec.now()  # judged by written timestamps vs this clock, it looks long expired
    with pytest.raises(LeaseHeld):
        acquire(store, KEY, "skewed", LONG)
    snap = read_lease(store, KEY)
    assert snap.clock == "store" and snap.live and snap.age_s < LONG
    assert (snap.body["holder"], snap.generation) == ("holder", 1)


# -- 5. a committed lease is final -----------------------------------------------------------------------

def test_committed_lease_is_never_taken_over(backend, store):
    ttl = short_ttl(backend[0])
    done = acquire(store, KEY, "worker", ttl)
    done.commit({"output": "s3://out/j1.srt"})
    other = "jobs/j2/lease.json"  # same ttl, written after the commit: a control that does expire
    acquire(store, other, "worker", ttl)
    wait_until(lambda: read_lease(store, other).expired)
    snap = read_lease(store, KEY)
    assert snap.age_s > math.ceil(ttl) and snap.state == "committed" and not snap.expired
    with pytest.raises(LeaseCommitted) as refused:
        acquire(store, KEY, "thief", ttl)
    assert refused.value.body["payload"] == {"output": "s3://out/j1.srt"}
    assert acquire(store, other, "thief", ttl).generation == 2
    body = stored(store)
    assert (body["holder"], body["generation"], body["state"]) == ("worker", 1, "committed")
    with pytest.raises(LeaseError):
        done.renew()


# -- 6/7. lost responses and 409s ------------------------------------------------------------------------

class Flaky:
    """Wraps a bucket: conditional writes fail the way the network makes them fail."""

    def __init__(self, inner, mode, times=None):
        self.inner, self.mode, self.left, self.raised = inner, mode, times, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _fail(self, write):
        if self.left == 0:
            return write()
        if self.left is not None:
            self.left -= 1
        self.raised += 1
        if self.mode == "conflict-before":
            raise ConditionalConflict("409 before the write")
        write()
        raise ConditionalConflict("409 after the write") if self.mode == "conflict-after" else \
            PreconditionFailed("412: botocore retried a write whose response was lost")

    def create(self, key, data, content_type="application/octet-stream"):
        return self._fail(lambda: self.inner.create(key, data, content_type))

    def replace(self, key, data, etag, content_type="application/octet-stream"):
        return self._fail(lambda: self.inner.replace(key, data, etag, content_type))


def test_lost_responses_are_recognised(store):
    flaky = Flaky(store, "lost")
    a = acquire(flaky, KEY, "a", LONG)
    assert a.generation == 1 and a.etag == store.head(KEY).etag
    a.renew()
    a.release()
    b = acquire(flaky, KEY, "b", LONG)  # takeover of a released lease, through the CAS path
    b.renew()
    assert b.generation == 2 and b.etag == store.get(KEY).etag
    b.commit({"n": 1})
    assert flaky.raised == 6
    body = stored(store)
    assert (body["holder"], body["generation"], body["state"], body["payload"]) == ("b", 2, "committed", {"n": 1})
    with pytest.raises(LeaseHeld):
        acquire(flaky, KEY, "c", LONG)


@pytest.mark.parametrize("mode", ["conflict-before", "conflict-after"])
def test_conflict_409_is_retried_then_decided(store, mode):
    flaky = Flaky(store, mode, times=1)
    a = acquire(flaky, KEY, "a", LONG)
    assert (a.generation, flaky.raised, stored(store)["holder"]) == (1, 1, "a")
    a.release()
    flaky.left = 1
    b = acquire(flaky, KEY, "b", LONG)
    assert (b.generation, flaky.raised) == (2, 2) and b.etag == store.head(KEY).etag
    b.renew()  # the ETag it kept is the real one
    assert stored(store)["holder"] == "b"


def test_lease_lost_is_a_stale_attempt():
    assert issubclass(LeaseLost, StaleAttempt) and issubclass(LeaseCommitted, LeaseHeld)


# -- 8. expiry with a fractional ttl, and the rounding of expiry -------------------------------------------

FRACTIONAL = 1.5  # ceil(1.5) = 2: the store's whole-second clock judges it by 2 s


def _snapshot(ttl_s, age_s, state="held"):
    body = {"holder": "h", "generation": 1, "ttl_s": ttl_s, "state": state}
    return Snapshot(KEY, body, '"etag"', age_s, "store")


@pytest.mark.parametrize("ttl, live_ages, expired_ages", [
    (1.5, [0.0, 1.0, 1.5, 1.51, 1.99, 2.0], [2.01, 2.5, 3.0, 60.0]),
    (0.2, [0.0, 0.5, 1.0], [1.001, 2.0]),
    (1, [0.0, 0.99, 1.0], [1.01, 2.0]),
    (2, [1.0, 2.0], [2.01, 3.0]),
    (2.5, [2.5, 3.0], [3.01]),
])
def test_expiry_is_judged_against_the_ttl_rounded_up_to_whole_seconds(ttl, live_ages, expired_ages):
    """Snapshot.expired with constructed ages: a lease is live up to and including ceil(ttl) seconds by the
    store's clock and expired strictly after, because S3's timestamps are whole seconds."""
    assert [a for a in live_ages if _snapshot(ttl, a).expired] == []
    assert [a for a in expired_ages if not _snapshot(ttl, a).expired] == []
    assert all(_snapshot(ttl, a).live for a in live_ages)
    assert not any(_snapshot(ttl, a).live for a in expired_ages)
    for state in ("released", "committed"):  # only a held lease expires
        assert not any(_snapshot(ttl, a, state).expired for a in live_ages + expired_ages)
    assert not _snapshot(ttl, None).expired and _snapshot(ttl, None).live  # no clock: never stolen on a guess


def _watch_expiry(store, key, ttl):
    """Acquire, then read until the lease is judged expired; every read is checked against ceil(ttl).
    Returns the (age, expired) reads and the elapsed time by this test's clock at the first expired read."""
    limit = math.ceil(ttl)
    sent = time.monotonic()  # before the lease's write was sent: a bound on the store's age from above
    acquire(store, key, "holder", ttl)
    seen = []
    deadline = sent + 20
    while True:
        snap = read_lease(store, key)
        elapsed = time.monotonic() - sent  # after the read came back
        assert snap.clock == "store" and snap.age_s is not None
        seen.append((round(snap.age_s, 3), snap.expired))
        if snap.age_s <= limit:
            assert snap.live and not snap.expired, seen  # not judged expired up to ceil(ttl)
        else:
            assert snap.expired and not snap.live, seen  # and judged expired as soon as the store says more
            return seen, elapsed
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def test_a_fractional_ttl_is_not_judged_expired_before_its_rounded_up_ttl(store):
    """Through the bucket (ttl 1.5 s): every read while the store says at most ceil(1.5) = 2 s passed shows the
    lease live; once it says more, expired; and by this test's own clock more than 2 s had passed by then. A
    read must land between the bare ttl and its rounding for this to pin anything: on a machine too loaded
    for that (the window is 0.5-1 s wide), it tries again on a fresh key."""
    limit = math.ceil(FRACTIONAL)
    for n in range(3):
        key = f"jobs/j{n}/lease.json"
        seen, elapsed = _watch_expiry(store, key, FRACTIONAL)
        assert elapsed > limit, (elapsed, seen)  # never expired before ceil(ttl) had really passed
        assert stored(store, key)["holder"] == "holder"  # nobody took it: expiry is a judgement, not a write
        if any(FRACTIONAL < age <= limit for age, _ in seen):  # a live read past the bare ttl was made
            return
    pytest.fail(f"no read landed between {FRACTIONAL} s and {limit} s in 3 tries: {seen}")


def test_a_fractional_ttl_lease_fails_its_fence_once_expired_even_if_nobody_took_it_over(store):
    """check_fence refuses a holder whose lease lapsed (ttl 1.5 s) though it is still the latest generation and
    nobody has taken it over: its side writes must stop now, before a challenger turns up."""
    lease = acquire(store, KEY, "holder", FRACTIONAL)
    snap = check_fence(store, KEY, lease.generation)  # live: the fence holds
    assert snap.live and snap.generation == 1
    wait_until(lambda: read_lease(store, KEY).expired)
    with pytest.raises(LeaseLost, match="expired"):
        check_fence(store, KEY, lease.generation)
    body = stored(store)
    assert (body["holder"], body["generation"], body["state"]) == ("holder", 1, "held")  # not taken over
    with pytest.raises(LeaseLost):
        check_fence(store, KEY, lease.generation + 1)  # nor is a generation that never existed
    # a renewal (it was not taken over, so the CAS still matches) makes the fence hold again
    lease.renew()
    assert check_fence(store, KEY, lease.generation).live
