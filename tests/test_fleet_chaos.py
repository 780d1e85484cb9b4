"""Fleets under chaos, on the folder and the S3 backends: workers killed with -9, drained with SIGTERM, killed
again and again by a poison item, and S3 answering 5% of requests with 503 SlowDown or a dropped connection.
Every run must end with a committed dataset holding every planned item exactly once."""

from __future__ import annotations

import collections
import math
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.errors import NotFound
from bucketrun.events.fleet.status import beat_workers
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.local_sim import fleet_harness as harness

from conftest import make_s3_bucket, wait_for
from fault_proxy import FaultProxy

TESTS = Path(__file__).parent


def put_items(bucket, n: int, key: str = "items.jsonl") -> list[str]:
    items = [f"item-{i:06d}" for i in range(n)]
    bucket.put(key, "\n".join(codec.dumps(i).decode() for i in items).encode())
    return items


def fleet(**over) -> dict:
    m = {"kind": "fleet", "items": {"file": "items.jsonl"}, "processor": {"name": "noop"}, "heartbeat_s": 1,
         "lease_s": 3, "resources": {"heartbeat_s": 2, "stall_after_s": 120}}
    return {**m, **over}


def spawn(bucket_url: str, job_id: str, workers: list[str], env: dict | None = None, log: Path | None = None):
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    return subprocess.Popen(harness.worker_cmd(bucket_url, job_id, workers, grace_s=20),
                            env={**os.environ, "PYTHONPATH": str(TESTS), **(env or {})},
                            stdout=out, stderr=out)


def bucket_has(bucket, key: str) -> bool:
    try:
        bucket.head(key)
        return True
    except NotFound:
        return False


def done_count(bucket, job_id: str) -> int:
    return sum(1 for _ in bucket.list(keys.fleet_done_prefix(job_id)))


def finish(bucket_url: str, job_id: str, procs, timeout_s: float = 240) -> dict:
    result = harness.wait_finished(bucket_url, job_id, timeout_s=timeout_s)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    assert result["state"] == "succeeded", result["detail"]
    return result


def succeeded_at(bucket, job_id: str) -> float:
    view = read_view(bucket, job_id)
    assert view.state is JobState.SUCCEEDED, view.state
    return datetime.fromisoformat(view.latest.at.replace("Z", "+00:00")).timestamp()


def leases(bucket, job_id: str) -> dict[str, dict]:
    prefix = keys.fleet_leases_prefix(job_id)
    return {keys.fleet_shard_of(i.key, prefix): codec.loads(bucket.get(i.key).data) for i in bucket.list(prefix)}


def markers(bucket, job_id: str) -> dict[str, dict]:
    prefix = keys.fleet_done_prefix(job_id)
    return {keys.fleet_shard_of(i.key, prefix): codec.loads(bucket.get(i.key).data) for i in bucket.list(prefix)}


def started_by(probe: Path, pid: int) -> set[int]:
    """Item indices the process with this pid started (fleet_probe's <pid>.start)."""
    path = probe / f"{pid}.start"
    return {int(line.rsplit("-", 1)[1]) for line in path.read_text().split()} if path.exists() else set()


def assert_one_death_per_dead_worker(charged: dict[str, dict], dead_ids: list[str]) -> None:
    """A worker holds a lease only on the shard it is working on (never one it merely picked ahead), so each dead
    worker left at most one shard with a death, and it was taken from that worker."""
    assert charged, "no shard of a dead worker was charged a death"
    owners = collections.Counter(b.get("taken_from") for b in charged.values())
    assert set(owners) <= set(dead_ids), owners
    assert max(owners.values()) == 1, owners


def assert_parts_are_the_datasets(bucket, dataset: dict) -> None:
    """No orphan parts: what parts/ holds is exactly what the dataset names."""
    prefix = dataset["shards"][0]["key"].rsplit("parts/", 1)[0] + "parts/"
    assert sorted(i.key for i in bucket.list(prefix)) == sorted(s["key"] for s in dataset["shards"])


def probe_fleet(bucket_url: str, bucket, tmp_path: Path, n: int, names: str, sleep_s: float, **over):
    """n items under fleet_probe (each item sleeps sleep_s), and a worker process of three workers per letter
    of `names` (wa0..wa2, ...): (job id, the processes' env, their ids, the processes)."""
    put_items(bucket, n)
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {"FLEET_PROBE_DIR": str(probe)}
    job = harness.start_job(bucket_url, fleet(processor={"entry_point": "fleet_probe:make",
                                                         "options": {"sleep_s": sleep_s}}, **over))
    ids = {p: [f"w{p}{i}" for i in range(3)] for p in names}
    procs = {p: spawn(bucket_url, job, ids[p], env, log=tmp_path / f"{p}.log") for p in names}
    return job, env, ids, procs


def test_kill_9_workers_mid_fleet_every_item_once(bucket_url, bucket, tmp_path):
    """Two worker processes killed with -9 mid-run: one restarted under the same ids (it hands back its own
    stale leases), one never (its leases expire and are taken over by generation). Only the shards they were
    inside are charged a death; the parts they left are deleted before `succeeded`."""
    n = 8_000
    job, env, ids, procs = probe_fleet(bucket_url, bucket, tmp_path, n, "abc", sleep_s=0.0005)
    shards = n // 50
    wait_for(lambda: done_count(bucket, job) >= shards * 0.15, timeout=120)
    procs["a"].send_signal(signal.SIGKILL)
    procs["a"].wait()
    procs["a2"] = spawn(bucket_url, job, ids["a"], env, log=tmp_path / "a2.log")  # same ids: dead-claim recovery
    wait_for(lambda: done_count(bucket, job) >= shards * 0.5, timeout=120)
    procs["b"].send_signal(signal.SIGKILL)
    procs["b"].wait()
    result = finish(bucket_url, job, [procs["a2"], procs["c"]])
    stats = harness.verify(bucket_url, result["dataset"])  # row by row: each item in exactly one part
    assert stats == {"items": n, "rows": n, "parts": len(result["dataset"]["shards"]), "dead_letters": 0}
    # Each killed process was inside at most one shard per worker: those shards, and only those, carry a death
    # (taken over by generation, or handed back by the restarted ids), and none was split or dead-lettered.
    charged = {s: b for s, b in leases(bucket, job).items() if b.get("deaths")}
    assert_one_death_per_dead_worker(charged, ids["a"] + ids["b"])
    for shard, body in charged.items():
        assert body["deaths"] == 1 and body["generation"] >= 2 and not body.get("kills"), (shard, body)
    assert all(not m["dead"] for m in markers(bucket, job).values())
    assert_parts_are_the_datasets(bucket, result["dataset"])


def test_a_restarted_process_takes_back_what_its_dead_life_was_inside_first(bucket_url, bucket, tmp_path):
    """kill -9 and a restart under the same ids: the shards the dead life was inside are released and taken
    back by the restarted process at once (Worker.take_back), not left for the tail's looks at the end, where on
    S3 a 507,387-item fleet spent 19 s. Leases last 30 s here, so none of them could simply expire meanwhile."""
    n = 6_000
    job, env, ids, procs = probe_fleet(bucket_url, bucket, tmp_path, n, "ab", sleep_s=0.01, lease_s=30)
    shards = n // 50
    wait_for(lambda: done_count(bucket, job) >= shards * 0.2, timeout=120)
    procs["a"].send_signal(signal.SIGKILL)
    procs["a"].wait()
    procs["a2"] = spawn(bucket_url, job, ids["a"], env, log=tmp_path / "a2.log")
    restarted = time.time()
    result = finish(bucket_url, job, [procs["a2"], procs["b"]])
    harness.verify(bucket_url, result["dataset"])
    charged = {s: b for s, b in leases(bucket, job).items() if b.get("deaths")}
    assert_one_death_per_dead_worker(charged, ids["a"])
    done = markers(bucket, job)
    after = sorted(codec.parse_iso(m["at"]).timestamp() for m in done.values()
                   if codec.parse_iso(m["at"]).timestamp() >= restarted)
    assert len(after) >= shards // 2, len(after)
    for shard in charged:
        marker = done[shard]
        assert marker["worker"] in ids["a"], (shard, marker)  # taken back by the restarted life, not by b's
        assert codec.parse_iso(marker["at"]).timestamp() <= after[len(after) // 2], (shard, marker, after[0])


def test_sigterm_finishes_the_item_and_nothing_done_is_redone(bucket_url, bucket, tmp_path):
    n = 1_500
    items = put_items(bucket, n)
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {"FLEET_PROBE_DIR": str(probe)}
    job = harness.start_job(bucket_url, fleet(processor={"entry_point": "fleet_probe:make",
                                                         "options": {"sleep_s": 0.01}}, lease_s=10))
    a = spawn(bucket_url, job, ["ta0", "ta1"], env, tmp_path / "a.log")
    b = spawn(bucket_url, job, ["tb0"], env, tmp_path / "b.log")
    wait_for(lambda: done_count(bucket, job) >= 6, timeout=120)
    # Signal while a's workers are inside a shard (an item just finished), not between shards: on a loaded machine
    # claims and commits can take longer than a shard's items, and a drain between shards has nothing partial.
    mine = probe / f"{a.pid}.log"

    def finished_by_a() -> int:
        return len(mine.read_text().split()) if mine.exists() else 0

    seen = finished_by_a()
    wait_for(lambda: finished_by_a() > seen, timeout=60, every=0.005)
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=30) == 0  # within the grace period, cleanly
    # One beat for the process, named by its first worker, with each worker's last state (images/fleet/beat.py)
    prefix = keys.fleet_heartbeats_prefix(job)
    beats = beat_workers(keys.fleet_heartbeat_key(job, "ta0"), prefix,
                         codec.loads(bucket.get(keys.fleet_heartbeat_key(job, "ta0")).data))
    assert set(beats) == {"ta0", "ta1"} and not bucket_has(bucket, keys.fleet_heartbeat_key(job, "ta1"))
    assert all(b_["state"] == "offline" and b_["holding"] == [] for b_ in beats.values())
    result = finish(bucket_url, job, [b])
    harness.verify(bucket_url, result["dataset"])
    processed = collections.Counter(line for f in probe.glob("*.log") for line in f.read_text().split())
    assert set(processed) == set(items)
    assert max(processed.values()) == 1, [i for i, c in processed.items() if c > 1][:5]
    markers = [codec.loads(bucket.get(i.key).data) for i in bucket.list(keys.fleet_done_prefix(job))]
    partial = [m for m in markers if m["children"] and m["covered"]]
    assert partial, "the drained workers committed no partial shard"
    assert {m["worker"] for m in partial} <= {"ta0", "ta1"}
    # A drain is not a death: whatever the drained workers held or had picked ahead was handed back uncharged.
    assert not [s for s, b in leases(bucket, job).items() if b.get("deaths")]


def run_poison_fleet(bucket_url: str, bucket, tmp_path: Path, n: int, poison_at: int, procs_n: int = 4,
                     per_proc: int = 5, shard_size: int = 50, attempts: int = 3) -> dict:
    """The item hard-exits its worker process every time. A crashed process is restarted under the same ids, as a
    pod's restart policy would. Returns what the test checks: the dataset, the leases, the markers, the
    restarts, the crashed processes' pids, and each process's exit time."""
    items = put_items(bucket, n)
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {"FLEET_PROBE_DIR": str(probe)}
    job = harness.start_job(bucket_url, fleet(processor={"entry_point": "fleet_probe:make", "options": {
        "sleep_s": 0.002, "crash_items": [items[poison_at]]}}, max_item_attempts=attempts, shard_size=shard_size))
    ids = {p: [f"p{p}w{i}" for i in range(per_proc)] for p in range(procs_n)}
    procs = {p: spawn(bucket_url, job, ids[p], env, tmp_path / f"{p}.log") for p in ids}
    crashed, exits, crashed_proc = [], {}, None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(exits) < len(procs):
        for p, proc in procs.items():
            if p in exits or proc.poll() is None:
                continue
            if proc.returncode == 70:  # the crash: restart under the same ids
                crashed.append(proc.pid)
                crashed_proc = p
                procs[p] = spawn(bucket_url, job, ids[p], env, tmp_path / f"{p}.log")
            else:
                exits[p] = time.time()
        time.sleep(0.02)
    result = finish(bucket_url, job, list(procs.values()), timeout_s=30)
    assert {p.returncode for p in procs.values()} == {0}
    return {"result": result, "items": items, "crashed": crashed, "exits": exits, "probe": probe, "ids": ids,
            "crashed_proc": crashed_proc,
            "leases": leases(bucket, job), "markers": markers(bucket, job), "job": job,
            "beats": [b for i in bucket.list(keys.fleet_heartbeats_prefix(job))  # each worker's, from its process's
                      for b in beat_workers(i.key, keys.fleet_heartbeats_prefix(job),
                                            codec.loads(bucket.get(i.key).data)).values()],
            "succeeded_at": succeeded_at(bucket, job)}


def test_poison_item_is_dead_lettered_and_no_innocent_is_charged(bucket_url, bucket, tmp_path):
    """At the settings under which an innocent neighbour was once dead-lettered: 20 workers over 4 processes,
    shards of 50, 3 attempts. Only the first death is unattributed (every worker of that process dies); the
    shards it was inside run in quarantine, where the poison item alone kills its process."""
    n, poison, attempts, per_proc, size = 2_000, 1_237, 3, 5, 50
    run = run_poison_fleet(bucket_url, bucket, tmp_path, n, poison, per_proc=per_proc, attempts=attempts,
                           shard_size=size)
    ds = run["result"]["dataset"]
    assert [d["index"] for d in ds["dead_letters"]] == [poison]
    assert ds["dead_letters"][0]["item"] == run["items"][poison]
    assert ds["items_covered"] == n and ds["rows"] == n - 1
    harness.verify(bucket_url, ds)
    # Exactly one process death outside quarantine: the first, before anything was suspected.
    assert len(run["crashed"]) == 1, run["crashed"]
    # The quarantine chain: the base shard splits the poison item off (its prefix committed, the rest a normal
    # shard), and the item alone kills its quarantine process exactly `attempts` times.
    alone = keys.shard_id(poison, poison + 1)
    lo, hi = poison // size * size, poison // size * size + size
    base = keys.shard_id(lo, hi)
    assert run["markers"][base]["children"] == [[poison, poison + 1], [poison + 1, hi]]
    assert run["markers"][base]["covered"] == [lo, poison]
    assert run["leases"][alone]["kills"] == attempts and run["leases"][alone]["deaths"] == 1
    assert run["leases"][keys.shard_id(poison + 1, hi)]["deaths"] == 0
    kills = sum(b.get("quarantine_kills", 0) for b in run["beats"])
    assert kills == 1 + attempts  # the split, then the item alone
    # Convergence: process deaths until the dead letter, within log2(shard_size) + max_item_attempts.
    assert len(run["crashed"]) + kills <= math.log2(size) + attempts
    # No innocent item carries a death it did not cause: kills only on the poison item's own shard; no other
    # shard split or dead-lettered; every other suspected shard was one the crashed process was inside, and it
    # was committed whole in quarantine.
    chain = {base, alone}
    for shard, body in run["leases"].items():
        lo, hi = keys.parse_shard_id(shard)
        if shard in chain:
            continue
        assert not body.get("kills"), (shard, body)
        if body.get("deaths"):
            assert body["deaths"] == 1, (shard, body)
            assert run["markers"][shard]["covered"] == [lo, hi] and not run["markers"][shard]["children"]
    crashed_ids = run["ids"][run["crashed_proc"]]
    assert_one_death_per_dead_worker({s: b for s, b in run["leases"].items() if b.get("deaths") and s != alone},
                                     crashed_ids)
    # The process was inside the poison item when it died (the item it started last).
    assert poison in started_by(run["probe"], run["crashed"][0])
    split = [s for s, m in run["markers"].items() if m["children"] and s != base]
    assert not split, split
    # Every worker process leaves within 5 s of `succeeded`.
    lags = [at - run["succeeded_at"] for at in run["exits"].values()]
    assert max(lags) < 5.0, lags
    assert_parts_are_the_datasets(bucket, ds)


def test_every_worker_process_leaves_within_5_s_of_succeeded_at_real_settings(bucket_url, bucket, tmp_path):
    """The manifest's own lease_s (120) and heartbeat_s (30): the job watcher looks every ~30 s and a waiting
    finalizer naps up to 20 s, so only the dataset watch gets the idle workers out in time."""
    n = 2_000
    put_items(bucket, n)
    manifest = {"kind": "fleet", "items": {"file": "items.jsonl"}, "shard_size": 50,
                "processor": {"name": "noop", "options": {"sleep_s": 0.002}}}
    job = harness.start_job(bucket_url, manifest)
    procs = [spawn(bucket_url, job, [f"x{p}w{i}" for i in range(5)], log=tmp_path / f"{p}.log") for p in range(4)]
    exits: dict[int, float] = {}
    deadline = time.monotonic() + 180
    while len(exits) < len(procs) and time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if i not in exits and p.poll() is not None:
                exits[i] = time.time()
        time.sleep(0.02)
    result = finish(bucket_url, job, procs, timeout_s=10)
    harness.verify(bucket_url, result["dataset"])
    lags = sorted(at - succeeded_at(bucket, job) for at in exits.values())
    assert len(lags) == 4 and lags[-1] < 5.0, lags


@pytest.mark.parametrize("rate", [0.05])
def test_fleet_completes_through_s3_faults(s3_endpoint, tmp_path, rate):
    """Shards of 25, so that the run makes some 800 requests even as a shard's request count falls, and the
    proxy's even schedule: every kind of fault is met at least ten times by construction, not by luck."""
    from bucketrun.events.storage import open_bucket

    url = f"s3://{make_s3_bucket()}/faults"
    bucket = open_bucket(url)
    n = 5_000
    put_items(bucket, n)
    job = harness.start_job(url, fleet(shard_size=25))
    with FaultProxy(s3_endpoint, fault_rate=rate, even=True) as proxy:
        env = {"AWS_ENDPOINT_URL_S3": proxy.url}
        procs = [spawn(url, job, [f"f{p}{i}" for i in range(3)], env, tmp_path / f"{p}.log") for p in range(2)]
        result = finish(url, job, procs)
    assert proxy.counts["slow_down"] > 10 and proxy.counts["dropped"] > 10, proxy.counts
    print("faults:", proxy.counts)
    stats = harness.verify(url, result["dataset"])
    assert stats["items"] == n and stats["rows"] == n
    for info in bucket.list(keys.fleet_done_prefix(job)):  # nothing torn: every marker parses whole
        assert codec.loads(bucket.get(info.key).data)["shard"] == keys.fleet_shard_of(info.key, keys.fleet_done_prefix(job))



def test_a_part_changed_after_its_commit_fails_the_job_naming_it(bucket_url, bucket, tmp_path):
    """Parts are write-once and their marker holds their bytes. One that no longer matches (changed by hand, or
    lost by a store) will not heal, so the finalizer fails the job at once, naming the part, instead of waiting
    in a loop of retries while the job says `running`. One worker, both shards ending in a slow item: the first
    part is changed while the second shard runs, before the finalizer lists parts/."""
    put_items(bucket, 100)
    probe = tmp_path / "probe"
    probe.mkdir()
    slow = {"item-000049": 3, "item-000099": 3}
    job = harness.start_job(bucket_url, fleet(shard_size=50, processor={
        "entry_point": "fleet_probe:make", "options": {"slow_items": slow}}))
    proc = spawn(bucket_url, job, ["solo"], {"FLEET_PROBE_DIR": str(probe)}, tmp_path / "w.log")
    try:
        parts = keys.fleet_output_prefix(job, None) + "parts/"
        first = wait_for(lambda: next(iter(bucket.list(parts)), None), timeout=60, every=0.02)
        bucket.put(first.key, b"not the rows its marker vouches for")
        result = harness.wait_finished(bucket_url, job, timeout_s=60)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:  # a worker stuck retrying (the old finalizer) must not outlive the test
            proc.kill()
            proc.wait()
    assert result["state"] == "failed", result
    error = result["detail"]["error"]
    assert error["class"] == "code_error" and first.key in error["message"], error
    assert "is 35 bytes, its marker says" in error["message"], error


def test_a_part_key_already_holding_other_bytes_gets_the_shards_rows(bucket_url, bucket, tmp_path):
    """A worker's create of its part meets a 412: a retried request of its own landed, or the key holds something
    else. Only the bytes tell: here the key already holds junk, and the worker must replace it with its rows, or
    its marker would vouch for bytes the bucket does not hold (seen as a fleet stuck `running` under faults)."""
    put_items(bucket, 100)
    job = harness.start_job(bucket_url, fleet(shard_size=50))
    junk = keys.fleet_part_key(keys.fleet_output_prefix(job, None), keys.shard_id(0, 50), 1)
    bucket.put(junk, b"junk at the first generation's key")
    proc = spawn(bucket_url, job, ["solo"], log=tmp_path / "w.log")
    result = finish(bucket_url, job, [proc], timeout_s=60)
    stats = harness.verify(bucket_url, result["dataset"])  # every part read back, row by row, against its sha256
    assert stats["items"] == 100 and stats["rows"] == 100
    assert bucket.get(junk).data[:4] == b"PAR1"
