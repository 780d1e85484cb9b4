"""Webhook notices on terminal states, delivered by the sweep: signed, retried with backoff, every attempt
recorded at jobs/<id>/notify/<seq>.json, and never fatal to the job.

Delivery is at least once; receivers dedupe on the X-Bucketrun-Delivery header (`<job>/<seq>`).
"""

from __future__ import annotations

import logging
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from bucketrun.events import codec, keys, webhook
from bucketrun.events.backoff import WEBHOOK, parse_retry_after
from bucketrun.events.conditional import create_json, create_once, replace_json
from bucketrun.events.errors import NotFound
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.lifecycle import JobView, read_view
from bucketrun.events.manifest import JobManifest
from bucketrun.events.status import job_status
from bucketrun.events.storage import Bucket

log = logging.getLogger("bucketrun.notify")
MAX_DELIVERIES = 6
CLAIM_S = 60.0  # a claimed delivery that never recorded its outcome (a crashed sweep) is retried after this


def retry_delay_s(deliveries: int, rng: random.Random | None = None, retry_after: float | None = None) -> float:
    """Up to 30 s, 60 s, 120 s ... capped at an hour (the shared policy's WEBHOOK, full jitter, so many failing
    receivers spread out); a receiver's Retry-After (on 429 or 503) is honoured instead, within the hour."""
    return WEBHOOK.delay(deliveries, rng, retry_after)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a redirected POST is not a delivery
        return None


@dataclass
class Notifier:
    """Sends signed POSTs; without a secret it refuses rather than send an unverifiable notice."""

    secret: str | None = field(repr=False)  # never shown, should a notifier ever be logged
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls) -> "Notifier":
        return cls(os.environ.get(webhook.SECRET_ENV) or None)

    def send(self, url: str, body: bytes, job_id: str, seq: int, state: str) -> dict[str, Any]:
        if not self.secret:
            return {"error": f"no signing secret: set {webhook.SECRET_ENV} (or its secret ARN in the cloud)"}
        hdrs = webhook.headers(self.secret, body, job_id, seq, state, int(time.time()))
        req = urllib.request.Request(url, data=body, headers=hdrs, method="POST")
        started = time.monotonic()
        try:
            with urllib.request.build_opener(_NoRedirect).open(req, timeout=self.timeout_s) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            wait = parse_retry_after(exc.headers.get("Retry-After")) if status in (429, 503) else None
            if wait is not None:
                return {"status": status, "retry_after_s": round(wait, 3),
                        "ms": round((time.monotonic() - started) * 1e3)}
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return {"error": f"{type(exc).__name__}: {reason}", "ms": round((time.monotonic() - started) * 1e3)}
        return {"status": status, "ms": round((time.monotonic() - started) * 1e3)}


def arm(bucket: Bucket, job_id: str, manifest: JobManifest | None) -> bool:
    """Mark a job whose manifest asks for a webhook, so the sweep watches it until its notice is settled."""
    if manifest is None or manifest.notify is None:
        return False
    create_once(bucket, keys.notify_watch_key(job_id), codec.dumps({"job_id": job_id, "at": codec.iso(codec.now())}))
    return True


class Step(str, Enum):
    WAIT = "wait"  # not terminal yet, or the next retry is not due
    SEND = "send"
    SETTLE = "settle"  # delivered or given up: stop watching


def owed(view: JobView) -> bool:
    """A notice is owed only for a terminal state (a job armed mid-intake may have no event yet)."""
    return view.state is not None and view.state.terminal


def decide(view: JobView, record: dict[str, Any] | None, now: datetime) -> Step:
    """Pure: what to do about a watched job's notice, given its log and the delivery record for its end."""
    if not owed(view):
        return Step.WAIT
    if record is None:
        return Step.SEND
    if record.get("delivered") or record.get("gave_up"):
        return Step.SETTLE
    return Step.SEND if now >= codec.parse_iso(record["next_at"]) else Step.WAIT


def notify_job(bucket: Bucket, job_id: str, notifier: Notifier, writer: str,
               now: datetime | None = None) -> dict[str, Any] | None:
    now = now or codec.now()
    view = read_view(bucket, job_id)
    latest = view.latest
    if not owed(view):
        return None  # checked before any other read: most watched jobs are still running
    try:
        notify = load_job_manifest(bucket, job_id).notify
    except NotFound:
        notify = None
    if notify is None:
        bucket.delete(keys.notify_watch_key(job_id))
        return None
    rkey = keys.notify_key(job_id, latest.seq)
    try:
        blob = bucket.get(rkey)
        record, etag = codec.loads(blob.data), blob.etag
    except NotFound:
        record, etag = None, None
    step = decide(view, record, now)
    if step is Step.WAIT:
        return None
    if step is Step.SETTLE:
        bucket.delete(keys.notify_watch_key(job_id))
        return {"job_id": job_id, "notify": "settled"}
    attempts = list((record or {}).get("attempts", []))
    n = len(attempts) + 1
    claim = {"job_id": job_id, "seq": latest.seq, "state": latest.state.value, "webhook": notify.webhook,
             "delivered": False, "gave_up": False, "attempts": attempts + [{"n": n, "at": codec.iso(now), "by": writer}],
             "next_at": codec.iso(now + timedelta(seconds=CLAIM_S))}
    # Claim the delivery first, so two sweeps never send the same attempt.
    won = replace_json(bucket, rkey, claim, etag) if etag else create_json(bucket, rkey, claim)
    if not won.won:
        return {"job_id": job_id, "notify": "claimed-elsewhere"}
    etag = won.etag
    payload = {**job_status(bucket, job_id, view), "seq": latest.seq, "bucket": bucket.url}
    result = notifier.send(notify.webhook, codec.dumps(payload), job_id, latest.seq, latest.state.value)
    ok = 200 <= int(result.get("status", 0)) < 300
    claim["attempts"][-1].update(result)
    if ok:
        claim["delivered"] = True
        claim["delivered_at"] = codec.iso(codec.now())
    elif n >= MAX_DELIVERIES:
        claim["gave_up"] = True
    else:
        claim["next_at"] = codec.iso(now + timedelta(seconds=retry_delay_s(n, retry_after=result.get("retry_after_s"))))
    if not replace_json(bucket, rkey, claim, etag).won:
        log.warning("notice %s/%s: the delivery record moved while sending", job_id, latest.seq)
    host = urlsplit(notify.webhook).hostname  # never log the full URL: its query may carry a receiver token
    log.info("notice %s/%s to %s: %s", job_id, latest.seq, host, result)
    if claim["delivered"] or claim["gave_up"]:
        bucket.delete(keys.notify_watch_key(job_id))
    return {"job_id": job_id, "notify": "delivered" if ok else ("gave-up" if claim["gave_up"] else "retrying"),
            "attempt": n, **result}
