"""`bucketrun fleet status` of a fleet that has ended, from a real fleet on the folder bucket: two worker
processes of three workers each, run to the end (and one cancelled mid-way). The status shows the fleet's average
items/s over its wall time (the job's first `running` transition to its terminal one), not the live rate of
workers that have all gone offline, and each row's worker column is a worker id, never a process's writer."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bucketrun.events import codec, keys
from bucketrun.events.fleet.status import fleet_status
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.cli.fleet import wall_text
from bucketrun.local_sim import fleet_harness as harness

from conftest import wait_for

BUCKETRUN = Path(sys.executable).with_name("bucketrun")  # the installed entry point
PROCS = {"a": ["w0000", "w0001", "w0002"], "b": ["w0003", "w0004", "w0005"]}
WORKERS = sorted(w for ids in PROCS.values() for w in ids)
ZERO_RATE = re.compile(r"(?<![\d.])0(\.0*)? items/s")  # "0 items/s", "0.0 items/s"; not "120.0 items/s"


def fleet_manifest(sleep_s: float, heartbeat_s: float = 1) -> dict:
    return {"kind": "fleet", "items": {"file": "items.jsonl"},
            "processor": {"name": "noop", "options": {"sleep_s": sleep_s}}, "shard_size": 50,
            "heartbeat_s": heartbeat_s, "lease_s": 10, "resources": {"heartbeat_s": 1, "stall_after_s": 120},
            "workers": {"count": len(WORKERS)}}


def start_fleet(tmp_path, n_items: int, sleep_s: float):
    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    bucket.put("items.jsonl", "\n".join(codec.dumps(f"item-{i:05d}").decode() for i in range(n_items)).encode())
    job = harness.start_job(url, fleet_manifest(sleep_s))
    procs = [subprocess.Popen(harness.worker_cmd(url, job, ids, grace_s=20), stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / f"{p}.log", "ab"))  # noqa: SIM115 - handed to the child
             for p, ids in PROCS.items()]
    return url, bucket, job, procs


def wait_exited(procs, timeout: float = 90) -> None:
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError("a worker process did not exit once the fleet ended")


def cli_status(url: str, job: str, *extra: str) -> str:
    out = subprocess.run([str(BUCKETRUN), "fleet", "status", job, "--bucket", url, *extra], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def wall_from_transitions(bucket, job: str) -> tuple[float, JobState]:
    """Seconds from the first `running` transition to the terminal one, as the job's log tells it."""
    history = read_view(bucket, job).history
    running = next(t for t in history if t.state is JobState.RUNNING)
    end = history[-1]
    assert end.state.terminal
    return (codec.parse_iso(end.at) - codec.parse_iso(running.at)).total_seconds(), end.state


def worker_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith("  ")]


def check_ended_status(url: str, bucket, job: str, state: str, started: float, finished: float) -> dict:
    wall, end_state = wall_from_transitions(bucket, job)
    assert end_state.value == state
    st = json.loads(cli_status(url, job, "--json"))
    direct = fleet_status(bucket, job)  # the CLI's JSON is fleet_status's dict
    assert {k: direct.get(k) for k in ("items_done", "items_per_s", "wall_s")} == \
        {k: st.get(k) for k in ("items_done", "items_per_s", "wall_s")}
    assert st["state"] == state and st["items_done"] > 0
    # the wall time is the transitions' and lies inside what this test saw from outside
    assert st["wall_s"] > 0 and st["wall_s"] == pytest.approx(wall, abs=0.002)
    assert st["wall_s"] <= finished - started + 1.0
    # the average rate over it, not the live rate of workers that have all gone offline
    assert st["items_per_s"] > 0
    assert st["items_per_s"] == pytest.approx(st["items_done"] / wall, rel=0.01, abs=0.01)
    assert st["eta_s"] is None
    assert all(w["state"] == "offline" for w in st["workers"])
    assert sorted(w["worker"] for w in st["workers"]) == WORKERS

    text = cli_status(url, job)
    head = text.splitlines()[0]
    assert f"{st['items_per_s']} items/s avg" in head, text
    assert f"wall {wall_text(st['wall_s'])}" in head, text
    assert [wall_text(42.34), wall_text(690), wall_text(7500)] == ["42.3s", "11m 30s", "2h 05m"]
    assert not ZERO_RATE.search(text), text
    rows = worker_rows(text)
    assert sorted(r[0] for r in rows) == WORKERS, text  # the worker id, first in each row
    assert "fleet:" not in text, text
    return st


def test_an_ended_fleet_shows_its_average_rate_and_wall_time(tmp_path):
    n = 600
    started = time.time()
    url, bucket, job, procs = start_fleet(tmp_path, n, sleep_s=0.02)  # 12 s of items over 6 workers: ~2 s
    result = harness.wait_finished(url, job, timeout_s=180, poll_s=0.2)
    finished = time.time()
    assert result["state"] == "succeeded", result["detail"]
    wait_exited(procs)
    st = check_ended_status(url, bucket, job, "succeeded", started, finished)
    assert (st["items_done"], st["items_total"], st["shards_done"]) == (n, n, 12)
    assert st["wall_s"] >= n * 0.02 / len(WORKERS) * 0.9  # at least the items' own sleeps, shared by 6
    # every worker committed under its own id, and the dataset names those ids
    markers = [codec.loads(bucket.get(i.key).data) for i in bucket.list(keys.fleet_done_prefix(job))]
    assert {m["worker"] for m in markers} <= set(WORKERS)
    dataset = codec.loads(bucket.get(result["detail"]["dataset"]["key"]).data)
    assert {s["worker"] for s in dataset["shards"]} <= set(WORKERS)
    # every part's rows were checked by its committer, on the bytes its marker hashes
    assert all(m["part"]["checked"] for m in markers if m["part"])
    # and so do the rows: each part's `worker` column is the worker that committed it, not the process's writer
    for s in dataset["shards"]:
        table = pq.read_table(io.BytesIO(bucket.get(s["key"]).data), columns=["worker"], use_threads=False)
        assert set(table.column("worker").to_pylist()) == {s["worker"]}, s["key"]


def test_a_cancelled_fleet_shows_its_average_rate_up_to_the_cancel(tmp_path):
    from bucketrun.handlers.control import cancel

    started = time.time()
    url, bucket, job, procs = start_fleet(tmp_path, 3000, sleep_s=0.02)  # ~10 s to run out: cancelled first
    wait_for(lambda: sum(1 for _ in bucket.list(keys.fleet_done_prefix(job))) >= 6, timeout=120)
    cancel(bucket, job, "test")
    finished = time.time()
    wait_exited(procs)
    st = check_ended_status(url, bucket, job, "cancelled", started, finished)
    assert 0 < st["items_done"] < 3000


def test_the_worker_column_is_the_heartbeats_worker_id_not_a_writer(tmp_path):
    """A heartbeat whose body names the process's writer (fleet:w0000,w0001,...) still shows under its
    worker's id: the id is the heartbeat's key, which a worker writes under its own id."""
    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    bucket.put("items.jsonl", b'"a"\n"b"\n')
    job = harness.start_job(url, fleet_manifest(0.0, heartbeat_s=60))  # the beats below stay alive
    writer = f"fleet:{','.join(PROCS['a'])}"
    for w in PROCS["a"]:
        bucket.put(keys.fleet_heartbeat_key(job, w),
                   codec.dumps({"worker": writer, "state": "working", "at": codec.iso(codec.now()),
                                "items_done": 1, "items_per_s": 2.0, "current_shard": None}))
    st = fleet_status(bucket, job)
    assert [w["worker"] for w in st["workers"]] == PROCS["a"]
    text = cli_status(url, job)
    assert [r[0] for r in worker_rows(text)] == PROCS["a"] and "fleet:" not in text, text
    assert "6.0 items/s" in text.splitlines()[0] and "wall" not in text  # launched: the live rate, no wall


def test_a_worker_whose_last_beat_has_not_come_after_the_end_is_stopping_not_alive(tmp_path):
    """Right after a fleet ends, a worker that has not yet written its final beat is on its way out: shown as
    `stopping` (its counts are not final), never as alive beside an ended fleet."""
    from bucketrun.handlers.control import cancel

    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    bucket.put("items.jsonl", b'"a"\n"b"\n')
    job = harness.start_job(url, fleet_manifest(0.0, heartbeat_s=60))
    for w in PROCS["a"]:
        bucket.put(keys.fleet_heartbeat_key(job, w), codec.dumps({"worker": w, "state": "working",
                                                                   "at": codec.iso(codec.now()), "items_done": 1}))
    assert {w["state"] for w in fleet_status(bucket, job)["workers"]} == {"alive"}  # while it runs
    cancel(bucket, job, "test")
    st = fleet_status(bucket, job)
    assert {w["state"] for w in st["workers"]} == {"stopping"} and st["workers_alive"] == 0, st["workers"]
    assert st["workers_stopping"] == len(PROCS["a"])
    text = cli_status(url, job)
    assert f"0 alive of {len(PROCS['a'])} ({len(PROCS['a'])} stopping)" in text, text


def test_a_worker_stuck_on_an_item_reports_a_falling_rate_and_the_eta_grows_then_it_drains(tmp_path):
    """A worker whose shard runs far past the usual shard's time counts that time in its rate: the fleet's live
    rate falls and its ETA grows while it is stuck, instead of promising its last rate (and 'ETA 0s') for ever.
    Sent SIGTERM, it shows as draining (finishing its shard, claiming no other), not alive."""
    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    bucket.put("items.jsonl", "\n".join(codec.dumps(f"item-{i:05d}").decode() for i in range(300)).encode())
    manifest = fleet_manifest(0.01)
    manifest["processor"] = {"entry_point": "fleet_probe:make",  # the third shard never ends
                             "options": {"sleep_s": 0.01, "slow_items": {"item-00120": 3600}}}
    job = harness.start_job(url, manifest)
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "FLEET_PROBE_DIR": str(probe)}
    proc = subprocess.Popen(harness.worker_cmd(url, job, ["w0000"], grace_s=60), stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "w.log", "ab"), env=env)  # noqa: SIM115 - handed to the child
    try:
        def stuck():
            st = fleet_status(bucket, job)
            [w] = st["workers"] or [None]
            return st if w and w["current_shard"] == keys.shard_id(100, 150) and w["items_per_s"] else None

        first = wait_for(stuck, timeout=60)
        time.sleep(8)
        later = fleet_status(bucket, job)
        assert later["items_done"] == first["items_done"] == 100  # nothing more was done meanwhile
        assert later["items_per_s"] < first["items_per_s"] * 0.35, (first["items_per_s"], later["items_per_s"])
        assert later["eta_s"] > first["eta_s"] * 2
        proc.send_signal(signal.SIGTERM)  # drain: it finishes its shard (here, never) and claims no other
        drained = wait_for(lambda: (st := fleet_status(bucket, job))["workers"][0]["state"] == "draining" and st,
                           timeout=30)
        assert drained["workers_alive"] == 0 and drained["items_per_s"] is not None
    finally:
        proc.kill()
        proc.wait()


def test_a_shard_picked_ahead_by_a_stuck_worker_is_done_by_its_idle_sibling(tmp_path):
    """Two workers in one process; the one stuck on an hour-long item had picked its next shard ahead. Its idle
    sibling takes that pick once it is older than a lease (the stuck one's claim then loses), so every other shard
    is done while the stuck one waits."""
    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    bucket.put("items.jsonl", "\n".join(codec.dumps(f"item-{i:05d}").decode() for i in range(300)).encode())
    manifest = fleet_manifest(0.01)
    manifest["lease_s"] = 4
    manifest["processor"] = {"entry_point": "fleet_probe:make",
                             "options": {"sleep_s": 0.01, "slow_items": {"item-00010": 3600}}}
    job = harness.start_job(url, manifest)
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "FLEET_PROBE_DIR": str(probe)}
    proc = subprocess.Popen(harness.worker_cmd(url, job, ["w0000", "w0001"], grace_s=1), stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "w.log", "ab"), env=env)  # noqa: SIM115 - handed to the child
    try:
        done = wait_for(lambda: (st := fleet_status(bucket, job))["shards_done"] >= 5 and st, timeout=45)
        assert done["items_done"] == 250 and done["state"] == "running"  # all but the stuck shard
    finally:
        proc.kill()
        proc.wait()
