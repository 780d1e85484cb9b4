"""`bucketrun listen r2-queue`: a pull consumer of the Cloudflare Queue an R2 bucket's event notifications go to.

Each round pulls a batch under a visibility timeout, dispatches every message that names an inbox manifest, then
sends one ack request: dispatched, malformed and not-ours messages are acknowledged (the last two logged, so they
are never redelivered forever), those whose dispatch failed are marked for retry with a backoff delay. A message
whose lease expired before its ack (the consumer died) is delivered again; dispatch is idempotent, so it makes no
second job. The inbox is also reconciled on start and every `--reconcile` seconds, for notifications never sent.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from bucketrun.events.backoff import Backoff
from bucketrun.events.storage import Bucket

from ..dispatch import DispatchContext, dispatch, route
from ..records import parse_r2_batch
from .cloudflare_queues import (BASE_URL_ENV, DEFAULT_BASE_URL, MAX_BATCH, MAX_VISIBILITY_S, PERMISSION, TOKEN_ENV,
                                Acks, CloudflareAuthError, CloudflareError, CloudflareUnavailable, QueuesClient,
                                SdkMissing, decode_body)
from .reconcile import Inbox
from .sweeper import Pacing, Sweeper

log = logging.getLogger("bucketrun.listen.r2")

#: Cloudflare's defaults for a pull: 5 messages, leased for 30 s.
DEFAULT_BATCH = 5
DEFAULT_VISIBILITY_S = 30.0
DEFAULT_RECONCILE_S = 300.0
#: A message whose dispatch failed comes back after 5 s, doubling with its attempts up to 5 min (the queue's
#: max_retries, 3 by default, ends it; the next reconcile still takes its manifest in).
RETRY_DELAY = Backoff(base_s=5.0, cap_s=300.0)
#: Cloudflare unreachable or answering 5xx/429: 1 s doubling to a minute, or what its Retry-After asks, to 5 min.
UNAVAILABLE = Backoff(base_s=1.0, cap_s=60.0, retry_after_max_s=300.0)


class Verdict(str, Enum):
    DISPATCH = "dispatch"
    MALFORMED = "malformed"  # no R2 notification in it: acknowledged and logged
    NOT_OURS = "not_ours"  # a delete, another bucket, or a key outside inbox/: acknowledged and logged


@dataclass(frozen=True)
class Triage:
    verdict: Verdict
    reason: str
    body: dict[str, Any] | None = None
    key: str | None = None  # the bucket-relative inbox key, for DISPATCH
    etag: str | None = None


def triage(message: dict[str, Any], bucket: Bucket) -> Triage:
    """What to do with one pulled message: a pure function of the message and the bucket's name and prefix.
    Uses the one R2 normaliser (handlers/records.py) the cloud dispatch function uses."""
    body = decode_body(message)
    if not isinstance(body, dict) or not isinstance(body.get("object"), dict) or "action" not in body:
        return Triage(Verdict.MALFORMED, "not an R2 event notification")
    key = body["object"].get("key")
    if not isinstance(key, str) or not key:
        return Triage(Verdict.MALFORMED, "no object key")
    records = parse_r2_batch({"messages": [{"body": body}]})
    if not records:
        return Triage(Verdict.NOT_OURS, f"action {str(body.get('action'))[:40]} on {key[:200]!r}: not an object creation")
    relative = route(records[0], bucket)
    if relative is None:
        where = records[0].bucket
        return Triage(Verdict.NOT_OURS, f"{where[:63]}/{key[:200]}: not an inbox manifest of {bucket.url}")
    return Triage(Verdict.DISPATCH, "", body, relative, records[0].etag)


def retry_delay(attempts: Any) -> int:
    """Seconds before a message whose dispatch failed is delivered again: the backoff's bound for its attempt (no
    jitter: Cloudflare spreads nothing by itself, but each message has its own attempt count)."""
    n = attempts if isinstance(attempts, (int, float)) and math.isfinite(attempts) else 1
    return int(math.ceil(RETRY_DELAY.bound(int(max(n, 1)))))


@dataclass
class Settings:
    batch_size: int = DEFAULT_BATCH
    visibility_timeout_s: float = DEFAULT_VISIBILITY_S
    reconcile_s: float = DEFAULT_RECONCILE_S
    poll_s: float = 1.0  # the wait after a batch that had messages
    poll_max_s: float = 10.0  # empty pulls double the wait up to this

    @classmethod
    def of(cls, args: Any) -> "Settings":
        """From the command's options; an option left out (None or absent) takes Cloudflare's default."""
        def opt(name: str, default: float) -> float:
            value = getattr(args, name, None)
            return default if value is None else value
        return cls(batch_size=int(min(max(opt("batch_size", DEFAULT_BATCH), 1), MAX_BATCH)),
                   visibility_timeout_s=float(min(max(opt("visibility_timeout", DEFAULT_VISIBILITY_S), 0.001),
                                                  MAX_VISIBILITY_S)),
                   reconcile_s=float(opt("reconcile", DEFAULT_RECONCILE_S)),
                   poll_s=float(opt("poll", 1.0)), poll_max_s=float(opt("poll_max", 10.0)))


class Consumer:
    """The loop. `stop` ends it after the batch in hand is dispatched and acknowledged."""

    def __init__(self, client: QueuesClient, queue_id: str, ctx: DispatchContext, settings: Settings,
                 stop: threading.Event, on_dispatched: Callable[[], None] | None = None,
                 on_started: Callable[[], None] | None = None):
        """`on_started` runs once, after the first pull Cloudflare answered: the token works."""
        self.client = client
        self.on_started = on_started
        self.queue_id = queue_id
        self.ctx = ctx
        self.settings = settings
        self.stop = stop
        self.on_dispatched = on_dispatched
        self.inbox = Inbox(ctx, on_dispatched=on_dispatched, log=log)
        self.pacing = Pacing(settings.poll_s, max(settings.poll_max_s, settings.poll_s))
        self.pulled = self.acked = self.retried = self.dispatched = 0
        self._failures = 0

    def run(self) -> None:
        """Until `stop`; raises CloudflareAuthError or CloudflareError, which end the daemon. The first pull
        comes before the first reconcile, so a refused token ends it before anything else is logged; the
        reconcile on start follows at once, whether or not Cloudflare answered."""
        last_reconcile: float | None = None
        wait: float | None = None
        while not self.stop.is_set():
            try:
                busy = self.round() > 0
                self._failures = 0
                wait = self.pacing.next(wait, busy)
                if self.on_started is not None:
                    self.on_started()
                    self.on_started = None
            except CloudflareUnavailable as exc:
                self._failures += 1
                wait = UNAVAILABLE.delay(self._failures, retry_after=exc.retry_after)
                log.warning("Cloudflare Queues unavailable (%s); trying again in %.1f s", exc, wait)
            now = time.monotonic()
            if last_reconcile is None or (self.settings.reconcile_s > 0
                                          and now - last_reconcile >= self.settings.reconcile_s):
                self.inbox.reconcile_logged()
                last_reconcile = now
            if wait and self.stop.wait(wait):
                return

    def round(self) -> int:
        """One pull, its dispatches and one ack request; returns how many messages it pulled."""
        vt_ms = max(int(self.settings.visibility_timeout_s * 1000), 1)
        messages = self.client.pull(self.queue_id, self.settings.batch_size, vt_ms)
        if not messages:
            return 0
        self.pulled += len(messages)
        acks: list[str] = []
        retries: list[tuple[str, int]] = []
        for message in messages:
            lease = message.get("lease_id")
            if not isinstance(lease, str) or not lease:
                log.warning("message %s has no lease_id: it cannot be acknowledged", str(message.get("id"))[:64])
                continue
            if self.handle(message):
                acks.append(lease)
            else:
                retries.append((lease, retry_delay(message.get("attempts"))))
        if acks or retries:
            self._ack(Acks(tuple(acks), tuple(retries)))
        return len(messages)

    def handle(self, message: dict[str, Any]) -> bool:
        """Dispatch one message if it names an inbox manifest. True: acknowledge it; False: retry it."""
        msg_id = str(message.get("id"))[:64]
        t = triage(message, self.ctx.bucket)
        if t.verdict is not Verdict.DISPATCH:
            log.warning("message %s acknowledged without a dispatch (%s): %s", msg_id, t.verdict.value, t.reason)
            return True
        try:
            dispatch({"messages": [{"body": t.body}]}, self.ctx)  # it logs "key -> job" itself
        except Exception as exc:  # noqa: BLE001 - one message must not cost the batch; it is retried
            log.error("dispatch of %s (message %s, attempt %s) failed, to be retried: %s: %s", t.key, msg_id,
                      message.get("attempts"), type(exc).__name__, exc)
            return False
        self.dispatched += 1
        self.inbox.note(t.key, t.etag)
        if self.on_dispatched is not None:
            self.on_dispatched()
        return True

    def _ack(self, acks: Acks) -> None:
        """Three tries; if all fail the leases expire and Cloudflare redelivers, which dispatch shrugs off."""
        for attempt in range(1, 4):
            try:
                self.client.ack(self.queue_id, acks)
                self.acked += len(acks.acks)
                self.retried += len(acks.retries)
                return
            except CloudflareUnavailable as exc:
                if attempt == 3 or self.stop.wait(UNAVAILABLE.delay(attempt, retry_after=exc.retry_after)):
                    log.error("ack of %d message(s) failed (%s): they will be delivered again after their "
                              "visibility timeout", len(acks.acks) + len(acks.retries), exc)
                    return


def _context(ctx: Any) -> tuple[DispatchContext, Callable[[], None] | None]:
    """The dispatch context, whether given as is or inside the command's bundle (with a sweeper to wake)."""
    if isinstance(ctx, DispatchContext):
        return ctx, None
    inner = getattr(ctx, "ctx", None) or getattr(ctx, "dispatch", None)
    sweeper = getattr(ctx, "sweeper", None)
    return inner, (sweeper.wake if sweeper is not None and hasattr(sweeper, "wake") else None)


def _fail(text: str, code: int) -> int:
    print(f"bucketrun: {' '.join(text.split())}", file=sys.stderr)
    return code


def run(args: Any, ctx: Any, stop: threading.Event | None = None, token: str | None = None) -> int:
    """The command: `args.account`, `args.queue` (an id, or a name looked up once), and optional `batch_size`,
    `visibility_timeout` (s), `reconcile` (s); runs the sweep beside the consumer, as `bucketrun sim` does.
    Runs until SIGTERM/SIGINT (or `stop`); 0 on a clean stop, 2 when the token is missing or refused or the r2 extra
    is not installed, 1 on any
    other error Cloudflare will not get over by itself. `token`: the API token, if the caller already took it
    out of the environment (the command does, so its worker never inherits it); by default, `CLOUDFLARE_API_TOKEN`."""
    dctx, on_dispatched = _context(ctx)
    token = (os.environ.get(TOKEN_ENV, "") if token is None else token).strip()
    if not token:
        return _fail(f"{TOKEN_ENV} is not set: create an API token with {PERMISSION} and export it", 2)
    try:
        client = QueuesClient(args.account, token, os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)
    except SdkMissing as exc:  # the r2 extra (the cloudflare SDK) is not installed: the pip line, exit 2
        return _fail(str(exc), 2)
    stop = stop or threading.Event()
    restore = _on_signals(stop)
    # The sweep, as `bucketrun sim` and `listen minio` run it: a notification only says "a manifest arrived".
    sweeper = None if on_dispatched is not None else Sweeper(dctx, getattr(args, "sweep", 5.0), log=log)
    try:
        queue_id = _resolve(client, args.queue, stop)
        if queue_id is None:
            return 0
        settings = Settings.of(args)

        def started() -> None:  # after the first answered pull: a refused token is the only line printed
            log.info("pulling R2 notifications from queue %s of account %s (batch %d, visibility %.0f s) into %s; "
                     "the inbox reconciled on start and every %g s", queue_id, args.account, settings.batch_size,
                     settings.visibility_timeout_s, dctx.bucket.url, settings.reconcile_s)
        if sweeper is not None:
            sweeper.start()
        Consumer(client, queue_id, dctx, settings, stop, on_dispatched or (sweeper and sweeper.wake),
                 on_started=started).run()
        return 0
    except CloudflareAuthError as exc:
        return _fail(f"Cloudflare refused the API token in {TOKEN_ENV} ({exc}): it needs {PERMISSION} "
                     f"on account {args.account}", 2)
    except CloudflareError as exc:
        return _fail(f"Cloudflare Queues: {exc}", 1)
    finally:
        if sweeper is not None:
            sweeper.stop()
        restore()


def _resolve(client: QueuesClient, queue: str, stop: threading.Event) -> str | None:
    """The queue's id, trying again while Cloudflare is unavailable; None if stopped meanwhile."""
    failures = 0
    while not stop.is_set():
        try:
            return client.queue_id(queue)
        except CloudflareUnavailable as exc:
            failures += 1
            wait = UNAVAILABLE.delay(failures, retry_after=exc.retry_after)
            log.warning("Cloudflare Queues unavailable (%s); trying again in %.1f s", exc, wait)
            stop.wait(wait)
    return None


def _on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set `stop` (the batch in hand is finished first); only the main thread can install."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore

