"""Cheaper idling: the simulation backs its polls and sweeps off while nothing happens (requests counted at
moto's server), never misses a manifest whatever its name, and logs each dispatch once."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.conditional import create_once
from bucketrun.events.lifecycle import JobState, append_transition
from bucketrun.events.storage import open_bucket
from bucketrun.local_sim.sim import Pacing, Simulation

from conftest import jobs_by_inbox_key, make_s3_bucket, wait_for

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
MISSING_MEDIA = {"kind": "transcribe", "source": {"key": "media/not-there.ogg"}}  # taken in, then fails fast
_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(?P<method>[A-Z]+) (?P<path>\S+) HTTP/')


# -- the pacing decision -----------------------------------------------------------------------------------

def test_pacing_doubles_while_idle_up_to_the_cap_and_drops_back_on_work():
    pace = Pacing(base=1.0, cap=10.0)
    waits, wait = [], None
    for _ in range(7):
        wait = pace.next(wait, busy=False)
        waits.append(wait)
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert pace.next(10.0, busy=True) == 1.0
    assert pace.next(None, busy=True) == 1.0


def test_pacing_with_the_cap_at_the_base_is_the_old_fixed_interval():
    assert {Pacing(1.0, 1.0).next(w, busy=False) for w in (None, 1.0)} == {1.0}
    assert Pacing(5.0, 2.0).next(5.0, busy=False) == 5.0  # a cap below the base never shortens the wait


# -- requests counted at the server --------------------------------------------------------------------------

class ListCounter(logging.Handler):
    """Counts the LIST requests moto's server logs for one bucket, by prefix (e.g. "inbox/", "index/live/")."""

    def __init__(self, bucket: str, root: str) -> None:
        super().__init__()
        self.bucket, self.root = bucket, root
        self.lists: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        m = _REQUEST.search(record.getMessage())
        if not m or m["method"] != "GET":
            return
        url = urlsplit(m["path"])
        query = parse_qs(url.query)
        if unquote(url.path).strip("/") == self.bucket and "list-type" in query:
            self.lists[query.get("prefix", [""])[0][len(self.root):]] += 1

    def take(self) -> collections.Counter[str]:
        out, self.lists = self.lists, collections.Counter()
        return out


@contextlib.contextmanager
def counted(bucket_name: str, root: str = ""):
    """Attach a ListCounter to werkzeug's access log (moto's server runs in this process) while inside."""
    counter = ListCounter(bucket_name, root)
    wz = logging.getLogger("werkzeug")
    saved = wz.level, wz.propagate
    wz.setLevel(logging.INFO)
    wz.propagate = False
    wz.addHandler(counter)
    try:
        yield counter
    finally:
        wz.removeHandler(counter)
        wz.setLevel(saved[0])
        wz.propagate = saved[1]



@pytest.fixture
def s3_bucket(s3_endpoint):
    name = make_s3_bucket()
    return name, open_bucket(f"s3://{name}/idle")


def live_job_without_worker(bucket) -> str:
    """A launched job whose worker is still within stall_after: what the sweep sees while a job runs. Written by
    the real state writer, so the live index is real too."""
    job_id = keys.new_job_id()
    view = None
    for state in (JobState.SUBMITTED, JobState.QUEUED):
        _, view = append_transition(bucket, job_id, state, writer="test", view=view)
    create_once(bucket, keys.launch_claim_key(job_id, 1), codec.dumps({"by": "test"}))
    append_transition(bucket, job_id, JobState.LAUNCHED, writer="test", view=view,
                      detail={"backend": "local", "backend_id": "not-a-worker"})
    return job_id


def test_idle_polls_and_sweeps_back_off_and_come_back_when_there_is_work(s3_bucket, launcher):
    """Base 0.2 s, cap 1.6 s, for both: a fixed 0.2 s would list the inbox ~20 times in 4 s; backed off, ~5.
    With a live job the sweep comes back to its base; a new drop is taken in within the cap."""
    name, bucket = s3_bucket
    sim = Simulation(bucket, launcher, poll_s=0.2, poll_max_s=1.6, sweep_s=0.2, sweep_max_s=1.6)
    with counted(name, "idle/") as counter:
        sim.start_thread()
        try:
            assert sim.ready.wait(30)
            time.sleep(4.0)  # idle: nothing in the inbox, no live job
            idle = counter.take()
            assert 2 <= idle["inbox/"] <= 8, idle
            assert 1 <= idle["index/live/"] <= 8, idle

            job_id = live_job_without_worker(bucket)  # nothing told the sim: it finds it at its next probe
            time.sleep(2.0)  # at most one backed-off wait (1.6 s) until the probe sees it
            counter.take()
            time.sleep(3.0)
            live = counter.take()
            assert live["index/live/"] >= 8, live  # ~2 per pass (probe + sweep) every 0.2 s + the pass's own time
            assert live[keys.events_prefix(job_id)] >= 4, live  # the sweep really visited the job

            append_transition(bucket, job_id, JobState.CANCELLED, writer="test")
            time.sleep(2.0)  # the sweep sees no live job and backs off again
            counter.take()
            time.sleep(4.0)
            after = counter.take()
            assert after["index/live/"] <= 8, after

            dropped = time.monotonic()
            bucket.put("inbox/late.json", codec.dumps(MISSING_MEDIA), "application/json")
            wait_for(lambda: "inbox/late.json" in sim.seen, timeout=10)
            assert time.monotonic() - dropped < 1.6 + 1.5  # the cap, plus a listing and an intake on this machine
        finally:
            sim.stop()


# -- never miss a drop, whatever its name ------------------------------------------------------------------

def test_manifests_named_before_seen_ones_all_become_jobs(bucket, launcher):
    """Names users drop are in no order: each drop here sorts before every name the sim has already seen, and
    arrives after the poll has backed off. A start-after cursor would miss every one of them."""
    sim = Simulation(bucket, launcher, poll_s=0.1, poll_max_s=0.8, sweep_s=0.5, sweep_max_s=2.0)
    sim.start_thread()
    try:
        assert sim.ready.wait(30)
        names = ["inbox/zz-first.json"]
        bucket.put(names[0], codec.dumps(MISSING_MEDIA), "application/json")
        wait_for(lambda: names[0] in jobs_by_inbox_key(bucket))
        for name in ["inbox/m.json", "inbox/g.json", "inbox/a b.json", "inbox/A.json", "inbox/0.json"]:
            time.sleep(1.0)  # longer than the cap: the poll is at its slowest when the drop lands
            bucket.put(name, codec.dumps(MISSING_MEDIA), "application/json")
            names.append(name)
        burst = [f"inbox/0-burst-{i:02d}.json" for i in range(8, 0, -1)]  # several at once, in reverse order
        for name in burst:
            bucket.put(name, codec.dumps(MISSING_MEDIA), "application/json")
        names += burst
        found = wait_for(lambda: (lambda jobs: jobs if set(names) <= set(jobs) else None)(jobs_by_inbox_key(bucket)),
                         timeout=60, every=0.5)
        assert len({found[n] for n in names}) == len(names)  # one job each
    finally:
        sim.stop()


# -- the log of `bucketrun sim` ------------------------------------------------------------------------------

def test_sim_logs_each_dispatch_once_and_no_credential_chatter(s3_endpoint, tmp_path):
    url = f"s3://{make_s3_bucket()}/logs"
    bucket = open_bucket(url)
    err = tmp_path / "sim.err"
    with open(err, "wb") as fh:
        proc = subprocess.Popen([BUCKETRUN, "--bucket", url, "sim", "--no-preload", "--poll", "0.2"],
                                stdout=subprocess.DEVNULL, stderr=fh)
    try:
        wait_for(lambda: "watching" in err.read_text(), timeout=30)
        bucket.put("inbox/one.json", json.dumps(MISSING_MEDIA).encode(), "application/json")
        job_id = wait_for(lambda: jobs_by_inbox_key(bucket).get("inbox/one.json"), timeout=30)
        wait_for(lambda: job_id in err.read_text(), timeout=10)
        time.sleep(2.0)  # a few more polls and sweeps, which must not dispatch or log it again
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = err.read_text()
    assert "Found credentials" not in text, text
    dispatch_lines = [line for line in text.splitlines() if f"-> job {job_id}" in line]
    assert len(dispatch_lines) == 1, text
    assert "inbox/one.json" in dispatch_lines[0]
