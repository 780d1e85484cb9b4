"""Shared fixtures: a real S3-protocol server on loopback, buckets of both backends, speech made with
espeak-ng from a known text, and a loopback HTTP server for yt-dlp."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from bucketrun.events.storage import open_bucket

ROOT = Path(__file__).resolve().parent.parent

# The tests' media servers listen on loopback, which bucketrun refuses to fetch from by default (SSRF). Tests of
# that refusal unset this themselves (tests/test_bad_input.py).
os.environ["BUCKETRUN_ALLOW_PRIVATE_URLS"] = "1"
SAMPLES = ROOT / "events" / "samples"

SPEECH_TEXT = (
    "Object storage is a durable place to keep a queue of work. A manifest dropped into a bucket becomes a job, "
    "and every change of state is written back as a small object. The worker downloads the media, transcribes "
    "the speech, and uploads the subtitles next to the history of the job."
)


def wait_for(predicate, timeout: float = 60.0, every: float = 0.1):
    """Poll until `predicate()` is truthy (and return it), or fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def jobs_by_inbox_key(bucket) -> dict[str, str]:
    """Each job's inbox key (from its `submitted` transition) -> its id: which drops became jobs."""
    from bucketrun.events.lifecycle import list_job_ids, read_view

    out = {}
    for job_id in list_job_ids(bucket):
        view = read_view(bucket, job_id)
        if view.history:
            out[view.history[0].detail.get("inbox", {}).get("key")] = job_id
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's threaded server speaking the S3 protocol on 127.0.0.1; credentials are dummies.

    moto checks If-None-Match/If-Match and then writes, unlocked, on its threaded server, so two racers can both
    win there; S3 itself makes the check and the write one step. Its PUT handler (which runs in this process) is
    serialised for the session, so race tests exercise our code, not a gap in the emulation."""
    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    lock, put_object = threading.Lock(), S3Response.put_object

    def atomic_put_object(self, *args, **kwargs):
        with lock:
            return put_object(self, *args, **kwargs)

    S3Response.put_object = atomic_put_object

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    S3Response.put_object = put_object
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def make_s3_bucket(name: str | None = None) -> str:
    import boto3

    name = name or f"br-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def launcher(s3_endpoint):
    """A warm local worker process (no model preloaded), started after the S3 server so it inherits its endpoint."""
    from bucketrun.handlers.launchers.local import LocalProcessLauncher

    launcher = LocalProcessLauncher(preload=None)
    yield launcher
    launcher.close()


@pytest.fixture(params=["local", "s3"])
def bucket_url(request, tmp_path):
    """One fresh bucket per test, on each backend."""
    if request.param == "local":
        return open_bucket(str(tmp_path / "bucket")).url  # created, as `bucketrun init` would
    request.getfixturevalue("s3_endpoint")
    return f"s3://{make_s3_bucket()}/team-a"


@pytest.fixture
def bucket(bucket_url):
    return open_bucket(bucket_url)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Speech synthesized from SPEECH_TEXT, a silent clip, a video with no audio, and a text file."""
    for tool in ("espeak-ng", "ffmpeg"):
        assert shutil.which(tool), f"{tool} is required; ./dev.sh test installs it"
    d = tmp_path_factory.mktemp("media")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(d / "speech.wav"), SPEECH_TEXT], check=True)
    ff = ["ffmpeg", "-loglevel", "error", "-y"]
    subprocess.run(ff + ["-i", str(d / "speech.wav"), "-ac", "1", "-c:a", "libopus", "-b:a", "32k",
                        str(d / "speech.ogg")], check=True)
    subprocess.run(ff + ["-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "8", str(d / "silence.wav")],
                   check=True)
    subprocess.run(ff + ["-f", "lavfi", "-i", "color=c=black:s=64x64:d=2", "-c:v", "mpeg4", str(d / "video-only.mp4")],
                   check=True)
    (d / "notes.mp3").write_text("this is not media\n" * 50)
    return d


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def http_media(media_dir):
    """A loopback HTTP server over media_dir, for yt-dlp's generic extractor."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(media_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
