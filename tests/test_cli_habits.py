"""A command line that meets people's habits: prefixes and `last` for job ids, tab completion of them, `ls` with
the waiting jobs, kinds and filters, `--json` on every verb, `logs` a person can read (repeated failures
collapsed), exit code 3 for a wait given up, a bare `bucketrun` that lists the commands, and errors that start
`bucketrun:` and say what was meant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, append_transition, read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
TRANSCRIBE = {"kind": "transcribe", "source": {"key": "media/a.ogg"}}


def cli(*args, env=None, timeout=120):
    return subprocess.run([BUCKETRUN, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def folder(tmp_path):
    url = str(tmp_path / "bucket")
    open_bucket(url)
    return url


def _job(bucket, job_id: str, states: list[tuple[JobState, int, dict]], kind: str = "transcribe") -> str:
    """A job with the given history, written through the lifecycle as a dispatcher and workers would."""
    view = None
    for state, attempt, detail in states:
        if state is JobState.SUBMITTED:
            detail = {"inbox": {"key": f"inbox/{job_id}.json"}, "kind": kind, **detail}
        _, view = append_transition(bucket, job_id, state, writer="test", attempt=attempt, view=view, detail=detail)
    return job_id


def _failed_seven_times(bucket, job_id: str) -> str:
    error = {"class": "transient", "message": "SlowDown: please reduce your request rate", "retryable": True}
    states = [(JobState.SUBMITTED, 1, {}), (JobState.QUEUED, 1, {})]
    for n in range(1, 9):
        states += [(JobState.LAUNCHED, n, {"backend": "local", "backend_id": f"local-1-{n}"}),
                   (JobState.RUNNING, n, {})]
        if n < 8:
            states.append((JobState.QUEUED, n, {"retry": {"attempt": n, "error": error}}))  # starts attempt n+1
    states.append((JobState.FAILED, 8, {"error": error}))
    return _job(bucket, job_id, states)


def test_bare_bucketrun_lists_the_commands():
    done = cli()
    assert done.returncode == 0 and "COMMAND" in done.stdout
    for verb in ("submit", "status", "logs", "ls", "get", "put", "agents", "sim"):
        assert f"\n    {verb} " in done.stdout, verb


def test_a_prefix_or_last_names_a_job_and_an_ambiguous_prefix_says_which(folder):
    bucket = open_bucket(folder)
    a = _job(bucket, "20261201T100000000Z-aaaaaa", [(JobState.SUBMITTED, 1, {})])
    b = _job(bucket, "20261201T110000000Z-bbbbbb", [(JobState.SUBMITTED, 1, {})])
    waiting, _ = submit(bucket, codec.dumps(TRANSCRIBE))  # newest, and only in the inbox
    status = lambda ref: cli("--bucket", folder, "status", ref, "--json")  # noqa: E731
    assert json.loads(status("20261201T10").stdout)["job_id"] == a
    assert json.loads(status("20261201T11").stdout)["job_id"] == b
    assert json.loads(status("last").stdout) == {**json.loads(status(waiting).stdout), "job_id": waiting}
    assert json.loads(status(waiting[:20]).stdout)["state"] == "waiting"
    both = status("20261201T1")
    assert both.returncode == 2 and both.stderr.count("\n") == 1
    assert both.stderr.startswith("bucketrun: '20261201T1' is the start of 2 job ids") and a in both.stderr
    none = status("2025")
    assert none.returncode == 1 and none.stderr.startswith("bucketrun:") and "no job id starts with" in none.stderr


def test_tab_completion_offers_job_ids(folder, tmp_path):
    bucket = open_bucket(folder)
    a = _job(bucket, "20261201T100000000Z-aaaaaa", [(JobState.SUBMITTED, 1, {})])
    _job(bucket, "20261202T100000000Z-bbbbbb", [(JobState.SUBMITTED, 1, {})])

    def offered(typed: str) -> list[str]:
        line, out = f"bucketrun --bucket {folder} status {typed}", tmp_path / "completions"
        done = cli(env={"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
                        "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"})
        assert done.returncode == 0, done.stderr
        return out.read_text().split()

    assert offered("20261201") == [a]
    assert offered("la") == ["last"]


def test_ls_shows_kinds_and_waiting_jobs_and_filters(folder):
    bucket = open_bucket(folder)
    old = _job(bucket, "20200101T000000000Z-aaaaaa", [(JobState.SUBMITTED, 1, {})], kind="train_window")
    new_id = keys.new_job_id()
    _job(bucket, new_id, [(JobState.SUBMITTED, 1, {}), (JobState.QUEUED, 1, {})])
    waiting, _ = submit(bucket, codec.dumps({"kind": "fleet", "items": {"inline": ["a"]},
                                             "processor": {"name": "noop"}}))
    bucket.put("inbox/by-hand.json", codec.dumps(TRANSCRIBE))  # any name: its job id is given at intake
    time.sleep(0.05)  # ids name the millisecond: the next one must sort after the file's own time
    requested, _ = submit(bucket, codec.dumps({**TRANSCRIBE, "request_id": "nightly-7"}))  # claims jobs/<id>/ first

    rows = json.loads(cli("--bucket", folder, "ls", "--json").stdout)
    assert [(r["job_id"], r["state"], r["kind"]) for r in rows] == [
        (old, "submitted", "train_window"), (new_id, "queued", "transcribe"), (waiting, "waiting", "fleet"),
        (None, "waiting", "transcribe"), (requested, "waiting", "transcribe")]
    text = cli("--bucket", folder, "ls").stdout.splitlines()
    assert text[0].split()[:3] == [old, "submitted", "train_window"] and "(not yet named)" in text[-2]
    kinds = lambda *a: [r["job_id"] for r in json.loads(cli("--bucket", folder, "ls", "--json", *a).stdout)]  # noqa: E731
    assert kinds("--kind", "train_window") == [old]
    assert kinds("--state", "waiting", "--kind", "fleet") == [waiting]
    assert kinds("--since", "2d") == [new_id, waiting, None, requested]
    assert kinds("--limit", "2") == [None, requested]


def test_every_verb_speaks_json(folder, tmp_path):
    bucket = open_bucket(folder)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(TRANSCRIBE))
    sub = json.loads(cli("--bucket", folder, "submit", str(path), "--json").stdout)
    assert keys.is_job_id(sub["job_id"]) and sub["dropped"] is True
    cancelled = json.loads(cli("--bucket", folder, "cancel", sub["job_id"], "--json").stdout)
    assert cancelled == {"job_id": sub["job_id"], "state": "cancelled", "attempt": 1, "was": "waiting"}
    failed = _failed_seven_times(bucket, "20261201T100000000Z-aaaaaa")
    raw = json.loads(cli("--bucket", folder, "logs", failed, "--json").stdout)
    assert [t["seq"] for t in raw] == list(range(1, len(read_view(bucket, failed).history) + 1))
    assert raw[-1]["detail"]["error"]["class"] == "transient"
    retried = json.loads(cli("--bucket", folder, "retry", failed, "--json").stdout)
    assert retried == {"job_id": failed, "state": "queued", "attempt": 9}


def test_logs_reads_as_lines_and_collapses_attempts_that_failed_the_same_way(folder):
    bucket = open_bucket(folder)
    job = _failed_seven_times(bucket, "20261201T100000000Z-aaaaaa")
    lines = cli("--bucket", folder, "logs", job).stdout.splitlines()
    assert lines[0].split()[2] == "submitted" and "attempt 1" in lines[0] and "from inbox/" in lines[0]
    assert lines[2].split()[2] == "launched" and "on local (local-1-1)" in lines[2]
    collapsed = [line for line in lines if "×" in line]
    assert len(collapsed) == 1, lines
    assert "attempts 3-7: queued → launched → running ×5: retry after transient: SlowDown" in collapsed[0]
    assert lines[-1].split()[2] == "failed" and "transient: SlowDown" in lines[-1]
    assert len(lines) == 4 + 3 + 1 + 4, lines  # attempts 1 and 2 whole, one line for 3-7, attempt 8 whole


def test_a_wait_given_up_exits_3_and_says_the_job_goes_on(folder, tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(TRANSCRIBE))
    done = cli("--bucket", folder, "submit", str(path), "--wait", "--timeout", "1")
    assert done.returncode == 3, done.stderr
    assert "gave up waiting" in done.stderr and "goes on" in done.stderr
    assert "exit code 3" in " ".join(cli("submit", "--help").stdout.split())


def test_errors_start_bucketrun_and_say_what_was_meant(folder, tmp_path):
    cases = {"unknown-field.json": {**TRANSCRIBE, "option": {}}, "unknown-kind.json": {**TRANSCRIBE, "kind": "transcrib"},
             "nested.json": {**TRANSCRIBE, "options": {"beam_siz": 2}}}
    said = {}
    for name, body in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(body))
        done = cli("--bucket", folder, "submit", str(path))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        said[name] = done.stderr
    assert "option: Extra inputs are not permitted (did you mean 'options'?)" in said["unknown-field.json"]
    assert "unknown kind 'transcrib' (did you mean 'transcribe'?)" in said["unknown-kind.json"]
    assert "options.beam_siz: Extra inputs are not permitted (did you mean 'beam_size'?)" in said["nested.json"]
    for args in (["status"], ["nosuch"], ["ls", "--limit", "0"], ["submit"], ["get", "zz"]):
        done = cli("--bucket", folder, *args)
        assert done.returncode != 0 and done.stderr.startswith("bucketrun: "), (args, done.stderr)
        assert done.stderr.count("\n") == 1, (args, done.stderr)
