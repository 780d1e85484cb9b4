"""Bad input refused at the door, and the two protocol holes found by the chaos run (issue 7, parts 7-9).

Each test here failed before its fix: schemes and private addresses passed intake, JSON types were coerced,
rejections echoed input, deep nesting crashed intake, a crash mid-intake folded a new upload into an old job,
and a lost response to a conditional write was taken for another writer's win.
"""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.conditional import create_json
from bucketrun.events.errors import PreconditionFailed
from bucketrun.events.failures import FailureClass, JobFailure
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import JobState, append_transition, list_job_ids, read_view
from bucketrun.events.manifest import ManifestRejected
from bucketrun.events.storage import Bucket, open_bucket
from bucketrun.handlers import client
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.handlers.intake import intake
from bucketrun.images.runtime.attempt import run_attempt
from bucketrun.images.transcribe import fetch
from bucketrun.local_sim.sim import s3_record

GOOD = {"kind": "transcribe", "source": {"key": "media/missing.ogg"}, "options": {"language": "en"}}


@pytest.fixture
def no_private(monkeypatch):
    monkeypatch.delenv("BUCKETRUN_ALLOW_PRIVATE_URLS", raising=False)


def drop(bucket, key, manifest, launcher):
    bucket.put(key, manifest if isinstance(manifest, bytes) else codec.dumps(manifest), "application/json")
    [outcome] = dispatch({"Records": [s3_record(bucket, bucket.head(key))]}, DispatchContext(bucket, launcher, "t"))
    return outcome, read_view(bucket, outcome.job_id)


def rejected_fields(view):
    assert view.state is JobState.REJECTED, [t.state for t in view.history]
    error = view.latest.detail["error"]
    assert error["class"] == "bad_input" and not error["retryable"]
    return {f["loc"]: f["msg"] for f in error.get("fields", [])}


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.mp3", "gopher://example.com/",
                                 "data:audio/ogg;base64,AAAA", "javascript:alert(1)"])
def test_unfetchable_schemes_are_rejected_at_intake(bucket, launcher, url):
    _, view = drop(bucket, "inbox/scheme.json", {"kind": "transcribe", "source": {"url": url}}, launcher)
    fields = rejected_fields(view)
    assert "scheme" in fields["source.url"] and "not allowed" in fields["source.url"]
    assert not list(bucket.list(keys.job_prefix(view.job_id) + "launch/"))
    assert view.history[0].detail["kind"] == "transcribe"  # `ls` and the dashboard show what it meant to be


@pytest.mark.parametrize("host", ["169.254.169.254", "10.1.2.3", "127.0.0.1", "[::1]", "[::ffff:169.254.169.254]",
                                  "192.168.0.7", "0.0.0.0"])
def test_literal_internal_addresses_are_rejected_at_intake(host, no_private, monkeypatch):
    raw = codec.dumps({"kind": "transcribe", "source": {"url": f"http://{host}/latest/meta-data/"}})
    with pytest.raises(ManifestRejected) as err:
        parse_manifest(raw)
    assert err.value.fields[0]["loc"] == "source.url" and "private" in err.value.fields[0]["msg"]
    monkeypatch.setenv("BUCKETRUN_ALLOW_PRIVATE_URLS", "1")  # the operator's opt-in
    assert parse_manifest(raw).body.source.url.startswith("http://")


def test_the_worker_refuses_a_name_that_resolves_inside(no_private):
    with pytest.raises(JobFailure) as err:
        fetch.check_url("http://metadata.example/latest", resolve=lambda host: ["169.254.169.254"])
    assert err.value.cls is FailureClass.BAD_INPUT and err.value.where == "source.url"
    fetch.check_url("http://media.example/a.ogg", resolve=lambda host: ["93.184.215.14"])  # public: fine


def test_a_loopback_name_fails_as_bad_input_once_and_is_never_fetched(tmp_path, no_private, media_dir):
    """End to end through the attempt runtime: `localhost` passes intake (it is a name), the worker resolves
    it right before the fetch, refuses, and the class stops any retry."""
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(args)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(media_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bucket = open_bucket(str(tmp_path / "b"))
        manifest = parse_manifest(codec.dumps({
            "kind": "transcribe", "source": {"url": f"http://localhost:{server.server_address[1]}/speech.ogg"},
            "resources": {"max_attempts": 3}}))
        bucket.create(keys.manifest_key("j1"), codec.dumps(manifest.to_json()))
        for state in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED):
            append_transition(bucket, "j1", state, writer="t")
        result = run_attempt(bucket.url, "j1", 1)
    finally:
        server.shutdown()
        server.server_close()
    view = read_view(bucket, "j1")
    assert result["status"] == "failed" and view.state is JobState.FAILED and view.attempt == 1
    assert view.latest.detail["error"]["class"] == "bad_input"
    assert "loopback" in view.latest.detail["error"]["message"]
    assert hits == []  # nothing was fetched


@pytest.mark.parametrize("path,value", [("options.beam_size", "5"), ("options.vad", "true"),
                                        ("options.word_timestamps", 1), ("resources.heartbeat_s", "2"),
                                        ("resources.max_attempts", 2.0), ("options.language", "xx"),
                                        ("options.model", "../../etc")])
def test_wrong_json_types_and_values_are_rejected_naming_the_field(path, value):
    section, name = path.split(".")
    manifest = {**GOOD, section: {**GOOD.get(section, {}), name: value}}
    with pytest.raises(ManifestRejected) as err:
        parse_manifest(codec.dumps(manifest))
    assert [f["loc"] for f in err.value.fields] == [path]


def test_a_rejection_never_echoes_the_input(bucket, launcher):
    huge = "k" * 300_000
    _, view = drop(bucket, "inbox/huge-kind.json", {"kind": huge, "source": {"key": "a"}}, launcher)
    [(loc, msg)] = rejected_fields(view).items()
    assert loc == "kind" and msg.startswith("must be one of: ") and "transcribe" in msg
    assert "kind" not in view.history[0].detail  # an unknown kind is never recorded as one
    _, view2 = drop(bucket, "inbox/huge-field.json", {**GOOD, huge: 1}, launcher)
    [(loc2, msg2)] = rejected_fields(view2).items()
    assert len(loc2) < 250 and "Extra inputs" in msg2
    for v in (view, view2):
        assert len(bucket.get(keys.event_key(v.job_id, 1)).data) < 4096
        assert huge[:1000] not in bucket.get(keys.event_key(v.job_id, 1)).data.decode()


def test_deep_nesting_becomes_a_rejected_job_and_the_batch_goes_on(bucket, launcher):
    deep = b'{"kind": "transcribe", "x": ' + b'{"x": ' * 1000 + b"1" + b"}" * 1000 + b"}"
    bucket.put("inbox/deep.json", deep)
    bucket.put("inbox/after.json", codec.dumps({**GOOD, "source": {"url": "ftp://x/y"}}))
    records = [s3_record(bucket, bucket.head(k)) for k in ("inbox/deep.json", "inbox/after.json")]
    outcomes = dispatch({"Records": records}, DispatchContext(bucket, launcher, "t"))
    assert [o.state for o in outcomes] == ["rejected", "rejected"]
    error = read_view(bucket, outcomes[0].job_id).latest.detail["error"]
    assert "deeper than 32" in error["message"]


def test_a_crash_mid_intake_is_finished_and_a_new_upload_gets_its_own_job(bucket, launcher):
    """The dispatcher died after the index claim and before jobs/<id>/intake.json; then the user re-uploaded
    different bytes under the same name."""
    job_id = keys.new_job_id()
    name = f"inbox/{job_id}.json"
    bucket.put(name, codec.dumps(GOOD))
    etag = bucket.head(name).etag
    create_json(bucket, keys.idempotency_key(keys.object_token(name, etag)),
                {"job_id": job_id, "token": keys.object_token(name, etag), "inbox_key": name, "at": "x"})
    first = intake(bucket, name, launcher, "t")
    assert first.job_id == job_id and bucket.exists(keys.intake_key(job_id))
    assert codec.loads(bucket.get(keys.intake_key(job_id)).data)["token"] == keys.object_token(name, etag)

    second_manifest = {**GOOD, "options": {"language": "de"}}
    bucket.put(name, codec.dumps(second_manifest))
    second = intake(bucket, name, launcher, "t")
    assert second.job_id != job_id
    assert codec.loads(bucket.get(keys.manifest_key(job_id)).data)["options"]["language"] == "en"
    assert codec.loads(bucket.get(keys.manifest_key(second.job_id)).data)["options"]["language"] == "de"
    assert sorted(list_job_ids(bucket)) == sorted([job_id, second.job_id])


class LostResponses(Bucket):
    """A bucket whose conditional writes to matching keys land, then report 412: what botocore's retry of a
    PUT whose response was lost produces."""

    def __init__(self, inner: Bucket, match: str):
        self.inner, self.match, self.url, self.name, self.lost = inner, match, inner.url, inner.name, []

    def _lose(self, key):
        if self.match in key:
            self.lost.append(key)
            raise PreconditionFailed(f"{key}: precondition failed (412 after a retried PUT)")

    def create(self, key, data, content_type="application/octet-stream"):
        etag = self.inner.create(key, data, content_type)
        self._lose(key)
        return etag

    def replace(self, key, data, etag, content_type="application/octet-stream"):
        new = self.inner.replace(key, data, etag, content_type)
        self._lose(key)
        return new

    def put(self, *a, **kw): return self.inner.put(*a, **kw)
    def get(self, key): return self.inner.get(key)
    def head(self, key): return self.inner.head(key)
    def list(self, *a, **kw): return self.inner.list(*a, **kw)
    def delete(self, key): return self.inner.delete(key)
    def full_key(self, key): return self.inner.full_key(key)
    def relative_key(self, key): return self.inner.relative_key(key)


def test_a_lost_response_on_the_launch_claim_still_launches_at_once(bucket, launcher):
    lossy = LostResponses(bucket, "/launch/")
    bucket.put("inbox/lossy.json", codec.dumps(GOOD))
    outcome = intake(lossy, "inbox/lossy.json", launcher, "t")
    assert lossy.lost == [keys.launch_claim_key(outcome.job_id, 1)]
    view = read_view(bucket, outcome.job_id)
    assert [t.state for t in view.history][:3] == [JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED]


def test_a_lost_response_on_a_transition_is_recognised_as_our_own(bucket):
    for state in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED):
        append_transition(bucket, "j2", state, writer="setup")
    lossy = LostResponses(bucket, "/events/")
    t, view = append_transition(lossy, "j2", JobState.RUNNING, writer="worker", attempt=1, expect=JobState.LAUNCHED)
    assert t.state is JobState.RUNNING and t.seq == 4 and lossy.lost
    assert [x.state for x in read_view(bucket, "j2").history] == [JobState.SUBMITTED, JobState.QUEUED,
                                                                  JobState.LAUNCHED, JobState.RUNNING]


def test_the_id_submit_prints_is_the_id_dispatch_uses(bucket, launcher):
    raw = codec.dumps({**GOOD, "request_id": "order-17"})
    job_id, dropped = client.submit(bucket, raw)
    assert dropped
    [name] = [i.key for i in bucket.list(keys.INBOX)]
    outcome, view = drop(bucket, name, raw, launcher)
    assert outcome.job_id == job_id and view.history[0].state is JobState.SUBMITTED
    again, dropped_again = client.submit(bucket, raw)
    assert (again, dropped_again) == (job_id, False)
    other, _ = drop(bucket, "inbox/elsewhere.json", raw, launcher)  # same request id, another name
    assert other.job_id == job_id
