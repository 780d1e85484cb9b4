"""The live-job index: the state writer keeps index/live/<id>.json present exactly while a job is not terminal,
the sweep reads only that index, and the sweep repairs what a writer that died midway left behind."""

from __future__ import annotations

from datetime import timedelta


from bucketrun.events import codec, keys
from bucketrun.events.conditional import create_json
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import JobState, Transition, append_transition, live_jobs, mark_live, read_view
from bucketrun.handlers.sweep import INTAKE_GRACE_S, sweep

S = JobState
MANIFEST = {"kind": "transcribe", "source": {"key": "media/none.ogg"}, "resources": {"max_attempts": 1}}


def live(bucket):
    return [job_id for job_id, _ in live_jobs(bucket)]


def test_the_state_writer_keeps_the_index(bucket):
    append_transition(bucket, "a", S.REJECTED, writer="t")
    assert live(bucket) == []  # rejected at the door: never live
    for state in (S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING):
        append_transition(bucket, "b", state, writer="t")
        assert live(bucket) == ["b"]
    append_transition(bucket, "b", S.FAILED, writer="t")
    assert live(bucket) == []
    append_transition(bucket, "b", S.QUEUED, writer="t")  # an operator's retry makes it live again
    assert live(bucket) == ["b"]
    append_transition(bucket, "b", S.CANCELLED, writer="t")
    assert live(bucket) == []


class Counting:
    """Counts the calls a sweep makes through the bucket, by operation."""

    def __init__(self, inner):
        self.inner, self.calls = inner, {}

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in ("put", "create", "replace", "get", "head", "list", "delete"):
            def counted(*a, **kw):
                self.calls[name] = self.calls.get(name, 0) + 1
                return attr(*a, **kw)
            return counted
        return attr


def _running_job(bucket, job_id):
    bucket.create(keys.manifest_key(job_id), codec.dumps(parse_manifest(codec.dumps(MANIFEST)).to_json()))
    for state in (S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING):
        append_transition(bucket, job_id, state, writer="t", detail={"backend_id": "x"} if state is S.LAUNCHED else None)
    bucket.put(keys.progress_key(job_id), codec.dumps({"attempt": 1, "updated_at": codec.iso(codec.now())}))


def _ended_job(bucket, job_id):
    for state in (S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING, S.SUCCEEDED):
        append_transition(bucket, job_id, state, writer="t")
    for name in ("transcript.srt", "transcript.json"):
        bucket.put(keys.artifact_key(job_id, 1, name), b"x")


def test_a_sweep_costs_the_same_however_many_jobs_have_ended(bucket, launcher):
    _running_job(bucket, "live-1")
    _running_job(bucket, "live-2")
    counted = Counting(bucket)
    assert sweep(counted, launcher, "sweep") == []
    before = dict(counted.calls)
    for i in range(60):
        _ended_job(bucket, f"ended-{i:03d}")
    counted.calls.clear()
    assert sweep(counted, launcher, "sweep") == []
    assert counted.calls == before and counted.calls["list"] == 5 + 2  # five index listings + one log each


def test_a_marker_left_by_a_writer_that_died_after_the_end_is_removed(bucket, launcher):
    _running_job(bucket, "j")
    # The worker wrote `succeeded` and died before deleting its marker.
    view = read_view(bucket, "j")
    t = Transition(view.next_seq, S.SUCCEEDED, codec.iso(codec.now()), 1, "worker", {})
    create_json(bucket, keys.event_key("j", t.seq), t.to_json())
    assert live(bucket) == ["j"]
    [outcome] = sweep(bucket, launcher, "sweep")
    assert outcome == {"job_id": "j", "step": "unindex", "state": "succeeded"}
    assert live(bucket) == [] and read_view(bucket, "j").state is S.SUCCEEDED


def test_a_marker_without_history_is_taken_in_again_from_the_inbox(bucket, launcher):
    """The dispatcher died after marking the job live and before its first transition."""
    job_id = keys.new_job_id()
    name = f"inbox/{job_id}.json"
    bucket.put(name, codec.dumps(MANIFEST))
    token = keys.object_token(name, bucket.head(name).etag)
    create_json(bucket, keys.idempotency_key(token), {"job_id": job_id, "token": token, "inbox_key": name, "at": "x"})
    create_json(bucket, keys.intake_key(job_id), {"token": token, "inbox_key": name, "at": "x"})
    mark_live(bucket, job_id)
    assert sweep(bucket, launcher, "sweep") == []  # within the grace period: its dispatcher may be mid-way
    later = codec.now() + timedelta(seconds=INTAKE_GRACE_S + 5)
    [outcome] = sweep(bucket, launcher, "sweep", now=later)
    assert outcome["step"] == "re-intake" and outcome["inbox"] == name
    assert [t.state for t in read_view(bucket, job_id).history][:3] == [S.SUBMITTED, S.QUEUED, S.LAUNCHED]

    mark_live(bucket, "ghost")  # no history, no intake record, nothing in the inbox: it never came to be
    outcomes = sweep(bucket, launcher, "sweep", now=later)
    assert {"job_id": "ghost", "step": "unindex", "state": None} in outcomes
    assert "ghost" not in live(bucket)
