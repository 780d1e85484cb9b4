"""One contract, every launch backend (as test_storage_contract does for buckets): the local warm process and
Runpod serverless, the latter through the runpod SDK's own local API server running our image's handler."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import JobState, append_transition, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.launch import launch_attempt
from bucketrun.handlers.launchers import BackendStatus, Launcher
from bucketrun.handlers.launchers.local import LocalProcessLauncher
from bucketrun.handlers.launchers.runpod import RunpodLauncher

from conftest import free_port


def start_runpod_server(tmp_path) -> tuple[subprocess.Popen, str]:
    """The SDK's `--rp_serve_api` server around bucketrun.images.transcribe.handler; fails loudly if it
    never answers."""
    port = free_port()
    log = open(tmp_path / "runpod-server.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "bucketrun.images.transcribe.handler", "--rp_serve_api",
                             "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                            env={**os.environ, "BUCKETRUN_PRELOAD": "0"})
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(f"{url}/docs", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail("the runpod local server never answered: " + (tmp_path / "runpod-server.log").read_text()[-2000:])


@pytest.fixture(params=["local", "runpod"])
def backend(request, tmp_path):
    if request.param == "local":
        launcher = LocalProcessLauncher(preload=None)
        yield launcher
        launcher.close()
        return
    proc, url = start_runpod_server(tmp_path)
    yield RunpodLauncher("contract", api_key="rp-test-not-a-key", endpoint_url=url, timeout_s=120)
    proc.terminate()
    proc.wait(30)


def queued_job(bucket, job_id: str):
    manifest = parse_manifest(codec.dumps({"kind": "transcribe", "source": {"key": "media/absent.ogg"},
                                           "resources": {"max_attempts": 1}}))
    bucket.create(keys.manifest_key(job_id), codec.dumps(manifest.to_json()))
    for state in (JobState.SUBMITTED, JobState.QUEUED):
        _, view = append_transition(bucket, job_id, state, writer="t")
    return view, manifest


def wait_terminal(bucket, job_id, launcher: Launcher, backend_id: str, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        launcher.status(backend_id)  # the SDK's local server runs a job when its status is asked
        view = read_view(bucket, job_id)
        if view.state is not None and view.state.terminal:
            return view
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never ended: {read_view(bucket, job_id).state}")


def test_a_launch_runs_the_attempt_and_the_job_ends_in_the_bucket(backend, tmp_path):
    bucket = open_bucket(str(tmp_path / "bucket"))
    view, manifest = queued_job(bucket, "c1")
    launched = launch_attempt(bucket, view, backend, "t", manifest)
    assert launched.state is JobState.LAUNCHED and launched.latest.detail["backend"] == backend.name
    backend_id = launched.latest.detail["backend_id"]
    assert isinstance(backend_id, str) and backend_id
    view = wait_terminal(bucket, "c1", backend, backend_id)
    assert view.state is JobState.FAILED and view.latest.detail["error"]["class"] == "bad_input"
    assert view.history[3].state is JobState.RUNNING and view.history[3].writer.startswith("worker@")
    assert isinstance(backend.status(backend_id), BackendStatus)


def test_an_unknown_id_is_unknown_and_cancelling_it_is_harmless(backend):
    assert backend.status("no-such-job-0") is BackendStatus.UNKNOWN
    backend.cancel("no-such-job-0")


def test_a_second_launch_of_the_same_attempt_is_refused_before_the_backend(backend, tmp_path):
    bucket = open_bucket(str(tmp_path / "bucket"))
    view, manifest = queued_job(bucket, "c2")
    first = launch_attempt(bucket, view, backend, "t", manifest)
    assert launch_attempt(bucket, view, backend, "t", manifest) is None  # the attempt's claim is taken
    assert [t.state for t in read_view(bucket, "c2").history].count(JobState.LAUNCHED) == 1
    wait_terminal(bucket, "c2", backend, first.latest.detail["backend_id"])
