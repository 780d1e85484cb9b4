"""The cloud's secrets by reference: the Runpod API key and the webhook signing secret from a Secrets Manager
ARN or an SSM SecureString parameter (moto's server answers both), read once per container and never logged,
shown or written."""

from __future__ import annotations

import json
import logging
import uuid

import boto3
import pytest

from bucketrun.events import codec, webhook
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers import aws_lambda
from bucketrun.handlers.launchers import as_routes
from bucketrun.local_sim.sim import s3_record

from conftest import SAMPLES, make_s3_bucket
from test_retry_policy import HeaderedRunpod

KEY_VARS = {"arn": "RUNPOD_API_KEY_SECRET_ARN", "parameter": "RUNPOD_API_KEY_PARAMETER"}
HOOK_VARS = {"arn": f"{webhook.SECRET_ENV}_ARN", "parameter": f"{webhook.SECRET_ENV}_PARAMETER"}
READ = {"arn": ("secretsmanager", "GetSecretValue"), "parameter": ("ssm", "GetParameter")}


@pytest.fixture
def aws(s3_endpoint, monkeypatch):
    """Secrets Manager and SSM at the moto server too, no secret in the environment, a fresh container."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for var in ["RUNPOD_API_KEY", webhook.SECRET_ENV, *KEY_VARS.values(), *HOOK_VARS.values()]:
        monkeypatch.delenv(var, raising=False)
    aws_lambda.reset_context()
    yield
    aws_lambda.reset_context()


@pytest.fixture
def reads(aws, monkeypatch) -> list[tuple[str, str]]:
    """Every Secrets Manager and SSM call the code under test makes, counted by a botocore hook on its client."""
    calls: list[tuple[str, str]] = []
    real_client = boto3.client

    def client(service, *args, **kwargs):
        made = real_client(service, *args, **kwargs)
        if service in ("secretsmanager", "ssm"):
            made.meta.events.register("before-call", lambda model, **_: calls.append((service, model.name)))
        return made

    monkeypatch.setattr(boto3, "client", client)
    return calls


@pytest.fixture
def runpod():
    fake = HeaderedRunpod([])
    yield fake
    fake.close()


def store(source: str, value: str) -> str:
    """Put `value` where the deployment would (through a session of its own, so it is not counted)."""
    session = boto3.session.Session()
    name = f"bucketrun-test-{uuid.uuid4().hex[:8]}"
    if source == "arn":
        return session.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"]
    session.client("ssm").put_parameter(Name=f"/{name}", Value=value, Type="SecureString")
    return f"/{name}"


def use_runpod(monkeypatch, fake: HeaderedRunpod) -> str:
    bucket_name = make_s3_bucket()
    monkeypatch.setenv("BUCKETRUN_BUCKET", f"s3://{bucket_name}")
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "ep123")
    monkeypatch.setenv("RUNPOD_ENDPOINT_URL", fake.url)
    return f"s3://{bucket_name}"


@pytest.mark.parametrize("source", ["arn", "parameter"])
def test_the_runpod_key_comes_from_a_secret_read_once_per_container(reads, runpod, monkeypatch, source):
    key = f"rp-{source}-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_VARS[source], store(source, key + "\n"))  # pasted with a newline: stripped
    use_runpod(monkeypatch, runpod)
    ctx = aws_lambda.context()
    assert aws_lambda.context() is ctx
    launcher = as_routes(ctx.launchers).for_kind("transcribe")
    launcher.status("rp-1")
    as_routes(aws_lambda.context().launchers).for_kind("transcribe").cancel("rp-1")
    assert [r["headers"]["Authorization"] for r in runpod.requests] == [f"Bearer {key}"] * 2
    assert reads == [READ[source]]


@pytest.mark.parametrize("source", ["arn", "parameter"])
def test_the_webhook_secret_comes_from_a_secret_read_once_per_container(reads, monkeypatch, source):
    secret = f"whsec-{source}-{uuid.uuid4().hex}"
    monkeypatch.setenv(HOOK_VARS[source], store(source, secret))
    first = aws_lambda.notifier()
    assert aws_lambda.notifier() is first and first.secret == secret
    assert reads == [READ[source]]


def test_a_secret_in_the_environment_is_used_without_a_read(reads, runpod, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-from-env")
    monkeypatch.setenv(KEY_VARS["arn"], "arn:aws:secretsmanager:us-east-1:123456789012:secret:never-read")
    use_runpod(monkeypatch, runpod)
    as_routes(aws_lambda.context().launchers).for_kind("transcribe").status("rp-1")
    assert runpod.requests[0]["headers"]["Authorization"] == "Bearer rp-from-env" and reads == []


def capture_everything(caplog, monkeypatch) -> None:
    """DEBUG from every logger there is, botocore's and urllib3's included, even one that does not propagate."""
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
            if not logger.propagate:
                logger.addHandler(caplog.handler)
                monkeypatch.setattr(logger, "handlers", [*logger.handlers])  # removed again after the test


def test_secrets_are_never_logged_shown_or_written(reads, runpod, monkeypatch, caplog):
    from webhook_receiver import Receiver

    key, secret = f"rp-key-{uuid.uuid4().hex}", f"whsec-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_VARS["arn"], store("arn", key))
    monkeypatch.setenv(HOOK_VARS["parameter"], store("parameter", secret))
    bucket = open_bucket(use_runpod(monkeypatch, runpod))
    receiver = Receiver()
    try:
        manifest = {"kind": "transcribe", "source": {"key": "media/talk.ogg"}, "notify": {"webhook": receiver.url}}
        bucket.put("media/talk.ogg", b"OggS" + bytes(64))
        bucket.put("inbox/launched.json", codec.dumps(manifest))
        bucket.put("inbox/refused.json", codec.dumps(manifest))
        runpod.script = [(200, {}, {"id": "rp-1", "status": "IN_QUEUE"}), (401, {}, {"error": "bad key"})]
        capture_everything(caplog, monkeypatch)

        event = {"Records": [s3_record(bucket, bucket.head(k)) for k in ("inbox/launched.json", "inbox/refused.json")]}
        jobs = aws_lambda.dispatch_handler(event)["jobs"]
        assert [read_view(bucket, j["job_id"]).state for j in jobs] == [JobState.LAUNCHED, JobState.FAILED]
        aws_lambda.dispatch_handler(json.loads((SAMPLES / "scheduled-sweep.json").read_text()))
        [notice] = receiver.requests
    finally:
        receiver.close()

    # Both secrets were read (once each) and used ...
    assert sorted(reads) == [("secretsmanager", "GetSecretValue"), ("ssm", "GetParameter")]
    assert {r["headers"]["Authorization"] for r in runpod.requests} == {f"Bearer {key}"}
    webhook.verify(secret, notice["body"], notice["headers"][webhook.SIGNATURE_HEADER])
    # ... the capture saw botocore's DEBUG output, response bodies included (so a leak there would show) ...
    assert any(r.name == "botocore.parsers" and "Response body" in r.getMessage() for r in caplog.records)
    # ... and neither secret is in any log record, repr, or object in the bucket.
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    ctx = aws_lambda.context()
    shown = [repr(ctx), repr(as_routes(ctx.launchers).for_kind("transcribe"))]
    written = [bucket.get(info.key).data for info in bucket.list("")]
    assert len(written) > 10
    for value in (key, secret):
        assert value not in logged
        assert not [s for s in shown if value in s]
        assert not [b for b in written if value.encode() in b]
