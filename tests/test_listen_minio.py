"""`bucketrun listen minio`, the real command in a subprocess, fed real-shaped MinIO webhook deliveries (built from
events/samples/minio-webhook.json, as MinIO's internal/event/target/webhook.go sends them): a delivery with
MinIO's Authorization header becomes a job; a wrong or missing token is refused and never logged; bad input is
acknowledged and logged once; the reconcile takes in what no notification announced; SIGTERM stops it cleanly."""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from bucketrun.events import codec
from bucketrun.events.lifecycle import list_job_ids, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.dispatch import DispatchContext
from bucketrun.handlers.launchers import Routes
from bucketrun.handlers.listen import minio

from conftest import SAMPLES, free_port, jobs_by_inbox_key, wait_for

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
MISSING_MEDIA = {"kind": "transcribe", "source": {"key": "media/not-there.ogg"}}  # taken in, then fails fast
SAMPLE = json.loads((SAMPLES / "minio-webhook.json").read_text())


def minio_event(bucket, key: str) -> bytes:
    """The sample delivery re-pointed at `key` of `bucket` (its full key, ETag and size), as MinIO sends it: the
    record's key through Go's url.QueryEscape (cmd/event-notification.go: "/" as %2F, "+" as %2B, " " as "+"),
    the top-level Key "BUCKET/KEY" decoded."""
    full, name = bucket.full_key(key), bucket.name
    info = bucket.head(key) if bucket.exists(key) else None
    event = copy.deepcopy(SAMPLE)
    event["Key"] = f"{name}/{full}"
    record = event["Records"][0]
    record["s3"]["bucket"].update(name=name, arn=f"arn:aws:s3:::{name}")
    record["s3"]["object"].update(key=quote_plus(full, safe=""), size=info.size if info else 10,
                                  eTag=(info.etag if info else '"0f343b0931126a20f133d67c2b018a3b"').strip('"'))
    return json.dumps(event).encode()


def descendants_environ(pid: int) -> dict[int, bytes]:
    """The environment of every process below `pid` (Linux's /proc), to show a secret was not handed down."""
    found: dict[int, bytes] = {}
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in map(int, (task / "children").read_text().split()):
                    with contextlib.suppress(OSError):
                        found[child] = Path(f"/proc/{child}/environ").read_bytes()
                    todo.append(child)
    return found


def request(port: int, method: str = "POST", body: bytes | None = None, authorization: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        conn.request(method, "/", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Daemon:
    """`bucketrun listen minio` on a free port; `stop()` sends SIGTERM and returns its stderr."""

    def __init__(self, url: str, tmp_path: Path, token: str | None = "tok-" + uuid.uuid4().hex, *extra: str):
        self.token, self.port = token, free_port()
        self.err = tmp_path / f"listen-{self.port}.err"
        env = {k: v for k, v in os.environ.items() if k != minio.TOKEN_ENV}
        if token is not None:
            env[minio.TOKEN_ENV] = token
        with open(self.err, "wb") as fh:
            self.proc = subprocess.Popen([BUCKETRUN, "--bucket", url, "listen", "minio", "--port", str(self.port),
                                          "--no-preload", *extra], env=env, stdout=subprocess.DEVNULL, stderr=fh)
        wait_for(lambda: "listening on" in self.text() or self.proc.poll() is not None, timeout=60)
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.err.read_text()

    def post(self, body: bytes, authorization: str | None = "default") -> int:
        return request(self.port, "POST", body, f"Bearer {self.token}" if authorization == "default" else authorization)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.text()
        return self.text()


@contextlib.contextmanager
def daemon(url: str, tmp_path: Path, *extra: str, token: str | None = None):
    d = Daemon(url, tmp_path, token or "tok-" + uuid.uuid4().hex, *extra)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(30)


def test_a_delivery_with_minios_authorization_header_becomes_a_job(bucket_url, tmp_path):
    bucket = open_bucket(bucket_url)
    with daemon(bucket_url, tmp_path) as d:
        bucket.put("inbox/minio+drop.json", codec.dumps(MISSING_MEDIA), "application/json")
        time.sleep(0.5)
        assert jobs_by_inbox_key(bucket) == {}  # the reconcile ran on start, before the drop: only the POST tells
        assert d.post(minio_event(bucket, "inbox/minio+drop.json")) == 200  # acknowledged once dispatch returned
        job_id = jobs_by_inbox_key(bucket)["inbox/minio+drop.json"]
        assert read_view(bucket, job_id).state is not None
        assert d.post(minio_event(bucket, "inbox/minio+drop.json")) == 200  # a redelivery: the same one job
        assert list(jobs_by_inbox_key(bucket).values()) == [job_id]
        children = descendants_environ(d.proc.pid)  # the local worker, which ran the job
        leaked = [pid for pid, env in children.items() if d.token.encode() in env]
        assert len(children) > 0
        assert leaked == []  # pids only: a failure must not print the environment, token and all
        err = d.stop()
    assert "Traceback" not in err and d.token not in err


def test_a_wrong_or_missing_token_is_refused_and_never_logged(tmp_path):
    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    with daemon(url, tmp_path) as d:
        bucket.put("inbox/sneaky.json", codec.dumps(MISSING_MEDIA), "application/json")
        body = minio_event(bucket, "inbox/sneaky.json")
        assert d.post(body, authorization=None) == 401
        assert d.post(body, authorization="Bearer " + d.token[:-1] + "x") == 403
        assert d.post(body, authorization=d.token + "x") == 403
        assert d.post(body, authorization="Basic " + d.token) == 403
        time.sleep(0.5)
        err = d.stop()
    assert list_job_ids(bucket) == []
    assert len([line for line in err.splitlines() if "refused a notification" in line]) == 4, err
    assert d.token not in err and d.token[:-1] not in err
    assert not [o for o in bucket.list("") if d.token.encode() in bucket.get(o.key).data]


def test_minio_sends_a_one_word_token_as_bearer_and_a_two_word_one_verbatim():
    """internal/event/target/webhook.go: strings.Fields(authToken) of length 2 is sent as is, of length 1 as
    "Bearer " + it, and anything else sends no header (so such a token is refused at start)."""
    one = minio.accepted_authorizations("s3cret")
    assert minio.check_authorization("Bearer s3cret", one) == 200
    assert minio.check_authorization("s3cret", one) == 200
    assert minio.check_authorization("Bearer s3cre", one) == 403 and minio.check_authorization(None, one) == 401
    two = minio.accepted_authorizations("Basic dXNlcjpwYXNz")
    assert minio.check_authorization("Basic dXNlcjpwYXNz", two) == 200
    assert minio.check_authorization("Bearer Basic dXNlcjpwYXNz", two) == 403
    assert minio.accepted_authorizations("Bearer s3cret") == ("Bearer s3cret",)
    with pytest.raises(minio.TokenError) as err:
        minio.accepted_authorizations("three word token")
    assert "three" not in str(err.value)


def test_malformed_and_foreign_notifications_are_acknowledged_and_logged_once(bucket_url, tmp_path):
    bucket = open_bucket(bucket_url)
    bucket.put("media/note.json", codec.dumps(MISSING_MEDIA), "application/json")  # a manifest, outside inbox/
    elsewhere = json.loads(minio_event(bucket, "inbox/x.json"))
    elsewhere["Records"][0]["s3"]["object"]["key"] = "another-team/inbox/x.json"  # outside this bucket's prefix
    other_bucket = json.loads(minio_event(bucket, "inbox/y.json"))
    other_bucket["Records"][0]["s3"]["bucket"]["name"] = "someone-elses"
    bad = [b"{not json", b"[]", json.dumps({"EventName": "s3:ObjectCreated:Put"}).encode(),
           minio_event(bucket, "media/note.json")]
    if bucket.name != "local":  # a folder has no prefix and no bucket name of its own
        bad += [json.dumps(elsewhere).encode(), json.dumps(other_bucket).encode()]
    with daemon(bucket_url, tmp_path) as d:
        for body in bad:
            assert d.post(body) == 200, body
        err = d.stop()
    ignored = [line for line in err.splitlines() if "acknowledged and ignored" in line]
    assert len(ignored) == len(bad), err
    assert any("malformed" in line for line in ignored) and any("media/note.json" in line for line in ignored)
    assert list_job_ids(bucket) == []


def test_a_manifest_dropped_while_it_was_down_becomes_a_job_on_start(bucket_url, tmp_path):
    bucket = open_bucket(bucket_url)
    bucket.put("inbox/while-down.json", codec.dumps(MISSING_MEDIA), "application/json")
    with daemon(bucket_url, tmp_path) as d:
        assert "(1 new)" in d.text()
        job_id = jobs_by_inbox_key(bucket)["inbox/while-down.json"]
        assert read_view(bucket, job_id).state is not None
        d.stop()


def test_the_reconcile_takes_in_a_manifest_whose_event_was_lost(tmp_path):
    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    with daemon(url, tmp_path, "--reconcile", "1") as d:
        bucket.put("inbox/lost-event.json", codec.dumps(MISSING_MEDIA), "application/json")  # never POSTed
        job_id = wait_for(lambda: jobs_by_inbox_key(bucket).get("inbox/lost-event.json"), timeout=15)
        assert read_view(bucket, job_id).state is not None
        d.stop()


def test_minios_reachability_probe_is_answered_200(tmp_path):
    url = open_bucket(str(tmp_path / "bucket")).url
    with daemon(url, tmp_path) as d:
        assert request(d.port, "HEAD") == 200  # older MinIO probes without the token
        assert request(d.port, "HEAD", authorization=f"Bearer {d.token}") == 200
        assert request(d.port, "GET") == 200
        err = d.stop()
    assert "Traceback" not in err


def test_without_a_token_it_refuses_to_start_unless_no_auth_on_loopback(tmp_path):
    url = open_bucket(str(tmp_path / "bucket")).url
    env = {k: v for k, v in os.environ.items() if k != minio.TOKEN_ENV}
    for extra, expected in ((), minio.TOKEN_ENV), (("--no-auth", "--host", "0.0.0.0"), "loopback only"):
        done = subprocess.run([BUCKETRUN, "--bucket", url, "listen", "minio", "--port", str(free_port()), *extra],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith("bucketrun: ") and expected in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    with contextlib.ExitStack() as stack:  # --no-auth on loopback: it runs, and takes a delivery without a header
        port = free_port()
        err = tmp_path / "no-auth.err"
        proc = subprocess.Popen([BUCKETRUN, "--bucket", url, "listen", "minio", "--port", str(port), "--no-auth",
                                 "--no-preload"], env=env, stdout=subprocess.DEVNULL, stderr=stack.enter_context(
                                     open(err, "wb")))
        stack.callback(lambda: proc.poll() is None and proc.kill())
        wait_for(lambda: "listening on" in err.read_text(), timeout=60)
        bucket = open_bucket(url)
        bucket.put("inbox/open.json", codec.dumps(MISSING_MEDIA), "application/json")
        assert request(port, "POST", minio_event(bucket, "inbox/open.json")) == 200
        assert "inbox/open.json" in jobs_by_inbox_key(bucket)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_r2_queue_without_its_module_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """The R2 consumer is a module of its own: an installation without it says so in one line, no traceback."""
    import bucketrun.handlers.listen as package
    from bucketrun.handlers.cli import listen as cli_listen, main

    monkeypatch.setitem(sys.modules, cli_listen.R2_QUEUE_MODULE, None)  # as if the module were not there
    monkeypatch.delattr(package, "r2_queue", raising=False)
    code = main(["--bucket", str(tmp_path / "b"), "listen", "r2-queue", "--account", "a", "--queue", "q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("bucketrun: listen r2-queue: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_dispatch_that_raised_is_a_5xx_so_minio_retries(tmp_path, monkeypatch):
    """Acknowledged only once dispatch returned: MinIO keeps (with queue_dir) and resends what got a 5xx."""
    bucket = open_bucket(str(tmp_path / "bucket"))
    bucket.put("inbox/flaky.json", codec.dumps(MISSING_MEDIA), "application/json")
    receiver = minio.Receiver(DispatchContext(bucket, Routes(), "test"), "s3cret", port=0, sweep_s=None)
    calls = []

    def broken(event, ctx):
        calls.append(event)
        raise OSError("the store is down")

    monkeypatch.setattr(minio, "dispatch", broken)
    monkeypatch.setattr(receiver.inbox, "reconcile_logged", lambda: 0)
    thread = threading.Thread(target=receiver.serve, daemon=True)
    thread.start()
    try:
        port = wait_for(lambda: receiver.server.server_address[1])
        assert request(port, "POST", minio_event(bucket, "inbox/flaky.json"), "Bearer s3cret") == 500
        assert len(calls) == 1
    finally:
        receiver.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_the_token_is_never_logged_even_at_debug(tmp_path, caplog, monkeypatch):
    """The secret canary for the MinIO token: every logger at DEBUG (the HTTP server's request lines included),
    accepted, refused and malformed deliveries alike."""
    from test_secrets import capture_everything

    capture_everything(caplog, monkeypatch)
    token = f"canary-{uuid.uuid4().hex}"
    bucket = open_bucket(str(tmp_path / "bucket"))
    bucket.put("inbox/canary.json", codec.dumps(MISSING_MEDIA), "application/json")
    receiver = minio.Receiver(DispatchContext(bucket, Routes(), "test"), token, port=0, sweep_s=None)
    thread = threading.Thread(target=receiver.serve, daemon=True)
    thread.start()
    try:
        port = receiver.server.server_address[1]
        assert request(port, "POST", minio_event(bucket, "inbox/canary.json"), f"Bearer {token}") == 200
        assert request(port, "POST", b"{oops", f"Bearer {token}") == 200
        assert request(port, "POST", b"{}", f"Bearer {token}x") == 403
        assert request(port, "HEAD", authorization=f"Bearer {token}") == 200
    finally:
        receiver.stop()
        thread.join(10)
    assert any(r.name == "bucketrun.listen.minio" and r.levelname == "DEBUG" for r in caplog.records)
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert token not in logged
    assert not [o for o in bucket.list("") if token.encode() in bucket.get(o.key).data]
