# PYTHON_ARGCOMPLETE_OK
"""The `bucketrun` command line. Every error is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys

import argcomplete

from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.manifest import ManifestRejected

from . import agents, bucket, fleet, get, jobs, listen, local, logs, ls, maintenance, top, train, ui
from . import jobref
from .common import CliError, Parser, bucket_of

COMMAND_GROUPS = (jobs, ls, logs, get, fleet, train, agents, bucket, maintenance, local, listen, top, ui)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bucketrun", description="Run GPU jobs through an object-storage bucket.")
    parser.add_argument("--bucket", help="bucket URL: a folder, file://PATH or s3://BUCKET/PREFIX "
                                         "(default: $BUCKETRUN_BUCKET, else a local folder)")
    parser.add_argument("--version", action="version", version=f"bucketrun {_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--bucket", default=argparse.SUPPRESS, help="bucket URL (overrides the global option)")
        p.set_defaults(fn=fn)
        return p

    for group in COMMAND_GROUPS:  # each module registers its own commands
        group.register(add)
    complete_job = jobref.completer(bucket_of)
    for p in sub.choices.values():  # every JOB argument: a whole id, the start of one, or `last`; tab completes
        for action in p._actions:
            if action.dest == "job" and not action.option_strings:
                action.completer = complete_job
                action.help = action.help or "a job id, the start of one, or `last` (the newest)"
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("bucketrun")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        _complete(parser)
        args = parser.parse_args(argv)
        if args.command is None:  # bare `bucketrun`: what it can do
            parser.print_help()
            return 0
        if isinstance(getattr(args, "job", None), str):
            args.job = jobref.resolve(bucket_of(args), args.job)
        return args.fn(args)
    except CliError as exc:
        print(_one_line(str(exc)), file=sys.stderr)
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
        _quiet_stdout()  # `bucketrun ls | head -1`: the reader left; exit quietly
        return 0
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        print(f"bucketrun: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(please report it)", file=sys.stderr)
        return 1


def _one_line(message: str) -> str:
    """Every error starts `bucketrun:` (a command's own errors name it next: `bucketrun: submit: ...`)."""
    if message.startswith("bucketrun:"):
        return message
    return "bucketrun: " + message.removeprefix("bucketrun ")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion through argcomplete, when the shell asks (see README: `register-python-argcomplete`)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    argcomplete.autocomplete(parser)


if __name__ == "__main__":
    sys.exit(main())
