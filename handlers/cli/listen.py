"""`bucketrun listen`: dispatcher daemons fed by a store's bucket notifications (MinIO's webhook, Cloudflare R2's
queue), with the simulation's reconcile as their poll fallback and its sweep."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from bucketrun.events.lifecycle import default_writer
from bucketrun.handlers.dispatch import DispatchContext
from bucketrun.handlers.launchers.local import LocalProcessLauncher
from bucketrun.handlers.listen import minio
from bucketrun.handlers.listen.local import local_routes

from .common import CliError, bucket_of, number

R2_QUEUE_MODULE = "bucketrun.handlers.listen.r2_queue"


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    # "Found credentials in ..." on every start; httpx (the cloudflare SDK's): "HTTP Request: ..." on every pull
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_with_local_launchers(args, role: str, body) -> int:
    """Build the dispatch context as `bucketrun sim` does (a local worker process, fleets on local processes,
    training windows to host agents), run `body(ctx)`, and close the launchers however it ends."""
    bucket = bucket_of(args, create=True)
    launcher = LocalProcessLauncher(preload=None if args.no_preload else "default")
    launcher.start()
    routes, fleets = local_routes(launcher)
    try:
        return body(DispatchContext(bucket, routes, default_writer(role)))
    finally:
        fleets.close()
        launcher.close()


def cmd_listen_minio(args) -> int:
    token = (os.environ.get(minio.TOKEN_ENV) or "").strip() or None
    if token is None and not args.no_auth:
        raise CliError(f"listen minio: {minio.TOKEN_ENV} is not set (MinIO's auth_token for this endpoint); "
                       "--no-auth runs without one, on loopback only")
    if token is not None and args.no_auth:
        raise CliError(f"listen minio: --no-auth and {minio.TOKEN_ENV} together; drop one")
    if args.no_auth and not minio.is_loopback(args.host):
        raise CliError(f"listen minio: --no-auth listens on loopback only, not on {args.host}")
    if token is not None:
        try:
            minio.accepted_authorizations(token)
        except minio.TokenError as exc:
            raise CliError(f"listen minio: {exc}") from None
    _keep_from_children(minio.TOKEN_ENV)
    _logging()

    def serve(ctx: DispatchContext) -> int:
        try:
            receiver = minio.Receiver(ctx, token, host=args.host, port=args.port, reconcile_s=args.reconcile)
        except OSError as exc:
            print(f"bucketrun: listen minio: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        signal.signal(signal.SIGTERM, lambda *_: receiver.stop())
        auth = " (no auth)" if token is None else ""

        def ready(new: int) -> None:
            print(f"bucketrun listen minio: listening on {receiver.url} for {ctx.bucket.url}{auth}; the inbox "
                  f"reconciled ({new} new), again every {args.reconcile:g} s (Ctrl-C to stop)", file=sys.stderr)

        try:
            receiver.serve(ready)
        except KeyboardInterrupt:
            pass
        return 0

    return _run_with_local_launchers(args, "listen", serve)


def cmd_listen_r2_queue(args) -> int:
    try:
        # late: the R2 queue consumer is its own module; `listen minio` must not need it
        from bucketrun.handlers.listen import r2_queue
    except ModuleNotFoundError as exc:
        if exc.name == R2_QUEUE_MODULE:
            raise CliError("listen r2-queue: not available in this installation "
                           f"({R2_QUEUE_MODULE} is missing)") from None
        raise CliError(f"listen r2-queue: needs the Python module {exc.name!r}, which is not installed") from None
    try:  # before anything starts: without the r2 extra, one line naming the pip line
        r2_queue.QueuesClient.load_sdk()
    except r2_queue.SdkMissing as exc:
        raise CliError(str(exc)) from None
    token = os.environ.get(r2_queue.TOKEN_ENV)
    _keep_from_children(r2_queue.TOKEN_ENV)
    _logging()
    return _run_with_local_launchers(args, "listen", lambda ctx: r2_queue.run(args, ctx, token=token))


def _keep_from_children(name: str) -> None:
    """Read once, the daemon's token leaves its environment: the local worker and every job it runs (processes
    started after this) never see it, so no job's log or crash report can carry it."""
    os.environ.pop(name, None)


_seconds = number(float, 1.0, 86400.0, "a number of seconds")
_poll_seconds = number(float, 0.001, 86400.0, "a number of seconds")  # zero would pull in a busy loop


def register(add) -> None:
    p = add("listen", _no_subcommand, "a dispatcher fed by the store's bucket notifications (MinIO, R2)")
    sub = p.add_subparsers(dest="listener", parser_class=type(p), metavar="STORE")

    def common(q) -> None:
        q.add_argument("--bucket", default=argparse.SUPPRESS, help="bucket URL (overrides the global option)")
        q.add_argument("--reconcile", type=_seconds, default=300.0, metavar="S",
                       help="list the inbox on start and every S seconds, for notifications lost (default 300)")
        q.add_argument("--no-preload", action="store_true", help="load the model on the first job, not at start")

    m = sub.add_parser("minio", help="a webhook receiver for MinIO bucket notifications")
    m.set_defaults(fn=cmd_listen_minio)
    common(m)
    m.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    m.add_argument("--port", type=number(int, 1, 65535, "a port number"), default=minio.DEFAULT_PORT,
                   help=f"port to listen on (default {minio.DEFAULT_PORT})")
    m.add_argument("--no-auth", action="store_true",
                   help=f"accept notifications without {minio.TOKEN_ENV} (loopback only)")

    r = sub.add_parser("r2-queue", help="a consumer of the Cloudflare Queue an R2 bucket notifies")
    r.set_defaults(fn=cmd_listen_r2_queue)
    common(r)
    r.add_argument("--account", required=True, metavar="A", help="Cloudflare account id")
    r.add_argument("--queue", required=True, metavar="Q",
                   help="the queue's id (32 hex digits), or its name, looked up once at start")
    r.add_argument("--batch-size", type=number(int, 1, 100, "a batch size"), default=10, metavar="N",
                   help="messages pulled at a time (default 10)")
    r.add_argument("--visibility-timeout", type=_seconds, default=60.0, metavar="S",
                   help="seconds a pulled message stays hidden from other consumers (default 60)")
    r.add_argument("--poll", type=_poll_seconds, default=1.0, metavar="S",
                   help="seconds between pulls while messages arrive (default 1)")
    r.add_argument("--poll-max", type=_poll_seconds, default=10.0, metavar="S",
                   help="while none arrive, the wait doubles up to this (default 10)")


def _no_subcommand(args) -> int:
    raise CliError("listen: name the store: `bucketrun listen minio` or `bucketrun listen r2-queue` (see --help)")

