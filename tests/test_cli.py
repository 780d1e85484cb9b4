"""The command line's contract for people and scripts: one-line errors, ids on stdout, JSON status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.storage import open_bucket

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))


def run(*args, env=None, input_=None):
    return subprocess.run([BUCKETRUN, *args], capture_output=True, text=True, timeout=60, env=env, input=input_)


def assert_one_line_error(done, fragment):
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert fragment in done.stderr, done.stderr


def test_submit_prints_the_job_id_alone_and_drops_into_the_inbox(bucket_url, tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"kind": "transcribe", "source": {"url": "https://example.com/a.mp3"}}))
    done = run("--bucket", bucket_url, "submit", str(path))
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert keys.is_job_id(job_id) and done.stdout == job_id + "\n"
    assert open_bucket(bucket_url).get(keys.inbox_key(job_id + ".json")).data == path.read_bytes()


def test_submit_with_a_request_id_twice_prints_the_same_job(bucket_url):
    body = json.dumps({"kind": "transcribe", "request_id": "r-1", "source": {"key": "media/a.ogg"}})
    first = run("--bucket", bucket_url, "submit", "-", input_=body)
    second = run("--bucket", bucket_url, "submit", "-", input_=body)
    assert first.stdout == second.stdout and "already submitted" in second.stderr
    assert len(list(open_bucket(bucket_url).list("inbox/"))) == 1


def test_bucket_comes_from_the_environment(tmp_path):
    (tmp_path / "envbucket").mkdir()  # an existing folder: only `init`, `sim` and the default create one
    env = {**os.environ, "BUCKETRUN_BUCKET": str(tmp_path / "envbucket")}
    done = run("submit", "-", env=env, input_=json.dumps({"kind": "transcribe", "source": {"key": "k"}}))
    assert done.returncode == 0
    assert (tmp_path / "envbucket" / "inbox" / f"{done.stdout.strip()}.json").is_file()


@pytest.mark.parametrize("args,fragment", [
    (["status", "20260101T000000000Z-aaaaaa"], "no job"),
    (["logs", "nope"], "no job"),
    (["submit", "/does/not/exist.json"], "cannot read /does/not/exist.json"),
    (["frobnicate"], "invalid choice"),
    (["ls", "--state", "sideways"], "invalid choice"),
    (["--bucket", "ftp://host/x", "ls"], "unsupported bucket URL"),
    (["--bucket", "s3://", "ls"], "no bucket name"),
])
def test_errors_are_one_line_and_non_zero(tmp_path, args, fragment):
    if "--bucket" not in args:
        (tmp_path / "b").mkdir()
        args = ["--bucket", str(tmp_path / "b"), *args]
    assert_one_line_error(run(*args), fragment)


def test_invalid_manifest_is_refused_in_one_line(tmp_path):
    (tmp_path / "b").mkdir()
    done = run("--bucket", str(tmp_path / "b"), "submit", "-",
               input_=json.dumps({"kind": "transcribe", "source": {"url": "u"}, "options": {"beam_size": 0}}))
    assert_one_line_error(done, "options.beam_size")


def test_status_json_logs_and_ls_for_a_rejected_job(tmp_path):
    from bucketrun.handlers.dispatch import DispatchContext, dispatch
    from bucketrun.local_sim.sim import s3_record

    url = str(tmp_path / "b")
    bucket = open_bucket(url)
    bucket.put("inbox/bad.json", b"{not json")
    outcome = dispatch({"Records": [s3_record(bucket, bucket.head("inbox/bad.json"))]},
                       DispatchContext(bucket, launchers=None, writer="t"))[0]  # rejected before any launch
    status = json.loads(run("--bucket", url, "status", outcome.job_id, "--json").stdout)
    assert status["state"] == "rejected" and status["error"]["class"] == "bad_input"
    assert status["artifacts"] == [] and status["attempt"] == 1 and status["updated_at"]
    human = run("--bucket", url, "status", outcome.job_id).stdout
    assert "rejected" in human and "not valid JSON" in human
    assert "rejected" in run("--bucket", url, "logs", outcome.job_id).stdout
    assert outcome.job_id in run("--bucket", url, "ls", "--state", "rejected").stdout
    assert run("--bucket", url, "ls", "--state", "succeeded").stdout == ""
    assert_one_line_error(run("--bucket", url, "get", outcome.job_id), "no verified artifacts")
    assert read_view(bucket, outcome.job_id).state is JobState.REJECTED


def test_get_refuses_an_artifact_that_does_not_match_its_hash(tmp_path):
    from bucketrun.events.lifecycle import append_transition

    url = str(tmp_path / "b")
    bucket = open_bucket(url)
    key = keys.artifact_key("j", 1, "transcript.txt")
    bucket.put(key, b"tampered")
    for s in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING):
        append_transition(bucket, "j", s, writer="t")
    append_transition(bucket, "j", JobState.SUCCEEDED, writer="t", detail={"artifacts": [
        {"key": key, "format": "txt", "bytes": 8, "sha256": "0" * 64}]})
    assert_one_line_error(run("--bucket", url, "get", "j", "--out", str(tmp_path / "o")), "does not match")
    assert codec.loads(bucket.get(keys.event_key("j", 5)).data)["state"] == "succeeded"
