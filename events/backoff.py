"""The one retry policy: how long to wait before trying again, for job retries, webhook deliveries and Runpod
HTTP calls alike.

Full jitter (a uniform draw from 0 up to an exponentially growing, capped bound) spreads many clients that
failed together the furthest apart for the least total wait; a server's `Retry-After`, when one is given,
replaces the draw, because the server knows when it will be ready.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Protocol


class _Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class Backoff:
    """Wait uniform(0, min(cap_s, base_s * 2**(attempt - 1))) after the `attempt`-th failed try (1, 2, ...).

    A `retry_after` (seconds, see parse_retry_after) overrides the draw, capped at `retry_after_max_s`
    (default: `cap_s`), so a server can slow us down but never park us for longer than we state here."""

    base_s: float
    cap_s: float
    retry_after_max_s: float | None = None

    def bound(self, attempt: int) -> float:
        """The upper end of the draw after `attempt` failed tries."""
        exponent = min(max(attempt, 1) - 1, 62)  # a huge attempt number must not overflow
        return min(self.cap_s, self.base_s * 2 ** exponent)

    def delay(self, attempt: int, rng: _Uniform | None = None, retry_after: float | None = None) -> float:
        if retry_after is not None:
            cap = self.cap_s if self.retry_after_max_s is None else self.retry_after_max_s
            return min(max(retry_after, 0.0), cap)
        return (rng or random).uniform(0.0, self.bound(attempt))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds ("120") or an HTTP-date
    ("Wed, 21 Oct 2015 07:28:00 GMT", measured from `now`, a Unix time); None when absent or unparsable."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete form without a zone is read as GMT too
        when = when.replace(tzinfo=timezone.utc)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


#: Failed job attempts (transient, lost, stall, timed_out): 5 s, 10 s, 20 s ... at most 5 min between attempts.
JOB_RETRY = Backoff(base_s=5.0, cap_s=300.0)
#: Webhook deliveries: 30 s doubling, at most an hour apart; notify.MAX_DELIVERIES bounds how many.
WEBHOOK = Backoff(base_s=30.0, cap_s=3600.0)
#: Runpod API calls inside one invocation: short waits (0.5 s doubling to 8 s) so a Lambda stays well within its
#: timeout, but a throttling Runpod may ask for up to 30 s with Retry-After.
RUNPOD_HTTP = Backoff(base_s=0.5, cap_s=8.0, retry_after_max_s=30.0)
