"""Where an attempt's time goes: wall seconds per stage, recorded in its result, so an overhead is a figure in
the bucket rather than a guess (`bucketrun status JOB --json` shows them)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from bucketrun.events import codec


class Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(seconds, 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def to_json(self) -> dict[str, float]:
        return {name: round(s, 4) for name, s in self.seconds.items()}


def handoffs(history: Any, attempt: int) -> dict[str, float]:
    """Seconds between this attempt's transitions before the work began: submitted -> queued (intake),
    queued -> launched (launch), launched -> running (pickup by the worker)."""
    at: dict[str, Any] = {}
    for t in history:
        if (t.state.value == "submitted" and attempt == 1) or t.attempt == attempt:
            at.setdefault(t.state.value, codec.parse_iso(t.at))
    out = {}
    for name, a, b in (("intake", "submitted", "queued"), ("launch", "queued", "launched"),
                       ("pickup", "launched", "running")):
        if a in at and b in at:
            out[name] = round((at[b] - at[a]).total_seconds(), 4)
    return out
