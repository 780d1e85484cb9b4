"""A shard's commit and the fleet's final commit.

Shard: one write-once parquet part under a key carrying the lease generation, then a create-if-absent done
marker naming it. A zombie (its lease taken over) finds the marker already there and deletes its own part.
Fleet: once every shard reachable from the plan has a marker, one elected writer reads them all, checks each
part's bytes by listing, and creates the dataset manifest; only then is the job `succeeded`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bucketrun.events import aconditional, codec, keys
from bucketrun.events.errors import CorruptObject, NotFound
from bucketrun.events.fleet import claims
from bucketrun.events.fleet.dataset import Coverage, averify_dataset, dataset_body, read_part, resolve
from bucketrun.events.fleet.plan import Plan


log = logging.getLogger("bucketrun.fleet")
PARQUET = "application/vnd.apache.parquet"


class RowsDoNotCheck(CorruptObject):
    """A worker made a row set that fails the dataset's row check (a bug, not bad input): the job fails."""
READ_CONCURRENCY = 32


def to_parquet(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


@dataclass
class CommitResult:
    won: bool
    marker: dict[str, Any]  # ours if won, else the winner's


async def commit_shard(bucket, job_id: str, output_prefix: str, lease: claims.ShardLease, worker: str,
                       covered: tuple[int, int] | None, rows: list[dict[str, Any]], schema: pa.Schema,
                       items_failed: int = 0, children: list[tuple[int, ...]] = (),
                       dead: list[dict[str, Any]] = ()) -> CommitResult:
    """Each child is (lo, hi), starting with the parent's deaths (a remainder stays as suspect as its parent),
    or (lo, hi, deaths, kills)."""
    shard, generation = lease.shard, lease.generation
    part = None
    if covered is not None:
        data = to_parquet(rows, schema)
        part_key = keys.fleet_part_key(output_prefix, shard, generation)
        part = {"key": part_key, "rows": len(rows), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        # The finalizer's own row check, on the very bytes hashed above, before anything is written: a bad row
        # set never becomes a part, and the finalizer need not read back what this marker vouches for.
        problems = (await asyncio.to_thread(read_part, {**part, "covered": list(covered)}, data)).problems
        if problems:
            raise RowsDoNotCheck(f"the rows of shard {shard} do not check: " + "; ".join(problems[:5]))
        part["checked"] = True
        await aconditional.create_own(bucket, part_key, data, PARQUET)  # one writer per generation
    for a, b, *counts in children:  # offered before the marker that names them, so a listing never misses one
        deaths, kills = counts or (lease.deaths, 0)
        await claims.offer(bucket, job_id, keys.shard_id(a, b), deaths=deaths, kills=kills)
    marker = {"shard": shard, "generation": generation, "worker": worker,
              "covered": list(covered) if covered else None, "part": part, "items_failed": items_failed,
              "children": [[c[0], c[1]] for c in children], "dead": list(dead), "deaths": lease.deaths,
              "kills": lease.kills, "at": codec.iso(codec.now())}
    out = await aconditional.create_json(bucket, keys.fleet_done_key(job_id, shard), marker)
    if not out.won and part is not None and ((out.body or {}).get("part") or {}).get("key") != part["key"]:
        await bucket.delete(part["key"])  # a zombie's orphan: the shard's row set is the winner's
    return CommitResult(out.won, out.body if not out.won else marker)


async def list_shards(bucket, prefix: str) -> dict[str, Any]:
    """shard id -> ObjectInfo for every leases/ or done/ object."""
    found = {}
    async for info in bucket.list(prefix):
        shard = keys.fleet_shard_of(info.key, prefix)
        if shard:
            found[shard] = info
    return found


async def _sizes(bucket, prefix: str) -> dict[str, int]:
    return {info.key: info.size async for info in bucket.list(prefix)}


@dataclass
class PartsListing:
    """A listing of parts/ started in the tail, before the last shards were done (on moto a listing of 10,000
    parts took 11 s of the finalizer's 16), and the store-independent time it started."""

    task: asyncio.Task
    started: datetime


def list_parts_early(bucket, output_prefix: str) -> PartsListing:
    return PartsListing(asyncio.create_task(_sizes(bucket, output_prefix + "parts/")), codec.now())


async def _part_sizes(bucket, output_prefix: str, cov: Coverage, markers: dict[str, dict[str, Any]],
                      early: PartsListing | None, margin_s: float) -> dict[str, int]:
    """Every part's size. From an early listing, parts committed since are looked up one by one. An orphan part
    (a holder killed before its marker) always comes with a take-over, a marker of generation 2 or more; for one
    written since the listing began (less a margin for clocks), the shard's other generations' part keys (they
    are derived, `<shard>-g<k>`) are looked up too, so an orphan the listing missed is still found, without a
    second listing of every part."""
    if early is None:
        return await _sizes(bucket, output_prefix + "parts/")
    sizes = dict(await early.task)
    cutoff = early.started - timedelta(seconds=margin_s)
    wanted = {m["part"]["key"] for m in cov.committed if m["part"]["key"] not in sizes}
    for m in markers.values():
        gen = m.get("generation", 1)
        if gen > 1 and codec.parse_iso(m["at"]) >= cutoff:
            wanted |= {keys.fleet_part_key(output_prefix, m["shard"], k) for k in range(1, gen + 2) if k != gen}
    sem = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(key: str) -> None:
        async with sem:
            try:
                sizes[key] = (await bucket.head(key)).size
            except NotFound:
                pass  # named but absent: the size check below says so

    await asyncio.gather(*(one(k) for k in sorted(wanted - set(sizes))))
    return sizes


async def _confirm_sizes(bucket, cov: Coverage, sizes: dict[str, int]) -> None:
    """Every committed part at its marker's bytes. A part that differs is looked up afresh once (a listing or
    a lookup may be older than the part); one that still differs is corrupt for good, since parts are
    write-once: CorruptObject names it, and the finalizer fails the job rather than wait for it to heal."""
    odd = [m["part"] for m in cov.committed if sizes.get(m["part"]["key"]) != m["part"]["bytes"]]
    for part in odd:
        try:
            sizes[part["key"]] = (await bucket.head(part["key"])).size
        except NotFound:
            sizes.pop(part["key"], None)
    for part in odd:
        if sizes.get(part["key"]) != part["bytes"]:
            found = "is missing" if part["key"] not in sizes else f"is {sizes[part['key']]} bytes"
            raise CorruptObject(f"part {part['key']} {found}, its marker says {part['bytes']}")


async def read_markers(bucket, job_id: str, shards, cache: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every done marker's body; markers are write-once, so a cached one never needs reading again."""
    sem = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(shard: str) -> None:
        async with sem:
            body, _ = await aconditional.read_json(bucket, keys.fleet_done_key(job_id, shard))
            if body is not None:
                cache[shard] = body

    await asyncio.gather(*(one(s) for s in shards if s not in cache))
    return cache


async def read_ledgers(bucket, job_id: str, cache: dict[str, dict[str, Any]], seen: set[str] | None = None,
                       requests: dict[str, dict[str, int]] | None = None) -> None:
    """Markers copied into the workers' ledgers: a few reads instead of one per shard. Only markers whose
    create-if-absent won are ledgered, so each copy is the marker as the bucket holds it. `requests` gathers
    what each ledger's process spent on the job (events/meter.py), for the finalizer's terminal transition."""
    sem = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(key: str) -> None:
        async with sem:
            body, _ = await aconditional.read_json(bucket, key)
        for shard, marker in ((body or {}).get("markers") or {}).items():
            cache.setdefault(shard, marker)
        if requests is not None and isinstance((body or {}).get("requests"), dict):
            requests[key] = body["requests"]

    seen = set() if seen is None else seen  # ledgers are write-once: one read each is enough
    ledgers = [info.key async for info in bucket.list(keys.fleet_ledgers_prefix(job_id)) if info.key not in seen]
    await asyncio.gather(*(one(key) for key in ledgers))
    seen.update(ledgers)


async def build_dataset(bucket, job_id: str, plan: Plan, output_prefix: str, writer: str,
                        cache: dict[str, dict[str, Any]],
                        ledgers_seen: set[str] | None = None, early: PartsListing | None = None,
                        margin_s: float = 60.0,
                        ledger_requests: dict[str, dict[str, int]] | None = None,
                        ) -> tuple[Coverage, dict[str, Any] | None]:
    """The dataset manifest if every reachable shard is done and every part lists back with its bytes; the
    manifest is created once, and a second finalizer gets the first one's. Each step's time is logged: the
    finalizer is the fleet's tail."""
    t = [time.monotonic()]
    # The parts' listing (for their bytes and the orphans) runs while the markers are gathered.
    parts = early.task if early is not None else asyncio.create_task(_sizes(bucket, output_prefix + "parts/"))
    try:
        await read_ledgers(bucket, job_id, cache, ledgers_seen, ledger_requests)  # read before: in cache
        t.append(time.monotonic())
        # No listing of done/: walk from the plan through each marker's children, reading the markers that no
        # ledger and no look of this process brought, until no unread shard is left on the walk.
        unread, tried = 0, set()
        while True:
            cov = resolve(plan, cache)
            missing = [s for s in cov.pending if s not in tried]
            if not missing:
                break
            tried |= set(missing)
            unread += len(missing)
            await read_markers(bucket, job_id, missing, cache)
        t.append(time.monotonic())
        if not cov.complete:
            if early is None:
                parts.cancel()
            return cov, None
        sizes = await (_part_sizes(bucket, output_prefix, cov, cache, early, margin_s) if early is not None
                       else parts)
        t.append(time.monotonic())
    except BaseException:
        parts.cancel()
        raise
    await _confirm_sizes(bucket, cov, sizes)
    body = dataset_body(job_id, plan, cov, writer)
    # Row by row before anything is committed: a part its marker vouches for (checked at commit, bound to its
    # sha256, and listed above at its bytes) counts its covered range without a read; any other part is read.
    known = {m["part"]["key"]: {"covered": m["covered"], "ok": True, **m["part"]}
             for m in cov.committed if m["part"].get("checked")}
    await averify_dataset(bucket, body, known=known)
    t.append(time.monotonic())
    named = {m["part"]["key"] for m in cov.committed}
    body["orphan_parts_deleted"] = await delete_orphans(bucket, job_id, output_prefix, set(sizes) - named)
    t.append(time.monotonic())
    out = await aconditional.create_json(bucket, keys.fleet_dataset_key(output_prefix), body)
    t.append(time.monotonic())
    steps = ("ledgers", f"{unread} markers", "list parts (overlapped)", f"verify ({len(known)} vouched)",
             f"{body['orphan_parts_deleted']} orphans", "create")
    log.info("finalize: %s", ", ".join(f"{name} {b - a:.2f}s" for name, a, b in zip(steps, t, t[1:])))
    return cov, out.body


async def delete_orphans(bucket, job_id: str, output_prefix: str, unnamed: set[str]) -> int:
    """Delete the parts the dataset will not name (written by workers killed before their marker, or by zombies),
    except one whose lease generation still holds its shard: a live holder's part is never touched."""
    sem = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(key: str) -> int:
        parsed = keys.parse_fleet_part_key(output_prefix, key)
        if parsed is None:
            return 0
        shard, generation = parsed
        async with sem:
            snap = await claims.read(bucket, keys.fleet_lease_key(job_id, shard))
            if snap is not None and snap.live and snap.generation == generation:
                return 0
            await bucket.delete(key)
        return 1

    return sum(await asyncio.gather(*(one(k) for k in sorted(unnamed))))
