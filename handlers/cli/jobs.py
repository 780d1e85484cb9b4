"""Commands on jobs: submit, status, logs, ls, get, cancel, retry."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, default_writer, list_job_ids, read_view, require_view
from bucketrun.events.status import job_status

from .. import client
from ..control import cancel, retry
from .common import CliError, bucket_of, finish, progress_printer, read_file


def cmd_submit(args) -> int:
    bucket = bucket_of(args)
    raw = sys.stdin.buffer.read() if args.manifest == "-" else read_file(args.manifest)
    job_id, dropped = client.submit(bucket, raw)
    if not dropped:
        print(f"request_id already submitted as job {job_id}", file=sys.stderr)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    progress, update = progress_printer()
    with progress:
        status = client.wait(bucket, job_id, update, timeout_s=args.timeout)
    return finish(status)


def cmd_status(args) -> int:
    status = job_status(bucket_of(args), args.job)
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    p = status["progress"] or {}
    line = f"{status['job_id']}  {status['state']}  attempt {status['attempt']}  updated {status['updated_at']}"
    if status["state"] == "running" and p:
        line += f"  {p.get('stage')} {p.get('percent')}%"
    print(line)
    if status["error"]:
        print(f"  error: {status['error'].get('class')}: {status['error'].get('message')}")
        for f in status["error"].get("fields", []):
            print(f"    {f['loc']}: {f['msg']}")
    for a in status["artifacts"]:
        print(f"  {a['key']}  {a['bytes']} B  sha256 {a['sha256'][:16]}")
    return 0


def cmd_logs(args) -> int:
    view = require_view(bucket_of(args), args.job)
    durations = client.state_durations(list(view.history))
    for t, d in zip(view.history, durations):
        spent = f"{d:8.3f}s" if d is not None else "       -"
        detail = json.dumps(t.detail, sort_keys=True) if t.detail else ""
        print(f"{t.seq:>3} {t.at}  {t.state.value:<10} {spent}  attempt {t.attempt}  {t.writer}  {detail}")
    return 0


def cmd_ls(args) -> int:
    bucket = bucket_of(args)
    wanted = JobState(args.state) if args.state else None
    for job_id in list_job_ids(bucket):
        view = read_view(bucket, job_id)
        if view.state is None or (wanted and view.state is not wanted):
            continue
        print(f"{job_id}  {view.state.value:<10} attempt {view.attempt}  {view.latest.at}")
    return 0


def cmd_get(args) -> int:
    bucket = bucket_of(args)
    status = job_status(bucket, args.job)
    if status["state"] != JobState.SUCCEEDED.value:
        raise CliError(f"job {args.job} is {status['state']}, it has no verified artifacts")
    out = Path(args.out or args.job)
    out.mkdir(parents=True, exist_ok=True)
    for a in status["artifacts"]:
        data = bucket.get(a["key"]).data
        digest = hashlib.sha256(data).hexdigest()
        if digest != a["sha256"] or len(data) != a["bytes"]:
            raise CliError(f"{a['key']} does not match its recorded sha256/bytes; not trusting it")
        target = out / Path(a["key"]).name
        target.write_bytes(data)
        print(target)
    return 0


def cmd_cancel(args) -> int:
    bucket = bucket_of(args)
    writer = default_writer("cli")
    t = cancel(bucket, args.job, writer)
    if bucket.url.startswith("s3://"):
        # The state is already final; this request lets the cloud dispatch function stop the GPU job too.
        bucket.put(keys.cancel_request_key(args.job), codec.dumps({"requested_by": writer, "at": t.at}),
                   "application/json")
    print(f"{args.job} {t.state.value} (attempt {t.attempt})")
    return 0


def cmd_retry(args) -> int:
    t = retry(bucket_of(args), args.job, default_writer("cli"))
    print(f"{args.job} {t.state.value} as attempt {t.attempt}")
    return 0




def register(add) -> None:
    p = add("submit", cmd_submit, "drop a manifest into the inbox; prints the job id")
    p.add_argument("manifest", help="manifest JSON file, or - for stdin")
    p.add_argument("--wait", action="store_true", help="show progress and wait for the job to end")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    p = add("status", cmd_status, "a job's state, progress, artifacts and error")
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p = add("logs", cmd_logs, "every transition with its time, duration and detail")
    p.add_argument("job")
    p = add("ls", cmd_ls, "list jobs, oldest first")
    p.add_argument("--state", choices=[s.value for s in JobState])
    p = add("get", cmd_get, "download a succeeded job's verified artifacts")
    p.add_argument("job")
    p.add_argument("--out", help="folder to write into (default: ./JOB)")
    p = add("cancel", cmd_cancel, "cancel a job in any non-terminal state")
    p.add_argument("job")
    p = add("retry", cmd_retry, "retry a failed job as a new attempt")
    p.add_argument("job")
