"""The sweep's liveness rule, fast and without a model: a worker's progress object is a heartbeat, so a job
whose last transition is old but whose progress.json (same attempt) is fresh is left alone; a stale progress,
or one left by an older attempt, is not a sign of life. Plus the manifest rule that keeps heartbeats and the
stall limit apart (stall_after_s >= 2 x heartbeat_s)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.envelope import Resources
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import JobState, JobView, Transition, append_transition, read_view
from bucketrun.events.manifest import ManifestRejected
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.launchers.base import BackendStatus
from bucketrun.handlers.sweep import Step, decide, last_sign_of_life, sweep, sweep_job

HEARTBEAT_S, STALL_S = 10, 120
MANIFEST = {"kind": "transcribe", "source": {"key": "media/a.ogg"},
            "resources": {"heartbeat_s": HEARTBEAT_S, "stall_after_s": STALL_S, "max_attempts": 3}}


class RecordingLauncher:
    """Meets the Launcher protocol (name/launch/status/cancel) and records every call."""

    name = "fake"

    def __init__(self, status: BackendStatus = BackendStatus.IN_PROGRESS):
        self.answer = status
        self.calls: list[tuple] = []

    def launch(self, bucket_url, job_id, attempt, manifest):
        self.calls.append(("launch", job_id, attempt))
        return f"fake-{job_id}-{attempt}"

    def status(self, backend_id):
        self.calls.append(("status", backend_id))
        return self.answer

    def cancel(self, backend_id):
        self.calls.append(("cancel", backend_id))


@pytest.fixture
def bucket(tmp_path):
    return open_bucket(str(tmp_path / "bucket"))


def running_job(bucket, job_id="job-a", attempts=1) -> JobView:
    """A job running its `attempts`-th attempt, launched on the fake backend as fake-<job>-<attempt>."""
    bucket.put(keys.manifest_key(job_id), codec.dumps(MANIFEST), "application/json")
    for s in (JobState.SUBMITTED, JobState.QUEUED):
        append_transition(bucket, job_id, s, writer="setup")
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            append_transition(bucket, job_id, JobState.QUEUED, writer="setup",
                              detail={"retry": {"attempt": attempt - 1, "error": {"class": "lost"}}})
        append_transition(bucket, job_id, JobState.LAUNCHED, writer="setup",
                          detail={"backend": "fake", "backend_id": f"fake-{job_id}-{attempt}"})
        append_transition(bucket, job_id, JobState.RUNNING, writer="worker", attempt=attempt)
    view = read_view(bucket, job_id)
    assert view.state is JobState.RUNNING and view.attempt == attempts
    return view


def put_progress(bucket, job_id, attempt, at):
    """The documented progress object, as a worker's heartbeat rewrites it."""
    bucket.put(keys.progress_key(job_id), codec.dumps({
        "attempt": attempt, "stage": "transcribe", "percent": 40.0, "elapsed_s": 30.0, "eta_s": 45.0,
        "updated_at": codec.iso(at)}), "application/json")


# -- through the sweep, on a folder bucket -----------------------------------------------------------------

def test_a_fresh_heartbeat_keeps_a_job_with_an_old_transition_alive(bucket):
    view = running_job(bucket)
    t0 = view.latest.time
    now = t0 + timedelta(seconds=STALL_S * 3)  # the transition alone is far past stall_after
    put_progress(bucket, view.job_id, 1, now - timedelta(seconds=HEARTBEAT_S))  # but the worker beat recently
    launcher = RecordingLauncher()

    assert sweep(bucket, launcher, "sweep", now=now) == []
    assert sweep_job(bucket, view.job_id, launcher, "sweep", now=now) is None
    assert launcher.calls == []  # the backend was never even asked
    assert read_view(bucket, view.job_id).history == view.history


def test_a_stale_heartbeat_gets_the_job_asked_about_and_retried(bucket):
    view = running_job(bucket)
    t0 = view.latest.time
    now = t0 + timedelta(seconds=STALL_S * 3)
    put_progress(bucket, view.job_id, 1, now - timedelta(seconds=STALL_S + 5))  # silent past stall_after
    launcher = RecordingLauncher(BackendStatus.IN_PROGRESS)

    [outcome] = sweep(bucket, launcher, "sweep", now=now)
    assert outcome["job_id"] == view.job_id and outcome["step"] == Step.ASK_BACKEND.value
    assert outcome["backend"] == "IN_PROGRESS" and outcome["class"] == "stall"
    assert launcher.calls == [("status", "fake-job-a-1"), ("cancel", "fake-job-a-1")]
    after = read_view(bucket, view.job_id)
    assert after.state is JobState.QUEUED and after.attempt == 2
    assert after.latest.detail["retry"]["error"]["class"] == "stall"


def test_a_fresh_heartbeat_from_an_older_attempt_is_no_sign_of_life(bucket):
    view = running_job(bucket, attempts=2)
    now = view.latest.time + timedelta(seconds=STALL_S * 3)
    put_progress(bucket, view.job_id, 1, now - timedelta(seconds=1))  # attempt 1's zombie still writing
    launcher = RecordingLauncher(BackendStatus.IN_QUEUE)

    outcome = sweep_job(bucket, view.job_id, launcher, "sweep", now=now)
    assert outcome is not None and outcome["step"] == Step.ASK_BACKEND.value and outcome["backend"] == "IN_QUEUE"
    assert launcher.calls == [("status", "fake-job-a-2")]  # the current attempt's backend job is asked about
    assert read_view(bucket, view.job_id).history == view.history  # IN_QUEUE: still waiting, nothing written


def test_without_a_heartbeat_the_transition_time_decides(bucket):
    view = running_job(bucket)
    launcher = RecordingLauncher(BackendStatus.IN_QUEUE)
    t0 = view.latest.time
    assert sweep(bucket, launcher, "sweep", now=t0 + timedelta(seconds=STALL_S - 5)) == []
    assert launcher.calls == []
    [outcome] = sweep(bucket, launcher, "sweep", now=t0 + timedelta(seconds=STALL_S + 5))
    assert outcome["backend"] == "IN_QUEUE" and launcher.calls == [("status", "fake-job-a-1")]


# -- decide(), pure -------------------------------------------------------------------------------------

def view_of(*states_and_attempts, at) -> JobView:
    history = tuple(Transition(seq, state, codec.iso(at), attempt, "test")
                    for seq, (state, attempt) in enumerate(states_and_attempts, start=1))
    return JobView("job-d", history)


RES = Resources(heartbeat_s=HEARTBEAT_S, stall_after_s=STALL_S)


def progress_at(at, attempt):
    return {"attempt": attempt, "stage": "transcribe", "percent": 10.0, "updated_at": codec.iso(at)}


@pytest.mark.parametrize("state", [JobState.LAUNCHED, JobState.RUNNING])
def test_decide_counts_a_same_attempt_progress_as_a_sign_of_life(state):
    t0 = codec.now()
    view = view_of((JobState.SUBMITTED, 1), (JobState.QUEUED, 1), (state, 1), at=t0)
    now = t0 + timedelta(seconds=STALL_S * 3)
    fresh = progress_at(now - timedelta(seconds=HEARTBEAT_S), 1)

    assert last_sign_of_life(view, fresh) == codec.parse_iso(fresh["updated_at"])
    decision = decide(view, fresh, RES, now, launch_claimed=True)
    assert decision.step is Step.NONE and decision.silent_s == pytest.approx(HEARTBEAT_S, abs=0.01)

    for silent in (None, progress_at(now - timedelta(seconds=STALL_S + 1), 1), progress_at(now, 2),
                   progress_at(now, 0)):
        decision = decide(view, silent, RES, now, launch_claimed=True)
        assert decision.step is Step.ASK_BACKEND, silent
        assert decision.silent_s > STALL_S


def test_decide_ignores_progress_older_than_the_latest_transition():
    t0 = codec.now()
    view = view_of((JobState.SUBMITTED, 1), (JobState.QUEUED, 1), (JobState.RUNNING, 1), at=t0)
    old = progress_at(t0 - timedelta(hours=1), 1)
    assert last_sign_of_life(view, old) == view.latest.time
    assert decide(view, old, RES, t0 + timedelta(seconds=STALL_S - 1), launch_claimed=True).step is Step.NONE


# -- the manifest rule: stall_after_s >= 2 x heartbeat_s ---------------------------------------------------

def manifest_with(resources) -> bytes:
    return codec.dumps({"kind": "transcribe", "source": {"key": "media/a.ogg"}, "resources": resources})


@pytest.mark.parametrize("heartbeat,stall", [(5, 9), (10, 19.5), (60, 119)])
def test_a_stall_limit_under_twice_the_heartbeat_is_rejected_naming_resources(heartbeat, stall):
    with pytest.raises(ManifestRejected) as caught:
        parse_manifest(manifest_with({"heartbeat_s": heartbeat, "stall_after_s": stall}))
    locs = [f["loc"] for f in caught.value.fields]
    assert locs == ["resources"], caught.value.fields
    assert "twice heartbeat_s" in caught.value.fields[0]["msg"]


@pytest.mark.parametrize("heartbeat", [5, 10, 60])
def test_a_stall_limit_of_exactly_twice_the_heartbeat_is_accepted(heartbeat):
    manifest = parse_manifest(manifest_with({"heartbeat_s": heartbeat, "stall_after_s": 2 * heartbeat}))
    assert manifest.resources.heartbeat_s == heartbeat and manifest.resources.stall_after_s == 2 * heartbeat
