"""Fleets under chaos, on the folder and the S3 backends: workers killed with -9, drained with SIGTERM, killed
again and again by a poison item, and S3 answering 5% of requests with 503 SlowDown or a dropped connection.
Every run must end with a committed dataset holding every planned item exactly once."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
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


def test_kill_9_workers_mid_fleet_every_item_once(bucket_url, bucket, tmp_path):
    """Two worker processes killed with -9 mid-run: one restarted under the same ids (it hands back its own
    stale leases), one never (its leases expire and are taken over by generation)."""
    n = 8_000
    put_items(bucket, n)
    job = harness.start_job(bucket_url, fleet(processor={"name": "noop", "options": {"sleep_s": 0.0005}}))
    ids = {p: [f"w{p}{i}" for i in range(3)] for p in "abc"}
    procs = {p: spawn(bucket_url, job, ids[p], log=tmp_path / f"{p}.log") for p in "abc"}
    shards = n // 50
    wait_for(lambda: done_count(bucket, job) >= shards * 0.15, timeout=120)
    procs["a"].send_signal(signal.SIGKILL)
    procs["a"].wait()
    procs["a2"] = spawn(bucket_url, job, ids["a"], log=tmp_path / "a2.log")  # same ids: dead-claim recovery
    wait_for(lambda: done_count(bucket, job) >= shards * 0.5, timeout=120)
    procs["b"].send_signal(signal.SIGKILL)
    procs["b"].wait()
    result = finish(bucket_url, job, [procs["a2"], procs["c"]])
    stats = harness.verify(bucket_url, result["dataset"])  # row by row: each item in exactly one part
    assert stats == {"items": n, "rows": n, "parts": len(result["dataset"]["shards"]), "dead_letters": 0}
    generations = [codec.loads(bucket.get(i.key).data)["generation"]
                   for i in bucket.list(keys.fleet_leases_prefix(job))]
    assert max(generations) >= 2, "no lease of a killed worker was taken over or handed back"


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
    beats = {w: codec.loads(bucket.get(keys.fleet_heartbeat_key(job, w)).data) for w in ("ta0", "ta1")}
    assert all(b_["state"] == "offline" and b_["holding"] == [] for b_ in beats.values())
    result = finish(bucket_url, job, [b])
    harness.verify(bucket_url, result["dataset"])
    processed = collections.Counter(line for f in probe.iterdir() for line in f.read_text().split())
    assert set(processed) == set(items)
    assert max(processed.values()) == 1, [i for i, c in processed.items() if c > 1][:5]
    markers = [codec.loads(bucket.get(i.key).data) for i in bucket.list(keys.fleet_done_prefix(job))]
    partial = [m for m in markers if m["children"] and m["covered"]]
    assert partial, "the drained workers committed no partial shard"
    assert {m["worker"] for m in partial} <= {"ta0", "ta1"}


def test_poison_item_is_dead_lettered_and_the_fleet_completes(bucket_url, bucket, tmp_path):
    """The item kills its worker process every time (a hard exit). The worker is restarted like a pod; the
    shard is bisected until the item is alone, and then dead-lettered."""
    n = 400
    items = put_items(bucket, n)
    poison = items[123]
    # Shards of 8: bisected 8 -> 4 -> 2 -> 1, two deaths at each size, then the item alone is dead-lettered.
    job = harness.start_job(bucket_url, fleet(processor={"name": "noop", "options": {"crash_items": [poison]}},
                                              max_item_attempts=2, shard_size=8))
    procs = {w: spawn(bucket_url, job, [w], log=tmp_path / f"{w}.log") for w in ("p0", "p1")}
    restarts = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        running = False
        for w, p in procs.items():
            rc = p.poll()
            if rc is None:
                running = True
            elif rc == 70:  # the crash: restart under the same id, as a pod's restart policy would
                restarts += 1
                procs[w] = spawn(bucket_url, job, [w], log=tmp_path / f"{w}.log")
                running = True
        if not running:
            break
        time.sleep(0.2)
    result = finish(bucket_url, job, list(procs.values()), timeout_s=30)
    ds = result["dataset"]
    assert [d["index"] for d in ds["dead_letters"]] == [123]
    assert ds["dead_letters"][0]["item"] == poison
    assert ds["items_covered"] == n and ds["rows"] == n - 1
    harness.verify(bucket_url, ds)
    assert 2 <= restarts <= 20


@pytest.mark.parametrize("rate", [0.05])
def test_fleet_completes_through_s3_faults(s3_endpoint, tmp_path, rate):


    from bucketrun.events.storage import open_bucket

    url = f"s3://{make_s3_bucket()}/faults"
    bucket = open_bucket(url)
    n = 5_000
    put_items(bucket, n)
    job = harness.start_job(url, fleet())
    with FaultProxy(s3_endpoint, fault_rate=rate) as proxy:
        env = {"AWS_ENDPOINT_URL_S3": proxy.url}
        procs = [spawn(url, job, [f"f{p}{i}" for i in range(3)], env, tmp_path / f"{p}.log") for p in range(2)]
        result = finish(url, job, procs)
    assert proxy.counts["slow_down"] > 10 and proxy.counts["dropped"] > 10, proxy.counts
    stats = harness.verify(url, result["dataset"])
    assert stats["items"] == n and stats["rows"] == n
    for info in bucket.list(keys.fleet_done_prefix(job)):  # nothing torn: every marker parses whole
        assert codec.loads(bucket.get(info.key).data)["shard"] == keys.fleet_shard_of(info.key, keys.fleet_done_prefix(job))
