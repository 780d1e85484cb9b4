"""events/conditional.py: compare-and-swap updates re-read after a lost race, so no update is lost."""

from __future__ import annotations

import threading

from bucketrun.events import codec
from bucketrun.events.conditional import TOKEN, create_json, update_json
from bucketrun.events.storage import open_bucket


def test_racing_updates_are_all_applied_once(bucket_url):
    writers, each = 4, 10

    def bump(current):
        return {"n": (current or {}).get("n", 0) + 1}

    def work():
        bucket = open_bucket(bucket_url)  # its own client, as another process would have
        for _ in range(each):
            assert update_json(bucket, "counter.json", bump).won

    threads = [threading.Thread(target=work) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    final = codec.loads(open_bucket(bucket_url).get("counter.json").data)
    assert final["n"] == writers * each and len(final[TOKEN]) == 32


def test_an_update_that_changes_nothing_writes_nothing(bucket):
    created = create_json(bucket, "k.json", {"v": 1})
    out = update_json(bucket, "k.json", lambda current: None)
    assert not out.won and out.etag == created.etag and out.body["v"] == 1
