"""`bucketrun top` in a real terminal (tmux, 80x24): the list of jobs newest first, the chosen row moving with the
arrow keys and kept in view, a fleet's workers and a job's transitions on Enter, back on Escape or Backspace, and
the terminal as it was after q or Ctrl-C. Without a terminal, one snapshot of the list. Jobs are made with the real
lifecycle functions on a folder bucket; the fleet as tests/test_fleet_status.py makes one (its workers' beats)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState as S, append_transition
from bucketrun.events.progress import Progress, write_progress
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.cli.top import Board
from bucketrun.handlers.client import submit
from bucketrun.handlers.control import cancel
from bucketrun.local_sim import fleet_harness as harness

from test_fleet_status import PROCS, fleet_manifest

BUCKETRUN = Path(sys.executable).with_name("bucketrun")
FILLERS = 24  # older succeeded jobs: more than 80x24 can show, so the list must scroll
RUN = [S.SUBMITTED, S.QUEUED, S.LAUNCHED, S.RUNNING]


def make_job(bucket, kind: str, states: list[S], last: dict | None = None) -> str:
    job_id = keys.new_job_id()
    for state in states:
        detail = {"kind": kind, "inbox": {"key": keys.inbox_key(f"{job_id}.json")}} if state is S.SUBMITTED else {}
        append_transition(bucket, job_id, state, writer="test", detail=last if state is states[-1] and last else detail)
    return job_id


def make_jobs(url: str) -> dict[str, str]:
    """Oldest first: fillers, a succeeded and a failed transcription, a running window, a fleet, a waiting job."""
    bucket = open_bucket(url)
    jobs = {f"filler{i}": make_job(bucket, "transcribe", RUN + [S.SUCCEEDED]) for i in range(FILLERS)}
    jobs["failed"] = make_job(bucket, "transcribe", RUN + [S.FAILED],
                              {"error": {"class": "worker_error", "message": "the media would not decode"}})
    jobs["running"] = make_job(bucket, "train_window", RUN)
    write_progress(bucket, jobs["running"], Progress(1, "training: step 3/10", 30.0, 5.0, 12.0,
                                                     codec.iso(codec.now())))
    bucket.put("items.jsonl", b'"a"\n"b"\n')
    jobs["fleet"] = harness.start_job(url, fleet_manifest(0.0, heartbeat_s=600))  # its beats stay alive
    for w in PROCS["a"]:
        bucket.put(keys.fleet_heartbeat_key(jobs["fleet"], w),
                   codec.dumps({"worker": w, "state": "working", "at": codec.iso(codec.now()), "items_done": 1,
                                "items_per_s": 2.0, "current_shard": None}))
    jobs["waiting"], _ = submit(bucket, codec.dumps({"kind": "transcribe",
                                                     "source": {"url": "https://example.com/a.mp3"}}))
    return jobs


@pytest.fixture
def folder(tmp_path):
    url = open_bucket(str(tmp_path / "bucket"), create=True).url
    return url, make_jobs(url)


class Terminal:
    """A tmux server of its own (its own socket) running one command in an 80x24 pane."""

    def __init__(self, tmp_path, command: str) -> None:
        self.base = ["tmux", "-L", f"bucketrun-top-{os.getpid()}-{tmp_path.name}"[:90], "-f", "/dev/null"]
        # the shell records the terminal's settings before and after, and the exit code, then stays to be read
        script = (f"trap : INT; before=$(stty -g); {command}; rc=$?; [ \"$(stty -g)\" = \"$before\" ] && echo RESTORED; "
                  "echo exit=$rc; sleep 600")
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", "sh", "-c", script)

    def tmux(self, *args: str) -> str:
        return subprocess.run(self.base + list(args), capture_output=True, text=True, check=True, timeout=60).stdout

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p").splitlines()

    def keys(self, *names: str) -> None:
        self.tmux("send-keys", *names)

    def wait(self, predicate, timeout: float = 90) -> list[str]:
        """Poll the pane until `predicate(lines)` holds; the last screen is in the failure."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = self.screen()
            if predicate(lines):
                return lines
            time.sleep(0.2)
        raise AssertionError("timed out; the screen was:\n" + "\n".join(lines))

    def close(self) -> None:
        subprocess.run(self.base + ["kill-server"], check=False, capture_output=True, timeout=60)


def top_command(url: str) -> str:
    return f"{shlex.quote(str(BUCKETRUN))} --bucket {shlex.quote(url)} top --refresh 0.5"


def chosen(lines: list[str]) -> str | None:
    """The chosen row's job id (None while no one row is marked: the detail, or a screen mid-draw)."""
    rows = [line for line in lines if line.startswith(">")]
    return rows[0].split()[-1] if len(rows) == 1 else None


def list_rows(lines: list[str]) -> dict[str, list[str]]:
    """The list's rows in screen order: job id -> its columns (kind, state, age, attempt, progress...)."""
    rows = {}
    for line in lines:
        parts = line[2:].split()
        if parts and keys.is_job_id(parts[-1]):
            rows[parts[-1]] = parts
    return rows


def fits(lines: list[str]) -> bool:
    return len(lines) <= 24 and all(len(line) <= 80 for line in lines)


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (./dev.sh test installs it)")


@needs_tmux
def test_top_lists_the_jobs_opens_a_fleet_and_a_job_and_quits_leaving_the_terminal_as_it_was(folder, tmp_path):
    url, jobs = folder
    term = Terminal(tmp_path, top_command(url))
    try:
        newest = [jobs["waiting"], jobs["fleet"], jobs["running"], jobs["failed"]]
        lines = term.wait(lambda s: all(any(j in line for line in s) for j in newest))
        assert fits(lines), lines
        rows = list_rows(lines)
        assert rows[jobs["waiting"]][:2] == ["transcribe", "waiting"]
        assert rows[jobs["fleet"]][:2] == ["fleet", "launched"]
        assert rows[jobs["running"]][:2] == ["train_window", "running"] and "30%" in rows[jobs["running"]]
        assert rows[jobs["failed"]][:2] == ["transcribe", "failed"]
        ids = list(rows)
        assert ids[:4] == newest and ids == sorted(ids, reverse=True)  # newest first
        assert len(ids) < len(jobs)  # not all fit in 24 lines
        assert chosen(lines) == jobs["waiting"]

        term.keys("Down")  # the chosen row moves
        lines = term.wait(lambda s: chosen(s) == jobs["fleet"])
        term.keys("Enter")  # a fleet's detail: totals and its workers
        lines = term.wait(lambda s: all(w in "\n".join(s) for w in PROCS["a"]))
        text = "\n".join(lines)
        assert jobs["fleet"] in text and "workers: 3 alive of 3" in text and "items" in text, text
        assert [line.split()[:2] for line in lines if line.strip().startswith("w000")] == \
            [[w, "alive"] for w in PROCS["a"]]
        assert fits(lines), lines

        term.keys("Escape")  # back to the list, the same job still chosen
        lines = term.wait(lambda s: any(line.startswith(">") for line in s))
        assert chosen(lines) == jobs["fleet"]
        term.keys("Down", "Down", "Enter")  # a transcription's detail: its error and transitions
        lines = term.wait(lambda s: "transitions" in "\n".join(s))
        text = "\n".join(lines)
        assert jobs["failed"] in text and "worker_error: the media would not decode" in text, text
        assert [line.split()[2] for line in lines if re.match(r"\s*\d+ \d{4}-\d\d-\d\dT", line)] == \
            ["submitted", "queued", "launched", "running", "failed"], text
        assert fits(lines), lines

        term.keys("BSpace")
        term.wait(lambda s: any(line.startswith(">") for line in s))
        term.keys(*["Down"] * (len(jobs) + 3))  # past the end: the oldest job, scrolled into view
        lines = term.wait(lambda s: chosen(s) == jobs["filler0"])
        assert fits(lines) and jobs["waiting"] not in "\n".join(lines), lines

        term.keys("q")
        lines = term.wait(lambda s: any(line.startswith("exit=") for line in s))
        text = "\n".join(lines)
        assert "exit=0" in text and "RESTORED" in text, text
        assert "KIND" not in text and "Traceback" not in text, text  # the list went with the alternate screen
    finally:
        term.close()


@needs_tmux
def test_ctrl_c_ends_top_and_leaves_the_terminal_as_it_was(folder, tmp_path):
    url, jobs = folder
    term = Terminal(tmp_path, top_command(url))
    try:
        term.wait(lambda s: jobs["waiting"] in "\n".join(s))
        term.keys("C-c")
        lines = term.wait(lambda s: any(line.startswith("exit=") for line in s))
        text = "\n".join(lines)
        assert "exit=130" in text and "RESTORED" in text and "bucketrun: interrupted" in text, text
        assert "Traceback" not in text, text
    finally:
        term.close()


def test_without_a_terminal_top_prints_one_snapshot_of_the_list(folder):
    url, jobs = folder
    out = subprocess.run([str(BUCKETRUN), "--bucket", url, "top"], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("bucketrun top  ") and lines[1].split() == ["KIND", "STATE", "AGE", "ATT",
                                                                         "PROGRESS", "ID"]
    by_id = list_rows(lines)
    assert list(by_id) == sorted(jobs.values(), reverse=True) and len(lines) == len(jobs) + 2  # all, newest first
    assert by_id[jobs["waiting"]][:2] == ["transcribe", "waiting"]
    assert by_id[jobs["fleet"]][:2] == ["fleet", "launched"]
    assert by_id[jobs["filler0"]][:2] == ["transcribe", "succeeded"] and "100%" in by_id[jobs["filler0"]]
    assert all(len(line) <= 80 for line in lines) and not any(line.startswith(">") for line in lines)


def test_top_errors_are_one_line(tmp_path):
    missing = subprocess.run([str(BUCKETRUN), "--bucket", str(tmp_path / "nowhere"), "top"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    bad = subprocess.run([str(BUCKETRUN), "--bucket", str(tmp_path), "top", "--refresh", "0"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    for done in (missing, bad):
        assert done.returncode != 0 and done.stdout == ""
        assert done.stderr.startswith("bucketrun:") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--refresh" in bad.stderr


def test_an_ended_jobs_data_is_read_once_and_a_running_jobs_news_is_read(bucket):
    """The board reads a job again only when the listing shows a new transition or progress: an ended job's
    objects are not read again (damaged ones go unnoticed), while a running job's progress and next transition
    show."""
    done = make_job(bucket, "transcribe", RUN + [S.SUCCEEDED])
    running = make_job(bucket, "transcribe", RUN)
    board = Board(bucket)
    board.refresh()
    assert {r["job_id"]: r["state"] for r in board.rows} == {done: "succeeded", running: "running"}
    bucket.put(keys.event_key(done, 5), b"not json")  # each would read as corrupt, if it were read again
    bucket.put(keys.progress_key(done), b"not json")
    write_progress(bucket, running, Progress(1, "transcribing", 40.0, 5.0, 12.0, codec.iso(codec.now())))
    board.refresh()
    assert board.error is None
    assert {r["job_id"]: (r["state"], r["progress"]) for r in board.rows} == \
        {done: ("succeeded", "100%"), running: ("running", "40% transcribing")}
    append_transition(bucket, running, S.SUCCEEDED, writer="test")
    board.refresh()
    assert board.error is None
    assert {r["job_id"]: r["state"] for r in board.rows} == {done: "succeeded", running: "succeeded"}


def test_an_open_fleets_workers_are_read_while_it_runs_and_once_after_it_ends(bucket):
    bucket.put("items.jsonl", b'"a"\n"b"\n')
    fleet = harness.start_job(bucket.url, fleet_manifest(0.0, heartbeat_s=600))
    beat = {"state": "working", "at": codec.iso(codec.now()), "items_done": 1, "items_per_s": 2.0,
            "current_shard": None}
    bucket.put(keys.fleet_heartbeat_key(fleet, "w0000"), codec.dumps(beat))
    board = Board(bucket)
    board.refresh(open_job=fleet)
    assert [w["worker"] for w in board.fleets[fleet]["workers"]] == ["w0000"]
    bucket.put(keys.fleet_heartbeat_key(fleet, "w0001"), codec.dumps(beat))  # running: read again
    cancel(bucket, fleet, "test")
    board.refresh(open_job=fleet)
    assert board.fleets[fleet]["state"] == "cancelled"
    assert [w["worker"] for w in board.fleets[fleet]["workers"]] == ["w0000", "w0001"]
    bucket.put(keys.fleet_heartbeat_key(fleet, "w0002"), codec.dumps(beat))  # ended: not read again
    board.refresh(open_job=fleet)
    assert board.error is None and [w["worker"] for w in board.fleets[fleet]["workers"]] == ["w0000", "w0001"]
