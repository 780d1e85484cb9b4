"""The no-op processor: one row per item, optionally sleeping, failing or crashing on named items. It is what
the benchmark and the chaos tests run, so the fleet's own costs are measured with nothing else in the way."""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa

from bucketrun.events.kinds.fleet import NoopOptions

from . import CURRENT_WORKER, ProcessorContext


class Noop:
    columns = {"length": pa.int64(), "worker": pa.string()}
    fetches = False  # no inputs: the worker skips fetch() (images/fleet/processors/__init__.py)

    def __init__(self, options: NoopOptions, ctx: ProcessorContext):
        self.options, self.ctx = options, ctx
        self.fail, self.crash = set(options.fail_items), set(options.crash_items)
        self.blocking = options.sleep_s > 0

    async def fetch(self, item: str) -> Any:
        return None

    def process(self, item: str, payload: Any) -> list[dict[str, Any]]:
        if item in self.crash:
            os._exit(70)  # a hard death mid-item, as a segfaulting decoder would die: no cleanup, no commit
        if self.options.sleep_s:
            time.sleep(self.options.sleep_s)
        if item in self.fail:
            raise ValueError(f"injected failure on {item}")
        return [{"length": len(item), "worker": CURRENT_WORKER.get() or self.ctx.worker_id}]

    def close(self) -> None:
        pass


def make(options: dict[str, Any], ctx: ProcessorContext) -> Noop:
    return Noop(NoopOptions.model_validate(options), ctx)
