"""`bucketrun listen r2-queue` against a fake of Cloudflare Queues' HTTP pull API (tests/fake_cloudflare_queues.py,
written from Cloudflare's documentation) and real dispatch into a folder bucket (and moto's S3): R2 notifications
for dropped manifests become jobs and are acknowledged; bad or foreign ones are acknowledged and logged, never
redelivered; a failed dispatch is retried; a message redelivered after its lease expired makes no second job; a
refused token is one line naming the permission; the token is never logged."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from bucketrun.events import codec
from bucketrun.events.backoff import Backoff
from bucketrun.events.errors import StorageError
from bucketrun.events.lifecycle import list_job_ids
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.dispatch import DispatchContext
from bucketrun.handlers.listen import r2_queue
from bucketrun.handlers.listen.cloudflare_queues import BASE_URL_ENV, TOKEN_ENV, decode_body

from conftest import ROOT, jobs_by_inbox_key, make_s3_bucket, wait_for
from fake_cloudflare_queues import FakeQueues, r2_notification

ACCOUNT = "3f4b7e3dcab231cbfdaa90a6a28bd548"
MANIFEST = {"kind": "transcribe", "source": {"key": "media/a.ogg"}}


class RecordingLauncher:
    """Meets the Launcher protocol; records each launch (no worker runs)."""

    name = "fake"

    def __init__(self):
        self.calls: list[tuple] = []

    def launch(self, bucket_url, job_id, attempt, manifest):
        self.calls.append(("launch", job_id, attempt))
        return f"fake-{job_id}-{attempt}"

    def status(self, backend_id):
        from bucketrun.handlers.launchers.base import BackendStatus
        return BackendStatus.IN_PROGRESS

    def cancel(self, backend_id):
        self.calls.append(("cancel", backend_id))


class FlakyBucket:
    """A bucket whose reads of one key fail `times` times (a store hiccup during intake), then work."""

    def __init__(self, bucket, key: str, times: int):
        self._bucket, self._key, self.times = bucket, key, times

    def _maybe_fail(self, key):
        if key == self._key and self.times > 0:
            self.times -= 1
            raise StorageError(f"injected failure reading {key}")

    def get(self, key, *a, **kw):
        self._maybe_fail(key)
        return self._bucket.get(key, *a, **kw)

    def head(self, key, *a, **kw):
        self._maybe_fail(key)
        return self._bucket.head(key, *a, **kw)

    def __getattr__(self, name):
        return getattr(self._bucket, name)


@pytest.fixture
def token() -> str:
    return f"cf-canary-{uuid.uuid4().hex}"


@pytest.fixture
def fake(token, monkeypatch):
    fake = FakeQueues(ACCOUNT, {token: {"queues_read", "queues_write"}, "read-only-token": {"queues_read"}})
    monkeypatch.setenv(TOKEN_ENV, token)
    monkeypatch.setenv(BASE_URL_ENV, fake.url)
    yield fake
    fake.close()


@pytest.fixture
def bucket(tmp_path):
    return open_bucket(str(tmp_path / "bucket"))


def drop(bucket, name: str, manifest=None) -> str:
    bucket.put("media/a.ogg", b"OggS" + bytes(64))
    key = f"inbox/{name}.json"
    bucket.put(key, codec.dumps(manifest or MANIFEST))
    return key


def notify(fake, queue_id, bucket, key, **kw) -> str:
    info = bucket.head(key)
    return fake.send(queue_id, r2_notification(bucket.full_key(key), bucket=bucket.name, size=info.size,
                                               etag=info.etag.strip('"'), **kw))


def args(queue, **kw) -> argparse.Namespace:
    base = dict(account=ACCOUNT, queue=queue, batch_size=10, visibility_timeout=30.0, reconcile=3600.0,
                poll=0.05, poll_max=0.2)
    return argparse.Namespace(**{**base, **kw})


class Running:
    """run(args, ctx) on a thread, stopped as SIGTERM would stop it."""

    def __init__(self, a, ctx):
        self.stop = threading.Event()
        self.code = None
        self.thread = threading.Thread(target=self._run, args=(a, ctx), daemon=True)
        self.thread.start()

    def _run(self, a, ctx):
        self.code = r2_queue.run(a, ctx, stop=self.stop)

    def close(self) -> int:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.code


def pulled(fake) -> int:
    return len(fake.calls("/messages/pull"))


@pytest.mark.parametrize("store", ["folder", "s3"])
def test_notifications_become_jobs_and_are_acknowledged(fake, tmp_path, store, request):
    if store == "s3":
        request.getfixturevalue("s3_endpoint")
        bucket = open_bucket(f"s3://{make_s3_bucket()}/team-a")
    else:
        bucket = open_bucket(str(tmp_path / "bucket"))
    for name in ("other-1", "other-2"):  # a few queues, so the name is found on a later page of the list
        fake.create_queue(name)
    queue_id = fake.create_queue("bucketrun-inbox")
    launcher = RecordingLauncher()
    running = Running(args("bucketrun-inbox"), DispatchContext(bucket, launcher, "listen-test"))
    wait_for(lambda: pulled(fake) >= 1, timeout=20)  # started: the reconcile on start found nothing

    keys_ = [drop(bucket, f"drop-{i}") for i in range(3)]
    for key in keys_:
        notify(fake, queue_id, bucket, key)
    jobs = wait_for(lambda: (j := jobs_by_inbox_key(bucket)) and len(j) == 3 and j, timeout=20)
    wait_for(lambda: not fake.held(queue_id), timeout=20)
    assert running.close() == 0

    assert sorted(jobs) == sorted(keys_)
    assert sorted(c[1] for c in launcher.calls) == sorted(jobs.values())  # each launched once
    acked = [a["lease_id"] for r in fake.calls("/messages/ack") for a in r["body"]["acks"]]
    assert len(acked) == 3 and not [x for r in fake.calls("/messages/ack") for x in r["body"]["retries"]]
    pulls = fake.calls("/messages/pull")
    assert all(p["body"] == {"batch_size": 10, "visibility_timeout_ms": 30000, "visibility_timeout": 30000}
               for p in pulls)  # the API reference's name and the guide's, one value
    assert [attempts for _, attempts in fake.served] == [1, 1, 1] and not fake.queues[queue_id].dead


def test_malformed_and_foreign_messages_are_acknowledged_and_logged(fake, bucket, caplog):
    caplog.set_level(logging.INFO)
    queue_id = fake.create_queue("q")
    running = Running(args(queue_id, visibility_timeout=1.0), DispatchContext(bucket, RecordingLauncher(), "t"))
    wait_for(lambda: pulled(fake) >= 1, timeout=20)
    bucket.put("media/x.json", b"{}")
    fake.send(queue_id, "this is not json", content_type="text")
    fake.send(queue_id, {"hello": "world"})
    fake.send(queue_id, b"\xff\xfe binary", content_type="bytes")
    fake.send(queue_id, r2_notification("media/x.json"))  # bucketrun owns only inbox/
    fake.send(queue_id, r2_notification("inbox/gone.json", action="DeleteObject"))
    wait_for(lambda: not fake.held(queue_id), timeout=20)
    time.sleep(1.5)  # past the visibility timeout: nothing comes back
    assert running.close() == 0

    assert not fake.held(queue_id) and not fake.queues[queue_id].dead
    assert list_job_ids(bucket) == []
    assert [attempts for _, attempts in fake.served] == [1] * 5  # each delivered once, never again
    acks = fake.calls("/messages/ack")
    assert sum(len(r["body"]["acks"]) for r in acks) == 5 and not [x for r in acks for x in r["body"]["retries"]]
    lines = [r.getMessage() for r in caplog.records if "acknowledged without a dispatch" in r.getMessage()]
    assert len(lines) == 5
    assert sum("(malformed)" in line for line in lines) == 3 and sum("(not_ours)" in line for line in lines) == 2


def test_a_failed_dispatch_is_retried_not_acknowledged(fake, bucket, monkeypatch):
    assert [r2_queue.retry_delay(n) for n in (1, 2, 3, 10)] == [5, 10, 20, 300]  # the policy, unpatched
    monkeypatch.setattr(r2_queue, "RETRY_DELAY", Backoff(base_s=1.0, cap_s=1.0))  # the test need not wait 5 s
    queue_id = fake.create_queue("q")
    key = drop(bucket, "flaky")
    flaky = FlakyBucket(bucket, key, times=1)
    running = Running(args(queue_id), DispatchContext(flaky, RecordingLauncher(), "t"))
    wait_for(lambda: flaky.times == 0 and pulled(fake) >= 1, timeout=20)  # the reconcile on start hit the failure
    flaky.times = 1  # and the notification's first dispatch fails too
    notify(fake, queue_id, bucket, key)
    wait_for(lambda: not fake.held(queue_id), timeout=20)
    assert running.close() == 0

    acks = fake.calls("/messages/ack")
    retries = [x for r in acks for x in r["body"]["retries"]]
    assert len(retries) == 1 and retries[0]["delay_seconds"] == 1
    assert sum(len(r["body"]["acks"]) for r in acks) == 1  # acknowledged once, on the second delivery
    assert [attempts for _, attempts in fake.served] == [1, 2]
    assert list(jobs_by_inbox_key(bucket)) == [key]


def test_a_message_redelivered_after_its_lease_expired_makes_no_second_job(fake, bucket, tmp_path):
    """The consumer is killed (SIGKILL) after dispatching but before its ack got through; the lease expires, the
    message comes back with attempts 2, and the next consumer's dispatch finds the job already there."""
    queue_id = fake.create_queue("q")
    fake.drop_acks = True
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, __file__, str(bucket.root), queue_id, "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: pulled(fake) >= 1, timeout=30)
        key = drop(bucket, "killed")
        notify(fake, queue_id, bucket, key)
        wait_for(lambda: fake.calls("/messages/ack"), timeout=20)  # dispatched, then the ack was lost
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    [first] = jobs_by_inbox_key(bucket).values()
    fake.drop_acks = False
    assert [m.attempts for m in fake.held(queue_id)] == [1]

    launcher = RecordingLauncher()
    running = Running(args(queue_id, visibility_timeout=2.0), DispatchContext(bucket, launcher, "t"))
    wait_for(lambda: not fake.held(queue_id), timeout=20)
    assert running.close() == 0
    assert [attempts for _, attempts in fake.served] == [1, 2]  # delivered again after the lease expired
    assert jobs_by_inbox_key(bucket) == {key: first} and len(list_job_ids(bucket)) == 1
    assert launcher.calls == []  # the job was launched once, by the killed consumer


def test_reconcile_takes_in_manifests_dropped_while_down_and_on_its_interval(fake, bucket):
    queue_id = fake.create_queue("q")
    before = drop(bucket, "while-down")
    running = Running(args(queue_id, reconcile=1.0), DispatchContext(bucket, RecordingLauncher(), "t"))
    wait_for(lambda: before in jobs_by_inbox_key(bucket), timeout=20)
    later = drop(bucket, "no-notification")  # a notification R2 never sent
    wait_for(lambda: later in jobs_by_inbox_key(bucket), timeout=20)
    assert running.close() == 0
    assert fake.calls("/messages/ack") == []


def test_cloudflare_unavailable_is_waited_out(fake, bucket):
    queue_id = fake.create_queue("q")
    fake.fail_next = [503, 500]
    key = drop(bucket, "after-outage")
    running = Running(args(queue_id, reconcile=3600.0), DispatchContext(bucket, RecordingLauncher(), "t"))
    wait_for(lambda: key in jobs_by_inbox_key(bucket), timeout=20)  # the reconcile on start
    key2 = drop(bucket, "notified")
    notify(fake, queue_id, bucket, key2)
    wait_for(lambda: key2 in jobs_by_inbox_key(bucket) and not fake.held(queue_id), timeout=30)
    assert running.close() == 0
    assert fake.fail_next == []


def _cli(*extra: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "bucketrun"), "listen", "r2-queue", *extra],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_a_token_without_the_permission_is_one_line_and_a_non_zero_exit(fake, bucket, token):
    queue_id = fake.create_queue("q")
    env = {**os.environ, TOKEN_ENV: "read-only-token"}
    done = _cli("--bucket", str(bucket.root), "--account", ACCOUNT, "--queue", queue_id, "--no-preload", env=env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bucketrun: ") and "Traceback" not in done.stderr, done.stderr
    assert "Queues Write" in lines[0] and "10000" in lines[0] and TOKEN_ENV in lines[0]
    assert "read-only-token" not in done.stderr + done.stdout

    unset = {k: v for k, v in env.items() if k != TOKEN_ENV}
    done = _cli("--bucket", str(bucket.root), "--account", ACCOUNT, "--queue", queue_id, "--no-preload", env=unset)
    lines = [line for line in done.stderr.splitlines() if line.startswith("bucketrun:")]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"bucketrun: {TOKEN_ENV} is not set"), \
        done.stderr


def test_without_the_r2_extra_one_line_naming_it_and_exit_2(bucket, token, tmp_path):
    """The SDK lives in the r2 extra: on an install without it (made missing by test_missing_extras' meta-path
    blocker), the command says which pip line to run, in one line, before starting anything; the rest of the CLI
    and the dispatch path never import it."""
    from test_missing_extras import BLOCKER

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site), "TEST_MODULES_GONE": "cloudflare", TOKEN_ENV: token,
           BASE_URL_ENV: "http://127.0.0.1:9/client/v4"}
    done = _cli("--bucket", str(bucket.root), "--account", ACCOUNT, "--queue", "q", "--no-preload", env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("bucketrun: listen r2-queue needs the r2 extra (the cloudflare SDK): "
                           "pip install 'bucketrun[r2]'\n") and done.stdout == ""
    assert list_job_ids(bucket) == []

    code = ("import sys, bucketrun.handlers.cli, bucketrun.handlers.dispatch, bucketrun.handlers.listen.r2_queue\n"
            "bad = [m for m in ('cloudflare', 'httpx') if m in sys.modules]\n"
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=False)
    assert done.returncode == 0, done.stderr


def test_the_secrets_come_from_the_documented_variables_and_reconcile_defaults_to_300_s():
    """The names the issue and docs/settings.md give, spelled out (the tests elsewhere use the constants), and the
    shared reconcile interval of both `listen` commands."""
    from bucketrun.handlers.cli import build_parser
    from bucketrun.handlers.listen import minio

    assert TOKEN_ENV == "CLOUDFLARE_API_TOKEN" and minio.TOKEN_ENV == "BUCKETRUN_MINIO_TOKEN"
    parser = build_parser()
    r2 = parser.parse_args(["listen", "r2-queue", "--account", ACCOUNT, "--queue", "q"])
    assert r2.reconcile == 300.0 and r2_queue.Settings.of(argparse.Namespace()).reconcile_s == 300.0
    assert parser.parse_args(["listen", "minio"]).reconcile == 300.0


def test_a_batch_whose_result_is_a_bare_array_is_taken_too(fake, bucket):
    """An earlier API reference typed a pull's `result` as the array of messages: taken, dispatched, acked."""
    queue_id = fake.create_queue("q")
    fake.result_as_list = True
    running = Running(args(queue_id), DispatchContext(bucket, RecordingLauncher(), "t"))
    wait_for(lambda: pulled(fake) >= 1, timeout=20)
    key = drop(bucket, "bare-array")
    notify(fake, queue_id, bucket, key)
    wait_for(lambda: key in jobs_by_inbox_key(bucket) and not fake.held(queue_id), timeout=20)
    assert running.close() == 0
    assert [attempts for _, attempts in fake.served] == [1]
    assert sum(len(r["body"]["acks"]) for r in fake.calls("/messages/ack")) == 1


def test_sigterm_stops_the_command_cleanly(fake, bucket, token):
    queue_id = fake.create_queue("q")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "bucketrun"), "listen", "r2-queue", "--bucket",
                             str(bucket.root), "--account", ACCOUNT, "--queue", queue_id, "--no-preload"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: pulled(fake) >= 1, timeout=60)
        from test_listen_minio import descendants_environ

        children = descendants_environ(proc.pid)  # the local worker: the token is not handed down to jobs
        leaked = [pid for pid, env in children.items() if token.encode() in env]
        assert len(children) > 0
        assert leaked == []  # pids only: a failure must not print the environment, token and all
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_the_token_is_never_logged_or_shown(fake, bucket, token, caplog, capsys, monkeypatch):
    """The secret canary: a unique token, every logger at DEBUG (the cloudflare SDK's, which logs each request's
    options, and httpx's and httpcore's under it), every path that can fail."""
    import cloudflare  # noqa: F401 - its loggers exist before the capture sets every logger to DEBUG
    from test_secrets import capture_everything

    capture_everything(caplog, monkeypatch)
    queue_id = fake.create_queue("q")
    fake.fail_next = [503]
    key = drop(bucket, "canary")
    running = Running(args(queue_id), DispatchContext(bucket, RecordingLauncher(), "t"))
    wait_for(lambda: pulled(fake) >= 2, timeout=20)
    notify(fake, queue_id, bucket, key)
    fake.send(queue_id, "not json", content_type="text")
    wait_for(lambda: not fake.held(queue_id), timeout=20)
    assert running.close() == 0
    fake.tokens[token] = {"queues_read"}  # now refused: the error path
    assert r2_queue.run(args(queue_id), DispatchContext(bucket, RecordingLauncher(), "t"),
                        stop=threading.Event()) == 2

    assert {r["authorization"] for r in fake.requests} == {f"Bearer {token}"}  # it was used ...
    shown = capsys.readouterr()
    assert "Queues Write" in shown.err  # the refusal was reported ...
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records) + shown.out + shown.err
    seen = {r.name.split(".")[0] for r in caplog.records if r.levelno == logging.DEBUG}
    assert {"cloudflare", "httpcore"} <= seen, seen  # (the capture saw the SDK's and its HTTP stack's DEBUG)
    assert any(r.name == "cloudflare._base_client" and r.getMessage().startswith("Request options")
               for r in caplog.records)
    assert any(r.name == "httpx" and "/messages/pull" in r.getMessage() for r in caplog.records)
    written = b"".join(bucket.get(i.key).data for i in bucket.list(""))
    assert token not in logged and token.encode() not in written  # ... and is nowhere else
    from bucketrun.handlers.listen.cloudflare_queues import QueuesClient
    assert token not in repr(QueuesClient(ACCOUNT, token, fake.url))


def test_the_api_token_is_what_is_sent_even_with_other_cloudflare_credentials_set(fake, token, monkeypatch):
    """The SDK would prefer CLOUDFLARE_EMAIL / CLOUDFLARE_API_KEY (a global key exported for another tool) to the
    token it is given; the consumer authenticates with its API token only."""
    from bucketrun.handlers.listen.cloudflare_queues import QueuesClient

    monkeypatch.setenv("CLOUDFLARE_API_KEY", "global-key")
    monkeypatch.setenv("CLOUDFLARE_EMAIL", "someone@example.com")
    monkeypatch.setenv("CLOUDFLARE_API_USER_SERVICE_KEY", "v1.0-service-key")
    queue_id = fake.create_queue("q")
    client = QueuesClient(ACCOUNT, token, fake.url)
    assert client.queue_id("q") == queue_id and client.pull(queue_id, 5, 1000) == []
    assert {r["authorization"] for r in fake.requests} == {f"Bearer {token}"}


def test_bodies_decode_as_documented():
    import base64
    import json

    note = r2_notification("inbox/a.json")
    as_json = base64.b64encode(json.dumps(note).encode()).decode()
    assert decode_body({"body": as_json, "metadata": {"CF-Content-Type": "json"}}) == note
    assert decode_body({"body": json.dumps(note), "metadata": {"CF-Content-Type": "text"}}) == note
    assert decode_body({"body": note}) == note  # already an object, as in events/samples/r2-queue-batch.json
    assert decode_body({"body": "plain words", "metadata": {"CF-Content-Type": "text"}}) is None


def test_answers_are_classified_as_cloudflare_documents_them():
    from bucketrun.handlers.listen.cloudflare_queues import classify

    def err(code):
        return {"success": False, "errors": [{"code": code, "message": "x"}], "result": None}
    assert classify(200, {"success": True, "errors": [], "result": {"messages": []}}) == "ok"
    assert classify(403, err(10000)) == "auth" and classify(401, None) == "auth"
    assert classify(400, err(6003)) == "auth"  # a malformed Authorization header
    assert classify(429, err(971)) == "retry" and classify(503, None) == "retry"
    assert classify(404, err(11000)) == "fatal" and classify(200, err(10001)) == "fatal"


def _harness(argv: list[str]) -> int:
    """`python tests/test_listen_r2.py BUCKET_DIR QUEUE_ID VISIBILITY_S`: the consumer in a process of its own,
    with the recording launcher, for the test that kills it."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    root, queue_id, vt = argv
    ctx = DispatchContext(open_bucket(root), RecordingLauncher(), "harness")
    return r2_queue.run(args(queue_id, visibility_timeout=float(vt)), ctx)


if __name__ == "__main__":
    sys.exit(_harness(sys.argv[1:]))
