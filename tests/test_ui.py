"""`bucketrun ui`: a real uvicorn server started by the real command over jobs written through the lifecycle,
read with httpx: the pages, the artifact bytes, escaping, the token off loopback, and no write to the bucket."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, append_transition
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit

from conftest import free_port

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
XSS = "<script>alert(1)</script>"
FAILED = "20261201T100000000Z-faaaaa"
DONE = "20261201T110000000Z-sbbbbb"
FLEET = "20261201T120000000Z-fccccc"
SRT = b"1\n00:00:00,000 --> 00:00:01,500\nObject storage is a durable place.\n"


def _job(bucket, job_id: str, states, kind: str = "transcribe", request_id: str | None = None) -> str:
    """A job with this history, written through the lifecycle as the dispatcher and the workers write it."""
    view = None
    for state, attempt, detail in states:
        if state is JobState.SUBMITTED:
            detail = {"inbox": {"key": f"inbox/{job_id}.json"}, "kind": kind, **detail}
            if request_id:
                detail["request_id"] = request_id
        _, view = append_transition(bucket, job_id, state, writer="test", attempt=attempt, view=view, detail=detail)
    return job_id


def make_jobs(bucket) -> str:
    """A failed job (its request_id and manifest carry a script), a succeeded one with a real artifact, a running
    fleet at 40%, a host agent, and a job still waiting in the inbox (its id is returned)."""
    bucket.put(keys.manifest_key(FAILED), codec.dumps({"kind": "transcribe", "source": {"key": "media/a.ogg"},
                                                       "language": XSS}), "application/json")
    error = {"class": "bad_input", "message": "the media has no audio stream", "retryable": False}
    _job(bucket, FAILED, [(JobState.SUBMITTED, 1, {}), (JobState.QUEUED, 1, {}),
                          (JobState.LAUNCHED, 1, {"backend": "local", "backend_id": "local-1"}),
                          (JobState.RUNNING, 1, {}), (JobState.FAILED, 1, {"error": error})], request_id=XSS)
    key = keys.artifact_key(DONE, 1, "transcript.srt")
    bucket.put(key, SRT, "application/x-subrip")
    arts = [{"key": key, "bytes": len(SRT), "sha256": hashlib.sha256(SRT).hexdigest()}]
    _job(bucket, DONE, [(JobState.SUBMITTED, 1, {}), (JobState.QUEUED, 1, {}),
                        (JobState.LAUNCHED, 1, {"backend": "local", "backend_id": "local-2"}),
                        (JobState.RUNNING, 1, {}), (JobState.SUCCEEDED, 1, {"artifacts": arts})])
    _job(bucket, FLEET, [(JobState.SUBMITTED, 1, {}), (JobState.QUEUED, 1, {}),
                         (JobState.LAUNCHED, 1, {"backend": "local", "backend_id": "local-3"}),
                         (JobState.RUNNING, 1, {})], kind="fleet")
    bucket.put(keys.progress_key(FLEET), codec.dumps({"attempt": 1, "stage": "shards", "percent": 40.0,
                                                       "updated_at": codec.iso(codec.now())}), "application/json")
    bucket.put(keys.host_key("gpu-box-1"), codec.dumps(
        {"agent": "gpu-box-1", "labels": ["lab-a"], "state": "idle", "version": "0.1.0", "kinds": ["train_window"],
         "tasks": [{"job_id": FLEET, "attempt": 1, "role": "worker", "label": "lab-a"}]}), "application/json")
    waiting, _ = submit(bucket, codec.dumps({"kind": "transcribe", "source": {"key": "media/b.ogg"}}))
    return waiting


class Server:
    """`bucketrun ui` in a subprocess on a free port, up once it answers."""

    def __init__(self, url: str, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([BUCKETRUN, "--bucket", url, "ui", "--port", str(self.port), *extra],
                                     stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.base + "/hosts", timeout=2)
                return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"bucketrun ui did not start: {self.stop()}")  # stop() reads its stderr
                time.sleep(0.1)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.base + path, timeout=30, **kw)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read()


@pytest.fixture
def served(bucket_url):
    bucket = open_bucket(bucket_url)
    waiting = make_jobs(bucket)
    server = Server(bucket_url)
    try:
        yield server, bucket, waiting
    finally:
        server.stop()


def calls(html: str) -> int:
    """The footer's count of the server's own requests to the bucket."""
    return int(re.search(r"(\d+)(?:</span>)? requests to the bucket by this server", html)[1])


def _rows(html: str) -> dict[str, tuple[str, str]]:
    """The jobs table as {id: (kind, state)}."""
    return {m[0]: (m[1], m[2]) for m in re.findall(
        r'<a href="/jobs/([^"]+)">[^<]*</a></td>\s*<td class="kind">([^<]*)</td><td class="state">([^<]*)</td>', html)}


def test_the_jobs_page_lists_kinds_and_states_newest_first_and_filters(served):
    server, _, waiting = served
    page = server.get("/")
    assert page.status_code == 200
    rows = _rows(page.text)
    assert rows == {FAILED: ("transcribe", "failed"), DONE: ("transcribe", "succeeded"), FLEET: ("fleet", "running"),
                    waiting: ("transcribe", "waiting")}
    assert list(rows) == [waiting, FLEET, DONE, FAILED]  # newest first
    assert '<progress max="100" value="40">' in page.text and '<progress max="100" value="100">' in page.text
    assert "media/b.ogg" not in page.text and f"inbox/{waiting}.json" in page.text  # where the waiting one is
    assert set(_rows(server.get("/?state=waiting").text)) == {waiting}
    assert set(_rows(server.get("/?state=failed").text)) == {FAILED}
    assert set(_rows(server.get("/?kind=fleet").text)) == {FLEET}
    assert set(_rows(server.get("/?kind=transcribe&state=succeeded").text)) == {DONE}
    assert set(_rows(server.get("/?q=20261201T11").text)) == {DONE}
    assert set(_rows(server.get("/?q=20261201T1").text)) == {FAILED, DONE, FLEET}
    assert _rows(server.get("/?q=1999").text) == {}


def test_a_job_page_shows_its_timeline_error_and_artifacts_whose_bytes_match(served):
    server, _, waiting = served
    failed = server.get(f"/jobs/{FAILED}").text
    timeline = re.findall(r'<td class="state-(\w+)">\1</td>\s*<td>([^<]*)</td>', failed)
    assert [s for s, _ in timeline] == ["submitted", "queued", "launched", "running", "failed"]
    assert all(spent.endswith("s") for _, spent in timeline[:-1]) and timeline[-1][1] == "-"
    assert '<b class="error-class">bad_input</b>: the media has no audio stream' in failed
    done = server.get(f"/jobs/{DONE}").text
    (shown,) = re.findall(r'<code class="sha256">([0-9a-f]{64})</code>', done)
    (link,) = re.findall(r'<a href="(/jobs/[^"]+/artifacts/\d+)">download</a>', done)
    got = server.get(link)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == shown and got.content == SRT
    assert got.headers["content-disposition"] == 'attachment; filename="transcript.srt"'
    assert got.headers["content-length"] == str(len(SRT))
    assert server.get(f"/jobs/{DONE}/artifacts/1").status_code == 404
    queued = server.get(f"/jobs/{waiting}").text
    assert 'kind <b>transcribe</b> &middot; state <b class="state-waiting">waiting</b>' in queued
    hosts = server.get("/hosts").text
    assert "gpu-box-1" in hosts and "lab-a" in hosts and "train_window" in hosts and f"/jobs/{FLEET}" in hosts


def test_a_script_in_a_request_id_or_a_manifest_is_escaped(served):
    server, _, _ = served
    for page in (server.get("/").text, server.get(f"/jobs/{FAILED}").text):
        assert XSS not in page and "alert(1)<" not in page
    assert "request:&lt;script&gt;alert(1)&lt;/script&gt;" in server.get("/").text
    job = server.get(f"/jobs/{FAILED}").text
    assert "request:&lt;script&gt;alert(1)&lt;/script&gt;" in job  # the source, from the request_id
    assert "&#34;language&#34;: &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in job  # the manifest's field


def test_a_path_that_is_not_a_job_id_is_404(served):
    server, _, _ = served
    before = calls(server.get("/nope").text)
    for path in ("/jobs/..%2F..%2Fetc", "/jobs/%2E%2E", "/jobs/etc", "/jobs/..%2F..%2Fetc/artifacts/0"):
        assert server.get(path).status_code == 404, path
    assert calls(server.get("/nope").text) == before  # not even a read: a path that is not a job id names no key
    for path in ("/jobs/..%2F..%2Fetc", "/jobs/..%2Fmanifest.json", "/jobs/inbox", "/jobs/20261201T100000000Z-zzzzzz",
                 f"/jobs/{FAILED}/artifacts/0", "/jobs/..%2F..%2Fetc/artifacts/0"):
        assert server.get(path).status_code == 404, path
    assert server.get(f"/jobs/{FAILED}").status_code == 200


def test_the_server_never_writes_to_the_bucket(bucket_url):
    bucket = open_bucket(bucket_url)
    waiting = make_jobs(bucket)
    before = sorted((i.key, i.etag) for i in bucket.list(""))  # before the server starts: its probe is a page too
    server = Server(bucket_url)
    try:
        for path in ("/", "/?state=failed", "/?kind=fleet&q=2026", "/hosts", f"/jobs/{FAILED}", f"/jobs/{DONE}",
                     f"/jobs/{FLEET}", f"/jobs/{waiting}", f"/jobs/{DONE}/artifacts/0"):
            assert server.get(path).status_code == 200, path
        for path in ("/jobs/..%2Fx", "/nope", f"/jobs/{FAILED}/artifacts/0"):
            assert server.get(path).status_code == 404, path
        after = sorted((i.key, i.etag) for i in bucket.list(""))
        footer = calls(server.get("/hosts").text)
    finally:
        server.stop()
    assert after == before
    assert footer > 0


def test_an_ended_job_is_read_once(tmp_path):
    url = open_bucket(str(tmp_path / "bucket")).url
    make_jobs(open_bucket(url))
    server = Server(url, "--refresh", "0.1", "--budget", "100000")
    try:
        first = calls(server.get(f"/jobs/{DONE}").text)
        time.sleep(0.3)
        assert calls(server.get(f"/jobs/{DONE}").text) == first  # succeeded: its page comes from the cache
        live = calls(server.get(f"/jobs/{FLEET}").text)
        time.sleep(0.3)
        assert calls(server.get(f"/jobs/{FLEET}").text) > live  # running: read again after --refresh
    finally:
        server.stop()


def test_off_loopback_a_generated_token_is_printed_and_required(tmp_path):
    url = open_bucket(str(tmp_path / "bucket")).url
    make_jobs(open_bucket(url))
    server = Server(url, "--host", "0.0.0.0")
    try:
        assert server.get("/").status_code == 401
        assert server.get("/", params={"token": "wrong"}).status_code == 401
        assert server.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    finally:
        said = server.stop()
    (token,) = re.findall(r"token (\S+) ", said)
    server = Server(url, "--host", "0.0.0.0", "--token", token)
    try:
        with_query = server.get("/", params={"token": token})
        assert with_query.status_code == 200 and FAILED in with_query.text
        assert server.get(f"/jobs/{DONE}", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        cookie = with_query.cookies.get("bucketrun_ui_token")
        assert server.get("/hosts", cookies={"bucketrun_ui_token": cookie}).status_code == 200
        assert server.get("/hosts").status_code == 401
    finally:
        server.stop()


def test_a_generated_token_can_be_passed_back_as_an_option():
    """A printed token goes back on the command line as `--token T`: one starting with '-' would not parse (CI
    once drew `-Wzp0YH8f…` from token_urlsafe, 1 in 64 of them)."""
    from bucketrun.handlers.cli.ui import new_token

    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000 and all(len(t) >= 32 and t[0].isalnum() for t in tokens)


def test_without_the_ui_extra_one_line_and_exit_2():
    code = ("import sys; sys.modules['starlette'] = None\n"
            "from bucketrun.handlers.cli import main\n"
            "sys.exit(main(['ui']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == "bucketrun: the dashboard needs the ui extra: pip install 'bucketrun[ui]'\n"


def test_the_rest_of_the_cli_never_imports_the_dashboard():
    code = ("import sys, bucketrun.handlers.cli, bucketrun.handlers.dispatch\n"
            "bad = [m for m in ('starlette', 'uvicorn', 'jinja2', 'bucketrun.handlers.ui') if m in sys.modules]\n"
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
