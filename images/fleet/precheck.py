"""Row checks of committed parts while the fleet runs, so that the finalizer does not read every part at the end.

The finalizer checks each row of every part before it commits the dataset. Done at the end, that is a read per
shard (10,000 at 507,387 items) between the last commit and `succeeded`. Instead each worker process reads back
the parts its workers commit, as the bucket holds them, checks their rows with the finalizer's own checker
(events/fleet/dataset.py check_record) and writes the results as write-once batches under `checked/`. Each result is
bound to the part's sha256, bytes, rows and range; the finalizer reads whatever no matching result covers (the
last few commits, or a killed process's unflushed ones).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from bucketrun.events import aconditional, keys
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.fleet.dataset import check_record

log = logging.getLogger("bucketrun.fleet")
READS_AT_ONCE = 4  # parts read back at once: the workers' own requests come first
FLUSH_S = 5.0  # a batch of results is written this often...
FLUSH_PARTS = 500  # ...or once this many are waiting


async def read_checked(bucket, job_id: str) -> dict[str, dict[str, Any]]:
    """Every result written so far: part key -> its record."""
    found: dict[str, dict[str, Any]] = {}
    batches = [info.key async for info in bucket.list(keys.fleet_checked_prefix(job_id))]
    sem = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with sem:
            body, _ = await aconditional.read_json(bucket, key)
        found.update((body or {}).get("parts") or {})

    await asyncio.gather(*(one(k) for k in batches))
    return found


class PartChecker:
    """One per worker process: `add(marker)` after each won commit; `run()` reads back and checks."""

    def __init__(self, bucket, job_id: str, writer: str):
        self.bucket, self.job_id = bucket, job_id
        self.tag = f"{writer.split(':')[-1][:24]}-{secrets.token_hex(3)}"  # a restarted process never collides
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.records: dict[str, dict[str, Any]] = {}
        self.batches = 0
        self.checked = 0

    def add(self, marker: dict[str, Any]) -> None:
        if marker.get("part"):
            self.queue.put_nowait(marker)

    async def _check(self, marker: dict[str, Any]) -> None:
        part = marker["part"]
        entry = {"key": part["key"], "covered": marker["covered"], "rows": part["rows"], "bytes": part["bytes"],
                 "sha256": part["sha256"]}
        try:
            data = (await self.bucket.get(part["key"])).data
        except NotFound:
            data = None
        self.records[part["key"]] = await asyncio.to_thread(check_record, entry, data)
        self.checked += 1

    async def flush(self) -> None:
        if not self.records:
            return
        batch, self.records = self.records, {}
        key = keys.fleet_checked_key(self.job_id, self.tag, self.batches)
        self.batches += 1
        try:
            await aconditional.create_json(self.bucket, key, {"parts": batch})
        except BucketrunError as exc:  # the finalizer reads those parts itself; nothing is lost
            log.warning("part checks not written: %s", exc)

    async def run(self) -> None:
        sem = asyncio.Semaphore(READS_AT_ONCE)
        pending: set[asyncio.Task] = set()
        last = time.monotonic()

        async def one(marker: dict[str, Any]) -> None:
            async with sem:
                try:
                    await self._check(marker)
                except BucketrunError as exc:  # not checked now: the finalizer reads it
                    log.warning("part %s not checked: %s", marker["part"]["key"], exc)

        try:
            while True:
                try:
                    marker = await asyncio.wait_for(self.queue.get(), timeout=1.0)
                    task = asyncio.create_task(one(marker))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                except asyncio.TimeoutError:
                    pass
                if len(self.records) >= FLUSH_PARTS or (self.records and time.monotonic() - last >= FLUSH_S):
                    await self.flush()
                    last = time.monotonic()
        finally:
            for task in pending:
                task.cancel()
