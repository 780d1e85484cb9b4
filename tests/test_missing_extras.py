"""A kind whose dependencies are missing where it would run is refused at once, with `config_error` and the exact
pip line, by whoever finds out first: the dispatcher launching local workers, or the worker itself. A worker that
dies before its first transition for any other reason is seen by the sweep, and the failure names its log.

A module is made missing the way a venv without the extra lacks it: a finder placed first on sys.meta_path (by a
sitecustomize on PYTHONPATH) answers ModuleNotFoundError for it, to find_spec and to import alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import read_view
from bucketrun.events.storage import open_bucket
from bucketrun.local_sim import fleet_harness as harness

from conftest import wait_for

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
EXAMPLES = Path(__file__).parent.parent / "examples"
BLOCKER = """
import os, sys

_GONE = set(filter(None, os.environ.get("TEST_MODULES_GONE", "").split(",")))


class _Gone:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _GONE:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Gone())
"""


@pytest.fixture
def without(tmp_path):
    """Environment variables for a child Python in which the named modules are not installed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)

    def env(*modules: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(site), "TEST_MODULES_GONE": ",".join(modules)}

    return env


def cli(*args, env=None, timeout=120):
    return subprocess.run([BUCKETRUN, *args], capture_output=True, text=True, timeout=timeout, env=env or os.environ)


def test_the_blocker_makes_a_module_missing_to_find_spec_and_import(without):
    probe = ("import importlib.util as u\nfrom bucketrun.events import needs\n"
             "print(needs.installed('pyarrow'), needs.installed('json'))\n"
             "try:\n import pyarrow\nexcept ModuleNotFoundError as e:\n print(e.name)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=without("pyarrow"))
    assert out.stdout.split() == ["False", "True", "pyarrow"], out.stderr


def test_the_simulation_refuses_a_fleet_whose_workers_lack_pyarrow_with_the_pip_line(tmp_path, without):
    """The README's fleet example on a set-up without the fleet extra: failed at launch, config_error, the line
    to run; not a job left `launched` while its workers die in a log nobody reads."""
    folder = str(tmp_path / "bucket")
    bucket = open_bucket(folder)
    bucket.put("exports/items.jsonl", b"\n".join(json.dumps(f"item-{i}").encode() for i in range(100)))
    sim = subprocess.Popen([BUCKETRUN, "--bucket", folder, "sim", "--no-preload"], env=without("pyarrow"),
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sim.log", "wb"))  # noqa: SIM115
    try:
        done = cli("--bucket", folder, "submit", str(EXAMPLES / "fleet-noop-local.json"), "--wait", "--timeout", "60")
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    assert done.returncode != 0, (done.stdout, done.stderr)
    job = done.stdout.split()[0]
    view = read_view(bucket, job)
    error = view.latest.detail["error"]
    assert view.state.value == "failed" and error["class"] == "config_error", error
    assert "pyarrow not installed" in error["message"] and "pip install 'bucketrun[fleet]'" in error["message"]
    assert not list(bucket.list(keys.fleet_instances_prefix(job)))  # no worker was started to die


def test_a_fleet_worker_without_pyarrow_fails_the_job_as_a_transition(bucket_url, bucket, tmp_path, without):
    """Workers started elsewhere (an image built without the extra): the first one writes the failure."""
    bucket.put("items.jsonl", b"\n".join(json.dumps(f"item-{i}").encode() for i in range(100)))
    job = harness.start_job(bucket_url, {"kind": "fleet", "items": {"file": "items.jsonl"},
                                         "processor": {"name": "noop"}})
    env = without("pyarrow")
    if bucket_url.startswith("s3://"):
        env["AWS_ENDPOINT_URL_S3"] = os.environ["AWS_ENDPOINT_URL_S3"]
    out = subprocess.run(harness.worker_cmd(bucket_url, job, ["w0000"]), capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "pip install 'bucketrun[fleet]'" in out.stderr
    view = read_view(bucket, job)
    error = view.latest.detail["error"]
    assert view.state.value == "failed" and error["class"] == "config_error", error
    assert error["where"] == "fleet worker w0000" and "pip install 'bucketrun[fleet]'" in error["message"]


def test_a_fleet_worker_that_dies_before_its_first_transition_is_failed_by_the_sweep_naming_its_log(
        tmp_path, without):
    """Anything else that kills a worker at start (here: an import that crashes the interpreter) leaves the
    job `launched`; the sweep sees no live instance once stall_after_s passes, and says where the log is."""
    from bucketrun.handlers.dispatch import DispatchContext, dispatch
    from bucketrun.handlers.launchers import Routes
    from bucketrun.handlers.launchers.fleet import FleetLauncher
    from bucketrun.handlers.launchers.fleet_local import LocalFleetBackend
    from bucketrun.handlers.sweep import sweep
    from bucketrun.local_sim.sim import s3_record

    folder = str(tmp_path / "bucket")
    bucket = open_bucket(folder)
    bucket.put("items.jsonl", b"\n".join(json.dumps(f"item-{i}").encode() for i in range(100)))
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "sitecustomize.py").write_text("import os, sys\nif 'bucketrun.images.fleet.run' in sys.orig_argv:\n"
                                            "    sys.stderr.write('segfault in a native library\\n')\n"
                                            "    os._exit(139)\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    backend = LocalFleetBackend(log_dir=logs, extra_env={"PYTHONPATH": str(crash)})
    routes = Routes(by_kind={"fleet": FleetLauncher(backends={"local": backend})})
    manifest = {"kind": "fleet", "items": {"file": "items.jsonl"}, "processor": {"name": "noop"},
                "workers": {"count": 2, "backend": "local"}, "resources": {"stall_after_s": 5, "heartbeat_s": 1, "max_attempts": 1}}
    bucket.put("inbox/m.json", codec.dumps(manifest))
    job = dispatch({"Records": [s3_record(bucket, bucket.head("inbox/m.json"))]},
                   DispatchContext(bucket, routes, "test"))[0].job_id
    assert read_view(bucket, job).state.value == "launched"

    def swept():
        sweep(bucket, routes, "test-sweep")
        return read_view(bucket, job).state.value == "failed"

    wait_for(swept, timeout=30, every=0.5)
    error = read_view(bucket, job).latest.detail["error"]
    assert error["class"] == "lost" and "no live worker" in error["message"], error
    for w in ("w0000", "w0001"):
        log = logs / f"bucketrun-fleet-{job}-{w}.log"
        assert str(log) in error["message"] and "segfault" in log.read_text()


def test_a_transcription_worker_without_faster_whisper_fails_the_job_with_the_pip_line(tmp_path, without,
                                                                                         monkeypatch, media_dir):
    """The dispatcher could not tell (its own Python has the extra); the worker's Python lacks it. The attempt
    ends as config_error naming the extra, not as an internal error."""
    from bucketrun.handlers.dispatch import DispatchContext, dispatch
    from bucketrun.handlers.launchers.local import LocalProcessLauncher
    from bucketrun.local_sim.sim import s3_record

    for k, v in without("faster_whisper").items():
        if k in ("PYTHONPATH", "TEST_MODULES_GONE"):
            monkeypatch.setenv(k, v)
    launcher = LocalProcessLauncher(preload=None, log_path=tmp_path / "worker.log")
    try:
        bucket = open_bucket(str(tmp_path / "bucket"))
        bucket.put("media/speech.wav", (media_dir / "speech.wav").read_bytes())
        bucket.put("inbox/t.json", codec.dumps({"kind": "transcribe", "source": {"key": "media/speech.wav"}}))
        job = dispatch({"Records": [s3_record(bucket, bucket.head("inbox/t.json"))]},
                       DispatchContext(bucket, launcher, "test"))[0].job_id
        wait_for(lambda: read_view(bucket, job).state.terminal, timeout=120, every=0.3)
    finally:
        launcher.close()
    error = read_view(bucket, job).latest.detail["error"]
    assert error["class"] == "config_error", error
    assert "faster_whisper" in error["message"] and "pip install 'bucketrun[transcribe]'" in error["message"], error
