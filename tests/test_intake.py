"""Intake through the one dispatch entry point: validation, rejection objects, and idempotency."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.envelope import MAX_MANIFEST_BYTES
from bucketrun.events.errors import CorruptObject
from bucketrun.events.lifecycle import JobState, list_job_ids, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.local_sim.sim import s3_record

from conftest import SAMPLES, make_s3_bucket

GOOD = {"kind": "transcribe", "source": {"key": "media/missing.ogg"}, "options": {"language": "en"}}


def drop(bucket, key, data, ctx):
    bucket.put(key, data, "application/json")
    return dispatch({"Records": [s3_record(bucket, bucket.head(key))]}, ctx)


def launches(bucket, job_id):
    view = read_view(bucket, job_id)
    claims = [i.key for i in bucket.list(keys.job_prefix(job_id) + "launch/")]
    return sum(1 for t in view.history if t.state is JobState.LAUNCHED), claims


def test_sample_s3_put_event_creates_and_launches_one_job(s3_endpoint, launcher):
    event = json.loads((SAMPLES / "s3-put-unicode-key.json").read_text())
    rec = event["Records"][0]["s3"]
    make_s3_bucket(rec["bucket"]["name"])
    bucket = open_bucket(f"s3://{rec['bucket']['name']}")
    key = "inbox/talks/my talk été +1.json"  # the sample's key, URL-decoded as AWS encodes it
    raw = codec.dumps(GOOD)
    bucket.put(key, raw)
    outcomes = dispatch(event, DispatchContext(bucket, launcher, "test"))
    assert len(outcomes) == 1 and outcomes[0].inbox_key == key
    job_id = outcomes[0].job_id
    view = read_view(bucket, job_id)
    assert [t.state for t in view.history][:3] == [JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED]
    assert view.history[0].detail["inbox"]["key"] == key
    assert view.history[2].detail["backend"] == "local" and view.history[2].detail["backend_id"]
    manifest = codec.loads(bucket.get(keys.manifest_key(job_id)).data)
    assert manifest["options"]["beam_size"] is None and manifest["options"]["formats"] == ["srt", "vtt", "json", "txt"]
    assert bucket.get(key).data == raw  # the dropped object is kept untouched


def test_same_object_delivered_many_times_makes_one_job_and_one_launch(bucket, launcher):
    ctx = DispatchContext(bucket, launcher, "test")
    bucket.put("inbox/dup.json", codec.dumps(GOOD))
    event = {"Records": [s3_record(bucket, bucket.head("inbox/dup.json"))]}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: dispatch(event, ctx), range(6)))
    job_ids = {o.job_id for r in results for o in r}
    assert len(job_ids) == 1
    job_id = job_ids.pop()
    assert list_job_ids(bucket) == [job_id]
    launched, claims = launches(bucket, job_id)
    assert launched == 1 and len(claims) == 1


def test_request_id_makes_one_job_however_often_dropped(bucket, launcher):
    ctx = DispatchContext(bucket, launcher, "test")
    manifest = {**GOOD, "request_id": "talk-42"}
    first = drop(bucket, "inbox/a.json", codec.dumps(manifest), ctx)[0].job_id
    second = drop(bucket, "inbox/b.json", codec.dumps(manifest), ctx)[0].job_id
    third = drop(bucket, "inbox/a.json", codec.dumps({**manifest, "options": {"beam_size": 2}}), ctx)[0].job_id
    assert first == second == third
    assert list_job_ids(bucket) == [first]
    assert launches(bucket, first)[0] == 1


def test_a_new_object_at_the_same_key_is_a_new_job(bucket, launcher):
    ctx = DispatchContext(bucket, launcher, "test")
    a = drop(bucket, "inbox/same.json", codec.dumps(GOOD), ctx)[0].job_id
    b = drop(bucket, "inbox/same.json", codec.dumps({**GOOD, "options": {"beam_size": 3}}), ctx)[0].job_id
    assert a != b


BAD = {
    "invalid-json": (b'{"kind": "transcribe", "source": ', "not valid JSON", None),
    "not-an-object": (b'["transcribe"]', "must be a JSON object", None),
    "unknown-kind": (codec.dumps({"kind": "render", "source": {"url": "https://x"}}), "unknown kind", "kind"),
    "missing-kind": (codec.dumps({"source": {"url": "https://x"}}), "missing 'kind'", "kind"),
    "wrong-type": (codec.dumps({**GOOD, "options": {"beam_size": "five"}}), "beam_size", "options.beam_size"),
    "out-of-range": (codec.dumps({**GOOD, "options": {"beam_size": 99}}), "less than or equal to 10",
                     "options.beam_size"),
    "bad-format": (codec.dumps({**GOOD, "options": {"formats": ["srt", "docx"]}}), "formats",
                   "options.formats[1]"),
    "both-sources": (codec.dumps({**GOOD, "source": {"url": "https://x", "key": "k"}}), "exactly one",
                     "source"),
    "unknown-field": (codec.dumps({**GOOD, "priority": 1}), "priority", "priority"),
    "secret-field": (codec.dumps({**GOOD, "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}),
                     "credential", "aws_secret_access_key"),
    "secret-value": (codec.dumps({**GOOD, "options": {"language": "en"}, "source": {"url": "AKIAIOSFODNN7EXAMPLE"}}),
                     "credential", "source.url"),
    "too-large": (codec.dumps({**GOOD, "pad": "x" * MAX_MANIFEST_BYTES}), "over the 1048576-byte limit", None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifests_become_rejected_jobs_that_say_what_and_where(bucket, launcher, case):
    raw, message, loc = BAD[case]
    key = f"inbox/{case}.json"
    outcome = drop(bucket, key, raw, DispatchContext(bucket, launcher, "test"))[0]
    view = read_view(bucket, outcome.job_id)
    assert [t.state for t in view.history] == [JobState.REJECTED]
    error = view.latest.detail["error"]
    assert error["class"] == "bad_input" and error["where"] == key
    assert message in error["message"] or any(message in f["msg"] or message in f["loc"]
                                               for f in error.get("fields", []))
    if loc:
        assert loc in [f["loc"] for f in error["fields"]], error
    assert bucket.get(key).data == raw  # kept untouched
    assert not bucket.exists(keys.manifest_key(outcome.job_id))
    assert "wJalrXUtnFEMI" not in json.dumps(view.latest.detail) and "AKIAIOSFODNN7" not in json.dumps(view.latest.detail)


def test_objects_outside_the_inbox_are_ignored(bucket, launcher):
    ctx = DispatchContext(bucket, launcher, "test")
    for key in ("media/x.json", "inbox/readme.txt", "jobs/x/events/000001.json", "inbox/.json"):
        bucket.put(key, codec.dumps(GOOD))
        assert dispatch({"Records": [s3_record(bucket, bucket.head(key))]}, ctx) == []
    assert list_job_ids(bucket) == ["x"]
    with pytest.raises(CorruptObject, match="not a transition"):
        read_view(bucket, "x")  # a stray object where an event belongs is reported, not a KeyError
