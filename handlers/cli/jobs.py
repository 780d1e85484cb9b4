"""Commands on jobs: submit, status, logs, ls, get, cancel, retry."""

from __future__ import annotations

import getpass
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import CorruptObject, NotFound, UnknownJob
from bucketrun.events.fleet.dataset import verify_dataset
from bucketrun.events.lifecycle import JobState, JobView, default_writer, list_job_ids, read_view
from bucketrun.events.conditional import create_once
from bucketrun.events.status import WAITING, host_teardown, job_status, waiting_in_inbox

from .. import client
from ..control import cancel, retry
from .common import CliError, bucket_of, finish, progress_printer, read_file

NO_DISPATCHER = ("is a dispatcher running? Start one with `bucketrun sim` (it watches this bucket), or deploy "
                 "template.yaml for an S3 bucket")


def cmd_submit(args) -> int:
    bucket = bucket_of(args)
    raw = sys.stdin.buffer.read() if args.manifest == "-" else read_file(args.manifest)
    job_id, dropped = client.submit(bucket, raw)
    if not dropped:
        print(_existing_job_note(bucket, job_id), file=sys.stderr)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    progress, update = progress_printer()

    def pending(inbox_key: str) -> None:
        progress.console.print(f"bucketrun: nothing has taken {inbox_key} in yet; {NO_DISPATCHER}")

    with progress:
        status = client.wait(bucket, job_id, update, timeout_s=args.timeout, on_pending=pending)
    return finish(status)


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
    status = job_status(bucket_of(args), args.job)
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
    return 0


def _print_transitions(history: list) -> None:
    durations = client.state_durations(history)
    for t, d in zip(history, durations):
        spent = f"{d:8.3f}s" if d is not None else "       -"
        detail = json.dumps(t.detail, sort_keys=True) if t.detail else ""
        print(f"{t.seq:>3} {t.at}  {t.state.value:<10} {spent}  attempt {t.attempt}  {t.writer}  {detail}", flush=True)


def _worker_log(bucket, job_id: str, attempt: int) -> bytes | None:
    try:
        return bucket.get(keys.log_key(job_id, attempt)).data
    except NotFound:
        return None


def cmd_logs(args) -> int:
    bucket = bucket_of(args)
    view = read_view(bucket, args.job)
    if not view.history:
        inbox = waiting_in_inbox(bucket, args.job)
        if inbox is None:
            raise UnknownJob(f"no job {args.job!r} in {bucket.url}")
        print(f"{args.job}: waiting in the inbox ({inbox}); no dispatcher has taken it in yet; {NO_DISPATCHER}")
        if not args.follow:
            return 0
    if args.worker:
        attempt = args.attempt or view.attempt
        data = _worker_log(bucket, args.job, attempt)
        if data is None:
            raise CliError(f"no worker log for attempt {attempt} of {args.job} yet "
                           "(a worker writes it as it runs, and when the attempt ends)")
        sys.stdout.write(data.decode(errors="replace"))
        return 0
    if not args.follow:
        _print_transitions(list(view.history))
        return 0
    return _follow(bucket, args.job, view)


def _follow(bucket, job_id: str, view: JobView, poll_s: float = 1.0) -> int:
    """Print transitions as they are written, and each attempt's worker log as it grows, until the job ends."""
    shown, log_shown = 0, {}
    while True:
        new = view.history[shown:]
        for t in new:
            print(f"{t.seq:>3} {t.at}  {t.state.value:<10} attempt {t.attempt}  {t.writer}", flush=True)
        shown = len(view.history)
        for attempt in sorted({t.attempt for t in view.history if t.state is JobState.RUNNING}):
            data = _worker_log(bucket, job_id, attempt) or b""
            if len(data) > log_shown.get(attempt, 0):
                for line in data[log_shown.get(attempt, 0):].decode(errors="replace").splitlines():
                    print(f"    [attempt {attempt}] {line}", flush=True)
                log_shown[attempt] = len(data)
        if view.state is not None and view.state.terminal:
            return 0
        time.sleep(poll_s)
        view = read_view(bucket, job_id, known=view)


def _source(view: JobView) -> str:
    first = view.history[0].detail if view.history else {}
    if first.get("request_id"):
        return f"request:{first['request_id']}"
    return (first.get("inbox") or {}).get("key") or "-"


def cmd_ls(args) -> int:
    bucket = bucket_of(args)
    wanted = JobState(args.state) if args.state else None
    rows: list[dict[str, Any]] = []
    for job_id in list_job_ids(bucket):
        try:
            view = read_view(bucket, job_id)
        except CorruptObject as exc:  # one bad object must not hide every other job
            row = {"job_id": job_id, "state": "corrupt", "error": str(exc)}
            if wanted is None:
                rows.append(row)
                if not args.json:
                    print(f"{job_id}  corrupt    {exc}", flush=True)
            continue
        if view.state is None or (wanted and view.state is not wanted):
            continue
        row = {"job_id": job_id, "state": view.state.value, "attempt": view.attempt, "updated_at": view.latest.at,
               "source": _source(view)}
        rows.append(row)
        if not args.json:
            print(f"{job_id}  {view.state.value:<10} attempt {view.attempt}  {view.latest.at}  {row['source']}",
                  flush=True)
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    return 0


def cmd_get(args) -> int:
    bucket = bucket_of(args)
    status = job_status(bucket, args.job)
    if status["state"] != JobState.SUCCEEDED.value:
        raise CliError(f"job {args.job} is {status['state']}, it has no verified artifacts")
    out = Path(args.out or args.job)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for a in status["artifacts"]:
            data = bucket.get(a["key"]).data
            digest = hashlib.sha256(data).hexdigest()
            if digest != a["sha256"] or len(data) != a["bytes"]:
                raise CliError(f"{a['key']} does not match its recorded sha256/bytes; not trusting it")
            target = out / Path(a["key"]).name
            target.write_bytes(data)
            print(target)
            if a.get("format") == "dataset":
                _get_dataset(bucket, codec.loads(data), out)
    except OSError as exc:
        raise CliError(f"cannot write into {out}: {exc.strerror or exc}") from exc
    return 0


def _get_dataset(bucket, dataset: dict, out: Path) -> None:
    """A fleet's dataset: every part is checked (bytes, sha256, each item exactly once) before any is kept."""
    if importlib.util.find_spec("pyarrow") is None:
        raise CliError("reading a fleet dataset needs pyarrow: pip install 'bucketrun[fleet]'")
    parts = out / "parts"
    parts.mkdir(exist_ok=True)
    try:
        stats = verify_dataset(bucket, dataset, sink=lambda s, data: (parts / Path(s["key"]).name).write_bytes(data))
    except CorruptObject as exc:
        for f in parts.iterdir():  # nothing of a dataset that does not verify is left to be trusted
            f.unlink()
        raise CliError(str(exc)) from exc
    print(f"{parts}/ ({stats['parts']} parts, {stats['rows']} rows, {stats['items']} items, "
          f"{stats['dead_letters']} dead-lettered: verified)")
    _get_item_files(bucket, sorted(parts.iterdir()), out / "items")


def _get_item_files(bucket, part_files: list[Path], out: Path) -> None:
    """A processor's per-item files (the transcribe processor's transcripts): each row's `<name>_key` column
    with a `<name>_sha256` beside it, fetched and checked, as items/<item index>.<name> (the item's first row)
    or items/<item index>-<item_row>.<name> (its further rows, when a processor returns several per item)."""
    import pyarrow.parquet as pq  # late: pyarrow (heavy, the fleet extra) only to read a fleet's dataset

    wanted = []
    for path in part_files:
        table = pq.read_table(path, use_threads=False, pre_buffer=False)  # no Arrow pool at exit (arrow#34314)
        names = [c[: -len("_key")] for c in table.column_names
                 if c.endswith("_key") and f"{c[: -len('_key')]}_sha256" in table.column_names]
        for row in table.select(["item_index", "item_row",
                                 *(f"{n}_{x}" for n in names for x in ("key", "sha256"))]).to_pylist():
            wanted += [(row["item_index"], row["item_row"], n, row[f"{n}_key"], row[f"{n}_sha256"])
                       for n in names if row[f"{n}_key"]]
    if not wanted:
        return
    out.mkdir(exist_ok=True)
    for index, ordinal, name, key, sha256 in wanted:
        try:
            data = bucket.get(key).data
        except NotFound as exc:
            raise CliError(f"{key} (item {index}) is missing from the bucket") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CliError(f"{key} (item {index}) does not match the sha256 its row records; not trusting it")
        (out / (f"{index:09d}.{name}" if not ordinal else f"{index:09d}-{ordinal}.{name}")).write_bytes(data)
    print(f"{out}/ ({len(wanted)} per-item files: verified)")


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
    p.add_argument("-f", "--follow", action="store_true", help="follow the job until it ends, with its worker log")
    p.add_argument("--worker", action="store_true", help="print the worker log of an attempt")
    p.add_argument("--attempt", type=int, default=None, help="with --worker: which attempt (default: the latest)")
    p = add("ls", cmd_ls, "list jobs, oldest first, with where each came from")
    p.add_argument("--state", choices=[s.value for s in JobState])
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    p = add("get", cmd_get, "download a succeeded job's verified artifacts")
    p.add_argument("job")
    p.add_argument("--out", help="folder to write into (default: ./JOB)")
    p = add("cancel", cmd_cancel, "cancel a job in any non-terminal state")
    p.add_argument("job")
    p = add("retry", cmd_retry, "retry a failed job as a new attempt")
    p.add_argument("job")
    p = add("approve", cmd_approve, "approve a training window's pending teardown of its rented host")
    p.add_argument("job")
