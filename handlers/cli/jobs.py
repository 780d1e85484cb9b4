"""Commands on jobs: submit, status, logs, ls, cancel, retry, approve (`get` is get.py)."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

from bucketrun.events import codec, keys
from bucketrun.events.errors import UnknownJob
from bucketrun.events.lifecycle import JobState, default_writer, read_view
from bucketrun.events.conditional import create_once
from bucketrun.events.cost import cost_line, job_cost
from bucketrun.events.status import WAITING, host_teardown, job_status

from .. import client
from ..control import cancel, retry
from .bucket import put_file
from .common import NO_DISPATCHER, CliError, bucket_of, finish, progress_printer, read_file



def cmd_submit(args) -> int:
    bucket = bucket_of(args)
    if args.manifest is None and not args.media:
        raise CliError("bucketrun submit: give a manifest file (or - for stdin), or --media FILE (see --help)")
    raw = (b'{"kind": "transcribe"}' if args.manifest is None else
           sys.stdin.buffer.read() if args.manifest == "-" else read_file(args.manifest))
    if args.media:
        raw = with_media(bucket, raw, Path(args.media))
    job_id, dropped = client.submit(bucket, raw)
    if not dropped:
        print(_existing_job_note(bucket, job_id), file=sys.stderr)
    if not args.json:
        print(job_id, flush=True)
    if not args.wait:
        if args.json:
            print(json.dumps({"job_id": job_id, "dropped": dropped}))
        return 0
    progress, update = progress_printer(enabled=not args.json)

    def pending(inbox_key: str) -> None:
        progress.console.print(f"bucketrun: nothing has taken {inbox_key} in yet; {NO_DISPATCHER}")

    with progress:
        status = client.wait(bucket, job_id, update, timeout_s=args.timeout, on_pending=pending)
    if args.json:
        print(json.dumps({"job_id": job_id, "dropped": dropped, "status": status}, sort_keys=True))
    return finish(status, quiet=args.json)


def with_media(bucket, raw: bytes, media: Path) -> bytes:
    """A transcription of a local file: upload it first (content-addressed under media/), then name its key as
    the manifest's source."""
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise CliError(f"bucketrun submit: the manifest is not JSON ({exc}); --media needs a transcribe manifest") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != "transcribe" or "sources" in manifest:
        raise CliError("bucketrun submit: --media fills in the source of a one-source transcribe manifest "
                       f"(this one is kind {manifest.get('kind') if isinstance(manifest, dict) else None!r})")
    key, size, digest = put_file(bucket, media, addressed=True)
    print(f"uploaded {key}  {size} B  sha256 {digest}", file=sys.stderr)
    return codec.dumps({**manifest, "source": {"key": key}})


def _existing_job_note(bucket, job_id: str) -> str:
    """A request_id already submitted returns its existing job; say what state it is in, and how to rerun."""
    try:
        state = job_status(bucket, job_id)["state"]
    except UnknownJob:
        state = "not yet taken in"
    note = f"request_id already submitted: this returns the existing job {job_id} ({state})"
    if state == JobState.FAILED.value:
        note += f"; to run it again: bucketrun retry {job_id}"
    return note


def cmd_status(args) -> int:
    bucket = bucket_of(args)
    view = read_view(bucket, args.job)
    status = job_status(bucket, args.job, view)
    if view.history:
        status["cost"] = job_cost(bucket, view)
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    if status["state"] == WAITING:
        print(f"{status['job_id']}  waiting in the inbox ({status['inbox']}): no dispatcher has taken it in yet; "
              f"{NO_DISPATCHER}")
        return 0
    p = status["progress"] or {}
    line = f"{status['job_id']}  {status['state']}  attempt {status['attempt']}  updated {status['updated_at']}"
    if status["state"] in ("running", "succeeded") and p:
        line += f"  {p.get('stage')} {p.get('percent')}%"
    print(line)
    if status.get("window"):
        w, m = status["window"], status["window"]["mirror"]
        print(f"  report: bucketrun report {status['job_id']}  ({w['report']}, {w['report_json']})")
        print(f"  mirror: {m['prefix']}  {m['files']} files, {m['bytes']} B, verified at step {m['step']}")
        if w.get("teardown"):
            print("  " + teardown_line(w["teardown"]))
    if status["error"]:
        print(f"  error: {status['error'].get('class')}: {status['error'].get('message')}")
        for f in status["error"].get("fields", []):
            print(f"    {f['loc']}: {f['msg']}")
    for a in status["artifacts"]:
        print(f"  {a['key']}  {a['bytes']} B  sha256 {a['sha256'][:16]}")
    if status.get("cost"):
        print("  cost: " + cost_line(status["cost"]))
    return 0


def cmd_cancel(args) -> int:
    bucket = bucket_of(args)
    writer = default_writer("cli")
    before = read_view(bucket, args.job).state
    t = cancel(bucket, args.job, writer)
    if bucket.url.startswith("s3://") and before in (JobState.LAUNCHED, JobState.RUNNING, JobState.QUEUED):
        # The state is already final; this request lets the cloud dispatch function stop the GPU job too.
        bucket.put(keys.cancel_request_key(args.job), codec.dumps({"requested_by": writer, "at": t.at}),
                   "application/json")
    where = " (it was waiting in the inbox; it will never launch)" if before is None else f" (attempt {t.attempt})"
    if args.json:
        print(json.dumps({"job_id": args.job, "state": t.state.value, "attempt": t.attempt,
                          "was": before.value if before else "waiting"}))
    else:
        print(f"{args.job} {t.state.value}{where}")
    return 0


def teardown_line(t: dict) -> str:
    """One line on a window's rented host: what is pending (and what approving it costs and destroys) or done."""
    inst, eff = t.get("instance") or {}, t.get("effects") or {}
    what = f"{t.get('action')} of {inst.get('backend')}:{inst.get('id')}"
    price = f"${t['price_per_hour']:.2f}/h" if t.get("price_per_hour") is not None else "price unknown"
    said = (f"stops billing for {eff.get('stops_billing')}; still billed: {eff.get('still_billed')}; destroys: "
            f"{eff.get('destroys')}") if eff else ""
    if t.get("state") == "pending_approval":
        return f"teardown pending approval: {what} ({price}; {said}): run `{t.get('approve_with')}`"
    return f"teardown {t.get('state')}: {what}" + (f" ({said})" if said and t.get("state") == "done" else "")


def cmd_approve(args) -> int:
    """The user's yes to a window's pending teardown: the sweep carries it out on its next pass."""
    bucket = bucket_of(args)
    pending = host_teardown(bucket, args.job)
    if pending is None or pending.get("state") != "pending_approval":
        raise CliError(f"bucketrun: job {args.job} has no teardown waiting for approval"
                       + (f" (its teardown is {pending.get('state')})" if pending else ""))
    create_once(bucket, keys.host_teardown_approval_key(args.job), codec.dumps(
        {"job_id": args.job, "action": pending["action"], "instance": pending["instance"],
         "approved_by": getpass.getuser(), "at": codec.iso(codec.now())}))
    print(f"approved: {teardown_line(pending).split(': ', 1)[1].rsplit(': run', 1)[0]}; the sweep does it next")
    return 0


def cmd_retry(args) -> int:
    t = retry(bucket_of(args), args.job, default_writer("cli"))
    if args.json:
        print(json.dumps({"job_id": args.job, "state": t.state.value, "attempt": t.attempt}))
    else:
        print(f"{args.job} {t.state.value} as attempt {t.attempt}")
    return 0


def register(add) -> None:
    p = add("submit", cmd_submit, "drop a manifest into the inbox; prints the job id")
    p.add_argument("manifest", nargs="?", default=None,
                   help="manifest JSON file, or - for stdin (optional with --media: a default transcription)")
    p.add_argument("--media", metavar="FILE", help="upload this local media file first and transcribe it: it "
                                                   "becomes the manifest's source")
    p.add_argument("--wait", action="store_true", help="show progress and wait for the job to end: exit 0 if it "
                                                       "succeeded, 1 if it ended otherwise")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds, with "
                                                              "exit code 3 (the job goes on); with no dispatcher "
                                                              "running, a warning comes at 15 s")
    p.add_argument("--json", action="store_true", help="one JSON object: the job id (and with --wait its status)")
    p = add("status", cmd_status, "a job's state, progress, artifacts and error")
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p = add("cancel", cmd_cancel, "cancel a job in any non-terminal state")
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p = add("retry", cmd_retry, "retry a failed job as a new attempt")
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p = add("approve", cmd_approve, "approve a training window's pending teardown of its rented host")
    p.add_argument("job")
