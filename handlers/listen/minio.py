"""`bucketrun listen minio`: a receiver for MinIO's webhook notification target, calling the same `dispatch` as
the cloud function and the simulation.

The wire format follows MinIO's own sender, internal/event/target/webhook.go in github.com/minio/minio (read at
commit 000d17947ca35d7634c8cd8f3471b88f73f23718), and its "Webhook Service Notification Settings" page:
- a delivery is a POST to the endpoint, `Content-Type: application/json`, body
  `{"EventName": ..., "Key": "BUCKET/KEY", "Records": [one S3 event record]}`; a status outside 2xx is a failed
  delivery, which MinIO retries (from its on-disk queue when `queue_dir` is set);
- `auth_token`: a token of one word T is sent as `Authorization: Bearer T`, one of two words (`Bearer T`,
  `Basic ...`) verbatim, and any other sends no header at all (MinIO's AIStor settings page says the value is
  sent exactly as specified, so a bare T is accepted too);
- before enabling the target (`isActive`) MinIO sends a HEAD to the endpoint (with that header in current
  releases, without it in older ones), and any answer counts as up. It is answered 200 without a token check.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bucketrun.events.storage import Bucket

from ..dispatch import DispatchContext, dispatch, route
from ..records import EventKind, classify, parse_records
from .reconcile import Inbox
from .sweeper import Sweeper

log = logging.getLogger("bucketrun.listen.minio")

TOKEN_ENV = "BUCKETRUN_MINIO_TOKEN"
DEFAULT_PORT = 8766
MAX_BODY = 1 << 20  # one MinIO event is a few KiB; anything far larger is not one


class TokenError(ValueError):
    """A token MinIO could not send as configured (the message never contains it)."""


def accepted_authorizations(token: str) -> tuple[str, ...]:
    """The Authorization values MinIO sends for `auth_token` set to this token, or to "Bearer " + it: one word is
    sent as "Bearer T" (the bare word is accepted too), two words verbatim. MinIO sends nothing for any other."""
    words = token.split()
    if len(words) == 1:
        return (f"Bearer {words[0]}", words[0])
    if len(words) == 2:
        return (" ".join(words),)
    raise TokenError(f"{TOKEN_ENV} must be one word (or two, like `Bearer TOKEN`): MinIO sends no Authorization "
                     f"header for a token of {len(words)} words")


def check_authorization(header: str | None, accepted: tuple[str, ...]) -> int:
    """200, 401 (no header) or 403 (a wrong one). Every accepted form is compared in constant time."""
    if not header:
        return 401
    given = header.strip().encode()
    ok = False
    for form in accepted:
        ok |= hmac.compare_digest(given, form.encode())
    return 200 if ok else 403


class Verdict(str, Enum):
    DISPATCH = "dispatch"
    IGNORE = "ignore"  # acknowledged (2xx) and logged once, so MinIO does not retry it forever


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    event: dict[str, Any] | None = None
    why: str = ""


def decide(body: bytes, bucket: Bucket) -> Decision:
    """What to do with one delivery's body: dispatch it, or acknowledge it as not ours / not a notification."""
    try:
        event = json.loads(body)
    except ValueError:
        return Decision(Verdict.IGNORE, why=f"malformed notification ({len(body)} bytes, not JSON)")
    if classify(event) is not EventKind.OBJECTS or "messages" in event:
        return Decision(Verdict.IGNORE, why="not a MinIO bucket notification (no Records)")
    records = parse_records(event)
    if not records:
        return Decision(Verdict.IGNORE, why="no object-created record in the notification")
    if not any(route(r, bucket) for r in records):
        named = ", ".join(sorted({f"{r.bucket}/{r.key}" for r in records}))[:300]
        return Decision(Verdict.IGNORE, why=f"not this bucket's inbox: {named}")
    return Decision(Verdict.DISPATCH, event=event)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Receiver:
    """The webhook server, the reconcile timer and the sweep of one `bucketrun listen minio`."""

    def __init__(self, ctx: DispatchContext, token: str | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 reconcile_s: float = 300.0, sweep_s: float | None = 5.0, sweep_max_s: float = 30.0):
        """`token` None: no auth (the caller allows that on loopback only)."""
        self.ctx = ctx
        self.accepted = accepted_authorizations(token) if token is not None else None
        self.reconcile_s = reconcile_s
        self.sweeper = Sweeper(ctx, sweep_s, sweep_max_s, log=log)
        self.inbox = Inbox(ctx, on_dispatched=self.sweeper.wake, log=log)
        self.stop_event = threading.Event()
        self.server = ThreadingHTTPServer((host, port), _handler_for(self))
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def deliver(self, body: bytes) -> tuple[int, str]:
        """One POSTed notification, already authenticated: the status to answer, and a line to log ("" if
        dispatch logged it). Acknowledged only once dispatch returned; a dispatch that raised is a 500, retried."""
        decision = decide(body, self.ctx.bucket)
        if decision.verdict is Verdict.IGNORE:
            return 200, f"acknowledged and ignored: {decision.why}"
        try:
            outcomes = dispatch(decision.event, self.ctx)  # it logs "key -> job" itself
        except Exception as exc:  # noqa: BLE001 - MinIO retries a 5xx; the daemon keeps serving
            return 500, f"dispatch failed, MinIO will retry: {type(exc).__name__}: {exc}"
        for record in parse_records(decision.event):
            key = route(record, self.ctx.bucket)
            if key and any(o.inbox_key == key for o in outcomes):
                self.inbox.note(key, record.etag)
        self.sweeper.wake()
        return 200, ""

    def serve(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Serve until `stop`. The inbox is reconciled once before `on_ready(new)` (MinIO's probe is answered
        meanwhile), then every `reconcile_s`: the poll fallback for notifications MinIO lost or sent while down."""
        server = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="bucketrun-webhook", daemon=True)
        server.start()
        try:
            new = self.inbox.reconcile_logged()
            if on_ready is not None:
                on_ready(new)
            self.sweeper.start()
            while not self.stop_event.wait(self.reconcile_s):
                self.inbox.reconcile_logged()
        finally:
            self.stop_event.set()
            self.sweeper.stop()
            self.server.shutdown()
            self.server.server_close()
            server.join(10)

    def stop(self) -> None:
        """Safe from a signal handler: it only sets an event `serve` waits on."""
        self.stop_event.set()


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "bucketrun-listen"
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes = b"", close: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # MinIO's reachability probe before it enables the target
            self._answer(200)

        def do_GET(self) -> None:  # a browser or a load balancer's health check
            self._answer(200, b"bucketrun listen minio\n")

        def do_POST(self) -> None:
            if receiver.accepted is not None:
                status = check_authorization(self.headers.get("Authorization"), receiver.accepted)
                if status != 200:
                    why = "no Authorization header" if status == 401 else "a wrong token in its Authorization header"
                    log.warning("refused a notification from %s: %s", self.client_address[0], why)
                    self._answer(status, b"unauthorized\n", close=True)
                    return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                log.warning("acknowledged and ignored: malformed notification (Content-Length %s)",
                            self.headers.get("Content-Length"))
                self._answer(200, b"ignored\n", close=True)
                return
            status, line = receiver.deliver(self.rfile.read(length))
            if line:
                (log.error if status >= 500 else log.warning)("%s", line)
            self._answer(status, b"ok\n" if status == 200 else b"retry\n")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("%s %s", self.client_address[0], format % args)  # the request line only, never a header

    return Handler
