"""What each job cost: requests counted by the storage layer and recorded in the transitions its writers write
anyway, checked against the requests the S3 server itself served for the job's keys; the pricing table; GPU cost
from a launcher's instance records."""

from __future__ import annotations

import collections
import json
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from bucketrun.events import codec, keys, meter
from bucketrun.events.cost import cost_line, cost_of
from bucketrun.events.errors import ConfigError
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.pricing import TABLE, prices
from bucketrun.events.storage import open_bucket

from conftest import make_s3_bucket, wait_for

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(?P<method>[A-Z]+) (?P<path>\S+) HTTP/')


class ServerCount(logging.Handler):
    """Every request moto's server answered, as (class, key) from its access log: what the store would bill."""

    def __init__(self, bucket_name: str, prefix: str):
        super().__init__()
        self.bucket_name, self.prefix = bucket_name, prefix
        self.seen: list[tuple[str, str]] = []
        self.seen_lock = threading.Lock()  # not `lock`: logging.Handler holds that one around emit()

    def emit(self, record: logging.LogRecord) -> None:
        m = _REQUEST.search(record.getMessage())
        if not m:
            return
        url = urlsplit(m["path"])
        path = unquote(url.path).lstrip("/")
        name, _, key = path.partition("/")
        if name != self.bucket_name:
            return
        query = parse_qs(url.query)
        if m["method"] == "GET" and "list-type" in query:
            cls, key = meter.A, query.get("prefix", [""])[0]
        else:
            cls = {"GET": meter.B, "HEAD": meter.B, "DELETE": meter.D}.get(m["method"], meter.A)
        with self.seen_lock:
            self.seen.append((cls, key[len(self.prefix):] if key.startswith(self.prefix) else key))

    def for_job(self, job_id: str, also: tuple[str, ...] = ()) -> dict[str, int]:
        with self.seen_lock:
            seen = list(self.seen)
        out = collections.Counter(cls for cls, key in seen if meter.job_of(key) == job_id or key.startswith(also))
        return {c: out[c] for c in meter.CLASSES}


@pytest.fixture
def server_count(s3_endpoint):
    name = make_s3_bucket()
    counter = ServerCount(name, "cost/")
    wz = logging.getLogger("werkzeug")
    saved = wz.level, wz.propagate
    wz.setLevel(logging.INFO)
    wz.propagate = False
    wz.addHandler(counter)
    yield f"s3://{name}/cost", counter
    wz.removeHandler(counter)
    wz.setLevel(saved[0])
    wz.propagate = saved[1]


def _stored_state(bucket_name: str, job_id: str) -> str | None:
    """The job's latest state read from moto's store in this process: no request, so nothing is counted."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    store = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket_name].keys
    events = sorted(k for k in list(dict.keys(store)) if k.startswith(f"cost/jobs/{job_id}/events/"))
    return json.loads(store[events[-1]].value)["state"] if events else None


def test_a_transcription_records_exactly_the_requests_the_server_served_for_it(server_count, launcher, media_dir):
    """Intake and launcher (in the simulation, here) and the worker (its own process) each record what they spent
    on the job in the transitions they write: the sum over the history equals what the S3 server served for the
    job, class by class: its keys, and those that name no job but were read or written for it (its intake claim,
    its media, the result cache). What the simulation spends on no job in particular (listing inbox/) is not."""
    from bucketrun.handlers.client import submit
    from bucketrun.local_sim.sim import Simulation

    url, counter = server_count
    bucket = open_bucket(url)
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes())
    with counter.seen_lock:
        counter.seen.clear()  # the media's upload is yours, not the job's
    sim = Simulation(bucket, launcher, poll_s=0.2, poll_max_s=0.5, sweep_s=None)  # a sweep reads, writes nothing
    thread = threading.Thread(target=sim.run, daemon=True)
    thread.start()
    try:
        manifest = {"kind": "transcribe", "source": {"key": "media/speech.ogg"}, "options": {"language": "en"}}
        job_id, _ = submit(bucket, json.dumps(manifest).encode())
        wait_for(lambda: _stored_state(counter.bucket_name, job_id) in ("succeeded", "failed"), timeout=240)
        time.sleep(2.0)  # the worker's last log PUT and the live marker's DELETE come after the transition
    finally:
        sim.stop()
        thread.join(timeout=30)
    # the job's keys, and (one job in this bucket) its intake claim, its media's GET and the result cache's lookups
    # and entries: keys that name no job, which intake and the worker attribute to the job they work for
    served = counter.for_job(job_id, also=(keys.INDEX + "intake/", "media/", "cache/"))
    # what the simulation (this process) spent on the job after its last transition and never recorded: a poll
    # that saw the manifest again re-reads its intake claim and writes nothing (docs/cost.md: not counted)
    unrecorded = meter.take(job_id)
    view = read_view(bucket, job_id)
    assert view.state is JobState.SUCCEEDED, view.latest
    cost = cost_of(view, prices=TABLE["r2"])
    recorded = {c: cost["requests"][c] for c in meter.CLASSES}
    assert meter.add(recorded, unrecorded) == served, \
        (recorded, unrecorded, served, [(t.state.value, t.detail["requests"]) for t in view.history])
    assert unrecorded["a"] == 0 and unrecorded["b"] <= 2  # at most a duplicate delivery's reads
    print("unrecorded by the simulation:", unrecorded)
    assert set(cost["requests"]["by"]) == {"sim", "worker"}  # intake and launcher write as the simulation
    assert cost["requests_usd"] == pytest.approx((served["a"] * 4.50 + served["b"] * 0.36) / 1e6)
    assert cost["gpu"]["usd"] is None and cost["gpu"]["note"] == "not recorded"
    line = cost_line(cost)
    assert line.startswith(f"requests {served['a'] + served['b']} (A {served['a']}, B {served['b']}")
    assert "at R2 list prices; GPU not recorded" in line
    print(f"\ntranscription {job_id}: {line}\n{json.dumps(cost['requests'])}")


def test_the_pricing_table_and_its_setting():
    assert prices({}) is TABLE["s3"]  # the default: the bucket template.yaml deploys
    assert prices({"BUCKETRUN_PRICING": "r2"}).usd(1_000_000, 1_000_000) == pytest.approx(4.50 + 0.36)
    assert prices({"BUCKETRUN_PRICING": "S3"}).usd(1_000_000, 1_000_000) == pytest.approx(5.00 + 0.40)
    custom = prices({"BUCKETRUN_PRICING": "custom", "BUCKETRUN_PRICE_A": "6", "BUCKETRUN_PRICE_B": "0.5"})
    assert (custom.name, custom.usd(2_000_000, 4_000_000)) == ("custom", pytest.approx(12 + 2))
    for env, says in [({"BUCKETRUN_PRICING": "gcs"}, "not one of r2, s3, custom"),
                      ({"BUCKETRUN_PRICING": "custom"}, "needs BUCKETRUN_PRICE_A"),
                      ({"BUCKETRUN_PRICING": "custom", "BUCKETRUN_PRICE_A": "x", "BUCKETRUN_PRICE_B": "1"},
                       "is not a number"),
                      ({"BUCKETRUN_PRICING": "custom", "BUCKETRUN_PRICE_A": "-1", "BUCKETRUN_PRICE_B": "1"},
                       "non-negative")]:
        with pytest.raises(ConfigError, match=says):
            prices(env)


def _cli(*args, env=None):
    import os

    return subprocess.run([BUCKETRUN, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_status_shows_the_cost_under_each_pricing_and_a_bad_setting_is_one_line(tmp_path):
    """A job driven through real transitions on a folder bucket: `status` prints the cost line, `--json` the cost
    object, priced by BUCKETRUN_PRICING; a bad value is one line on stderr, no traceback."""
    from bucketrun.events.lifecycle import append_transition

    bucket = open_bucket(str(tmp_path / "bucket"))
    job_id = keys.new_job_id()
    for state in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING):
        append_transition(bucket, job_id, state, writer="test@host:1")
    bucket.put(keys.progress_key(job_id), codec.dumps({"attempt": 1, "stage": "x", "percent": 50.0}))
    append_transition(bucket, job_id, JobState.SUCCEEDED, writer="worker@host:2")
    view = read_view(bucket, job_id)
    want = cost_of(view, prices=TABLE["r2"])["requests"]
    assert want["a"] >= 5 and want["d"] == 1  # five transitions' PUTs; the live marker's free DELETE
    for choice, name in (("r2", "R2"), ("s3", "S3 Standard")):
        out = _cli("--bucket", bucket.url, "status", job_id, "--json", env={"BUCKETRUN_PRICING": choice})
        assert out.returncode == 0, out.stderr
        cost = json.loads(out.stdout)["cost"]
        assert cost["pricing"]["name"] == name and cost["requests"]["total"] == want["a"] + want["b"]
        assert cost["requests_usd"] == pytest.approx(TABLE[choice].usd(want["a"], want["b"]), rel=1e-6)
    text = _cli("--bucket", bucket.url, "status", job_id, env={"BUCKETRUN_PRICING": "r2"})
    assert f"requests {want['a'] + want['b']} (A {want['a']}, B {want['b']}" in text.stdout, text.stdout
    assert "at R2 list prices" in text.stdout
    bad = _cli("--bucket", bucket.url, "status", job_id, env={"BUCKETRUN_PRICING": "azure"})
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "BUCKETRUN_PRICING" in bad.stderr, bad.stderr


def test_a_fleet_shows_requests_per_item_in_status_json(bucket_url, launcher):
    """Worker processes carry their counts in the ledgers they write anyway; the finalizer sums the ledgers it
    reads into `succeeded`, so `status --json` gives requests per item from the history alone."""
    from bucketrun.handlers.client import submit
    from bucketrun.local_sim.sim import Simulation

    bucket = open_bucket(bucket_url)
    bucket.put("items.jsonl", "\n".join(f'"i{i}"' for i in range(300)).encode())
    manifest = {"kind": "fleet", "items": {"file": "items.jsonl"}, "processor": {"name": "noop"},
                "shard_size": 25, "heartbeat_s": 1, "lease_s": 10,
                "resources": {"heartbeat_s": 1, "stall_after_s": 60}, "workers": {"count": 2, "backend": "local"}}
    sim = Simulation(bucket, launcher, poll_s=0.2, sweep_s=0.5, poll_max_s=0.5, sweep_max_s=1.0)
    thread = threading.Thread(target=sim.run, daemon=True)
    thread.start()
    try:
        job_id, _ = submit(bucket, json.dumps(manifest).encode())
        wait_for(lambda: read_view(bucket, job_id).state in (JobState.SUCCEEDED, JobState.FAILED), timeout=240)
    finally:
        sim.stop()
        thread.join(timeout=30)
    view = read_view(bucket, job_id)
    assert view.state is JobState.SUCCEEDED, view.latest
    ledgers = view.latest.detail["ledger_requests"]
    assert ledgers["ledgers"] >= 1 and ledgers["a"] >= 12  # at least a claim, a part and a marker per shard
    out = _cli("--bucket", bucket.url, "status", job_id, "--json", env={"BUCKETRUN_PRICING": "r2"})
    assert out.returncode == 0, out.stderr
    cost = json.loads(out.stdout)["cost"]
    req = cost["requests"]
    assert cost["items"] == 300 and "fleet workers" in req["by"]
    assert cost["per_item"]["total"] == pytest.approx(req["total"] / 300, abs=1e-6) and req["total"] > ledgers["a"]
    assert cost["gpu"]["instances"] == 2  # local worker processes: no price, so no GPU dollars
    text = _cli("--bucket", bucket.url, "status", job_id, env={"BUCKETRUN_PRICING": "r2"}).stdout
    assert "/item over 300 items" in text, text
    fleet = json.loads(_cli("--bucket", bucket.url, "fleet", "status", job_id, "--json").stdout)["requests"]
    assert fleet["total"] == req["total"] and fleet["per_item"] == pytest.approx(req["total"] / 300, abs=1e-6)
    assert f"requests: {req['total']} recorded" in _cli("--bucket", bucket.url, "fleet", "status", job_id).stdout
    print("\nfleet: " + text.splitlines()[-1].strip())


def test_gpu_cost_from_the_launchers_instance_records(tmp_path, monkeypatch):
    """Pods started through the real Runpod backend (a fake only at its GraphQL boundary) are recorded with their
    $/h; one is torn down, two still run: GPU cost is $/h x held time, up to `now` for those still held."""
    from datetime import timedelta

    from bucketrun.events.fleet.instances import read_instances
    from bucketrun.events.lifecycle import append_transition
    from bucketrun.handlers.launchers.fleet import record_instance, terminate
    from bucketrun.handlers.launchers.runpod_pods import SDK_URL_ENV, RunpodPodsBackend
    from test_fleet_cloud_backends import FakeRunpodGraphQL, runpod_spec

    monkeypatch.delenv(SDK_URL_ENV, raising=False)
    fake = FakeRunpodGraphQL(cost=0.69)
    try:
        bucket = open_bucket(str(tmp_path / "bucket"))
        job_id = keys.new_job_id()
        append_transition(bucket, job_id, JobState.SUBMITTED, writer="intake@h:1", detail={"kind": "fleet"})
        backend = RunpodPodsBackend("rp-test-key", api_base=fake.url)
        started = backend.start(bucket.url, job_id, ["w000", "w001", "w002"], runpod_spec())
        for inst in started:
            record_instance(bucket, job_id, inst, 1)
        first = next(i for i in read_instances(bucket, job_id) if i["worker"] == "w000")
        stopped = terminate(bucket, job_id, first, backend, "test")
    finally:
        fake.close()
    records = read_instances(bucket, job_id)
    assert len(records) == 3 and all(r["price_per_hour"] == pytest.approx(0.69) for r in records)
    now = codec.now() + timedelta(hours=2)
    cost = cost_of(read_view(bucket, job_id), records, prices=TABLE["r2"], now=now)
    held = [r for r in records if not r["terminated_at"]]
    hours = sum((now - codec.parse_iso(r["started_at"])).total_seconds() / 3600 for r in held)
    hours += (codec.parse_iso(stopped["terminated_at"]) - codec.parse_iso(stopped["started_at"])).total_seconds() / 3600
    assert (cost["gpu"]["instances"], cost["gpu"]["held"]) == (3, 2)
    assert cost["gpu"]["usd"] == pytest.approx(0.69 * hours, rel=1e-6) and cost["gpu"]["usd"] > 2 * 0.69 * 2 - 0.01
    assert "GPU $2.76 (3 instances, 2 still held)" in cost_line(cost)
    out = _cli("--bucket", bucket.url, "status", job_id, "--json")
    gpu = json.loads(out.stdout)["cost"]["gpu"]
    assert (gpu["instances"], gpu["held"], gpu["unpriced"]) == (3, 2, 0) and gpu["usd"] < 0.01  # held for seconds
    # a host agent or a serverless worker records no price: "not recorded", never a made-up zero
    assert cost_of(read_view(bucket, job_id), None, prices=TABLE["r2"])["gpu"]["usd"] is None
    unpriced = [{**r, "price_per_hour": None} for r in records]
    assert cost_of(read_view(bucket, job_id), unpriced, prices=TABLE["r2"], now=now)["gpu"]["usd"] is None


def test_a_lost_race_carries_its_requests_into_the_write_that_wins(server_count):
    """A writer deciding from a stale view loses the create (412), reads back and catches up, then writes the next
    sequence number: the lost PUT and those reads are in the transition it does write, so the history still
    sums to what the server served."""
    from bucketrun.events.lifecycle import append_transition

    url, counter = server_count
    bucket = open_bucket(url)
    job_id = keys.new_job_id()
    _, stale = append_transition(bucket, job_id, JobState.SUBMITTED, writer="intake@h:1")
    append_transition(bucket, job_id, JobState.QUEUED, writer="intake@h:1")
    t, _ = append_transition(bucket, job_id, JobState.CANCELLED, writer="control@h:2", view=stale)
    assert t.seq == 3  # it lost seq 2, caught up, and wrote 3
    assert t.detail["requests"]["a"] >= 2 and t.detail["requests"]["b"] >= 1  # the lost PUT, the catch-up read
    time.sleep(0.5)
    served = counter.for_job(job_id)
    recorded = {c: cost_of(read_view(bucket, job_id), prices=TABLE["s3"])["requests"][c] for c in meter.CLASSES}
    assert recorded == served and served["d"] == 1, (recorded, served)


def test_which_job_a_key_belongs_to():
    job = "20261122T184512123Z-k3f9qz"
    for key in (f"jobs/{job}/events/000001.json", f"jobs/{job}/events/", f"index/live/{job}.json",
                f"inbox/{job}.json", f"control/cancel/{job}.json", f"index/agents/gpu/{job}-001-train.json",
                f"index/fleet/{job}.json"):
        assert meter.job_of(key) == job, key
    for key in ("inbox/talk.json", "index/intake/ab12.json", "index/live/", "media/x.ogg", "index/hosts/a.json"):
        assert meter.job_of(key) is None, key
    assert [meter.op_class(op) for op in ("PutObject", "ListObjectsV2", "CopyObject", "UploadPart", "GetObject",
                                          "HeadObject", "DeleteObject")] == ["a", "a", "a", "a", "b", "b", "d"]
