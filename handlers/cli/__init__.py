"""The `bucketrun` command line. Every error is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import sys

from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.manifest import ManifestRejected

from . import jobs, local
from .common import CliError, Parser

COMMAND_GROUPS = (jobs, local)


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

    for group in COMMAND_GROUPS:  # each module registers its own commands
        group.register(add)
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
