"""The `bucketrun` command line. Every error is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import sys

from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.lifecycle import JobState
from bucketrun.events.manifest import ManifestRejected

from .common import CliError, Parser
from .jobs import cmd_cancel, cmd_get, cmd_logs, cmd_ls, cmd_retry, cmd_status, cmd_submit
from .local import cmd_demo, cmd_sim


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
