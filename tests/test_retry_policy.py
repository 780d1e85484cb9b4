"""The one retry policy (events/backoff.py) against the numbers the README states, and where it is used: job
retries, webhook deliveries (driven through notify_job), and the Runpod launcher over real HTTP."""

from __future__ import annotations

import http.server
import json
import logging
import random
import threading
import time
from datetime import timedelta
from email.utils import formatdate
from types import SimpleNamespace

import pytest

from bucketrun.events import codec
from bucketrun.events.backoff import JOB_RETRY, RUNPOD_HTTP, WEBHOOK, Backoff, parse_retry_after
from bucketrun.events.failures import FailureClass, backoff_s
from bucketrun.events.storage import open_bucket
from bucketrun.handlers import notify
from bucketrun.handlers.launchers import runpod as runpod_module
from bucketrun.handlers.launchers.base import LaunchError
from bucketrun.handlers.launchers.runpod import RunpodLauncher

from conftest import free_port
from test_notify import SECRET, ended_job, receiver, record  # noqa: F401 - fixtures reused

API_KEY = "rp-key-never-in-a-log-0123"


class Top:
    """An rng at its upper extreme: every draw is the bound itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Bottom:
    def uniform(self, a: float, b: float) -> float:
        return a


# -- the policy -------------------------------------------------------------------------------------------

def test_webhook_waits_double_from_30_s_and_cap_at_an_hour():
    """README: "Failed deliveries are retried with backoff (30 s doubling, up to 6 attempts)"."""
    assert [notify.retry_delay_s(n, Top()) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert [notify.retry_delay_s(n, Bottom()) for n in range(1, 10)] == [0] * 9  # full jitter reaches 0
    assert notify.MAX_DELIVERIES == 6  # so the waits between the six deliveries are bounded by 30 ... 480 s


def test_job_retries_wait_full_jitter_from_5_s_capped_at_5_minutes():
    assert [backoff_s(n, Top()) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert [backoff_s(n, Bottom()) for n in range(1, 4)] == [0, 0, 0]
    assert JOB_RETRY.bound(10_000) == 300  # a huge attempt number neither overflows nor escapes the cap


def test_runpod_http_waits_from_half_a_second_capped_at_8_s():
    assert [RUNPOD_HTTP.delay(n, Top()) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 8]


def test_every_use_draws_the_same_full_jitter_formula():
    """Seeded: the webhook, job and Runpod delays are exactly the policy's draws, and the draws fill the whole
    range (half jitter would never go below half the bound)."""
    assert notify.retry_delay_s(3, random.Random(7)) == WEBHOOK.delay(3, random.Random(7)) \
        == random.Random(7).uniform(0, 120)
    assert backoff_s(2, random.Random(7)) == JOB_RETRY.delay(2, random.Random(7)) == random.Random(7).uniform(0, 10)
    rng = random.Random(2024)
    draws = [WEBHOOK.delay(3, rng) for _ in range(4000)]
    assert all(0 <= d <= 120 for d in draws)
    assert min(draws) < 6 and max(draws) > 114 and 55 < sum(draws) / len(draws) < 65


def test_retry_after_is_parsed_in_both_forms():
    now = 1_800_000_000.0
    assert parse_retry_after("120") == 120 and parse_retry_after(" 7 ") == 7 and parse_retry_after("0") == 0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == 90  # HTTP-date, from `now`
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0  # already past: go now
    assert parse_retry_after("-3") == 0
    for bad in (None, "", "  ", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


def test_retry_after_overrides_the_draw_and_is_capped():
    assert RUNPOD_HTTP.delay(1, Top(), retry_after=3) == 3  # longer than the draw's bound (0.5 s)
    assert RUNPOD_HTTP.delay(5, Top(), retry_after=0) == 0  # and shorter
    assert RUNPOD_HTTP.delay(1, Top(), retry_after=3600) == 30  # Runpod may ask for at most 30 s
    date = formatdate(time.time() + 600, usegmt=True)
    assert RUNPOD_HTTP.delay(1, retry_after=parse_retry_after(date)) == 30
    assert WEBHOOK.delay(1, retry_after=7200) == 3600  # without a stated maximum: the policy's cap
    assert Backoff(1, 4, retry_after_max_s=10).delay(1, retry_after=-5) == 0


# -- the Runpod launcher over real HTTP ---------------------------------------------------------------------

class HeaderedRunpod:
    """Runpod's API scripted with (status, headers, body) answers, or "drop" to close the connection without an
    answer (a lost response); records method, path, headers and arrival time of every request."""

    def __init__(self, script: list):
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "at": time.monotonic()})
                step = outer.script.pop(0) if outer.script else (200, {}, {"id": "rp-ok", "status": "IN_QUEUE"})
                if step == "drop":
                    self.close_connection = True
                    return
                code, headers, payload = step
                data = json.dumps(payload).encode()
                self.send_response(code)
                for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                    **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/ep123"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]


@pytest.fixture
def runpod_fake():
    fakes: list[HeaderedRunpod] = []

    def make(*script):
        fakes.append(HeaderedRunpod(list(script)))
        return fakes[-1]

    yield make
    for fake in fakes:
        fake.close()


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """The launcher's waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(runpod_module, "time", SimpleNamespace(sleep=waits.append))
    return waits


def launch(launcher: RunpodLauncher) -> str:
    return launcher.launch("s3://bucket/team", "job-1", 1)


def test_a_429_with_retry_after_1_waits_about_a_second_then_launches_with_two_posts(runpod_fake, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    fake = runpod_fake((429, {"Retry-After": "1"}, {"error": "throttled"}))
    started = time.monotonic()
    assert launch(RunpodLauncher("ep123", API_KEY, endpoint_url=fake.url)) == "rp-ok"
    elapsed = time.monotonic() - started
    assert fake.calls() == [("POST", "/v2/ep123/run")] * 2
    gap = fake.requests[1]["at"] - fake.requests[0]["at"]
    assert 0.95 <= gap < 2.0 and elapsed < 3.0  # Retry-After, not the draw (at most 0.5 s)
    [warning] = [r for r in caplog.records if r.name == "bucketrun.runpod" and r.levelno == logging.WARNING]
    assert "POST run" in warning.getMessage() and "429" in warning.getMessage()
    assert "retrying in 1.00 s" in warning.getMessage()
    assert all(r["headers"]["Authorization"] == f"Bearer {API_KEY}" for r in fake.requests)  # sent ...
    assert API_KEY not in caplog.text and "Authorization" not in caplog.text  # ... never logged


def test_retry_after_is_capped_at_30_s_and_http_dates_are_honoured(runpod_fake, slept):
    fake = runpod_fake((429, {"Retry-After": "3600"}, {}),
                       (503, {"Retry-After": formatdate(time.time() + 5, usegmt=True)}, {}))
    assert launch(RunpodLauncher("ep123", API_KEY, endpoint_url=fake.url)) == "rp-ok"
    assert fake.calls() == [("POST", "/v2/ep123/run")] * 3
    assert slept[0] == 30.0 and 3.5 < slept[1] <= 5.0


@pytest.mark.parametrize("step", [(500, {}, {}), (502, {}, {}), (504, {}, {}), "drop"],
                         ids=["500", "502", "504", "lost-answer"])
def test_run_is_not_retried_when_runpod_may_have_queued_the_job(runpod_fake, slept, step):
    """POST /run is not idempotent: a second one after a 500 or a lost answer could start a second job."""
    fake = runpod_fake(step)
    with pytest.raises(LaunchError) as exc:
        launch(RunpodLauncher("ep123", API_KEY, endpoint_url=fake.url))
    assert fake.calls() == [("POST", "/v2/ep123/run")] and slept == []
    assert exc.value.cls is FailureClass.TRANSIENT and "not retried" in str(exc.value)
    assert "endpoint ep123" in str(exc.value) and API_KEY not in str(exc.value)


def test_run_is_retried_when_the_connection_never_opened(slept, caplog):
    closed = f"http://127.0.0.1:{free_port()}/v2/ep123"  # nothing listens there
    with pytest.raises(LaunchError) as exc:
        launch(RunpodLauncher("ep123", API_KEY, endpoint_url=closed, retries=2))
    assert exc.value.cls is FailureClass.TRANSIENT
    assert "kept failing" in str(exc.value) and "after 3 tries" in str(exc.value)
    assert len(slept) == 2 and slept[0] <= 0.5 and slept[1] <= 1.0
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "bucketrun.runpod"] == \
        ["Runpod POST run"] * 2


def test_status_and_cancel_are_retried_after_server_errors_and_lost_answers(runpod_fake, slept):
    fake = runpod_fake((500, {}, {}), "drop", (502, {}, {}), (200, {}, {"id": "rp-1", "status": "IN_PROGRESS"}),
                       (503, {}, {}), (200, {}, {"id": "rp-1", "status": "CANCELLED"}))
    launcher = RunpodLauncher("ep123", API_KEY, endpoint_url=fake.url)
    assert launcher.status("rp-1").value == "IN_PROGRESS"
    launcher.cancel("rp-1")
    assert fake.calls() == [("GET", "/v2/ep123/status/rp-1")] * 4 + [("POST", "/v2/ep123/cancel/rp-1")] * 2
    assert len(slept) == 4 and all(0 <= s <= bound for s, bound in zip(slept, [0.5, 1.0, 2.0, 0.5]))


def test_exhausted_retries_say_how_many_tries(runpod_fake, slept):
    fake = runpod_fake(*[(429, {}, {})] * 5)
    with pytest.raises(LaunchError) as exc:
        launch(RunpodLauncher("ep123", API_KEY, endpoint_url=fake.url))
    assert str(exc.value) == "Runpod endpoint ep123 kept failing (429) after 5 tries"
    assert exc.value.cls is FailureClass.TRANSIENT and len(fake.requests) == 5 and len(slept) == 4


@pytest.mark.parametrize("code,cls,says", [(403, FailureClass.CONFIG_ERROR, "refused the API key for endpoint ep123"),
                                           (400, FailureClass.CODE_ERROR, "answered 400 to run")])
def test_refusals_fail_at_once(runpod_fake, slept, code, cls, says):
    fake = runpod_fake((code, {}, {"error": "no"}))
    with pytest.raises(LaunchError) as exc:
        launch(RunpodLauncher("ep123", API_KEY, endpoint_url=fake.url))
    assert exc.value.cls is cls and says in str(exc.value) and len(fake.requests) == 1 and slept == []


# -- webhook deliveries through notify_job -------------------------------------------------------------------

def test_a_webhook_is_given_up_on_after_exactly_six_deliveries(tmp_path, launcher, receiver):
    bucket = open_bucket(str(tmp_path / "bucket"))
    view = ended_job(bucket, launcher, receiver.url)
    receiver.script = [500] * 50
    notifier = notify.Notifier(SECRET)
    now, outcomes = codec.now(), []
    while not outcomes or outcomes[-1]["notify"] == "retrying":
        assert len(outcomes) < 10
        outcomes.append(notify.notify_job(bucket, view.job_id, notifier, "test", now=now))
        rec = record(bucket, view.job_id, view.latest.seq)
        if rec["gave_up"]:
            break
        due = codec.parse_iso(rec["next_at"])
        assert notify.notify_job(bucket, view.job_id, notifier, "test", now=due - timedelta(milliseconds=1)) is None
        now = due  # the sweep that comes exactly when the retry is due
    assert [o["notify"] for o in outcomes] == ["retrying"] * 5 + ["gave-up"]
    assert len(receiver.requests) == notify.MAX_DELIVERIES == 6
    rec = record(bucket, view.job_id, view.latest.seq)
    assert rec["gave_up"] is True and [a["status"] for a in rec["attempts"]] == [500] * 6
    ats = [codec.parse_iso(a["at"]) for a in rec["attempts"]]
    waits = [(b - a).total_seconds() for a, b in zip(ats, ats[1:])]
    assert all(0 <= w <= bound + 0.001 for w, bound in zip(waits, [30, 60, 120, 240, 480])), waits
    assert notify.notify_job(bucket, view.job_id, notifier, "test", now=now + timedelta(days=1)) == \
        {"job_id": view.job_id, "notify": "settled"}
    assert len(receiver.requests) == 6


def test_a_receivers_retry_after_sets_the_next_delivery(tmp_path, launcher, receiver):
    bucket = open_bucket(str(tmp_path / "bucket"))
    view = ended_job(bucket, launcher, receiver.url)
    receiver.script = [(503, {"Retry-After": "90"}), (429, {"Retry-After": "99999"})]
    notifier = notify.Notifier(SECRET)
    now = codec.now()
    assert notify.notify_job(bucket, view.job_id, notifier, "test", now=now)["retry_after_s"] == 90
    rec = record(bucket, view.job_id, view.latest.seq)
    assert abs((codec.parse_iso(rec["next_at"]) - now).total_seconds() - 90) < 0.01
    later = codec.parse_iso(rec["next_at"])
    notify.notify_job(bucket, view.job_id, notifier, "test", now=later)
    rec = record(bucket, view.job_id, view.latest.seq)
    assert abs((codec.parse_iso(rec["next_at"]) - later).total_seconds() - 3600) < 0.01  # capped at the hour
