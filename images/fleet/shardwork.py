"""What a fleet worker (worker.py) hands between its steps: a shard picked ahead with its inputs, a shard claimed
and under way, an item whose fetch failed, and the process-wide stop flags."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bucketrun.events.fleet import claims


class FetchFailed:
    def __init__(self, error: str):
        self.error = error


@dataclass
class Candidate:
    """A shard picked and its inputs fetched while the current one runs; not claimed until its turn comes."""

    index: int
    shard: str
    lo: int
    hi: int
    payloads: list[Any]


@dataclass
class ShardWork:
    lease: claims.ShardLease
    lo: int
    hi: int
    payloads: list[Any] = field(default_factory=list)


class Stop:
    """Process-wide flags: SIGTERM (drain) and the job leaving this attempt (stop)."""

    def __init__(self):
        self.draining = asyncio.Event()
        self.stopped = asyncio.Event()
        self.reason = ""

    @property
    def any(self) -> bool:
        return self.draining.is_set() or self.stopped.is_set()
