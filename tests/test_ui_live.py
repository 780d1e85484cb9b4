"""The dashboard live: a change pushed to an open page by server-sent events, re-reads held to the request
budget oldest first, the vendored chart library served as pinned, and a job page's webhook deliveries and
worker log from a real job."""

from __future__ import annotations

import hashlib
import json
import time

import httpx

from bucketrun.events import codec, keys
from bucketrun.events.cost import cost_line, cost_of
from bucketrun.events.lifecycle import JobState, append_transition, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.notify import Notifier
from bucketrun.handlers.sweep import sweep
from bucketrun.handlers.ui import assets
from bucketrun.handlers.jobcache import Cache, CountingBucket

from test_notify import SECRET, ended_job, receiver  # noqa: F401 (a fixture)
from test_ui import Server, calls

RUNNING = [JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING]


def _running(bucket, n: int) -> list[str]:
    """`n` running transcription jobs written through the lifecycle, each with a progress object."""
    ids = []
    for i in range(n):
        job_id = keys.new_job_id()
        for state in RUNNING:
            detail = {"inbox": {"key": f"inbox/{i}.json"}, "kind": "transcribe"} if state is JobState.SUBMITTED else {}
            append_transition(bucket, job_id, state, writer="test", detail=detail)
        bucket.put(keys.progress_key(job_id), codec.dumps({"attempt": 1, "stage": "transcribe", "percent": 10.0 * i,
                                                           "updated_at": codec.iso(codec.now())}))
        ids.append(job_id)
        time.sleep(0.002)  # distinct ids in time order
    return ids


def _events(lines, count: int, timeout: float = 30) -> list[dict]:
    """The next `count` `page` events from an open event stream's lines."""
    out, deadline, event = [], time.monotonic() + timeout, None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "page":
            out.append(json.loads(line[6:]))
            if len(out) == count:
                return out
        assert time.monotonic() < deadline, f"only {len(out)} events in {timeout}s"
    raise AssertionError("the stream ended")


def test_an_open_page_is_pushed_the_change_and_nothing_while_nothing_changes(bucket_url):
    bucket = open_bucket(bucket_url)
    [job_id] = _running(bucket, 1)
    server = Server(bucket_url, "--refresh", "0.2", "--budget", "100000")
    try:
        assert "running" in server.get(f"/jobs/{job_id}").text
        with httpx.stream("GET", f"{server.base}/live", params={"path": f"/jobs/{job_id}"}, timeout=30) as live:
            assert live.headers["content-type"].startswith("text/event-stream")
            lines = live.iter_lines()
            first, quiet1, quiet2 = _events(lines, 3)
            assert 'class="state-running">running' in first["main"]
            assert "main" not in quiet1 and "main" not in quiet2  # unchanged: only the footer's counts
            assert quiet2["seq"] == first["seq"]
            append_transition(bucket, job_id, JobState.SUCCEEDED, writer="test", detail={"artifacts": []})
            changed = next(e for e in _events(lines, 10) if "main" in e)
            assert 'class="state-succeeded">succeeded' in changed["main"]
            assert changed["seq"] == first["seq"] + 1 and changed["calls"] > first["calls"]
        page = server.get(f"/jobs/{job_id}").text
        assert f'data-live="/live?path=%2Fjobs%2F{job_id}"' in page  # the page subscribes to its own stream
    finally:
        server.stop()


def test_rereads_of_many_live_jobs_stay_within_the_budget_and_take_turns(tmp_path):
    """Twelve live jobs at a refresh (50 ms) that unbudgeted would cost ~480 requests a second: every re-read
    stays within the budget's start plus its rate (first reads are not taken from it), and every job was read
    again rather than the first ones over and over."""
    bucket = open_bucket(str(tmp_path / "b"))
    ids = _running(bucket, 12)
    counted = CountingBucket(bucket)
    cache = Cache(counted, refresh=0.05, budget=1200)  # 17 requests a second (85%), 100 to start
    began = time.monotonic()
    cache.rows()
    first = counted.calls
    read_at = {j: cache.jobs[j][0] for j in ids}
    while time.monotonic() - began < 3:
        cache.rows()
        time.sleep(0.01)
    elapsed = time.monotonic() - began
    rereads = counted.calls - first
    assert first >= 12 * 3  # each job's events listed, read and its progress read, once
    assert rereads <= 100 + 17 * elapsed + 4, rereads  # the start, the rate, one re-read's overshoot
    assert rereads >= 100  # it did re-read: a budget, not a freeze
    assert all(cache.jobs[j][0] > read_at[j] for j in ids), "a live job was never read again"
    for j in ids[:3]:
        append_transition(bucket, j, JobState.SUCCEEDED, writer="test", detail={"artifacts": []})
    time.sleep(0.5)
    while not all(cache.jobs[j][1]["status"]["terminal"] for j in ids[:3]):
        cache.rows()
    before = counted.calls
    for _ in range(3):
        [cache.job(j) for j in ids[:3]]
    assert counted.calls == before  # ended: never read again


def test_the_vendored_chart_library_is_the_pinned_npm_release_with_its_licence(tmp_path):
    for name, digest in assets.PINNED.items():
        assert hashlib.sha256((assets.STATIC / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (assets.STATIC / "uplot/LICENSE").read_text()
    assert "uplot@1.6.32" in (assets.STATIC / "uplot/VENDORED.md").read_text()
    server = Server(open_bucket(str(tmp_path / "b")).url)
    try:
        js = server.get("/static/uplot/uPlot.iife.min.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert hashlib.sha256(js.content).hexdigest() == assets.PINNED["uplot/uPlot.iife.min.js"]
        assert '<script src="/static/uplot/uPlot.iife.min.js">' in server.get("/").text
        assert server.get("/static/../pyproject.toml").status_code == 404
        assert server.get("/static/uplot/VENDORED.md").status_code == 404  # only the pinned files
    finally:
        server.stop()


def test_a_job_page_shows_its_webhook_deliveries_and_worker_log(bucket_url, launcher, receiver):  # noqa: F811
    bucket = open_bucket(bucket_url)
    receiver.script = [503]
    view = ended_job(bucket, launcher, receiver.url)
    sweep(bucket, launcher, "sweep", notifier=Notifier(SECRET))  # the first delivery: 503
    assert len(receiver.requests) == 1
    server = Server(bucket_url)
    try:
        page = server.get(f"/jobs/{view.job_id}").text
    finally:
        server.stop()
    assert "<h2>Webhook deliveries</h2>" in page
    assert "HTTP 503" in page and "next at" in page
    assert "/hooks/bucketrun" in page and "team=a" not in page  # the URL's query may carry a receiver token
    assert "<h2>Worker log" in page
    cost = cost_of(read_view(bucket, view.job_id))
    assert cost["requests"]["total"] > 0  # every writer's requests, recorded in the transitions
    assert f'<p class="cost">cost: {codec_escape(cost_line(cost))}</p>' in page
    log = bucket.get(keys.log_key(view.job_id, view.attempt)).data.decode()
    last = [line for line in log.splitlines() if line.strip()][-1]
    assert codec_escape(last) in page
    assert f"last {len(log.splitlines())} lines" in page  # the log's final newline starts no line of its own
    assert calls(page) > 0


def codec_escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))
