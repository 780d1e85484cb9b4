"""events/conditional.py: compare-and-swap updates re-read after a lost race, so no update is lost."""

from __future__ import annotations

import threading

from bucketrun.events import codec
from bucketrun.events.conditional import TOKEN, create_json, update_json
from bucketrun.events.storage import open_bucket


def test_racing_updates_are_all_applied_once(bucket_url):
    """Four writers, each with its own client, bump one counter ten times. Every call must report a win, each
    win must be a distinct write (its own token and count), and no bump may be lost. Results are collected and
    judged here, in the test's thread: an assert inside a worker thread cannot fail the test."""
    writers, each = 4, 10
    results: list[list] = [[] for _ in range(writers)]
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def bump(current):
        return {"n": (current or {}).get("n", 0) + 1}

    def work(i):
        try:
            bucket = open_bucket(bucket_url)  # its own client, as another process would have
            start.wait(30)
            for _ in range(each):
                results[i].append(update_json(bucket, "counter.json", bump))
        except BaseException as exc:  # reported below, so a failing writer fails the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors
    outcomes = [out for mine in results for out in mine]
    assert [len(mine) for mine in results] == [each] * writers
    assert all(out.won for out in outcomes), [out for out in outcomes if not out.won]
    counts = sorted(out.body["n"] for out in outcomes)
    assert counts == list(range(1, writers * each + 1))  # exactly one winner per value: no bump lost or doubled
    for mine in results:  # each writer saw its own bumps in order
        assert [out.body["n"] for out in mine] == sorted(out.body["n"] for out in mine)
    assert len({out.body[TOKEN] for out in outcomes}) == writers * each
    final = codec.loads(open_bucket(bucket_url).get("counter.json").data)
    assert final["n"] == writers * each and len(final[TOKEN]) == 32
    last = next(out for out in outcomes if out.body["n"] == writers * each)
    assert final[TOKEN] == last.body[TOKEN]  # the last winner's write is what the bucket holds


def test_racing_creates_have_exactly_one_winner(bucket_url):
    """Eight writers create one key at once: exactly one wins, and every loser is told the winner's body."""
    n = 8
    start = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def work(i):
        try:
            bucket = open_bucket(bucket_url)
            start.wait(30)
            results[i] = create_json(bucket, "once.json", {"writer": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads) and errors == [], errors
    winners = [i for i, out in enumerate(results) if out.won]
    assert len(winners) == 1, results
    stored = codec.loads(open_bucket(bucket_url).get("once.json").data)
    assert stored["writer"] == winners[0]
    assert all(out.body == stored and out.etag == results[winners[0]].etag for out in results), results


def test_an_update_that_changes_nothing_writes_nothing(bucket):
    created = create_json(bucket, "k.json", {"v": 1})
    out = update_json(bucket, "k.json", lambda current: None)
    assert not out.won and out.etag == created.etag and out.body["v"] == 1
