"""Stalls, retries, fencing and cancellation, with the real local worker process and the real model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.errors import IllegalTransition, StaleAttempt
from bucketrun.events.lifecycle import JobState, append_transition, read_view
from bucketrun.events.progress import read_progress
from bucketrun.events.storage import open_bucket
from bucketrun.handlers import client
from bucketrun.handlers.control import cancel
from bucketrun.handlers.launch import backend_id_of
from bucketrun.handlers.sweep import sweep
from bucketrun.images.runtime.attempt import run_attempt as run_job
from bucketrun.handlers.launchers.local import LocalProcessLauncher
from bucketrun.local_sim.sim import Simulation

from conftest import wait_for

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
pytestmark = pytest.mark.slow
# A 1 s heartbeat keeps cancels quick; a 120 s stall limit cannot fire on a healthy but CPU-starved worker.
STEADY = {"heartbeat_s": 1, "stall_after_s": 120, "max_attempts": 3}
# The stall must fire after the kill, but 20 s (20 heartbeats) also spans a starved worker restart + model reload.
KILLABLE = {"heartbeat_s": 1, "stall_after_s": 20, "max_attempts": 3}


@pytest.fixture(scope="module")
def long_clip(media_dir) -> Path:
    """About a minute of speech, so a job is still transcribing when the test interferes."""
    out = media_dir / "long.ogg"
    if not out.exists():
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "3", "-i", str(media_dir / "speech.ogg"),
                        "-c:a", "libopus", "-b:a", "32k", str(out)], check=True)
    return out


@pytest.fixture
def running_sim(bucket, long_clip):
    bucket.put("media/long.ogg", long_clip.read_bytes())
    launcher = LocalProcessLauncher(preload="default")
    launcher.start()
    assert launcher.wait_ready(120)
    sim = Simulation(bucket, launcher, poll_s=0.3, sweep_s=1.0)
    sim.start_thread()
    sim.ready.wait(30)
    yield sim, launcher
    sim.stop()
    launcher.close()



def transcribing(bucket, job_id, attempt=1):
    """Truthy (the attempt number) once `attempt` (None: whichever is current) is transcribing."""
    def check():
        view = read_view(bucket, job_id)
        progress = read_progress(bucket, job_id) or {}
        want = view.attempt if attempt is None else attempt
        return (view.state is JobState.RUNNING and view.attempt == want and progress.get("attempt") == want
                and progress.get("stage") == "transcribe" and want)
    return check


def test_killed_worker_is_detected_as_stalled_and_the_retry_succeeds(bucket, running_sim):
    sim, launcher = running_sim
    manifest = {"kind": "transcribe", "source": {"key": "media/long.ogg"}, "options": {"language": "en"},
                "resources": KILLABLE}
    job_id, _ = client.submit(bucket, codec.dumps(manifest))
    killed = wait_for(transcribing(bucket, job_id, attempt=None), timeout=180)  # whichever attempt is working
    pid = launcher.pid
    os.kill(pid, signal.SIGKILL)  # the worker dies mid-job, silently
    assert backend_id_of(read_view(bucket, job_id)).startswith(f"local-{pid}-")  # we killed `killed`'s worker

    status = client.wait(bucket, job_id, timeout_s=300)
    assert status["state"] == "succeeded" and status["attempt"] == killed + 1, status  # the retry after the kill
    view = read_view(bucket, job_id)
    retries = {t.detail["retry"]["attempt"]: t.detail["retry"]["error"] for t in view.history
               if t.state is JobState.QUEUED and "retry" in t.detail}
    assert retries[killed]["class"] == "lost", retries
    mistaken = {a: e for a, e in retries.items() if a != killed and e["class"] in ("stall", "lost")}
    assert not mistaken, f"a healthy attempt was taken for dead: {mistaken}"
    assert all(a["key"].startswith(keys.artifacts_prefix(job_id, killed + 1)) for a in status["artifacts"])

    # The killed attempt's worker coming back cannot touch the next attempt's result.
    assert run_job(bucket.url, job_id, killed)["status"] == "skipped"
    with pytest.raises(StaleAttempt):
        append_transition(bucket, job_id, JobState.FAILED, writer="zombie", attempt=killed)
    assert read_view(bucket, job_id).state is JobState.SUCCEEDED


def test_cancel_while_running_stops_the_worker_and_it_never_launches_again(bucket, running_sim):
    sim, launcher = running_sim
    manifest = {"kind": "transcribe", "source": {"key": "media/long.ogg"}, "resources": STEADY}
    job_id, _ = client.submit(bucket, codec.dumps(manifest))
    wait_for(transcribing(bucket, job_id), timeout=120)
    done = subprocess.run([BUCKETRUN, "--bucket", bucket.url, "cancel", job_id], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: any(r.get("job_id") == job_id for r in launcher.results), timeout=60)
    result = next(r for r in launcher.results if r.get("job_id") == job_id)
    assert result["status"] == "superseded"
    settled = read_view(bucket, job_id)
    passes = sim.sweeps
    wait_for(lambda: sim.sweeps >= passes + 2, timeout=60)  # at least one whole sweep pass began after `settled`
    view = read_view(bucket, job_id)
    assert view.history == settled.history  # the sweeps left the cancelled job alone
    assert view.state is JobState.CANCELLED and view.attempt == 1
    assert not bucket.exists(keys.launch_claim_key(job_id, 2))
    assert list(bucket.list(keys.artifacts_prefix(job_id, 1))) == []
    again = subprocess.run([BUCKETRUN, "--bucket", bucket.url, "cancel", job_id], capture_output=True, text=True)
    assert again.returncode == 1 and "already cancelled" in again.stderr


def test_cancel_while_queued_means_no_launch(bucket):
    for s in (JobState.SUBMITTED, JobState.QUEUED):
        append_transition(bucket, "q1", s, writer="intake")
    bucket.put(keys.manifest_key("q1"), codec.dumps({"kind": "transcribe", "source": {"key": "media/x.ogg"}}))
    cancel(bucket, "q1", "test")
    launcher = LocalProcessLauncher(preload=None)
    try:
        from datetime import timedelta

        assert sweep(bucket, launcher, "sweep", now=codec.now() + timedelta(hours=1)) == []
    finally:
        launcher.close()
    assert not bucket.exists(keys.launch_claim_key("q1", 1))
    assert [t.state for t in read_view(bucket, "q1").history][-1] is JobState.CANCELLED
    with pytest.raises(IllegalTransition):
        append_transition(bucket, "q1", JobState.QUEUED, writer="x")


def test_two_sweeps_at_once_launch_a_retry_exactly_once(bucket):
    bucket.put(keys.manifest_key("r1"), codec.dumps({"kind": "transcribe", "source": {"key": "media/none.ogg"},
                                                     "resources": {"max_attempts": 1}}))
    for s in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING):
        append_transition(bucket, "r1", s, writer="setup")
    append_transition(bucket, "r1", JobState.QUEUED, writer="setup", detail={"retry": {"attempt": 1}})
    launcher = LocalProcessLauncher(preload=None)
    barrier = threading.Barrier(4)
    results = []

    def one_sweep():
        barrier.wait()
        results.append(sweep(open_bucket(bucket.url), launcher, f"sweep-{threading.get_ident()}"))

    threads = [threading.Thread(target=one_sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not any(t.is_alive() for t in threads), "a sweep did not finish"
        assert len(results) == 4 and all(isinstance(r, list) for r in results), results  # none raised
        reports = [[o for o in r if o.get("job_id") == "r1"] for r in results]
        assert all(len(r) == len(results[i]) <= 1 for i, r in enumerate(reports)), results  # only r1, once
        outcomes = [o for r in reports for o in r]
        launches = [o for o in outcomes if o.get("state") == "launched"]
        assert len(launches) == 1, results
        assert launches[0]["step"] == "advance" and launches[0]["attempt"] == 2, results
        # The others lost the launch claim (their view still says queued), moved on, or saw nothing to do.
        assert all(o.get("state") in ("queued", "moved-on") for o in outcomes if o is not launches[0]), results
        view = read_view(bucket, "r1")
        launched = [t for t in view.history if t.state is JobState.LAUNCHED and t.attempt == 2]
        assert len(launched) == 1, [t.to_json() for t in view.history]
        assert [i.key for i in bucket.list(keys.job_prefix("r1") + "launch/")] == [keys.launch_claim_key("r1", 2)]
        wait_for(lambda: read_view(bucket, "r1").state is JobState.FAILED, timeout=60)
    finally:
        launcher.close()
