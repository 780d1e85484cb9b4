"""The `bucketrun` command line. Every error is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from events import codec, keys
from events.errors import BucketrunError, NotFound
from events.lifecycle import JobState, list_job_ids, read_view, require_view
from events.manifest import ManifestRejected
from events.status import job_status
from events.storage import Bucket, open_bucket, resolve_bucket_url

from . import client


class CliError(Exception):
    """A usage problem, reported as one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise CliError(f"{self.prog}: {message} (see --help)")


def _bucket(args: argparse.Namespace) -> Bucket:
    return open_bucket(resolve_bucket_url(args.bucket))


def _progress_printer():
    """A rich progress bar on stderr, fed by job_status dicts."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[eta]}"), console=Console(stderr=True), transient=False)
    task = progress.add_task("dropped", total=100, eta="")

    def update(status: dict[str, Any]) -> None:
        p = status.get("progress") or {}
        state = status.get("state", "?")
        stage = f" / {p['stage']}" if p.get("stage") and state == "running" else ""
        eta = f"ETA {p['eta_s']:.0f}s" if p.get("eta_s") and state == "running" else ""
        done = 100 if state == "succeeded" else (p.get("percent") or 0)
        progress.update(task, description=f"{status['job_id'][:30]} {state}{stage}", completed=done, eta=eta)

    return progress, update


def cmd_submit(args) -> int:
    bucket = _bucket(args)
    raw = sys.stdin.buffer.read() if args.manifest == "-" else _read_file(args.manifest)
    job_id, dropped = client.submit(bucket, raw)
    if not dropped:
        print(f"request_id already submitted as job {job_id}", file=sys.stderr)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    progress, update = _progress_printer()
    with progress:
        status = client.wait(bucket, job_id, update, timeout_s=args.timeout)
    return _finish(status)


def _finish(status: dict[str, Any]) -> int:
    if status["state"] == JobState.SUCCEEDED.value:
        for a in status["artifacts"]:
            print(a["key"])
        return 0
    err = status.get("error") or {}
    reason = f"{err.get('class', 'error')}: {err.get('message', '')}" if err else "timed out waiting"
    print(f"job {status['job_id']} {status['state']}: {reason}", file=sys.stderr)
    return 1


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc


def cmd_status(args) -> int:
    status = job_status(_bucket(args), args.job)
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
    view = require_view(_bucket(args), args.job)
    durations = client.state_durations(list(view.history))
    for t, d in zip(view.history, durations):
        spent = f"{d:8.3f}s" if d is not None else "       -"
        detail = json.dumps(t.detail, sort_keys=True) if t.detail else ""
        print(f"{t.seq:>3} {t.at}  {t.state.value:<10} {spent}  attempt {t.attempt}  {t.writer}  {detail}")
    return 0


def cmd_ls(args) -> int:
    bucket = _bucket(args)
    wanted = JobState(args.state) if args.state else None
    for job_id in list_job_ids(bucket):
        view = read_view(bucket, job_id)
        if view.state is None or (wanted and view.state is not wanted):
            continue
        print(f"{job_id}  {view.state.value:<10} attempt {view.attempt}  {view.latest.at}")
    return 0


def cmd_get(args) -> int:
    bucket = _bucket(args)
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
    from events.lifecycle import default_writer

    from .control import cancel

    bucket = _bucket(args)
    writer = default_writer("cli")
    t = cancel(bucket, args.job, writer)
    if bucket.url.startswith("s3://"):
        # The state is already final; this request lets the cloud dispatch function stop the GPU job too.
        from events import codec, keys

        bucket.put(keys.cancel_request_key(args.job), codec.dumps({"requested_by": writer, "at": t.at}),
                   "application/json")
    print(f"{args.job} {t.state.value} (attempt {t.attempt})")
    return 0


def cmd_retry(args) -> int:
    from events.lifecycle import default_writer

    from .control import retry

    t = retry(_bucket(args), args.job, default_writer("cli"))
    print(f"{args.job} {t.state.value} as attempt {t.attempt}")
    return 0


def cmd_sim(args) -> int:
    from local_sim.launcher import LocalProcessLauncher
    from local_sim.sim import Simulation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    bucket = _bucket(args)
    launcher = LocalProcessLauncher(preload=None if args.no_preload else "default")
    launcher.start()
    sim = Simulation(bucket, launcher, poll_s=args.poll, sweep_s=args.sweep)
    print(f"bucketrun sim: watching {bucket.url} (Ctrl-C to stop)", file=sys.stderr)
    try:
        sim.run()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        launcher.close()
    return 0


def cmd_demo(args) -> int:
    from local_sim.demo import run_demo

    return run_demo(resolve_bucket_url(args.bucket))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bucketrun", description="Run GPU jobs through an object-storage bucket.")
    parser.add_argument("--bucket", help="bucket URL: a folder, file://PATH or s3://BUCKET/PREFIX "
                                         "(default: $BUCKETRUN_BUCKET, else a local folder)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--bucket", default=argparse.SUPPRESS, help="bucket URL (overrides the global option)")
        p.set_defaults(fn=fn)
        return p

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
    p = add("sim", cmd_sim, "the local simulation: watch (folder) or poll (s3) the inbox and run jobs")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between listings of an s3:// inbox")
    p.add_argument("--sweep", type=float, default=5.0, help="seconds between sweeps for stalled jobs")
    p.add_argument("--no-preload", action="store_true", help="load the model on the first job, not at start")
    add("demo", cmd_demo, "transcribe the bundled speech clip end to end on a local bucket")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ManifestRejected as exc:
        fields = "; ".join(f"{f['loc']}: {f['msg']}" for f in exc.fields) if exc.fields else ""
        print(f"bucketrun: manifest rejected: {exc.message}" + (f" [{fields}]" if fields and fields not in exc.message else ""),
              file=sys.stderr)
        return 2
    except NotFound as exc:
        print(f"bucketrun: not found: {exc}", file=sys.stderr)
        return 1
    except BucketrunError as exc:
        print(f"bucketrun: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bucketrun: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
