"""`bucketrun ui`: serve the read-only dashboard (handlers/ui). Loopback by default; any other address needs a
token, given or generated and printed once, so a bucket's jobs are not shown to the whole network."""

from __future__ import annotations

import secrets
import sys

from .common import CliError, bucket_of, number

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
NEEDS_EXTRA = "bucketrun: the dashboard needs the ui extra: pip install 'bucketrun[ui]'"


def cmd_ui(args) -> int:
    try:
        # late: starlette, uvicorn and jinja2 are the ui extra's; the Lambda and every other command stay without them
        from bucketrun.handlers.ui import app
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in {"starlette", "uvicorn", "jinja2", "markupsafe", "anyio", "h11"}:
            raise CliError(NEEDS_EXTRA) from None
        raise
    if args.snapshot or args.print_url:
        return _snapshot(args)
    token = args.token
    if token is None and args.host not in LOOPBACK:
        token = new_token()
        print(f"bucketrun ui: token {token} (open http://{args.host}:{args.port}/?token={token})", file=sys.stderr,
              flush=True)
    bucket = bucket_of(args)
    print(f"bucketrun ui: serving {bucket.url} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    app.serve(bucket, args.host, args.port, args.refresh, token, args.budget)
    return 0


def new_token() -> str:
    """192 random bits in hex: a URL-safe token could start with '-', and `--token -X` does not parse."""
    return secrets.token_hex(24)


def _snapshot(args) -> int:
    """`--snapshot`: write the dashboard into the bucket once and exit; `--print-url`: and say how to open it."""
    try:
        # late, like the server: the snapshot renders with jinja2 (the ui extra); the CLI's import stays without it
        from bucketrun.handlers.ui import snapshot
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in {"jinja2", "markupsafe"}:
            raise CliError(NEEDS_EXTRA) from None
        raise

    bucket = bucket_of(args)
    every = snapshot.EVERY_S if args.snapshot_every is None else args.snapshot_every
    result = snapshot.snapshot_once(bucket, every, print_url=args.print_url)
    where = bucket.url.rstrip("/") + "/" + snapshot.ROOT
    refresh = f"the sweep refreshes it every {every:g} s" if every else "the sweep does not refresh it"
    print(f"bucketrun ui: snapshot of {result.jobs} job(s) in {where}: {result.writes} object(s) written, "
          f"{result.reads} read(s); {refresh}", file=sys.stderr, flush=True)
    if args.print_url:
        if result.signed_until:
            print(f"bucketrun ui: presigned: this URL and every page and artifact it links to expire in "
                  f"{snapshot.PRESIGN_S // 86400} days, at {result.signed_until}", file=sys.stderr, flush=True)
        print(result.url, flush=True)
    return 0


def register(add) -> None:
    p = add("ui", cmd_ui, "a read-only dashboard in the browser: jobs, a job's timeline and artifacts, host agents")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=number(int, 1, 65535, "a port"), default=8765)
    p.add_argument("--token", default=None, help="the token requests must carry (?token= or Authorization: Bearer); "
                                                 "generated and printed when --host is not loopback")
    p.add_argument("--refresh", type=number(float, 0.1, 3600, "a number of seconds"), default=2.0, metavar="S",
                   help="read a live job at most every S seconds (an ended job is read once)")
    p.add_argument("--budget", type=number(float, 1, 1e6, "requests a minute"), default=60.0, metavar="N",
                   help="re-read at most about N requests a minute in all (default 60); with many live jobs each "
                        "is then read less often than --refresh")
    p.add_argument("--snapshot", action="store_true",
                   help="write the dashboard into the bucket (dashboard/index.html and a page per live or recent "
                        "job, each one self-contained HTML file) once and exit; the sweep then keeps it fresh")
    p.add_argument("--print-url", action="store_true",
                   help="with --snapshot: print a URL to open it by (S3/R2: presigned for 7 days, every link in "
                        "it too; a folder: its file:// path)")
    p.add_argument("--snapshot-every", type=number(float, 0, 86400, "a number of seconds"), default=None,
                   metavar="S", help="the sweep refreshes the snapshot at most every S seconds, only when "
                                     "something changed (default 60; 0: never)")
