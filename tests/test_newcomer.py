"""A newcomer's first hour (issue 8, parts 1-4): told when no dispatcher runs, no silent folder buckets, one
line and never a traceback, and the commands to see one's own job."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bucketrun.events import keys
from bucketrun.events.lifecycle import JobState, append_transition, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.local_sim.sim import s3_record

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
MANIFEST = {"kind": "transcribe", "source": {"key": "media/none.ogg"}}


def cli(*args, env=None, timeout=120, **kw):
    return subprocess.run([BUCKETRUN, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def one_line_error(done):
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    return lines[0]


@pytest.fixture
def folder(tmp_path):
    url = str(tmp_path / "bucket")
    open_bucket(url)  # as `bucketrun init` would
    return url


def manifest_file(tmp_path, body=None) -> str:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(body or MANIFEST))
    return str(path)


def test_with_no_dispatcher_the_user_is_told_and_can_still_cancel(folder, tmp_path, launcher):
    done = cli("--bucket", folder, "submit", manifest_file(tmp_path), "--wait", "--timeout", "18")
    job_id = done.stdout.split()[0]
    assert done.returncode == 3 and "gave up waiting" in done.stderr  # the job goes on: 3, not 1
    assert f"nothing has taken inbox/{job_id}.json in yet" in done.stderr and "bucketrun sim" in done.stderr

    status = cli("--bucket", folder, "status", job_id)
    assert status.returncode == 0 and "waiting in the inbox" in status.stdout and "bucketrun sim" in status.stdout
    assert json.loads(cli("--bucket", folder, "status", job_id, "--json").stdout)["state"] == "waiting"
    assert "waiting in the inbox" in cli("--bucket", folder, "logs", job_id).stdout
    cancelled = cli("--bucket", folder, "cancel", job_id)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout and "never launch" in cancelled.stdout

    bucket = open_bucket(folder)  # a dispatcher starts later and sees the manifest: it must not launch it
    name = keys.inbox_key(f"{job_id}.json")
    dispatch({"Records": [s3_record(bucket, bucket.head(name))]}, DispatchContext(bucket, launcher, "t"))
    assert [t.state for t in read_view(bucket, job_id).history] == [JobState.CANCELLED]
    assert not list(bucket.list(keys.job_prefix(job_id) + "launch/"))


def test_a_mistyped_folder_bucket_is_an_error_not_a_new_bucket(tmp_path):
    typo = tmp_path / "typo"
    for args in (["ls"], ["submit", manifest_file(tmp_path)], ["status", "x"]):
        line = one_line_error(cli("--bucket", str(typo), *args))
        assert "no bucket at" in line and "bucketrun --bucket" in line and "init" in line
        assert not typo.exists()
    assert cli("--bucket", str(typo), "init").returncode == 0 and typo.is_dir()
    assert cli("--bucket", str(typo), "ls").returncode == 0


def test_a_missing_s3_bucket_is_named(s3_endpoint):
    line = one_line_error(cli("--bucket", "s3://no-such-bucket-here", "ls"))
    assert "no-such-bucket-here" in line and "does not exist" in line


def test_an_unreachable_endpoint_says_it_is_retrying_and_where(tmp_path):
    done = cli("--bucket", "s3://some-bucket", "ls", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                                                           "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
                                                           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    first, last = done.stderr.strip().splitlines()[0], done.stderr.strip().splitlines()[-1]
    assert "127.0.0.1:9" in first and "retrying" in first
    assert done.returncode == 1 and "cannot reach" in last and "Traceback" not in done.stderr


def _succeeded_job(bucket, job_id="20261124T000000000Z-aaaaaa"):
    data = b"1\n00:00:00,000 --> 00:00:01,000\nhi\n"
    key = keys.artifact_key(job_id, 1, "transcript.srt")
    bucket.put(key, data)

    for state in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING):
        append_transition(bucket, job_id, state, writer="t", detail={"inbox": {"key": "inbox/a.json"}}
                          if state is JobState.SUBMITTED else None)
    append_transition(bucket, job_id, JobState.SUCCEEDED, writer="t", detail={"artifacts": [
        {"key": key, "format": "srt", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]})
    bucket.put(keys.log_key(job_id, 1), b"worker line one\nworker line two\n")
    return job_id


HOSTILE_IDS = ["", "../../etc/passwd", "x" * 5000, "é/ü", "-", "20261124T000000000Z-zzzzzz"]


def test_every_command_answers_hostile_arguments_with_one_line(folder, tmp_path):
    job = _succeeded_job(open_bucket(folder))
    cases = [["submit", str(tmp_path / "missing.json")], ["submit", str(tmp_path)], ["submit", "/dev/null"],
             ["submit", manifest_file(tmp_path, {"kind": "transcribe", "source": {"url": "file:///etc/passwd"}})],
             ["submit", "-", "--timeout", "abc"], ["ls", "--state", "bogus"], ["logs", job, "--attempt", "x"],
             ["logs", job, "--worker", "--attempt", "7"], ["get", job, "--out", "/etc/passwd"],
             ["get", job, "--out", "/proc/foo"], ["retry", job], ["cancel", job], ["sim", "--poll", "abc"],
             ["nosuchcommand"], ["--bucket", "ftp://x", "ls"], ["--bucket", "/etc/passwd", "init"]]
    for cmd in ("status", "logs", "get", "cancel", "retry"):
        cases += [[cmd, bad] for bad in HOSTILE_IDS]
    for args in cases:
        full = args if args[0] == "--bucket" else ["--bucket", folder, *args]
        done = cli(*full, input="", timeout=60)
        one_line_error(done)


def test_a_corrupt_event_is_named_and_ls_goes_on(folder):
    bucket = open_bucket(folder)
    good = _succeeded_job(bucket)
    bad = "20261124T000000001Z-bbbbbb"
    append_transition(bucket, bad, JobState.SUBMITTED, writer="t")
    bucket.put(keys.event_key(bad, 2), b"{not json")
    ls = cli("--bucket", folder, "ls")
    assert ls.returncode == 0, ls.stderr
    rows = ls.stdout.splitlines()
    assert any(r.startswith(good) and "succeeded" in r for r in rows)
    assert any(r.startswith(bad) and "corrupt" in r and keys.event_key(bad, 2) in r for r in rows)
    assert keys.event_key(bad, 2) in one_line_error(cli("--bucket", folder, "status", bad))


def test_ls_into_a_closed_pipe_exits_quietly(folder):
    bucket = open_bucket(folder)
    for i in range(1500):
        append_transition(bucket, f"20261124T{i:09d}Z-cccccc", JobState.REJECTED, writer="t")
    proc = subprocess.Popen([BUCKETRUN, "--bucket", folder, "ls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b""


def test_seeing_ones_own_job(folder, tmp_path):
    bucket = open_bucket(folder)
    job = _succeeded_job(bucket)
    assert cli("--version").stdout.startswith("bucketrun ")
    assert cli("--bucket", folder, "logs", job, "--worker").stdout == "worker line one\nworker line two\n"
    follow = cli("--bucket", folder, "logs", job, "-f")
    assert follow.returncode == 0 and "succeeded" in follow.stdout and "[attempt 1] worker line two" in follow.stdout
    [row] = json.loads(cli("--bucket", folder, "ls", "--json").stdout)
    assert row["job_id"] == job and row["state"] == "succeeded" and row["source"] == "inbox/a.json"
    assert "inbox/a.json" in cli("--bucket", folder, "ls").stdout


def test_a_request_id_says_where_it_came_from_and_how_to_rerun_a_failure(folder, tmp_path, launcher):
    bucket = open_bucket(folder)
    path = manifest_file(tmp_path, {**MANIFEST, "request_id": "talk-42", "resources": {"max_attempts": 1}})
    job_id = cli("--bucket", folder, "submit", path).stdout.strip()
    name = keys.inbox_key(f"{job_id}.json")
    dispatch({"Records": [s3_record(bucket, bucket.head(name))]}, DispatchContext(bucket, launcher, "t"))
    [row] = json.loads(cli("--bucket", folder, "ls", "--json").stdout)
    assert row["source"] == "request:talk-42"
    launcher.close()  # the attempt's worker fails on its own (no media); wait for that instead of racing it
    deadline = time.monotonic() + 60
    while not read_view(bucket, job_id).state.terminal and time.monotonic() < deadline:
        time.sleep(0.2)
    assert read_view(bucket, job_id).state is JobState.FAILED
    again = cli("--bucket", folder, "submit", path)
    assert again.stdout.strip() == job_id
    assert "returns the existing job" in again.stderr and f"bucketrun retry {job_id}" in again.stderr


def test_shell_completion_offers_the_commands():
    out = Path(tempfile.mktemp())
    done = cli(env={"_ARGCOMPLETE": "1", "COMP_LINE": "bucketrun st", "COMP_POINT": "12",
                    "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"})
    assert done.returncode == 0 and out.read_text().split() == ["status"]
