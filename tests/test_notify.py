"""Webhook notices: a real loopback receiver, jobs ended by the real local worker, deliveries by the sweep."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest

from bucketrun.events import codec, keys, webhook
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import JobState, append_transition, read_view
from bucketrun.handlers.control import retry
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.handlers.notify import MAX_DELIVERIES, Notifier
from bucketrun.handlers.sweep import sweep
from bucketrun.local_sim.sim import s3_record

from webhook_receiver import Receiver

SECRET = "whsec-test-0123456789"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def ended_job(bucket, launcher, webhook_url, name="job.json"):
    """A job whose media is missing: the real worker fails it as bad_input, a terminal state."""
    manifest = {"kind": "transcribe", "source": {"key": "media/missing.ogg"}, "notify": {"webhook": webhook_url}}
    key = keys.inbox_key(name)
    bucket.put(key, codec.dumps(manifest), "application/json")
    ctx = DispatchContext(bucket, launcher, "test")
    [outcome] = dispatch({"Records": [s3_record(bucket, bucket.head(key))]}, ctx)
    assert bucket.exists(keys.notify_watch_key(outcome.job_id))
    return wait_terminal(bucket, outcome.job_id)


def wait_terminal(bucket, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = read_view(bucket, job_id)
        if view.state is not None and view.state.terminal:
            return view
        time.sleep(0.1)
    raise AssertionError(f"{job_id} did not end: {read_view(bucket, job_id).state}")


def record(bucket, job_id, seq):
    return codec.loads(bucket.get(keys.notify_key(job_id, seq)).data)


def test_a_terminal_state_is_posted_once_signed_and_recorded(bucket, launcher, receiver):
    view = ended_job(bucket, launcher, receiver.url)
    assert view.state is JobState.FAILED
    sweep(bucket, launcher, "sweep", notifier=Notifier(SECRET))
    sweep(bucket, launcher, "sweep", notifier=Notifier(SECRET))  # settled: nothing more is sent
    [req] = receiver.requests
    assert req["path"] == "/hooks/bucketrun?team=a"
    body, headers = req["body"], req["headers"]
    # Verify independently of events/webhook.py: HMAC-SHA256 over "<t>.<body>".
    fields = dict(p.split("=", 1) for p in headers[webhook.SIGNATURE_HEADER].split(","))
    expected = hmac.new(SECRET.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(int(fields["t"]) - time.time()) < 60
    assert webhook.verify(SECRET, body, headers[webhook.SIGNATURE_HEADER]) == int(fields["t"])
    with pytest.raises(webhook.BadSignature):
        webhook.verify(SECRET, body.replace(b"failed", b"succeeded"), headers[webhook.SIGNATURE_HEADER])
    with pytest.raises(webhook.BadSignature):
        webhook.verify("another-secret", body, headers[webhook.SIGNATURE_HEADER])
    with pytest.raises(webhook.BadSignature):
        webhook.verify(SECRET, body, headers[webhook.SIGNATURE_HEADER], now=time.time() + 3600)
    assert headers[webhook.DELIVERY_HEADER] == f"{view.job_id}/{view.latest.seq}"
    assert headers[webhook.EVENT_HEADER] == "job.failed"
    payload = json.loads(body)
    assert payload["job_id"] == view.job_id and payload["state"] == "failed"
    assert payload["error"]["class"] == "bad_input" and payload["seq"] == view.latest.seq
    assert SECRET not in body.decode()
    rec = record(bucket, view.job_id, view.latest.seq)
    assert rec["delivered"] is True and [a["status"] for a in rec["attempts"]] == [200]
    assert SECRET not in json.dumps(rec)
    assert not bucket.exists(keys.notify_watch_key(view.job_id))


def test_failed_deliveries_are_retried_with_backoff_and_recorded(bucket, launcher, receiver):
    view = ended_job(bucket, launcher, receiver.url)
    receiver.script = [500, 503]
    t0 = codec.now()
    sweep(bucket, launcher, "sweep", now=t0, notifier=Notifier(SECRET))
    assert len(receiver.requests) == 1
    rec = record(bucket, view.job_id, view.latest.seq)
    assert rec["delivered"] is False and t0 < codec.parse_iso(rec["next_at"]) <= t0 + timedelta(seconds=30)
    sweep(bucket, launcher, "sweep", now=t0, notifier=Notifier(SECRET))  # not due yet
    assert len(receiver.requests) == 1
    sweep(bucket, launcher, "sweep", now=t0 + timedelta(hours=2), notifier=Notifier(SECRET))
    sweep(bucket, launcher, "sweep", now=t0 + timedelta(hours=4), notifier=Notifier(SECRET))
    assert len(receiver.requests) == 3
    assert len({r["headers"][webhook.DELIVERY_HEADER] for r in receiver.requests}) == 1  # one id to dedupe on
    rec = record(bucket, view.job_id, view.latest.seq)
    assert [a["status"] for a in rec["attempts"]] == [500, 503, 200] and rec["delivered"] is True
    assert read_view(bucket, view.job_id).history == view.history  # a notice never touches the job


def test_a_receiver_that_keeps_failing_is_given_up_on_and_the_job_is_untouched(bucket, launcher, receiver):
    view = ended_job(bucket, launcher, receiver.url)
    receiver.script = [500] * 50
    t = codec.now()
    for _ in range(MAX_DELIVERIES + 3):
        sweep(bucket, launcher, "sweep", now=t, notifier=Notifier(SECRET))
        t += timedelta(hours=2)
    assert len(receiver.requests) == MAX_DELIVERIES
    rec = record(bucket, view.job_id, view.latest.seq)
    assert rec["gave_up"] is True and rec["delivered"] is False and len(rec["attempts"]) == MAX_DELIVERIES
    assert not bucket.exists(keys.notify_watch_key(view.job_id))
    assert read_view(bucket, view.job_id).history == view.history


def test_without_a_secret_nothing_unsigned_is_sent(bucket, launcher, receiver, monkeypatch):
    monkeypatch.delenv(webhook.SECRET_ENV, raising=False)
    view = ended_job(bucket, launcher, receiver.url)
    sweep(bucket, launcher, "sweep")
    assert receiver.requests == []
    rec = record(bucket, view.job_id, view.latest.seq)
    assert webhook.SECRET_ENV in rec["attempts"][0]["error"] and rec["delivered"] is False


def test_a_retried_job_owes_a_notice_for_its_new_end(bucket, launcher, receiver):
    first = ended_job(bucket, launcher, receiver.url)
    sweep(bucket, launcher, "sweep", notifier=Notifier(SECRET))
    retry(bucket, first.job_id, "operator")
    sweep(bucket, launcher, "sweep", notifier=Notifier(SECRET))  # launches attempt 2, which fails again
    second = wait_terminal(bucket, first.job_id)
    assert second.attempt == 2 and second.latest.seq > first.latest.seq
    sweep(bucket, launcher, "sweep", notifier=Notifier(SECRET))
    assert [r["headers"][webhook.DELIVERY_HEADER] for r in receiver.requests] == [
        f"{first.job_id}/{first.latest.seq}", f"{first.job_id}/{second.latest.seq}"]


def test_a_job_whose_dispatcher_died_before_arming_is_armed_by_the_sweep(bucket, launcher, receiver):
    """The manifest and `submitted` were written, then the dispatcher died: no watch marker yet."""
    job_id = keys.new_job_id()
    manifest = {"kind": "transcribe", "source": {"key": "media/missing.ogg"}, "notify": {"webhook": receiver.url}}
    bucket.create(keys.manifest_key(job_id), codec.dumps(parse_manifest(codec.dumps(manifest)).to_json()))
    append_transition(bucket, job_id, JobState.SUBMITTED, writer="dead-dispatcher")
    assert not bucket.exists(keys.notify_watch_key(job_id))
    sweep(bucket, launcher, "sweep", now=codec.now() + timedelta(minutes=5), notifier=Notifier(SECRET))
    assert bucket.exists(keys.notify_watch_key(job_id))
    view = wait_terminal(bucket, job_id)
    sweep(bucket, launcher, "sweep", notifier=Notifier(SECRET))
    [req] = receiver.requests
    assert req["headers"][webhook.DELIVERY_HEADER] == f"{job_id}/{view.latest.seq}"


@pytest.mark.parametrize("url", ["https://user:pw@hooks.example.com/x", "ftp://hooks.example.com/x", "not a url"])
def test_a_bad_webhook_url_rejects_the_manifest_naming_the_field(bucket, launcher, url):
    manifest = {"kind": "transcribe", "source": {"key": "media/a.ogg"}, "notify": {"webhook": url}}
    bucket.put("inbox/bad.json", codec.dumps(manifest), "application/json")
    ctx = DispatchContext(bucket, launcher, "test")
    [outcome] = dispatch({"Records": [s3_record(bucket, bucket.head("inbox/bad.json"))]}, ctx)
    latest = read_view(bucket, outcome.job_id).latest
    assert latest.state is JobState.REJECTED
    assert [f["loc"] for f in latest.detail["error"]["fields"]] == ["notify.webhook"]
    assert "pw" not in json.dumps(latest.detail)
