"""`bucketrun gc`: only inbox objects whose jobs ended before the cutoff go; live and untaken ones stay, and a
removed one never becomes a job again."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, append_transition, list_job_ids, read_view
from bucketrun.handlers import client, gc
from bucketrun.handlers.cli import maintenance
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.handlers.intake import claim_job_id, decide_intake
from bucketrun.local_sim.sim import Simulation, s3_record

from conftest import jobs_by_inbox_key, wait_for

MISSING_MEDIA = {"kind": "transcribe", "source": {"key": "media/not-there.ogg"}}  # taken in, then fails fast
T0 = datetime(2026, 1, 10, tzinfo=timezone.utc)
CUTOFF = T0 - timedelta(days=7)


# -- the decision ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, verdict", [
    (gc.InboxEntry("inbox/a.json", CUTOFF - timedelta(days=1), "j", JobState.SUCCEEDED, CUTOFF - timedelta(hours=1)),
     gc.Verdict.REMOVE),
    (gc.InboxEntry("inbox/a.json", CUTOFF - timedelta(days=1), "j", JobState.FAILED, CUTOFF - timedelta(hours=1)),
     gc.Verdict.REMOVE),
    (gc.InboxEntry("inbox/a.json", CUTOFF - timedelta(days=1), "j", JobState.SUCCEEDED, CUTOFF + timedelta(hours=1)),
     gc.Verdict.ENDED_RECENTLY),
    (gc.InboxEntry("inbox/a.json", CUTOFF - timedelta(days=1), "j", JobState.RUNNING, CUTOFF - timedelta(days=1)),
     gc.Verdict.LIVE),  # silent for a long time, but not ended: the sweep's business, not gc's
    (gc.InboxEntry("inbox/a.json", CUTOFF - timedelta(days=30), None), gc.Verdict.NOT_TAKEN_IN),
    (gc.InboxEntry("inbox/a.json", CUTOFF - timedelta(days=30), "j", None), gc.Verdict.NOT_TAKEN_IN),  # claimed only
    (gc.InboxEntry("inbox/a.json", CUTOFF + timedelta(seconds=1)), gc.Verdict.RECENT),
    (gc.InboxEntry("inbox/a.json", CUTOFF - timedelta(days=1), problem="CorruptObject: x"), gc.Verdict.UNREADABLE),
    (gc.InboxEntry("inbox/a.json", None, "j", JobState.CANCELLED, CUTOFF - timedelta(days=2)), gc.Verdict.REMOVE),
])
def test_decide(entry, verdict):
    assert gc.decide(entry, CUTOFF) is verdict


@pytest.mark.parametrize("text, age", [("7d", timedelta(days=7)), ("36h", timedelta(hours=36)),
                                       ("2", timedelta(days=2)), ("0", timedelta(0)), ("1.5d", timedelta(hours=36))])
def test_age(text, age):
    assert maintenance.age(text) == age


# -- on both backends, through the command ----------------------------------------------------------------

@pytest.fixture
def cli(capsys):
    """`bucketrun ...` in process; returns (exit code, stdout, stderr)."""
    from bucketrun.handlers.cli import main

    def run(*argv: str):
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    return run



def test_gc_removes_only_the_inbox_objects_of_ended_jobs(bucket, launcher, cli):
    ctx = DispatchContext(bucket, launcher, "test")

    def drop(key: str, body: bytes, take_in: bool = True) -> None:
        bucket.put(key, body, "application/json")
        if take_in:
            dispatch({"Records": [s3_record(bucket, bucket.head(key))]}, ctx)

    ended = {  # each taken in; ends rejected at once, or failed once the worker finds no media
        "inbox/not-json.json": b"{nope",
        "inbox/failed.json": codec.dumps(MISSING_MEDIA),
        "inbox/with-request-id.json": codec.dumps({**MISSING_MEDIA, "request_id": "gc-r1"}),  # named by its request
        "inbox/rejected-with-request-id.json": codec.dumps({**MISSING_MEDIA, "request_id": "gc-r2", "bogus": 1}),
    }
    for key, body in ended.items():
        drop(key, body)
    # Live: intake's first writes (claim, submitted) done, its launch not yet: a dispatcher mid-intake.
    live_raw = codec.dumps(MISSING_MEDIA)
    drop("inbox/live.json", live_raw, take_in=False)
    decision = decide_intake("inbox/live.json", bucket.head("inbox/live.json").etag, len(live_raw), live_raw)
    live_job, _ = claim_job_id(bucket, decision.token, decision.proposed_job_id, "inbox/live.json")
    append_transition(bucket, live_job, JobState.SUBMITTED, writer="test",
                      detail={"inbox": {"key": "inbox/live.json", "etag": decision.etag}})
    drop("inbox/never-seen.json", codec.dumps(MISSING_MEDIA), take_in=False)  # no dispatcher has seen it
    submitted, _ = client.submit(bucket, codec.dumps({**MISSING_MEDIA, "request_id": "gc-r3"}))  # claimed, no history
    bucket.put("inbox/notes.txt", b"not a manifest")

    def all_ended() -> dict[str, str] | None:
        jobs = jobs_by_inbox_key(bucket)
        if set(ended) <= set(jobs) and all(read_view(bucket, jobs[k]).state in (JobState.FAILED, JobState.REJECTED)
                                           for k in ended):
            return jobs
        return None

    by_key = wait_for(all_ended)
    states = {k: read_view(bucket, by_key[k]).state for k in ended}
    assert states == {"inbox/not-json.json": JobState.REJECTED, "inbox/failed.json": JobState.FAILED,
                      "inbox/with-request-id.json": JobState.FAILED,
                      "inbox/rejected-with-request-id.json": JobState.REJECTED}
    everything = sorted(info.key for info in bucket.list(keys.INBOX))
    time.sleep(0.05)  # every job above ended strictly before the cutoff of `--older-than 0`

    # The default (7 days): all of it is recent, nothing goes.
    code, out, err = cli("--bucket", bucket.url, "gc")
    assert code == 0 and err == "", err
    assert len(out.splitlines()) == 1 and " removed 0 inbox object(s)" in out and "kept 7 (7 recent)" in out, out

    # Dry run: says what would go, removes nothing.
    code, out, err = cli("--bucket", bucket.url, "gc", "--older-than", "0", "--dry-run")
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert sorted(line.split()[2] for line in lines[:-1]) == sorted(ended), out
    assert all(line.startswith("would remove inbox/") for line in lines[:-1])
    assert "would remove 4 inbox object(s)" in lines[-1] and "kept 3 (1 live, 2 not taken in)" in lines[-1], out
    assert sorted(info.key for info in bucket.list(keys.INBOX)) == everything

    code, out, err = cli("--bucket", bucket.url, "gc", "--older-than", "0h")
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert len(lines) == 5 and "removed 4 inbox object(s)" in lines[-1], out
    for key in ended:
        job_id = by_key[key]
        line = next(line for line in lines if line.startswith(f"removed {key} "))
        assert f"job {job_id} {states[key].value}, ended {read_view(bucket, job_id).latest.at}" in line
    left = sorted(info.key for info in bucket.list(keys.INBOX))
    assert left == sorted(set(everything) - set(ended)), left
    assert read_view(bucket, live_job).state is JobState.SUBMITTED and not read_view(bucket, submitted).history

    # A dispatcher starting afresh takes in what is left, and never makes a job of what gc removed.
    before = set(list_job_ids(bucket))
    sim = Simulation(bucket, launcher, sweep_s=None)
    sim.reconcile()
    after = jobs_by_inbox_key(bucket)
    assert {k for k, j in after.items() if j not in before} == {"inbox/never-seen.json"}
    assert {k: after[k] for k in ended} == {k: by_key[k] for k in ended}
    assert read_view(bucket, submitted).history  # the request's own drop, taken in under its claimed id


def test_gc_errors_are_one_line(tmp_path, cli):
    code, out, err = cli("--bucket", str(tmp_path / "bucket"), "gc", "--older-than", "banana")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "not an age" in err
    code, out, err = cli("--bucket", str(tmp_path / "no-such-bucket"), "gc")
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1, err
