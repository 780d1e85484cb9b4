"""The transition table and its single writer: legal moves, no forks under races, attempt fencing."""

from __future__ import annotations

import multiprocessing

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.errors import IllegalTransition, StaleAttempt
from bucketrun.events.lifecycle import TRANSITIONS, JobState, append_transition, is_legal, read_view
from bucketrun.events.storage import open_bucket

S = JobState


def test_table_covers_every_state_and_terminals_are_final():
    assert set(TRANSITIONS) == set(S) | {None}
    for state in (S.SUCCEEDED, S.REJECTED, S.CANCELLED):
        assert TRANSITIONS[state] == frozenset()
    assert is_legal(None, S.SUBMITTED) and is_legal(None, S.REJECTED)
    assert not is_legal(None, S.RUNNING)
    assert is_legal(S.RUNNING, S.QUEUED)  # retry
    assert not is_legal(S.SUCCEEDED, S.QUEUED)


def test_job_ids_and_event_keys_sort_in_time_order():
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ids = [keys.new_job_id(t0 + timedelta(milliseconds=ms)) for ms in (0, 1, 999, 1000, 86_400_000)]
    assert ids == sorted(ids) and all(keys.is_job_id(i) for i in ids)
    assert [keys.event_key("j", n) for n in (1, 2, 10, 100)] == sorted(keys.event_key("j", n) for n in (1, 2, 10, 100))
    assert keys.parse_event_key(keys.event_key("abc", 12)) == ("abc", 12)


def test_append_walks_the_lifecycle_and_records_who_and_why(bucket):
    w = "test@host:1"
    append_transition(bucket, "j1", S.SUBMITTED, writer=w)
    append_transition(bucket, "j1", S.QUEUED, writer=w)
    append_transition(bucket, "j1", S.LAUNCHED, writer=w, detail={"backend_id": "x-1"})
    with pytest.raises(IllegalTransition):
        append_transition(bucket, "j1", S.SUBMITTED, writer=w)
    view = read_view(bucket, "j1")
    assert [t.state for t in view.history] == [S.SUBMITTED, S.QUEUED, S.LAUNCHED]
    assert [t.seq for t in view.history] == [1, 2, 3]
    assert view.latest.writer == w and view.attempt == 1
    assert {k: v for k, v in view.latest.detail.items() if k != "requests"} == {"backend_id": "x-1"}
    assert view.latest.detail["requests"]["by"] == "test" and view.latest.detail["requests"]["a"] >= 1
    raw = codec.loads(bucket.get(keys.event_key("j1", 3)).data)
    assert set(raw) == {"seq", "state", "at", "attempt", "writer", "detail", "write_token"}


def test_retry_is_a_new_attempt_and_fences_the_old_one(bucket):
    w = "t"
    for s in (S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING):
        append_transition(bucket, "j2", s, writer=w)
    t, _ = append_transition(bucket, "j2", S.QUEUED, writer="sweep", detail={"reason": "stall"})
    assert t.attempt == 2
    with pytest.raises(StaleAttempt):
        append_transition(bucket, "j2", S.SUCCEEDED, writer="old-worker", attempt=1)
    assert read_view(bucket, "j2").state is S.QUEUED


def _race_append(url, target, barrier, results, i):
    bucket = open_bucket(url)
    barrier.wait()
    try:
        t, _ = append_transition(bucket, "race", JobState(target), writer=f"w{i}", expect=JobState.RUNNING)
        results.put(("won", i, t.seq))
    except IllegalTransition:
        results.put(("lost", i, None))


def test_racing_writers_never_fork_a_history(bucket_url):
    """Eight processes try to end one running job, half with succeeded and half with failed."""
    bucket = open_bucket(bucket_url)
    for s in (S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING):
        append_transition(bucket, "race", s, writer="setup")
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race_append, args=(bucket_url, "succeeded" if i % 2 else "failed", barrier,
                                                      results, i)) for i in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(1 for o in outcomes if o[0] == "won") == 1, outcomes
    view = read_view(bucket, "race")
    assert [t.seq for t in view.history] == [1, 2, 3, 4, 5]
    assert view.state in (S.SUCCEEDED, S.FAILED)


def _walk(bucket, job_id, states, writer="setup"):
    for s in states:
        append_transition(bucket, job_id, s, writer=writer)


def test_a_failed_job_can_only_be_requeued(bucket):
    """Through the real writer, not the table: from `failed` every target but `queued` is refused and writes
    nothing (no event, no live marker); `queued` is then accepted as a new attempt."""
    _walk(bucket, "jf", (S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING, S.FAILED))
    before = read_view(bucket, "jf")
    assert (before.state, before.attempt, len(before.history)) == (S.FAILED, 1, 5)
    assert not bucket.exists(keys.live_key("jf"))  # failed is terminal: out of the live index
    refused = {}
    for target in S:
        if target is S.QUEUED:
            continue
        for attempt in (None, 1):  # with and without the current attempt's fence: neither makes it legal
            with pytest.raises(IllegalTransition) as exc:
                append_transition(bucket, "jf", target, writer="w", attempt=attempt)
            assert not isinstance(exc.value, StaleAttempt)
            refused[target] = str(exc.value)
    assert set(refused) == set(S) - {S.QUEUED} and all("failed -> " in why for why in refused.values()), refused
    after = read_view(bucket, "jf")
    assert after.history == before.history  # nothing was written by any refused move
    assert not bucket.exists(keys.event_key("jf", 6)) and not bucket.exists(keys.live_key("jf"))
    t, view = append_transition(bucket, "jf", S.QUEUED, writer="retry", expect=S.FAILED)
    assert (t.seq, t.state, t.attempt) == (6, S.QUEUED, 2) and view.state is S.QUEUED
    assert bucket.exists(keys.live_key("jf"))  # live again while it waits for its second attempt


@pytest.mark.parametrize("target", [S.RUNNING, S.SUCCEEDED, S.FAILED, S.QUEUED, S.CANCELLED, S.LAUNCHED])
def test_a_stale_attempt_is_refused_as_stale_not_as_illegal(bucket, target):
    """Attempt 2 reaches `running`; attempt 1 then writes. Whether or not the move would be legal from
    `running` (succeeded/failed/queued/cancelled are, running/launched are not), the refusal is StaleAttempt:
    the fence is judged before the table, so a stale worker always learns that it is stale."""
    _walk(bucket, "js", (S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING))
    t, _ = append_transition(bucket, "js", S.QUEUED, writer="sweep", attempt=1, detail={"reason": "stall"})
    assert t.attempt == 2
    for s in (S.LAUNCHED, S.RUNNING):
        append_transition(bucket, "js", s, writer="worker-2", attempt=2)
    before = read_view(bucket, "js")
    assert (before.state, before.attempt) == (S.RUNNING, 2)
    with pytest.raises(StaleAttempt) as exc:
        append_transition(bucket, "js", target, writer="worker-1", attempt=1)
    assert type(exc.value) is StaleAttempt and not isinstance(exc.value, IllegalTransition)
    assert "attempt 1 is stale" in str(exc.value) and "attempt 2" in str(exc.value)
    assert read_view(bucket, "js").history == before.history  # the stale write left no trace
    # the same write from the current attempt is judged by the table instead
    if is_legal(S.RUNNING, target):
        t, _ = append_transition(bucket, "js", target, writer="worker-2", attempt=2)
        assert t.seq == before.next_seq
    else:
        with pytest.raises(IllegalTransition):
            append_transition(bucket, "js", target, writer="worker-2", attempt=2)


def test_a_stale_writer_deciding_from_an_old_view_is_refused_as_stale_after_its_reread(bucket):
    """Attempt 1 read the job while it was still its own; attempt 2 then took over and reached `running`. The
    old writer's create of the next event loses the sequence race; after re-reading, the fence is judged
    again and it is StaleAttempt, never a write on top of attempt 2."""
    _walk(bucket, "jv", (S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING))
    old_view = read_view(bucket, "jv")  # what worker 1 decided from: running, attempt 1
    append_transition(bucket, "jv", S.QUEUED, writer="sweep", attempt=1)
    for s in (S.LAUNCHED, S.RUNNING):
        append_transition(bucket, "jv", s, writer="worker-2", attempt=2)
    current = read_view(bucket, "jv")
    with pytest.raises(StaleAttempt):
        append_transition(bucket, "jv", S.SUCCEEDED, writer="worker-1", attempt=1, view=old_view)
    assert read_view(bucket, "jv").history == current.history
    assert (current.state, current.attempt) == (S.RUNNING, 2)
