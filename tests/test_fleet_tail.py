"""The fleet's tail without listings (images/fleet/tail.py, the finalizer in images/fleet/commit.py): in the last
shards of a 507,387-item fleet, full listings of leases and done markers were most of the time from 99% done to
`succeeded`. Real leases and markers on both backends; requests counted by a wrapper over the real bucket."""

from __future__ import annotations

import asyncio

import pyarrow as pa

from bucketrun.events import keys
from bucketrun.events.fleet import claims
from bucketrun.events.fleet.plan import Plan
from bucketrun.events.storage.aio import open_async_bucket
from bucketrun.images.fleet.commit import build_dataset, commit_shard
from bucketrun.images.fleet.processors import BASE_COLUMNS
from bucketrun.images.fleet.tail import LOOK_MIN_S, TailLook

SCHEMA = pa.schema(list(BASE_COLUMNS.items()))


def rows(lo: int, hi: int) -> list[dict]:
    return [{"item_index": i, "item_row": 0, "item": f"i{i}", "error": None} for i in range(lo, hi)]


class Counting:
    """The real bucket, with each request counted by operation and each listing's prefix kept."""

    def __init__(self, inner):
        self.inner, self.calls, self.listed = inner, {}, []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("get", "head", "put", "create", "replace", "delete"):
            return attr

        async def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return await attr(*args, **kwargs)

        return counted

    def list(self, prefix: str = "", start_after=None):
        self.listed.append(prefix)
        return self.inner.list(prefix, start_after)


def test_a_tail_look_reads_each_pending_shard_and_a_lease_only_when_it_could_have_changed(bucket_url):
    done, fresh, live, lapsed, released = (keys.shard_id(i, i + 2) for i in range(0, 10, 2))
    child = keys.shard_id(11, 12)

    async def go():
        async with open_async_bucket(bucket_url) as b:
            lease = await claims.claim_fresh(b, keys.fleet_lease_key("J", done), "w", 30.0)
            await commit_shard(b, "J", "out/", lease, "w", (0, 1), rows(0, 1), SCHEMA, children=[(1, 2)])
            await claims.claim_fresh(b, keys.fleet_lease_key("J", live), "busy", 30.0)
            await claims.claim_fresh(b, keys.fleet_lease_key("J", lapsed), "killed", 1.0)
            gone = await claims.claim_fresh(b, keys.fleet_lease_key("J", released), "drained", 30.0)
            await claims.release(b, gone)
            await asyncio.sleep(2.5)  # the killed holder's lease expires (whole seconds, by the store's clock)
            counting = Counting(b)
            tail = TailLook(counting, "J", {})
            pending = [done, fresh, live, lapsed, released, child]
            first = await tail.look(pending, mine={child})  # held here: its own worker knows it
            calls_first = dict(counting.calls)
            again = await tail.look(pending, mine={child})  # another worker of the process, within the interval
            calls_again = dict(counting.calls)
            await asyncio.sleep(LOOK_MIN_S + 0.2)
            await tail.look([fresh, live, lapsed, released], mine=set())
            return first, again, calls_first, calls_again, counting.calls, counting.listed, tail

    first, again, calls_first, calls_again, calls_third, listed, tail = asyncio.run(go())
    assert listed == []  # not one LIST
    assert first.done == {done} and first.children == {keys.shard_id(1, 2)}
    assert first.leases[fresh] is None  # never claimed: free to claim
    assert first.leases[live].live and first.leases[live].body["holder"] == "busy"
    assert not first.leases[lapsed].live and first.leases[lapsed].expired
    assert not first.leases[released].live and first.leases[released].state == "released"
    assert child not in first.leases and child not in first.done
    # First look: 5 markers (the child is held here) and 4 leases (the done shard's needs no read).
    assert calls_first == {"get": 9}
    assert calls_again == calls_first and again.leases.keys() == first.leases.keys()  # shared: no request
    # A second look a second later: 4 markers, and only the leases that could have changed (not the live one).
    assert calls_third == {"get": 9 + 4 + 3}
    assert tail.markers[done]["covered"] == [0, 1]  # the finalizer of this process will not read it again


def test_the_finalizer_walks_the_plan_and_lists_no_done_markers(bucket_url):
    """The markers come from the ledgers, this process's cache and one read each for the rest, found by walking
    the plan through each marker's children (here a shard split into a remainder): no listing of done/."""
    plan = Plan(6, 2, "k", "d" * 64, None, {})
    a, b, c = (keys.shard_id(i, i + 2) for i in range(0, 6, 2))
    rest = keys.shard_id(3, 4)

    async def go():
        async with open_async_bucket(bucket_url) as bk:
            for shard, (lo, hi), covered, children in ((a, (0, 2), (0, 2), []), (b, (2, 4), (2, 3), [(3, 4)]),
                                                       (rest, (3, 4), (3, 4), []), (c, (4, 6), (4, 6), [])):
                key = keys.fleet_lease_key("J", shard)
                lease = await claims.claim_fresh(bk, key, "w", 30.0)
                if lease is None:  # the remainder: offered by its parent as a released lease
                    lease = await claims.take_over(bk, "w", 30.0, await claims.read(bk, key))
                assert (await commit_shard(bk, "J", "out/", lease, "w", covered, rows(*covered), SCHEMA,
                                           children=children)).won
            counting = Counting(bk)
            cov, dataset = await build_dataset(counting, "J", plan, "out/", "finalizer", {})
            return cov, dataset, counting

    cov, dataset, counting = asyncio.run(go())
    assert dataset is not None and dataset["items_covered"] == 6 and len(dataset["shards"]) == 4
    assert keys.fleet_done_prefix("J") not in counting.listed
    assert sorted(counting.listed) == sorted([keys.fleet_ledgers_prefix("J"), "out/parts/"])
    assert counting.calls["get"] >= 4  # each marker read once (the remainder found through its parent)


def test_ledgers_are_read_once_each_and_bring_other_processes_markers(bucket_url):
    """A straggler learns what other processes committed from their ledgers (write-once: one GET each, ever),
    not from a listing of every done marker."""
    from bucketrun.events import aconditional
    from bucketrun.images.fleet.commit import read_ledgers

    async def go():
        async with open_async_bucket(bucket_url) as b:
            await aconditional.create_json(b, keys.fleet_ledger_key("J", "w1", 0), {"markers": {"a": {"n": 1}}})
            counting = Counting(b)
            cache, seen = {}, set()
            await read_ledgers(counting, "J", cache, seen)
            first = dict(counting.calls)
            await aconditional.create_json(b, keys.fleet_ledger_key("J", "w2", 0), {"markers": {"b": {"n": 2}}})
            await read_ledgers(counting, "J", cache, seen)
            return cache, first, counting.calls, counting.listed

    cache, first, calls, listed = asyncio.run(go())
    assert cache == {"a": {"n": 1}, "b": {"n": 2}}
    assert first == {"get": 1} and calls == {"get": 2}  # the first ledger was not read again
    assert listed == [keys.fleet_ledgers_prefix("J")] * 2


def test_an_early_parts_listing_looks_up_later_parts_and_an_orphan_after_a_take_over(bucket_url):
    """The finalizer's listing of parts/ starts in the tail. A part committed after it began is looked up by
    HEAD; an orphan written after it began always comes with a take-over (generation 2), so the finalizer looks
    up that shard's other generations' part keys too (no second listing), and the orphan is still deleted
    before dataset.json."""
    from bucketrun.images.fleet.commit import list_parts_early

    plan = Plan(6, 2, "k", "d" * 64, None, {})
    a, b, c = (keys.shard_id(i, i + 2) for i in range(0, 6, 2))

    async def go(take_over: bool):
        job, out = ("J2", "out2/") if take_over else ("J1", "out1/")

        async def commit(bk, shard, lo, hi):
            lease = await claims.claim_fresh(bk, keys.fleet_lease_key(job, shard), "w", 30.0)
            assert (await commit_shard(bk, job, out, lease, "w", (lo, hi), rows(lo, hi), SCHEMA)).won

        async with open_async_bucket(bucket_url) as bk:
            await commit(bk, a, 0, 2)
            await commit(bk, b, 2, 4)
            counting = Counting(bk)
            early = list_parts_early(counting, out)
            await early.task  # the tail's listing, done before the last shard
            if take_over:  # a holder of c killed after writing its part, before its marker
                key = keys.fleet_lease_key(job, c)
                killed = await claims.claim_fresh(bk, key, "killed", 1.0)
                orphan = keys.fleet_part_key(out, c, killed.generation)
                await bk.create(orphan, b"a part its writer never named", "application/octet-stream")
                await asyncio.sleep(2.5)
                heir = await claims.take_over(bk, "heir", 30.0, await claims.read(bk, key))
                assert (await commit_shard(bk, job, out, heir, "heir", (4, 6), rows(4, 6), SCHEMA)).won
            else:
                await commit(bk, c, 4, 6)
            _, dataset = await build_dataset(counting, job, plan, out, "finalizer", {}, early=early)
            parts = sorted([o.key async for o in bk.list(out + "parts/")])
            return dataset, counting, parts

    dataset, counting, parts = asyncio.run(go(take_over=False))
    assert dataset is not None and len(dataset["shards"]) == 3 and dataset["orphan_parts_deleted"] == 0
    assert counting.listed.count("out1/parts/") == 1 and counting.calls.get("head") == 1  # c's part, by HEAD
    dataset, counting, parts = asyncio.run(go(take_over=True))
    assert counting.listed.count("out2/parts/") == 1  # not listed again after the take-over
    assert counting.calls.get("head") == 3  # c's part (generation 2), and generations 1 (the orphan) and 3
    assert dataset["orphan_parts_deleted"] == 1 and parts == sorted(s["key"] for s in dataset["shards"])


def test_a_part_the_listing_gets_wrong_is_looked_up_afresh_and_one_that_stays_wrong_is_named(bucket_url):
    """The finalizer's listing of parts/ starts early and is kept. A size in it that disagrees with a marker is
    looked up again by HEAD before anything is called corrupt (an HTTP proxy that answered HEAD with
    Content-Length 0 once left a fleet `running` for good); a part that still differs is named."""
    import pytest

    from bucketrun.events.errors import CorruptObject
    from bucketrun.events.storage.base import ObjectInfo
    from bucketrun.images.fleet.commit import list_parts_early

    plan = Plan(4, 2, "k", "d" * 64, None, {})

    class Lying(Counting):
        def list(self, prefix: str = "", start_after=None):
            async def gen():
                async for info in self.inner.list(prefix, start_after):
                    yield ObjectInfo(info.key, info.etag, 0, info.last_modified)  # every size said as 0
            return gen()

    async def go(job: str, out: str, spoil: bool):
        async with open_async_bucket(bucket_url) as bk:
            for lo in (0, 2):
                lease = await claims.claim_fresh(bk, keys.fleet_lease_key(job, keys.shard_id(lo, lo + 2)), "w", 30.0)
                assert (await commit_shard(bk, job, out, lease, "w", (lo, lo + 2), rows(lo, lo + 2), SCHEMA)).won
            if spoil:
                await bk.put(keys.fleet_part_key(out, keys.shard_id(2, 4), 1), b"short")
            lying = Lying(bk)
            early = list_parts_early(lying, out)
            return await build_dataset(lying, job, plan, out, "finalizer", {}, early=early), lying

    (cov, dataset), lying = asyncio.run(go("J1", "out1/", spoil=False))
    assert dataset is not None and dataset["items_covered"] == 4
    assert lying.calls.get("head") == 2  # each part the listing got wrong, looked up once
    with pytest.raises(CorruptObject, match=r"part out2/parts/000000002-000000004-g0001.parquet is 5 bytes, its "
                                            r"marker says \d+"):
        asyncio.run(go("J2", "out2/", spoil=True))
