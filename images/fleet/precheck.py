"""Row checks of committed parts while the fleet runs, so that the finalizer does not read every part at the end.

The finalizer checks each row of every part before it commits the dataset. Done at the end, that is a read per
shard (10,000 at 507,387 items) between the last commit and `succeeded`. The holder of the progress role, which
lists the done markers every beat anyway, reads each newly done shard's part once, checks its rows with the
finalizer's own checker (events/fleet/dataset.py) and writes the results as write-once batches under
`checked/`. Each result is bound to the part's sha256; the finalizer reads whatever no result covers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from bucketrun.events import aconditional, keys
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.fleet.dataset import check_part_alone

log = logging.getLogger("bucketrun.fleet")
READS_AT_ONCE = 8  # parts read at once: the workers' own requests come first
MAX_PER_STEP = 400  # parts checked per beat, so a late holder catches up over a few beats


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
    def __init__(self, job, holder: str):
        self.job = job
        self.tag = f"{holder}-{secrets.token_hex(3)}"  # a restarted holder's batches never collide with its last life's
        self.seen: set[str] | None = None  # shards whose part was checked (or has no generation-1 part)
        self.batches = 0

    async def step(self, done_shards) -> int:
        """Check the parts of shards done since the last step; returns how many were checked."""
        if self.seen is None:  # a new holder: what earlier holders checked is in the bucket
            self.seen = {keys.parse_fleet_part_key(self.job.output_prefix, k)[0]
                         for k in await read_checked(self.job.bucket, self.job.job_id)
                         if keys.parse_fleet_part_key(self.job.output_prefix, k)}
        new = [s for s in done_shards if s not in self.seen][:MAX_PER_STEP]
        if not new:
            return 0
        sem = asyncio.Semaphore(READS_AT_ONCE)
        records: dict[str, dict[str, Any]] = {}

        async def one(shard: str) -> None:
            # Most parts are their lease's first generation; another one is left to the finalizer.
            key = keys.fleet_part_key(self.job.output_prefix, shard, 1)
            async with sem:
                try:
                    data = (await self.job.bucket.get(key)).data
                except NotFound:
                    self.seen.add(shard)
                    return
            records[key] = await asyncio.to_thread(check_part_alone, key, keys.parse_shard_id(shard)[0], data)
            self.seen.add(shard)

        await asyncio.gather(*(one(s) for s in new), return_exceptions=True)  # a failed read: next beat
        if records:
            key = keys.fleet_checked_key(self.job.job_id, self.tag, self.batches)
            self.batches += 1
            try:
                await aconditional.create_json(self.job.bucket, key, {"parts": records})
            except BucketrunError as exc:  # the finalizer reads those parts itself; nothing is lost
                log.warning("part checks not written: %s", exc)
        return len(records)
