"""The fleet protocol piece by piece: the manifest at intake, the plan, claims, commits (and a zombie's refused
commit), the dataset's coverage, teardown decisions, and a fleet end to end through the simulation and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from bucketrun.events import codec, keys
from bucketrun.events.errors import CorruptObject
from bucketrun.events.fleet import claims
from bucketrun.events.fleet.dataset import resolve
from bucketrun.events.fleet.plan import Plan, items_from_jsonl, PlanError, write_plan
from bucketrun.events.kinds.validate import validate_manifest
from bucketrun.events.manifest import ManifestRejected
from bucketrun.events.storage.aio import open_async_bucket
from bucketrun.handlers.fleet_teardown import decide as teardown_decide
from bucketrun.events.lifecycle import JobState
from bucketrun.images.fleet.commit import commit_shard

from conftest import ROOT, wait_for

BASE = {"kind": "fleet", "items": {"file": "items.jsonl"}, "processor": {"name": "noop"}}


def run(coro):
    return asyncio.run(coro)


# -- the manifest ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, loc", [
    ({"shard_size": 0}, "shard_size"),
    ({"workers": {"count": 0}}, "workers.count"),
    ({"processor": {"name": "nope"}}, "processor"),
    ({"processor": {"name": "noop", "options": {"sleep": 1}}}, "processor"),
    ({"items": {"file": "a.jsonl", "prefix": "x/"}}, "items"),
    ({"items": {"file": "a.csv"}}, "items"),
    ({"workers": {"count": 3, "backend": "runpod"}}, "workers"),
    ({"workers": {"count": 3, "backend": "vast", "image": "i", "gpu_type": "g", "secrets": ["NOT-A-NAME"]}},
     "workers.secrets"),
    ({"lease_s": 1}, "lease_s"),
    ({"processor": {"entry_point": "not an entry point"}}, "processor"),
    ({"output": {"prefix": "inbox/x"}}, "output.prefix"),
])
def test_bad_fleet_manifests_are_rejected_naming_the_field(change, loc):
    with pytest.raises(ManifestRejected) as exc:
        validate_manifest({**BASE, **change})
    locs = [f["loc"] for f in exc.value.fields]
    assert any(l == loc or l.startswith(loc) for l in locs), locs
    if "options" in json.dumps(change):
        assert "options.sleep" in str(exc.value.fields)  # the built-in's own option is named


def test_fleet_manifest_defaults_and_examples():
    m = validate_manifest(BASE)
    assert (m.body.shard_size, m.body.heartbeat_s, m.body.workers.count) == (50, 30.0, 1)
    assert m.resources.stall_after_s == 600.0
    paths = [*(ROOT / "examples").glob("fleet-*.json"), *(ROOT / "docs" / "examples").glob("fleet-*.json")]
    assert len(paths) >= 3
    for path in paths:
        validate_manifest(json.loads(path.read_text()))


def test_a_bad_fleet_manifest_dropped_in_the_inbox_is_rejected_with_its_fields(bucket):
    from bucketrun.handlers.intake import intake
    from bucketrun.local_sim.fleet_harness import ManualLauncher

    bucket.put("inbox/bad-fleet.json", codec.dumps({**BASE, "shard_size": -5, "workers": {"count": 5000}}))
    out = intake(bucket, "inbox/bad-fleet.json", ManualLauncher(), "test")
    assert out.state == "rejected"
    from bucketrun.events.lifecycle import read_view

    detail = json.dumps(read_view(bucket, out.job_id).latest.detail)
    assert "shard_size" in detail and "workers.count" in detail and "-5" not in detail


# -- plan --------------------------------------------------------------------------------------------------

def test_two_planners_with_different_listings_follow_one_plan(bucket_url):
    async def go():
        async with open_async_bucket(bucket_url) as b:
            first, second = await asyncio.gather(
                write_plan(b, "J1", [f"a{i}" for i in range(120)], 50, {"file": "x"}, "p1"),
                write_plan(b, "J1", [f"b{i}" for i in range(90)], 50, {"file": "x"}, "p2"))
            listed = [o.key async for o in b.list("jobs/J1/fleet/")]
            return first, second, listed

    first, second, listed = run(go())
    assert first.body == second.body
    assert first.total in (120, 90)
    assert first.base_shards() == ([keys.shard_id(0, 50), keys.shard_id(50, 100), keys.shard_id(100, 120)]
                                   if first.total == 120 else [keys.shard_id(0, 50), keys.shard_id(50, 90)])
    assert sum(1 for k in listed if "/items-" in k) == 1  # the loser's list is removed


def test_items_files_are_checked_line_by_line():
    assert items_from_jsonl(b'"a"\n{"item": "b"}\n\n', "f.jsonl") == ["a", "b"]
    with pytest.raises(PlanError, match="f.jsonl line 2"):
        items_from_jsonl(b'"a"\n{"x": 1}\n', "f.jsonl")
    with pytest.raises(PlanError, match="line 1: not JSON"):
        items_from_jsonl(b"{oops\n", "f.jsonl")


# -- claims and commits ------------------------------------------------------------------------------------

SCHEMA = pa.schema([("item_index", pa.int64()), ("item_row", pa.int64()), ("item", pa.string()), ("error", pa.string())])


def test_a_zombie_finds_its_commit_refused_and_removes_its_part(bucket_url):
    """A holder paused past its lease is taken over; both finish; the bucket keeps exactly one row set."""
    shard = keys.shard_id(0, 2)
    rows = [{"item_index": 0, "item_row": 0, "item": "a", "error": None},
            {"item_index": 1, "item_row": 0, "item": "b", "error": None}]

    async def go():
        async with open_async_bucket(bucket_url) as b:
            key = keys.fleet_lease_key("J", shard)
            zombie = await claims.claim_fresh(b, key, "zombie", 2.0)
            assert await claims.claim_fresh(b, key, "other", 2.0) is None  # a lost create: taken
            await asyncio.sleep(3.2)  # the zombie is paused past its lease (whole seconds, by the store)
            snap = await claims.read(b, key)
            assert snap.expired
            heir = await claims.take_over(b, "heir", 2.0, snap)
            assert heir.generation == 2 and heir.deaths == 1
            won = await commit_shard(b, "J", "out/", heir, "heir", (0, 2), rows, SCHEMA)
            late = await commit_shard(b, "J", "out/", zombie, "zombie", (0, 2), rows, SCHEMA)
            parts = [o.key async for o in b.list("out/parts/")]
            return won, late, parts

    won, late, parts = run(go())
    assert won.won and not late.won and late.marker["worker"] == "heir"
    assert parts == [keys.fleet_part_key("out/", shard, 2)]  # the zombie's generation-1 part is gone


def test_the_finalizer_deletes_orphan_parts_but_never_a_live_holders(bucket_url):
    """A killed holder's part (its generation taken over and committed by another) is deleted before the dataset
    is created, and counted there; the part of a lease whose generation still holds its shard is kept."""
    from bucketrun.images.fleet.commit import build_dataset
    from bucketrun.images.fleet.processors import BASE_COLUMNS

    schema = pa.schema(list(BASE_COLUMNS.items()))
    rows = lambda lo, hi: [{"item_index": i, "item_row": 0, "item": f"i{i}", "error": None} for i in range(lo, hi)]  # noqa: E731
    plan = Plan(4, 2, "k", "d" * 64, None, {})
    a, b, live = keys.shard_id(0, 2), keys.shard_id(2, 4), keys.shard_id(4, 6)

    async def go():
        async with open_async_bucket(bucket_url) as bk:
            killed = await claims.claim_fresh(bk, keys.fleet_lease_key("J", a), "killed", 2.0)
            orphan = keys.fleet_part_key("out/", a, killed.generation)
            await bk.create(orphan, b"a part its writer never named in a marker", "application/octet-stream")
            await asyncio.sleep(3.2)  # the killed holder's lease expires
            heir = await claims.take_over(bk, "heir", 2.0, await claims.read(bk, keys.fleet_lease_key("J", a)))
            assert (await commit_shard(bk, "J", "out/", heir, "heir", (0, 2), rows(0, 2), schema)).won
            other = await claims.claim_fresh(bk, keys.fleet_lease_key("J", b), "w", 30.0)
            assert (await commit_shard(bk, "J", "out/", other, "w", (2, 4), rows(2, 4), schema)).won
            holder = await claims.claim_fresh(bk, keys.fleet_lease_key("J", live), "busy", 30.0)  # still at work
            kept = keys.fleet_part_key("out/", live, holder.generation)
            await bk.create(kept, b"a live holder's part", "application/octet-stream")
            _, dataset = await build_dataset(bk, "J", plan, "out/", "finalizer", {})
            parts = sorted([o.key async for o in bk.list("out/parts/")])
            return dataset, parts, orphan, kept

    dataset, parts, orphan, kept = run(go())
    named = sorted(s["key"] for s in dataset["shards"])
    assert dataset["orphan_parts_deleted"] == 1
    assert orphan not in parts and kept in parts
    assert parts == sorted(named + [kept])


def test_renew_after_takeover_is_refused(bucket_url):
    async def go():
        async with open_async_bucket(bucket_url) as b:
            key = keys.fleet_lease_key("J", keys.shard_id(0, 1))
            old = await claims.claim_fresh(b, key, "old", 2.0)
            await claims.release(b, old)
            new = await claims.take_over(b, "new", 2.0, await claims.read(b, key))
            assert new.generation == 2 and new.deaths == 0  # a release is not a death
            with pytest.raises(claims.LeaseLost):
                await claims.renew(b, old)

    run(go())


# -- coverage --------------------------------------------------------------------------------------------

def _plan(total: int, size: int) -> Plan:
    return Plan(total, size, "k", "d" * 64, None, {})


def _marker(lo, hi, covered=None, children=(), dead=()):
    part = {"key": f"p{lo}", "rows": 1, "bytes": 1, "sha256": "0" * 64} if covered else None
    return {"generation": 1, "covered": covered, "part": part, "children": [list(c) for c in children],
            "dead": [{"index": i, "item": str(i), "reason": "x"} for i in dead]}


def test_resolve_follows_remainders_and_bisections_and_ignores_orphans():
    plan = _plan(10, 5)
    markers = {
        keys.shard_id(0, 5): _marker(0, 5, covered=[0, 3], children=[(3, 5)]),  # drained at item 3
        keys.shard_id(3, 5): _marker(3, 5, covered=[3, 5]),
        keys.shard_id(5, 10): _marker(5, 10, children=[(5, 7), (7, 10)]),  # bisected
        keys.shard_id(5, 7): _marker(5, 7, children=[(5, 6), (6, 7)]),
        keys.shard_id(5, 6): _marker(5, 6, dead=[5]),
        keys.shard_id(6, 7): _marker(6, 7, covered=[6, 7]),
        keys.shard_id(8, 10): _marker(8, 10, covered=[8, 10]),  # an orphan: no parent names it
    }
    cov = resolve(plan, markers)
    assert cov.pending == [keys.shard_id(7, 10)]
    markers[keys.shard_id(7, 10)] = _marker(7, 10, covered=[7, 10])
    cov = resolve(plan, markers)
    assert cov.complete and cov.items_covered == 10
    assert [m["covered"] for m in cov.committed] == [[0, 3], [3, 5], [6, 7], [7, 10]]
    assert [d["index"] for d in cov.dead] == [5]


def test_a_marker_that_would_lose_or_duplicate_items_is_corrupt():
    with pytest.raises(CorruptObject, match="does not tile"):
        resolve(_plan(5, 5), {keys.shard_id(0, 5): _marker(0, 5, covered=[0, 3], children=[(2, 5)])})
    with pytest.raises(CorruptObject, match="does not tile"):
        resolve(_plan(5, 5), {keys.shard_id(0, 5): _marker(0, 5, covered=[0, 4])})


# -- teardown --------------------------------------------------------------------------------------------

def test_teardown_stops_silent_workers_and_everything_once_the_job_ends():
    from bucketrun.events.codec import iso, now

    t = now()
    old = iso(t - timedelta(seconds=1000))
    fresh = iso(t - timedelta(seconds=10))
    insts = [{"instance_id": "a", "worker": "w0", "started_at": old},
             {"instance_id": "b", "worker": "w1", "started_at": old},
             {"instance_id": "c", "worker": "w2", "started_at": fresh},  # still booting: no heartbeat yet
             {"instance_id": "d", "worker": "w3", "started_at": old, "terminated_at": iso(t)}]
    ages = {"w0": 5.0, "w1": 400.0}
    stop = teardown_decide(JobState.RUNNING, insts, ages, 300.0, t)
    assert [(i["instance_id"], "silent" in why) for i, why in stop] == [("b", True)]
    stop = teardown_decide(JobState.SUCCEEDED, insts, ages, 300.0, t)
    assert [i["instance_id"] for i, _ in stop] == ["a", "b", "c"]


# -- end to end --------------------------------------------------------------------------------------------

def cli(*args, env=None):
    return subprocess.run([str(Path(sys.executable).with_name("bucketrun")), *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_a_fleet_through_the_simulation_and_the_cli(bucket_url, bucket, launcher, tmp_path):
    """Prefix items with a suffix filter, four local worker processes started by the simulation, submit --wait,
    fleet status, get (verified), and teardown with a cost record once the dataset is committed."""
    import os

    from bucketrun.local_sim.sim import Simulation

    for i in range(600):
        bucket.put(f"media/clip-{i:04d}.tar", b"x")
    bucket.put("media/readme.txt", b"not an item")
    manifest = tmp_path / "fleet.json"
    manifest.write_text(json.dumps({"kind": "fleet", "items": {"prefix": "media/", "suffix": ".tar"},
                                    "processor": {"name": "noop", "options": {"sleep_s": 0.002}},
                                    "shard_size": 25, "heartbeat_s": 1, "lease_s": 10,
                                    "resources": {"heartbeat_s": 1, "stall_after_s": 60},
                                    "workers": {"count": 4, "backend": "local"}}))
    sim = Simulation(bucket, launcher, poll_s=0.2, sweep_s=0.5, poll_max_s=0.5, sweep_max_s=1.0)
    thread = threading.Thread(target=sim.run, daemon=True)
    thread.start()
    env = {**os.environ, "BUCKETRUN_BUCKET": bucket_url}
    try:
        sub = cli("submit", str(manifest), "--wait", "--timeout", "240", env=env)
        assert sub.returncode == 0, sub.stderr
        job = next(iter(bucket.list(keys.INBOX))).key.split("/")[-1][:-5]
        st = json.loads(cli("fleet", "status", job, "--json", env=env).stdout)
        assert (st["state"], st["items_total"], st["items_done"]) == ("succeeded", 600, 600)
        assert len(st["workers"]) == 4 and st["shards_done"] == 24

        def all_offline() -> bool:  # a worker waiting on the last shards notices the dataset within 10 s
            return all(w["state"] == "offline"
                       for w in json.loads(cli("fleet", "status", job, "--json", env=env).stdout)["workers"])

        wait_for(all_offline, timeout=90)
        text = cli("fleet", "status", job, env=env).stdout
        assert "600/600 items" in text and "w0003" in text
        got = cli("get", job, "--out", str(tmp_path / "got"), env=env)
        assert got.returncode == 0, got.stderr
        assert "600 items, 0 dead-lettered: verified" in got.stdout
        assert len(list((tmp_path / "got" / "parts").iterdir())) == 24
        # the sweep tears the fleet down once it has ended, and records what it cost
        wait_for(lambda: not bucket.exists(keys.fleet_index_key(job)), timeout=60)
        cost = codec.loads(bucket.get(keys.fleet_prefix(job) + "cost.json").data)
        assert len(cost["instances"]) == 4 and not any(i["running"] for i in cost["instances"])
        bad = cli("fleet", "status", "20991231T000000000Z-zzzzzz", env=env)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    finally:
        sim.stop()
        thread.join(timeout=30)


def _process_running(pid: int) -> bool:
    """Whether `pid` still runs: gone, or a zombie (exited, not yet reaped), counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_cancelling_a_running_fleet_stops_its_workers_and_tears_it_down(bucket_url, bucket, launcher):
    """Cancel mid-run: the workers see it at their next look at the job and stop without committing more; the
    sweep stops every instance and records the cost; no dataset is ever written."""
    from bucketrun.events.fleet.status import covered_items
    from bucketrun.events.lifecycle import read_view
    from bucketrun.handlers.control import cancel
    from bucketrun.local_sim.sim import Simulation

    bucket.put("items.jsonl", "\n".join(f'"i{i}"' for i in range(2000)).encode())
    sim = Simulation(bucket, launcher, poll_s=0.2, sweep_s=0.5, poll_max_s=0.5, sweep_max_s=1.0)
    thread = threading.Thread(target=sim.run, daemon=True)
    thread.start()
    try:
        from bucketrun.handlers.client import submit

        job, _ = submit(bucket, codec.dumps({**BASE, "processor": {"name": "noop", "options": {"sleep_s": 0.02}},
                                             "heartbeat_s": 1, "lease_s": 10,
                                             "resources": {"heartbeat_s": 1, "stall_after_s": 60},
                                             "workers": {"count": 2, "backend": "local"}}))
        wait_for(lambda: sum(1 for _ in bucket.list(keys.fleet_done_prefix(job))) >= 2, timeout=120)
        cancel(bucket, job, "test")
        wait_for(lambda: not bucket.exists(keys.fleet_index_key(job)), timeout=60)
        instances = [codec.loads(bucket.get(i.key).data) for i in bucket.list(keys.fleet_instances_prefix(job))]
        assert len(instances) == 2 and all(i["terminated_at"] and "cancelled" in i["reason"] for i in instances)
        # every worker process has ended (not just been marked terminated): nothing is left that could commit
        pids = [i["detail"]["pid"] for i in instances]
        wait_for(lambda: not any(_process_running(pid) for pid in pids), timeout=60)

        def committed() -> set[str]:
            return {i.key for i in bucket.list(keys.fleet_done_prefix(job))}

        def instance_ids() -> set[str]:
            return {i.key for i in bucket.list(keys.fleet_instances_prefix(job))}

        done_at_exit, launched = committed(), instance_ids()
        assert len(launched) == 2
        shards = [keys.fleet_shard_of(k, keys.fleet_done_prefix(job)) for k in done_at_exit]
        assert 2 <= covered_items(shards) < 2000, shards  # stopped by the cancel, not by running out of work
        # the sweep keeps running over the cancelled job: it must neither start new workers nor let more commit
        passes = sim.sweeps
        wait_for(lambda: sim.sweeps >= passes + 3, timeout=60)
        assert instance_ids() == launched and committed() == done_at_exit  # nothing more committed
        assert read_view(bucket, job).state is JobState.CANCELLED
        assert not any(i.key.endswith("dataset.json") for i in bucket.list(keys.fleet_prefix(job)))
    finally:
        sim.stop()
        thread.join(timeout=30)
