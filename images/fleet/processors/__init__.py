"""The processor contract: what a fleet worker runs over each item, and how one is found.

A processor is made by a factory `make(options, ctx) -> Processor`, named in the manifest by a built-in name
(events/kinds/fleet.py PROCESSORS) or a user's `module:function` entry point baked into the worker image.
"""

from __future__ import annotations

import contextvars
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from bucketrun.events import needs
from bucketrun.events.kinds import load_entry_point

# Every row carries these, whatever the processor: which item it belongs to, its ordinal among that item's rows
# (0..n-1: a processor may return several rows per item), and the item's error if it failed.
BASE_COLUMNS: dict[str, pa.DataType] = {"item_index": pa.int64(), "item_row": pa.int64(), "item": pa.string(),
                                        "error": pa.string()}


# The worker (w0001) whose item is being processed: one processor serves every worker of a process, so its
# ctx.worker_id names the process; each worker's task (and the thread it runs a blocking item in) sets this.
CURRENT_WORKER: contextvars.ContextVar[str | None] = contextvars.ContextVar("bucketrun_fleet_worker", default=None)


class ProcessorError(Exception):
    """The processor cannot run at all (bad options, missing model): the worker stops instead of failing
    every item one by one."""


@dataclass
class ProcessorContext:
    """What a processor may use: the bucket its items live in (async, see events/storage/aio.py), a scratch
    folder, the device, the worker's identity for its logs, and where objects of its own go besides the rows
    (the job's bucket and the fleet's output prefix; their keys are in events/keys.py)."""

    source: Any  # an async bucket: `await source.get(key)`, `source.list(prefix)`
    workdir: Path
    device: str = "cpu"
    worker_id: str = "worker"
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("bucketrun.fleet.processor"))
    output: Any = None  # the job's bucket, synchronous (events/storage): process() runs in a thread
    output_prefix: str = ""  # the fleet's output prefix in it (the parts and dataset.json are there too)
    job_id: str = ""
    attempt: int = 0


class Processor(Protocol):
    columns: dict[str, pa.DataType]  # the declared schema of its rows, besides BASE_COLUMNS
    blocking: bool  # process() holds the CPU/GPU: the worker runs it in a thread so heartbeats go on

    async def fetch(self, item: str) -> Any:
        """Download the item's inputs; runs ahead (prefetch) while the previous shard is processed."""
        ...

    def process(self, item: str, payload: Any) -> list[dict[str, Any]]:
        """Rows for one item (one or many). Raising makes one error row for the item, never a failed shard."""
        ...

    def close(self) -> None: ...

    # Optional: `discard(payload)` frees the inputs of an item fetched but never processed (the worker picks and
    # prefetches the next shard before claiming it, and another worker may claim it first).
    # Optional: `fetches = False` says fetch() has nothing to fetch (every payload is None): the worker then
    # makes no task per item, a tenth of a no-op fleet's CPU.


class ScratchFolders:
    """Per-item scratch folders a processor makes in fetch() and removes once the item is processed; close()
    removes those of items fetched but never processed (the worker stopped mid-prefetch)."""

    def __init__(self, workdir: Path, prefix: str):
        self.workdir, self.prefix, self.live = workdir, prefix, set()

    def new(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.workdir))
        self.live.add(folder)
        return folder

    def discard(self, folder: Path | None) -> None:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            self.live.discard(folder)

    def close(self) -> None:
        for folder in list(self.live):
            self.discard(folder)


def make_processor(factory: str, options: dict[str, Any], ctx: ProcessorContext) -> Processor:
    try:
        make = load_entry_point(factory)
    except (ImportError, AttributeError, ValueError) as exc:
        advice = needs.import_advice(exc) if isinstance(exc, ImportError) else ""
        raise ProcessorError(f"processor {factory!r} is not in this worker image: {exc}{advice}") from exc
    return make(options, ctx)


def schema_of(processor: Processor) -> pa.Schema:
    clash = set(processor.columns) & set(BASE_COLUMNS)
    if clash:
        raise ProcessorError(f"processor columns {sorted(clash)} clash with the fleet's own")
    return pa.schema([pa.field(k, t) for k, t in {**BASE_COLUMNS, **processor.columns}.items()])
