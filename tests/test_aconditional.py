"""events/aconditional.py, the asyncio twin of events/conditional.py, on the async buckets fleet workers use
(events/storage/aio.py: the folder in threads, aioboto3 on moto's S3): a lost response on our own write (the
store took it, the client retried and got 412) is a win, found by our write token; someone else's write is a
loss; a 409 is retried, then decided the same way. The shard leases of events/fleet/claims.py renew and take
over through it, so a renewal whose response was lost must not look like a takeover."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bucketrun.events import aconditional, codec, keys
from bucketrun.events.conditional import TOKEN
from bucketrun.events.errors import ConditionalConflict, PreconditionFailed
from bucketrun.events.fleet import claims
from bucketrun.events.lease import LeaseLost
from bucketrun.events.storage.aio import open_async_bucket

from conftest import make_s3_bucket
from fault_proxy import FaultProxy

KEY = "state/thing.json"
LEASE = keys.fleet_lease_key("J", keys.shard_id(0, 10))
LONG = 30.0  # a ttl that cannot lapse during a test


def run(coro):
    return asyncio.run(coro)


class AsyncFlaky:
    """Wraps an async bucket: conditional writes fail the way the network makes them fail.

    "lost": the write reaches the store, then the client sees 412 (botocore retried a request whose response
    was lost, and the retry found the precondition broken by our own first try). "conflict-before": a 409 and
    nothing written. "conflict-after": the write lands, then a 409."""

    def __init__(self, inner, mode, times=None):
        self.inner, self.mode, self.left, self.raised = inner, mode, times, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def _fail(self, write):
        if self.left == 0:
            return await write()
        if self.left is not None:
            self.left -= 1
        self.raised += 1
        if self.mode == "conflict-before":
            raise ConditionalConflict("409 before the write")
        await write()
        if self.mode == "conflict-after":
            raise ConditionalConflict("409 after the write")
        raise PreconditionFailed("412: the client retried a write whose response was lost")

    async def create(self, key, data, content_type="application/octet-stream"):
        return await self._fail(lambda: self.inner.create(key, data, content_type))

    async def replace(self, key, data, etag, content_type="application/octet-stream"):
        return await self._fail(lambda: self.inner.replace(key, data, etag, content_type))


async def _body(bucket, key=KEY):
    return codec.loads((await bucket.get(key)).data)


# -- create_json / replace_json --------------------------------------------------------------------------

def test_a_lost_response_on_our_own_create_or_replace_is_a_win(bucket_url):
    async def go():
        async with open_async_bucket(bucket_url) as b:
            flaky = AsyncFlaky(b, "lost")
            made = await aconditional.create_json(flaky, KEY, {"v": 1})
            assert made.won and made.body["v"] == 1, made
            assert made.etag == (await b.head(KEY)).etag  # the ETag of what the store holds, to CAS on next
            assert made.body[TOKEN] == (await _body(b))[TOKEN]

            changed = await aconditional.replace_json(flaky, KEY, {"v": 2}, made.etag)
            assert changed.won and changed.body["v"] == 2, changed
            assert changed.etag == (await b.head(KEY)).etag and (await _body(b))["v"] == 2
            assert flaky.raised == 2
            # the ETag it returned is the real one: a plain CAS on it succeeds
            assert (await aconditional.replace_json(b, KEY, {"v": 3}, changed.etag)).won

    run(go())


def test_someone_elses_write_is_a_loss_with_what_the_store_holds(bucket_url):
    """The control for the above: a 412 that is not ours must not be counted as a win."""
    async def go():
        async with open_async_bucket(bucket_url) as b:
            first = await aconditional.create_json(b, KEY, {"v": 1, "who": "first"})
            again = await aconditional.create_json(b, KEY, {"v": 9, "who": "second"})
            assert not again.won and again.body["who"] == "first" and again.etag == first.etag
            moved = await aconditional.replace_json(b, KEY, {"v": 2, "who": "mover"}, first.etag)
            stale = await aconditional.replace_json(b, KEY, {"v": 3, "who": "stale"}, first.etag)
            assert moved.won and not stale.won
            assert stale.body["who"] == "mover" and stale.etag == moved.etag
            assert (await _body(b))["who"] == "mover"

    run(go())


@pytest.mark.parametrize("mode", ["conflict-before", "conflict-after"])
def test_a_409_is_retried_then_decided_by_the_token(bucket_url, mode):
    async def go():
        async with open_async_bucket(bucket_url) as b:
            flaky = AsyncFlaky(b, mode, times=1)
            made = await aconditional.create_json(flaky, KEY, {"v": 1})
            assert made.won and flaky.raised == 1 and made.etag == (await b.head(KEY)).etag
            flaky.left = 1
            changed = await aconditional.replace_json(flaky, KEY, {"v": 2}, made.etag)
            assert changed.won and flaky.raised == 2 and changed.etag == (await b.head(KEY)).etag
            assert (await _body(b))["v"] == 2

    run(go())


# -- the shard leases that go through it ------------------------------------------------------------------

def test_shard_lease_claim_renew_and_take_over_survive_lost_responses(bucket_url):
    async def go():
        async with open_async_bucket(bucket_url) as b:
            flaky = AsyncFlaky(b, "lost")
            lease = await claims.claim_fresh(flaky, LEASE, "w1", LONG)  # its create's response was lost
            assert lease is not None and lease.generation == 1 and lease.etag == (await b.head(LEASE)).etag

            await claims.renew(flaky, lease)  # not a LeaseLost: the 412 was our own renewal
            assert lease.etag == (await b.head(LEASE)).etag and lease.generation == 1
            await claims.renew(b, lease)  # and the ETag it kept is the real one
            await claims.release(flaky, lease)
            assert (await _body(b, LEASE))["state"] == "released"

            heir = await claims.take_over(flaky, "w2", LONG, await claims.read(b, LEASE))
            assert heir is not None, "our own takeover, its response lost, was counted as lost"
            assert (heir.generation, heir.body["holder"], heir.deaths) == (2, "w2", 0)
            assert heir.etag == (await b.head(LEASE)).etag
            await claims.renew(b, heir)
            assert flaky.raised == 4

            with pytest.raises(LeaseLost):  # the control: a renewal of a generation taken over is refused
                await claims.renew(flaky, lease)
            body = await _body(b, LEASE)
            assert (body["holder"], body["generation"], body["state"]) == ("w2", 2, "held")

    run(go())


def test_a_renewal_racing_a_kill_count_or_a_release_of_the_same_lease_loses_neither(bucket_url):
    """The renew loop and the quarantine (a kill count) or a release write the same held lease at once. Both
    used to send the same ETag, and the loser took our own write for a take-over: a live shard dropped as lost,
    left to expire, and a death charged to it (the poison test's rare extra quarantine kill)."""
    async def go():
        async with open_async_bucket(bucket_url) as b:
            lease = await claims.claim_fresh(b, LEASE, "w1", LONG)
            for _ in range(5):
                await asyncio.gather(claims.renew(b, lease), claims.record_kill(b, lease), claims.renew(b, lease))
            body = await _body(b, LEASE)
            assert body["kills"] == 5 and body["holder"] == "w1" and body["state"] == "held"
            assert lease.etag == (await b.head(LEASE)).etag and lease.kills == 5
            await asyncio.gather(claims.renew(b, lease), claims.release(b, lease, died=True))
            body = await _body(b, LEASE)
            assert body["state"] == "released" and body["deaths"] == 1 and body["kills"] == 5

    run(go())


def test_a_takeover_lost_to_another_worker_is_none(bucket_url):
    async def go():
        async with open_async_bucket(bucket_url) as b:
            old = await claims.claim_fresh(b, LEASE, "w1", LONG)
            await claims.release(b, old)
            snap = await claims.read(b, LEASE)
            first = await claims.take_over(b, "w2", LONG, snap)
            second = await claims.take_over(AsyncFlaky(b, "lost", times=0), "w3", LONG, snap)  # same stale read
            assert first is not None and second is None
            assert (await _body(b, LEASE))["holder"] == "w2"

    run(go())


# -- real dropped connections, through a proxy in front of moto --------------------------------------------

class DropPuts:
    """The proxy's random source, scripted: with fault_rate 1.0, 0.99 means "drop" (forwarded, no answer) and
    1.0 means "forward". After drop(), the next PUT that reaches the proxy is dropped (reads pass): the
    request-handler thread tells it the method (see `proxied`)."""

    def __init__(self):
        self.lock, self.left, self.local, self.dropped = threading.Lock(), 0, threading.local(), []

    def drop(self, n=1):
        with self.lock:
            self.left = n

    def random(self):
        command = getattr(self.local, "command", None)
        with self.lock:
            if self.left and command == "PUT":
                self.left -= 1
                self.dropped.append(command)
                return 0.99
            return 1.0


@pytest.fixture
def proxied(s3_endpoint, monkeypatch):
    """(bucket URL, the proxy, its script): the async client made inside the test goes through the proxy."""
    url = f"s3://{make_s3_bucket()}/team-a"
    script = DropPuts()
    with FaultProxy(s3_endpoint, fault_rate=1.0) as proxy:
        base = proxy.server.RequestHandlerClass

        class Tagged(base):
            def _handle(self):
                script.local.command = self.command  # this handler's thread asks the script for its fault
                return base._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        proxy.server.RequestHandlerClass = Tagged
        proxy.rng = script
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        yield url, proxy, script


def test_dropped_responses_on_s3_are_recognised_as_our_own_writes(proxied, s3_endpoint, monkeypatch):
    """Each conditional write's first PUT reaches moto and its answer is dropped; aiobotocore retries it and
    moto says 412 (our own first try broke the precondition). Every one must be decided a win."""
    url, proxy, script = proxied

    async def go():
        async with open_async_bucket(url) as b:  # through the proxy
            script.drop()
            made = await aconditional.create_json(b, KEY, {"v": 1})
            assert made.won, made
            script.drop()
            changed = await aconditional.replace_json(b, KEY, {"v": 2}, made.etag)
            assert changed.won, changed

            script.drop()
            lease = await claims.claim_fresh(b, LEASE, "w1", LONG)
            assert lease is not None
            script.drop()
            await claims.renew(b, lease)  # LeaseLost here would be our own renewal taken for a takeover
            script.drop()
            await claims.release(b, lease)
            snap = await claims.read(b, LEASE)
            script.drop()
            heir = await claims.take_over(b, "w2", LONG, snap)
            assert heir is not None and heir.generation == 2
            script.drop()
            await claims.renew(b, heir)
            return changed, heir

    changed, heir = run(go())
    assert proxy.counts["dropped"] == 7 and script.dropped == ["PUT"] * 7, (proxy.counts, script.dropped)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)

    async def check():
        async with open_async_bucket(url) as direct:
            assert (await direct.head(KEY)).etag == changed.etag and (await _body(direct))["v"] == 2
            body = await _body(direct, LEASE)
            assert (body["holder"], body["generation"], body[TOKEN]) == ("w2", 2, heir.body[TOKEN])
            assert (await direct.head(LEASE)).etag == heir.etag

    run(check())
