"""The webhook contract: what a terminal-state notification looks like and how receivers verify it.

Signed like Stripe's: `X-Bucketrun-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, so a
receiver can reject both forged and replayed deliveries. Pure functions, shared by sender and receivers.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

SIGNATURE_HEADER = "X-Bucketrun-Signature"
DELIVERY_HEADER = "X-Bucketrun-Delivery"  # <job id>/<seq>: the same for every retry, so receivers can dedupe
EVENT_HEADER = "X-Bucketrun-Event"  # job.succeeded, job.failed, job.rejected, job.cancelled
SECRET_ENV = "BUCKETRUN_WEBHOOK_SECRET"


class BadSignature(ValueError):
    """The signature header is missing, malformed, wrong, or too old."""


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str | None, tolerance_s: float = 300.0,
           now: float | None = None) -> int:
    """Check a delivery's signature header; returns its timestamp or raises BadSignature."""
    if not header:
        raise BadSignature(f"missing {SIGNATURE_HEADER}")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, sep, v = item.strip().partition("=")
        if sep:
            parts.setdefault(k, []).append(v)
    try:
        ts = int(parts["t"][0])
    except (KeyError, ValueError) as exc:
        raise BadSignature("no timestamp in the signature header") from exc
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        raise BadSignature("signature timestamp outside the tolerance window")
    expected = signature(secret, body, ts).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, got) for got in parts.get("v1", [])):
        raise BadSignature("signature does not match the body")
    return ts


def headers(secret: str, body: bytes, job_id: str, seq: int, state: str, timestamp: int) -> dict[str, Any]:
    return {"Content-Type": "application/json", "User-Agent": "bucketrun-webhook/1",
            SIGNATURE_HEADER: signature(secret, body, timestamp), DELIVERY_HEADER: f"{job_id}/{seq}",
            EVENT_HEADER: f"job.{state}"}
