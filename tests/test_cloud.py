"""The cloud path: sample S3 events into the Lambda entry point, the Runpod launcher against the runpod
SDK's own local API server running our worker handler, and a loopback S3-protocol bucket."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from bucketrun.events import codec, keys, webhook
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers import aws_lambda
from bucketrun.handlers.launchers.runpod import RunpodLauncher

from conftest import ROOT, SAMPLES, SPEECH_TEXT, free_port, make_s3_bucket
from runpod_fakes import ScriptedRunpod
from subtitle_rules import parse_srt, wer
from webhook_receiver import Receiver

SAMPLE_BUCKET = "bucketrun-sample"
SAMPLE_JOB = "20261122T184512123Z-k3f9qz"  # the id named by s3-put-single.json and the cancel sample


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


@pytest.fixture(scope="module")
def runpod_server(s3_endpoint, tmp_path_factory):
    """`python -m bucketrun.images.transcribe.handler --rp_serve_api`: the SDK's local /run and /status server."""
    port = free_port()
    log = tmp_path_factory.mktemp("runpod") / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bucketrun.images.transcribe.handler", "--rp_serve_api",
                                 "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
                                cwd=ROOT, stdout=fh, stderr=fh, env={**os.environ, "UVICORN_LOG_LEVEL": "warning"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + RUNPOD_SERVER_DEADLINE_S
    while not _answers_http(url):
        code = proc.poll()
        if code is not None or time.monotonic() > deadline:
            why = (f"exited early with code {code}" if code is not None
                   else f"did not answer HTTP within {RUNPOD_SERVER_DEADLINE_S} s")
            proc.kill()
            proc.wait(30)
            pytest.fail(f"the runpod SDK's local server {why}; its stderr ends:\n"
                        f"{log.read_text(errors='replace')[-3000:]}", pytrace=False)
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(30)


RUNPOD_SERVER_DEADLINE_S = 120


def _answers_http(url: str) -> bool:
    """Any HTTP response (even a 404) means the server is up; a refused or dropped connection does not."""
    try:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/", timeout=2).close()
    except urllib.error.HTTPError as exc:
        exc.close()
    except (urllib.error.URLError, OSError):
        return False
    return True


@pytest.fixture
def cloud(s3_endpoint, monkeypatch, media_dir):
    """A fresh sample bucket and the Lambda's environment, with Runpod at `endpoint_url`."""
    import boto3

    s3 = boto3.resource("s3")
    if s3.Bucket(SAMPLE_BUCKET).creation_date:
        s3.Bucket(SAMPLE_BUCKET).object_versions.delete()
    else:
        make_s3_bucket(SAMPLE_BUCKET)
    monkeypatch.setenv("BUCKETRUN_BUCKET", f"s3://{SAMPLE_BUCKET}")
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "ep123")
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-test-not-a-real-key")
    bucket = open_bucket(f"s3://{SAMPLE_BUCKET}")
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes())

    def use(endpoint_url: str):
        monkeypatch.setenv("RUNPOD_ENDPOINT_URL", endpoint_url)
        aws_lambda.reset_context()
        return bucket

    yield use
    aws_lambda.reset_context()


MANIFEST = {"kind": "transcribe", "source": {"key": "media/speech.ogg"}, "options": {"language": "en"}}


def test_s3_put_to_lambda_to_runpod_transcribes_real_speech(cloud, runpod_server, monkeypatch):
    bucket = cloud(runpod_server)
    receiver = Receiver()
    monkeypatch.setenv(webhook.SECRET_ENV, "whsec-cloud-test")
    bucket.put(f"inbox/{SAMPLE_JOB}.json", codec.dumps({**MANIFEST, "notify": {"webhook": receiver.url}}))
    answer = aws_lambda.dispatch_handler(sample("s3-put-single.json"), None)
    assert answer["jobs"] == [{"key": f"inbox/{SAMPLE_JOB}.json", "job_id": SAMPLE_JOB, "state": "launched"}]
    view = read_view(bucket, SAMPLE_JOB)
    backend_id = view.latest.detail["backend_id"]
    assert view.latest.detail["backend"] == "runpod" and backend_id.startswith("test-")

    # The SDK's local server runs the handler when the job's status is asked for: a GPU picking it up.
    launcher = RunpodLauncher("ep123", endpoint_url=runpod_server, timeout_s=600)
    assert launcher.status(backend_id).value == "COMPLETED"

    view = read_view(bucket, SAMPLE_JOB)
    assert [t.state for t in view.history] == [JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED,
                                               JobState.RUNNING, JobState.SUCCEEDED]
    assert [t.seq for t in view.history] == [1, 2, 3, 4, 5] and {t.attempt for t in view.history} == {1}
    assert view.history[3].writer.startswith("worker@") and view.history[0].writer.startswith("lambda@")
    srt = bucket.get(keys.artifact_key(SAMPLE_JOB, 1, "transcript.srt")).data
    art = next(a for a in view.latest.detail["artifacts"] if a["format"] == "srt")
    assert hashlib.sha256(srt).hexdigest() == art["sha256"]
    assert wer(SPEECH_TEXT, " ".join(" ".join(c[2]) for c in parse_srt(srt.decode()))) <= 0.35

    # The scheduled sweep delivers the signed notice of the end.
    try:
        aws_lambda.dispatch_handler(sample("scheduled-sweep.json"))
    finally:
        receiver.close()
    [notice] = receiver.requests
    webhook.verify("whsec-cloud-test", notice["body"], notice["headers"][webhook.SIGNATURE_HEADER])
    payload = json.loads(notice["body"])
    assert payload["state"] == "succeeded" and {a["format"] for a in payload["artifacts"]} >= {"srt", "vtt"}

    # Nothing the handlers wrote may match a trigger filter (no recursion).
    written = [i.key for i in bucket.list("") if not i.key.startswith(("inbox/", "media/"))]
    assert written and not [k for k in written if k.startswith(("inbox/", "control/"))]


def test_the_launch_input_names_the_job_and_carries_no_secret(cloud):
    fake = ScriptedRunpod([(200, {"id": "rp-1", "status": "IN_QUEUE"})])
    try:
        bucket = cloud(fake.url)
        bucket.put("inbox/a.json", codec.dumps({**MANIFEST, "resources": {"execution_timeout_s": 900, "ttl_s": 7200}}))
        aws_lambda.dispatch_handler({"Records": [_record(bucket, "inbox/a.json")]})
        (method, path, body), = fake.requests
        assert (method, path) == ("POST", "/v2/ep123/run")
        assert set(body["input"]) == {"job_id", "bucket", "manifest_key", "attempt", "events", "manifest"}
        # what the worker would otherwise read back: the log up to `queued` and the manifest intake wrote
        assert [e["state"] for e in body["input"]["events"]] == ["submitted", "queued"]
        assert codec.dumps(body["input"]["manifest"]) == bucket.get(keys.manifest_key(body["input"]["job_id"])).data
        assert body["policy"] == {"executionTimeout": 900_000, "ttl": 7_200_000}
        assert "rp-test-not-a-real-key" not in json.dumps(body) and "testing" not in json.dumps(body)
    finally:
        fake.close()


def _record(bucket, key):
    from bucketrun.local_sim.sim import s3_record

    return s3_record(bucket, bucket.head(key))


def test_duplicate_and_out_of_order_delivery_gives_one_job_and_one_launch_each(cloud):
    fake = ScriptedRunpod([(200, {"id": f"rp-{i}", "status": "IN_QUEUE"}) for i in range(10)])
    try:
        bucket = cloud(fake.url)
        event = sample("s3-put-multi-record.json")
        for rec in event["Records"]:
            bucket.put(rec["s3"]["object"]["key"], codec.dumps(MANIFEST))
        reordered = {"Records": list(reversed(event["Records"]))}
        for delivery in (event, reordered, reordered):
            aws_lambda.dispatch_handler(delivery)
        job_ids = {o for o in _jobs_by_inbox(bucket).values()}
        assert set(_jobs_by_inbox(bucket)) == {"inbox/batch/first.json", "inbox/batch/second.json"}
        assert len(job_ids) == 2
        for job_id in job_ids:
            view = read_view(bucket, job_id)
            assert sum(t.state is JobState.LAUNCHED for t in view.history) == 1
        assert fake.paths("POST") == ["/v2/ep123/run", "/v2/ep123/run"]
    finally:
        fake.close()


def _jobs_by_inbox(bucket) -> dict[str, str]:
    return {codec.loads(bucket.get(i.key).data)["inbox_key"]: keys.job_id_from_key(i.key)
            for i in bucket.list("jobs/") if i.key.endswith("/intake.json")}


def test_throttling_and_server_errors_are_retried_and_launch_once(cloud):
    # 429 and 503 refuse the request, so even the non-idempotent /run is retried (test_retry_policy: not on 500)
    fake = ScriptedRunpod([(429, {"error": "throttled"}), (503, {"error": "unavailable"}),
                           (200, {"id": "rp-9", "status": "IN_QUEUE"})])
    try:
        bucket = cloud(fake.url)
        bucket.put("inbox/t.json", codec.dumps(MANIFEST))
        (job,) = aws_lambda.dispatch_handler({"Records": [_record(bucket, "inbox/t.json")]})["jobs"]
        assert fake.paths("POST") == ["/v2/ep123/run"] * 3
        view = read_view(bucket, job["job_id"])
        assert view.state is JobState.LAUNCHED and view.latest.detail["backend_id"] == "rp-9"
        assert sum(t.state is JobState.LAUNCHED for t in view.history) == 1
    finally:
        fake.close()


@pytest.mark.parametrize("code,says", [(401, "refused the API key"), (404, "check RUNPOD_ENDPOINT_ID_<KIND>")])
def test_a_refused_key_or_unknown_endpoint_fails_the_job_at_once_naming_the_endpoint(cloud, code, says):
    fake = ScriptedRunpod([(code, {"error": "no"})])
    try:
        bucket = cloud(fake.url)
        bucket.put("inbox/k.json", codec.dumps(MANIFEST))
        (job,) = aws_lambda.dispatch_handler({"Records": [_record(bucket, "inbox/k.json")]})["jobs"]
        assert fake.paths() == ["/v2/ep123/run"]  # no retry
        view = read_view(bucket, job["job_id"])
        assert view.state is JobState.FAILED
        error = view.latest.detail["error"]
        assert error["class"] == "config_error" and "endpoint ep123" in error["message"] and says in error["message"]
        assert error["retryable"] is False and view.attempt == 1
        assert "rp-test-not-a-real-key" not in json.dumps(view.latest.detail)
    finally:
        fake.close()


def test_a_cancel_request_object_cancels_the_job_and_its_runpod_job(cloud):
    fake = ScriptedRunpod([(200, {"id": "rp-c", "status": "IN_QUEUE"}), (200, {"id": "rp-c", "status": "CANCELLED"})])
    try:
        bucket = cloud(fake.url)
        bucket.put(f"inbox/{SAMPLE_JOB}.json", codec.dumps(MANIFEST))
        aws_lambda.dispatch_handler(sample("s3-put-single.json"))
        bucket.put(f"control/cancel/{SAMPLE_JOB}.json", b"{}")
        answer = aws_lambda.dispatch_handler(sample("s3-put-cancel-request.json"))
        assert answer["jobs"][0]["state"] == "cancelled"
        assert fake.paths("POST")[-1] == "/v2/ep123/cancel/rp-c"
        assert read_view(bucket, SAMPLE_JOB).state is JobState.CANCELLED
        again = aws_lambda.dispatch_handler(sample("s3-put-cancel-request.json"))  # redelivery is harmless
        assert again["jobs"][0]["state"] is None
    finally:
        fake.close()


@pytest.mark.parametrize("name,key", [("r2-queue-batch.json", "inbox/r2 drop ünïcode.json"),
                                      ("minio-webhook.json", "inbox/minio drop.json"),
                                      ("s3-put-unicode-key.json", "inbox/talks/my talk été +1.json")])
def test_r2_minio_and_encoded_key_samples_launch_one_job(cloud, name, key):
    fake = ScriptedRunpod([(200, {"id": "rp-r", "status": "IN_QUEUE"})])
    try:
        bucket = cloud(fake.url)
        bucket.put(key, codec.dumps(MANIFEST))
        for _ in range(2):  # redelivered: still one job
            (job,) = aws_lambda.dispatch_handler(sample(name))["jobs"]
            assert job["key"] == key and job["state"] == "launched"
        assert _jobs_by_inbox(bucket) == {key: job["job_id"]}
        assert fake.paths("POST") == ["/v2/ep123/run"]
    finally:
        fake.close()


def test_bucketrun_cancel_on_an_s3_bucket_also_stops_the_runpod_job(cloud):
    fake = ScriptedRunpod([(200, {"id": "rp-cli", "status": "IN_QUEUE"}), (200, {"id": "rp-cli", "status": "CANCELLED"})])
    try:
        bucket = cloud(fake.url)
        bucket.put(f"inbox/{SAMPLE_JOB}.json", codec.dumps(MANIFEST))
        aws_lambda.dispatch_handler(sample("s3-put-single.json"))
        env = {**os.environ, "BUCKETRUN_BUCKET": f"s3://{SAMPLE_BUCKET}"}
        out = subprocess.run([str(Path(sys.executable).with_name("bucketrun")), "cancel", SAMPLE_JOB], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert read_view(bucket, SAMPLE_JOB).state is JobState.CANCELLED
        assert bucket.exists(keys.cancel_request_key(SAMPLE_JOB))  # what S3 would notify the Lambda of
        aws_lambda.dispatch_handler(sample("s3-put-cancel-request.json"))
        assert fake.paths("POST")[-1] == "/v2/ep123/cancel/rp-cli"
        assert [t.state for t in read_view(bucket, SAMPLE_JOB).history].count(JobState.CANCELLED) == 1
    finally:
        fake.close()


def test_test_events_and_unknown_shapes_are_ignored(cloud):
    cloud("http://127.0.0.1:9")  # never contacted
    assert aws_lambda.dispatch_handler(sample("s3-test-event.json")) == {"ignored": "test"}
    assert aws_lambda.dispatch_handler({"hello": "world"}) == {"ignored": "unknown"}


def test_scheduled_event_runs_the_sweep(cloud, monkeypatch):
    """A job launched ten minutes ago and silent since: the scheduled event's sweep asks Runpod and retries it."""
    fake = ScriptedRunpod([(200, {"id": "rp-st", "status": "IN_QUEUE"}),  # /run
                           (200, {"id": "rp-st", "status": "IN_PROGRESS"}),  # /status: running, yet silent
                           (200, {"id": "rp-st", "status": "CANCELLED"})])  # /cancel
    try:
        bucket = cloud(fake.url)
        bucket.put("inbox/stalled.json", codec.dumps(MANIFEST))
        with monkeypatch.context() as past:  # the real intake writes the job's history, dated ten minutes ago
            then = codec.now() - timedelta(minutes=10)
            past.setattr(codec, "now", lambda: then)
            (job,) = aws_lambda.dispatch_handler({"Records": [_record(bucket, "inbox/stalled.json")]})["jobs"]
        assert job["state"] == "launched"
        answer = aws_lambda.dispatch_handler(sample("scheduled-sweep.json"))
        [outcome] = answer["swept"]
        assert outcome["job_id"] == job["job_id"] and outcome["step"] == "ask_backend", answer
        assert (outcome["backend"], outcome["class"], outcome["state"]) == ("IN_PROGRESS", "stall", "queued")
        assert fake.paths() == ["/v2/ep123/run", "/v2/ep123/status/rp-st", "/v2/ep123/cancel/rp-st"]
        view = read_view(bucket, job["job_id"])
        assert view.state is JobState.QUEUED and view.attempt == 2
        assert view.latest.detail["retry"]["error"]["class"] == "stall"
    finally:
        fake.close()


# What the sweep writes for a launched job silent past stall_after, for each status Runpod can report.
STATUS_REMEDIES = [
    ("IN_QUEUE", 200, JobState.LAUNCHED, None),  # still waiting for a GPU: leave it
    ("IN_PROGRESS", 200, JobState.QUEUED, "stall"),  # running but silent: cancel it, retry
    ("COMPLETED", 200, JobState.QUEUED, "lost"),  # done, yet no result reached the bucket
    ("FAILED", 200, JobState.FAILED, "code_error"),  # the worker died without recording why
    ("CANCELLED", 200, JobState.CANCELLED, None),
    ("TIMED_OUT", 200, JobState.QUEUED, "timed_out"),
    ("gone", 404, JobState.QUEUED, "lost"),  # Runpod no longer knows the job (expired or lost)
]


@pytest.mark.parametrize("status,code,state,cls", STATUS_REMEDIES, ids=[r[0] for r in STATUS_REMEDIES])
def test_the_sweep_maps_each_runpod_status_onto_a_transition(cloud, status, code, state, cls):
    from datetime import timedelta

    from bucketrun.handlers.sweep import sweep

    fake = ScriptedRunpod([(200, {"id": "rp-s", "status": "IN_QUEUE"}), (code, {"id": "rp-s", "status": status})])
    try:
        bucket = cloud(fake.url)
        bucket.put("inbox/s.json", codec.dumps(MANIFEST))
        (job,) = aws_lambda.dispatch_handler({"Records": [_record(bucket, "inbox/s.json")]})["jobs"]
        ctx = aws_lambda.context()
        [outcome] = sweep(bucket, ctx.launchers, "sweep", now=codec.now() + timedelta(minutes=10))
        assert fake.requests[1][:2] == ("GET", "/v2/ep123/status/rp-s")
        view = read_view(bucket, job["job_id"])
        assert view.state is state and outcome["backend"] == ("UNKNOWN" if code == 404 else status)
        if cls:
            error = view.latest.detail["retry"]["error"] if state is JobState.QUEUED else view.latest.detail["error"]
            assert error["class"] == cls and "silent for 600 s (stall_after 120 s)" in error["message"]
        if status == "IN_PROGRESS":
            assert fake.paths("POST")[-1] == "/v2/ep123/cancel/rp-s"
        if state is JobState.QUEUED:
            assert view.attempt == 2
    finally:
        fake.close()


def test_the_image_smoke_script_runs_one_job_through_the_handler(tmp_path):
    """`python -m bucketrun.images.transcribe.smoke`: what an image build runs, here on CPU with the base model."""
    out = subprocess.run([sys.executable, "-m", "bucketrun.images.transcribe.smoke", "--bucket", str(tmp_path / "b")],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["state"] == "succeeded" and result["srt_bytes"] > 100
    bucket = open_bucket(str(tmp_path / "b"))
    assert [t.state for t in read_view(bucket, result["job_id"]).history][-2:] == [JobState.RUNNING,
                                                                                   JobState.SUCCEEDED]
