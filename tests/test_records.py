"""Every notification shape the dispatch accepts, from the sample files, normalised to one record."""

from __future__ import annotations

import json

import pytest

from bucketrun.handlers.records import EventKind, ObjectRecord, classify, parse_records

from conftest import SAMPLES


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


@pytest.mark.parametrize("name,kind", [
    ("s3-put-single.json", EventKind.OBJECTS), ("s3-put-multi-record.json", EventKind.OBJECTS),
    ("s3-put-unicode-key.json", EventKind.OBJECTS), ("s3-put-cancel-request.json", EventKind.OBJECTS),
    ("r2-queue-batch.json", EventKind.OBJECTS), ("minio-webhook.json", EventKind.OBJECTS),
    ("scheduled-sweep.json", EventKind.SCHEDULE), ("s3-test-event.json", EventKind.TEST),
])
def test_each_sample_is_classified(name, kind):
    assert classify(sample(name)) is kind


def test_s3_keys_are_decoded_like_unquote_plus_spaces_plus_signs_and_unicode():
    [rec] = parse_records(sample("s3-put-unicode-key.json"))
    assert rec.key == "inbox/talks/my talk été +1.json"  # '+' is a space, '%2B' a plus, UTF-8 escapes decoded
    assert rec.bucket == "bucketrun-sample" and rec.etag == '"d41d8cd98f00b204e9800998ecf8427e"'


def test_r2_queue_messages_become_the_same_record_and_deletes_are_dropped():
    records = parse_records(sample("r2-queue-batch.json"))
    assert records == [ObjectRecord(bucket="bucketrun-sample", key="inbox/r2 drop ünïcode.json",
                                    etag='"0f343b0931126a20f133d67c2b018a3b"', size=140,
                                    event_name="ObjectCreated:PutObject")]


def test_r2_message_bodies_sent_as_json_text_are_accepted():
    event = sample("r2-queue-batch.json")
    for msg in event["messages"]:
        msg["body"] = json.dumps(msg["body"])
    assert [r.key for r in parse_records(event)] == ["inbox/r2 drop ünïcode.json"]


def test_minio_webhook_becomes_the_same_record():
    [rec] = parse_records(sample("minio-webhook.json"))
    assert rec == ObjectRecord(bucket="bucketrun-sample", key="inbox/minio drop.json",
                               etag='"0f343b0931126a20f133d67c2b018a3b"', size=140,
                               event_name="ObjectCreated:Put", sequencer="1738F0C2D4A5B6C7")


def test_multi_record_events_keep_every_record_in_order():
    keys = [r.key for r in parse_records(sample("s3-put-multi-record.json"))]
    assert keys == ["inbox/batch/first.json", "media/talk.ogg", "inbox/batch/second.json"]  # routing drops media/


def test_records_that_are_not_object_creations_are_skipped():
    event = sample("s3-put-single.json")
    event["Records"].append({**event["Records"][0], "eventName": "ObjectRemoved:Delete"})
    event["Records"].append({"eventName": "ObjectCreated:Put", "s3": {"object": {}}})
    assert len(parse_records(event)) == 1
