"""A job kind is a plug-in: a light spec in one registry, its own manifest body on the shared envelope, its
work run by the one attempt runtime, its completion check deciding success, and its own launch route."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import Field

from bucketrun.events import codec, keys
from bucketrun.events.envelope import Strict
from bucketrun.events.failures import FailureClass
from bucketrun.events.kinds import KindSpec, get_kind, kind_names, register
from bucketrun.events.kinds.transcribe import TranscribeBody
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.manifest import ManifestRejected
from bucketrun.handlers import client
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.handlers.launchers import LaunchError, Routes, endpoint_env, routes_from_env
from bucketrun.handlers.launchers.runpod import RunpodLauncher
from bucketrun.images.runtime.attempt import Attempt, run_attempt
from bucketrun.local_sim.sim import s3_record


class EchoBody(Strict):
    text: str = Field(min_length=1, max_length=100)
    copies: int = Field(1, ge=1, le=5)


def echo_work(ctx: Attempt) -> dict[str, Any]:
    """A toy kind's work: what a new kind writes, and all it writes."""
    body = ctx.manifest.body
    for i in range(body.copies):
        ctx.check()
        ctx.progress("echo", (i + 1) / body.copies)
        ctx.put_artifact(f"echo-{i}.txt", body.text.encode(), "text/plain", copy=i)
    return {"summary": {"copies": body.copies}}


def lazy_work(ctx: Attempt) -> dict[str, Any]:
    return {"summary": {}}  # claims success without writing its artifacts


def verify_echo(manifest, result) -> list[str]:
    n = len(result["artifacts"])
    return [] if n == manifest.body.copies else [f"{n} of {manifest.body.copies} copies written"]


ECHO = register(KindSpec(name="echo", body=EchoBody, work=f"{__name__}:echo_work", verify=verify_echo,
                         default_resources={"heartbeat_s": 2.0, "stall_after_s": 30.0}, launcher="thread"))


class ThreadLauncher:
    """Runs the attempt in a thread of this process: a real (in-process) launch backend, so a kind registered
    by this test module is known to its worker."""

    name = "thread"

    def __init__(self, work=None):
        self.work, self.threads = work, []

    def launch(self, bucket_url, job_id, attempt, manifest):
        t = threading.Thread(target=run_attempt, args=(bucket_url, job_id, attempt), kwargs={"work": self.work})
        t.start()
        self.threads.append(t)
        return f"thread-{len(self.threads)}"

    def status(self, backend_id):
        raise AssertionError("not asked in these tests")

    def cancel(self, backend_id):
        pass

    def join(self):
        for t in self.threads:
            t.join(30)
            assert not t.is_alive()


def run_kind(bucket, manifest, launcher):
    job_id, _ = client.submit(bucket, codec.dumps(manifest))
    name = keys.inbox_key(f"{job_id}.json")
    routes = Routes(by_kind={"echo": launcher})
    [outcome] = dispatch({"Records": [s3_record(bucket, bucket.head(name))]}, DispatchContext(bucket, routes, "t"))
    launcher.join()
    return outcome.job_id, read_view(bucket, outcome.job_id)


def test_the_registry_knows_every_kind_without_their_stacks():
    assert {"transcribe", "echo"} <= set(kind_names())
    spec = get_kind("transcribe")
    assert spec.body is TranscribeBody and spec.work.endswith(":transcribe") and spec.launcher == "runpod"
    assert get_kind("nope") is None
    with pytest.raises(ValueError):
        register(ECHO)


def test_a_kind_brings_its_body_and_shares_the_envelope():
    m = parse_manifest(codec.dumps({"kind": "echo", "text": "hi", "request_id": "r1", "resources": {"max_attempts": 2}}))
    assert m.kind == "echo" and m.body.text == "hi" and m.body.copies == 1 and m.request_id == "r1"
    assert m.resources.heartbeat_s == 2.0 and m.resources.stall_after_s == 30.0  # the kind's liveness policy
    assert m.to_json()["text"] == "hi" and m.to_json()["launch"]["runpod"]["ttl_s"] == 86400
    with pytest.raises(ManifestRejected) as err:
        parse_manifest(codec.dumps({"kind": "echo", "text": "", "source": {"key": "x"}, "resources": {"max_attempts": 0}}))
    assert {f["loc"] for f in err.value.fields} == {"text", "source", "resources.max_attempts"}


def test_runpod_policy_belongs_to_the_launcher_section():
    old = parse_manifest(codec.dumps({"kind": "transcribe", "source": {"key": "a"},
                                      "resources": {"execution_timeout_s": 600, "ttl_s": 120}}))
    assert old.launch.runpod.execution_timeout_s == 600 and old.launch.runpod.ttl_s == 120  # legacy place, moved
    assert "ttl_s" not in old.to_json()["resources"]
    new = parse_manifest(codec.dumps({"kind": "transcribe", "source": {"key": "a"},
                                      "launch": {"runpod": {"ttl_s": 300}}}))
    assert RunpodLauncher("ep").run_payload("s3://b", "j", 1, new.launch.runpod)["policy"] == {
        "executionTimeout": 3_600_000, "ttl": 300_000}


def test_a_new_kind_runs_end_to_end_through_the_shared_runtime(bucket):
    job_id, view = run_kind(bucket, {"kind": "echo", "text": "hello", "copies": 3}, ThreadLauncher())
    assert [t.state for t in view.history] == [JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED,
                                               JobState.RUNNING, JobState.SUCCEEDED]
    detail = view.latest.detail
    assert detail["summary"] == {"copies": 3} and [a["copy"] for a in detail["artifacts"]] == [0, 1, 2]
    for a in detail["artifacts"]:
        assert bucket.get(a["key"]).data == b"hello" and a["bytes"] == 5 and len(a["sha256"]) == 64
    assert view.history[2].detail["backend"] == "thread"
    assert bucket.exists(keys.log_key(job_id, 1)) and codec.loads(bucket.get(keys.progress_key(job_id)).data)["stage"] == "echo"


def test_success_is_declared_only_on_a_verified_result(bucket):
    _, view = run_kind(bucket, {"kind": "echo", "text": "hello", "copies": 2, "resources": {"max_attempts": 1}},
                       ThreadLauncher(work=lazy_work))
    assert view.state is JobState.FAILED
    error = view.latest.detail["error"]
    assert error["class"] == FailureClass.CODE_ERROR.value and "0 of 2 copies written" in error["message"]


def test_each_kind_routes_to_its_own_endpoint(monkeypatch):
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "shared")
    routes = routes_from_env(lambda: "k")
    assert routes.for_kind("transcribe").endpoint_id == "shared"
    monkeypatch.setenv(endpoint_env("TRANSCRIBE"), "tr123")
    routes = routes_from_env(lambda: "k")
    assert routes.for_kind("transcribe").endpoint_id == "tr123"
    with pytest.raises(LaunchError) as err:  # echo's backend ("thread") does not exist in the cloud
        routes.for_kind("echo")
    assert err.value.cls is FailureClass.CONFIG_ERROR
    monkeypatch.delenv("RUNPOD_ENDPOINT_ID")
    monkeypatch.delenv(endpoint_env("TRANSCRIBE"))
    with pytest.raises(LaunchError) as err:
        routes_from_env(lambda: "k").for_kind("transcribe")
    assert endpoint_env("TRANSCRIBE") in str(err.value)


def test_the_worker_log_reaches_the_bucket_while_the_attempt_runs(bucket, monkeypatch):
    """So `bucketrun logs -f` can follow it: shipped on a heartbeat once it grew, not only at the end."""
    from bucketrun.images.runtime import attempt as runtime

    monkeypatch.setattr(runtime.LogShipper, "LOG_EVERY_S", 0.0)
    seen = {}

    def chatty(ctx: Attempt) -> dict[str, Any]:
        import logging
        import time

        logging.getLogger("bucketrun.worker").info("half way there")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "log" not in seen:
            try:
                seen["log"] = ctx.bucket.get(keys.log_key(ctx.job_id, ctx.attempt)).data
            except Exception:  # noqa: BLE001 - not there yet
                time.sleep(0.1)
        for i in range(ctx.manifest.body.copies):
            ctx.put_artifact(f"echo-{i}.txt", b"x", "text/plain")
        return {"summary": {}}

    _, view = run_kind(bucket, {"kind": "echo", "text": "hi", "resources": {"heartbeat_s": 1, "stall_after_s": 30}},
                       ThreadLauncher(work=chatty))
    assert view.state is JobState.SUCCEEDED
    assert b"half way there" in seen["log"]


def test_sigterm_mid_attempt_drains_it_as_lost_and_it_is_retried(bucket):
    """The platform takes the worker away: the attempt ends `lost` (retryable) at its next safe point instead
    of going silent until the stall limit; SIGTERM while idle goes to whoever handled it before."""
    import os
    import signal

    from bucketrun.images.runtime import attempt as runtime

    earlier = []
    previous = signal.signal(signal.SIGTERM, lambda *a: earlier.append("idle stop"))
    try:
        runtime.install_drain_handler()

        def interrupted(ctx: Attempt) -> dict[str, Any]:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread's handler at once
            ctx.check()
            raise AssertionError("check() must stop a draining attempt")

        job_id, _ = client.submit(bucket, codec.dumps({"kind": "echo", "text": "hi", "resources": {"max_attempts": 3}}))
        name = keys.inbox_key(f"{job_id}.json")
        dispatch({"Records": [s3_record(bucket, bucket.head(name))]},
                 DispatchContext(bucket, Routes(by_kind={"echo": _Recorder()}), "t"))
        result = run_attempt(bucket.url, job_id, 1, work=interrupted)
        view = read_view(bucket, job_id)
        assert result["status"] == "queued" and view.state is JobState.QUEUED and view.attempt == 2
        assert view.latest.detail["retry"]["error"]["class"] == FailureClass.LOST.value
        assert earlier == []  # busy: drained, not stopped
        runtime._draining.clear()
        os.kill(os.getpid(), signal.SIGTERM)  # idle now: handed to the earlier handler
        assert earlier == ["idle stop"]
    finally:
        runtime._draining.clear()
        signal.signal(signal.SIGTERM, previous)


class _Recorder:
    """Launches nothing: the test runs the attempt itself."""

    name = "recorder"

    def launch(self, bucket_url, job_id, attempt, manifest):
        return f"rec-{job_id}"

    def status(self, backend_id):
        raise AssertionError("not asked")

    def cancel(self, backend_id):
        pass
