"""From done markers to the dataset: which shards' parts make up the one committed row set, and the check that
it holds every planned item exactly once. `resolve` and `check_part_rows` are pure; `verify_dataset` (sync
bucket) and `averify_dataset` (async bucket) read the parts back and check them row by row."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import codec, keys
from ..errors import CorruptObject, NotFound
from .plan import Plan

DATASET_VERSION = 1


@dataclass
class Coverage:
    committed: list[dict[str, Any]] = field(default_factory=list)  # markers with a part, in item order
    dead: list[dict[str, Any]] = field(default_factory=list)  # dead-lettered items
    pending: list[str] = field(default_factory=list)  # shards reachable from the plan with no marker yet
    items_covered: int = 0

    @property
    def complete(self) -> bool:
        return not self.pending


def check_marker(shard: str, m: dict[str, Any]) -> list[tuple[int, int]]:
    """A marker's children, after checking that its covered range, dead items and children tile the shard
    exactly: anything else would lose or duplicate items, so it is refused as corrupt."""
    lo, hi = keys.parse_shard_id(shard) or (None, None)
    if lo is None:
        raise CorruptObject(f"done marker for a bad shard id {shard!r}")
    pieces: list[tuple[int, int]] = []
    if m.get("covered"):
        pieces.append((int(m["covered"][0]), int(m["covered"][1])))
    pieces += [(int(d["index"]), int(d["index"]) + 1) for d in m.get("dead", [])]
    children = [(int(a), int(b)) for a, b in m.get("children", [])]
    pieces += children
    pieces.sort()
    at = lo
    for a, b in pieces:
        if a != at or b <= a:
            raise CorruptObject(f"done marker of shard {shard} does not tile [{lo}, {hi}): {pieces}")
        at = b
    if at != hi:
        raise CorruptObject(f"done marker of shard {shard} does not tile [{lo}, {hi}): {pieces}")
    if m.get("covered") and not m.get("part"):
        raise CorruptObject(f"done marker of shard {shard} covers items but names no part")
    return children


def resolve(plan: Plan, markers: dict[str, dict[str, Any]]) -> Coverage:
    """Walk from the plan's shards through each marker's children (remainders, bisected halves). Shards not
    reachable this way (an orphan child of a marker that was never written) are ignored, so no item counts twice."""
    cov = Coverage()
    todo = list(reversed(plan.base_shards()))
    while todo:
        shard = todo.pop()
        m = markers.get(shard)
        if m is None:
            cov.pending.append(shard)
            continue
        children = check_marker(shard, m)
        if m.get("covered"):
            a, b = m["covered"]
            cov.committed.append({**m, "shard": shard})
            cov.items_covered += b - a
        cov.dead += m.get("dead", [])
        cov.items_covered += len(m.get("dead", []))
        todo += [keys.shard_id(a, b) for a, b in reversed(children)]
    cov.committed.sort(key=lambda m: m["covered"][0])
    cov.dead.sort(key=lambda d: d["index"])
    return cov


def dataset_body(job_id: str, plan: Plan, cov: Coverage, writer: str) -> dict[str, Any]:
    shards = [{"shard": m["shard"], "covered": m["covered"], "key": m["part"]["key"], "rows": m["part"]["rows"],
               "bytes": m["part"]["bytes"], "sha256": m["part"]["sha256"], "generation": m["generation"],
               "worker": m.get("worker")} for m in cov.committed]
    return {"version": DATASET_VERSION, "job_id": job_id, "items_total": plan.total,
            "items_covered": cov.items_covered, "items_failed": sum(m.get("items_failed", 0) for m in cov.committed),
            "rows": sum(s["rows"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
            "shards": shards, "dead_letters": cov.dead, "items_key": plan.items_key,
            "items_sha256": plan.items_sha256, "committed_at": codec.iso(codec.now()), "writer": writer}


# -- row by row: each part's rows, then every planned item exactly once across the parts and dead letters ------

READ_CONCURRENCY = 32  # parts read at once by averify_dataset
MAX_PROBLEMS = 20  # reported in the CorruptObject; reading stops once more are found
PART_PROBLEMS = 10  # per part, before "... and N more"
ROW_COLUMNS = ("item_index", "item_row")  # required in every part (BASE_COLUMNS); `item` is read for messages


def _label(i: int, names: dict[int, Any] | None) -> str:
    name = (names or {}).get(i)
    return f"item {i} ({name!r})" if name is not None else f"item {i}"


def _covered(entry: dict[str, Any]) -> tuple[int, int] | None:
    try:
        lo, hi = (int(x) for x in entry["covered"])
    except (KeyError, TypeError, ValueError):
        return None
    return (lo, hi) if lo < hi else None


@dataclass
class _Scan:
    ordinals: dict[int, list[int]]  # item index -> its rows' ordinals, in row order
    names: dict[int, Any]  # item index -> the `item` string of its first row (when the column was read)
    nulls: int  # rows without an item_index or an item_row
    rows: int


def _scan(item_index, item_row, item=None) -> _Scan:
    ordinals: dict[int, list[int]] = {}
    names: dict[int, Any] = {}
    nulls = 0
    for i, r, name in zip(item_index, item_row, item if item is not None else itertools.repeat(None)):
        if i is None or r is None:
            nulls += 1
            continue
        got = ordinals.get(i)
        if got is None:
            ordinals[i] = [r]
            if name is not None:
                names[i] = name
        else:
            got.append(r)
    return _Scan(ordinals, names, nulls, len(item_index))


def _check_scan(entry: dict[str, Any], scan: _Scan, n_row: int | None = None) -> list[str]:
    key = entry.get("key")
    problems: list[str] = []
    if n_row is not None and n_row != scan.rows:
        problems.append(f"part {key}: {scan.rows} item_index values but {n_row} item_row values")
    if "rows" in entry and scan.rows != entry["rows"]:
        problems.append(f"part {key} holds {scan.rows} rows, the manifest says {entry['rows']}")
    if scan.nulls:
        problems.append(f"part {key}: {scan.nulls} rows have no item_index or no item_row")
    cov = _covered(entry)
    if cov is None:
        problems.append(f"part {key}: the manifest gives it no covered range [lo, hi) ({entry.get('covered')!r})")
    lo, hi = cov or (0, 0)
    for i in sorted(scan.ordinals):
        label = _label(i, scan.names)
        if cov is not None and not lo <= i < hi:
            problems.append(f"unplanned {label} in part {key} (outside its covered range [{lo}, {hi}))")
        rs = scan.ordinals[i]
        distinct = sorted(set(rs))
        if len(distinct) != len(rs):
            counts = Counter(rs)
            twice = min(r for r, k in counts.items() if k > 1)
            times = counts[twice]
            problems.append(f"{label} appears {'twice' if times == 2 else f'{times} times'} (ordinal {twice}) "
                            f"in part {key}")
        if distinct != list(range(len(distinct))):
            present = set(distinct)
            gap = next(r for r in range(len(distinct) + 1) if r not in present)
            shown = ", ".join(map(str, distinct[:8])) + (", ..." if len(distinct) > 8 else "")
            problems.append(f"{label} in part {key} has ordinals {shown}, not 0..{len(distinct) - 1}: "
                            f"ordinal {gap} is missing")
    if cov is not None:  # an item of the covered range without rows: the first few (bounded by the rows held)
        absent, i = [], lo
        while i < hi and len(absent) < 3:
            if i not in scan.ordinals:
                absent.append(i)
            i += 1
        if absent:
            n_absent = (hi - lo) - sum(1 for j in scan.ordinals if lo <= j < hi)
            more = f" ({n_absent} items of it have none)" if n_absent > len(absent) else ""
            problems += [f"missing item {j} in part {key} (in its covered range [{lo}, {hi}), without rows){more}"
                         for j in absent[:1]]
            problems += [f"missing item {j} in part {key}" for j in absent[1:]]
    if len(problems) > PART_PROBLEMS:
        problems = problems[:PART_PROBLEMS] + [f"... and {len(problems) - PART_PROBLEMS} more problems in part {key}"]
    return problems


def check_part_rows(entry: dict[str, Any], item_index, item_row, item=None) -> list[str]:
    """The problems of one part's rows, on their own (pure): `entry` is its dataset.json entry (key, covered
    [lo, hi), rows), `item_index`/`item_row` its columns as sequences (`item`, optional, names items in the
    messages). A part is correct iff its rows are exactly the items of its covered range, each with ordinals
    0..n-1 once; since the covered ranges and dead letters tile the plan (check_marker), a dataset of correct
    parts holds every item exactly once, so a result can be kept per part sha256."""
    return _check_scan(entry, _scan(item_index, item_row, item), n_row=len(item_row))


@dataclass
class PartCheck:
    """One part read back: its own problems and, unless it is correct (then it holds exactly its covered
    range), the item indices it holds, for the accounting across parts."""

    problems: list[str]
    readable: bool  # bytes and digest match and the rows were decoded
    rows: int = 0
    items: list[int] | None = None  # None: exactly the covered range
    names: dict[int, Any] = field(default_factory=dict)


def read_part(entry: dict[str, Any], data: bytes | None) -> PartCheck:
    """Check a part's bytes against its entry, decode its row columns and check them (CPU: run it in a thread
    from async code). `data` None: the object is missing."""
    import pyarrow as pa  # late: pyarrow (heavy, the fleet extra) stays off the dispatch path and the CLI
    import pyarrow.parquet as pq

    key = entry.get("key")
    if data is None:
        return PartCheck([f"part {key} is missing from the bucket"], False)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry.get("bytes") or digest != entry.get("sha256"):
        return PartCheck([f"part {key}: bytes or sha256 differ from the dataset manifest ({len(data)} bytes, "
                          f"sha256 {digest[:12]}...; the manifest says {entry.get('bytes')} bytes, sha256 "
                          f"{str(entry.get('sha256'))[:12]}...)"], False)
    try:
        # ParquetFile, not read_table: half the time a part, and no pyarrow.dataset import on a worker's first
        # commit (50 ms). No Arrow thread pool: one outliving the interpreter aborts the process at exit
        # (apache/arrow#34314).
        pf = pq.ParquetFile(io.BytesIO(data))
        names = pf.schema_arrow.names
        absent = [c for c in ROW_COLUMNS if c not in names]
        if "item_index" in absent:
            return PartCheck([f"part {key} has no item_index column"], False)
        columns = [c for c in (*ROW_COLUMNS, "item") if c in names]
        table = pf.read(columns=columns, use_threads=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        return PartCheck([f"part {key} is not a readable parquet file ({exc})"], False)
    bad_types = [f"part {key}: its {c} column is {table.schema.field(c).type}, not integers"
                 for c in ROW_COLUMNS if c in columns and not pa.types.is_integer(table.schema.field(c).type)]
    if bad_types:
        return PartCheck(bad_types, False, table.num_rows)
    index = table.column("item_index").to_pylist()
    item = table.column("item").to_pylist() if "item" in columns else None
    if absent:  # a part written before rows carried their ordinal: its items still count, the part does not
        scan = _scan(index, [0] * len(index), item)
        problems = [f"part {key} has no item_row column (each row's ordinal within its item)"]
    else:
        scan = _scan(index, table.column("item_row").to_pylist(), item)
        problems = _check_scan(entry, scan)
    return PartCheck(problems, True, table.num_rows, None if not problems else sorted(scan.ordinals), scan.names)


class DatasetCheck:
    """The accounting across parts, fed part by part in the manifest's order: each planned item in exactly one
    part or dead letter, nothing outside the plan, the row total. `finish` returns the totals or raises."""

    def __init__(self, dataset: dict[str, Any]):
        self.dataset = dataset
        self.total = int(dataset["items_total"])
        self.shards = dataset["shards"]
        self.owner = array("i", [-1]) * self.total  # item -> the part holding it; -2: dead-lettered
        self.problems: list[str] = []
        self.more = 0  # problems beyond MAX_PROBLEMS, counted only
        self.rows = 0
        self.parts = 0

    @property
    def full(self) -> bool:
        return len(self.problems) > MAX_PROBLEMS

    def problem(self, text: str) -> None:
        if len(self.problems) <= MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.more += 1

    def add(self, n: int, part: PartCheck) -> None:
        entry = self.shards[n]
        key = entry.get("key")
        self.parts += 1
        self.rows += part.rows
        for text in part.problems:
            self.problem(text)
        if part.items is None and part.readable:
            lo, hi = _covered(entry) or (0, 0)
            a, b = max(lo, 0), min(hi, self.total)
            if a < b and self.owner[a:b].count(-1) == b - a:  # the usual case: a fresh run of items
                self.owner[a:b] = array("i", [n]) * (b - a)
                items: Any = ()
            else:
                items = range(a, b)
            outside = [i for i in (lo, hi - 1) if not 0 <= i < self.total]
            if outside:
                self.problem(f"unplanned {_label(outside[0], part.names)} in part {key} (it covers [{lo}, {hi}), "
                             f"outside the plan's [0, {self.total}))")
        else:
            items = part.items or ()
        for i in items:
            if not 0 <= i < self.total:
                self.problem(f"unplanned {_label(i, part.names)} in part {key} (outside the plan's [0, {self.total}))")
                continue
            other = self.owner[i]
            if other >= 0 and other != n:
                self.problem(f"{_label(i, part.names)} appears in two parts: {self.shards[other].get('key')} "
                             f"and {key}")
            elif other == -1:
                self.owner[i] = n

    def finish(self) -> dict[str, Any]:
        dead = self.dataset.get("dead_letters", [])
        for d in dead:
            i = int(d["index"])
            label = _label(i, {i: d.get("item")})
            if not 0 <= i < self.total:
                self.problem(f"dead letter for {label} outside the plan's [0, {self.total})")
            elif self.owner[i] >= 0:
                self.problem(f"dead-lettered {label} also has rows in part {self.shards[self.owner[i]].get('key')}")
            elif self.owner[i] == -2:
                self.problem(f"{label} is dead-lettered twice")
            else:
                self.owner[i] = -2
        missing = self.owner.count(-1)
        if missing and self.parts == len(self.shards):  # not after stopping early: unread parts would count
            first, at = [], 0
            while len(first) < 5 and len(first) < missing:
                at = self.owner.index(-1, at)
                first.append(at)
                at += 1
            self.problem(f"{missing} planned items have no rows and no dead letter: missing item "
                         + ", ".join(map(str, first)) + (", ..." if missing > len(first) else ""))
        if self.parts == len(self.shards) and self.rows != self.dataset.get("rows"):
            self.problem(f"the parts hold {self.rows} rows, the manifest says {self.dataset.get('rows')}")
        if self.problems:
            more = self.more + max(0, len(self.problems) - MAX_PROBLEMS)
            raise CorruptObject("dataset does not verify: " + "; ".join(self.problems[:MAX_PROBLEMS])
                                + (f"; ... and {more} more" if more else ""))
        return {"items": self.total, "rows": self.rows, "parts": len(self.shards), "dead_letters": len(dead)}


def verify_dataset(bucket, dataset: dict[str, Any], on_part=None, sink=None) -> dict[str, Any]:
    """Download every part (sync bucket), check its bytes and sha256, and check row by row that each planned
    item's rows (ordinals 0..n-1, once each) are in exactly one part, its covered range's, or it is dead-lettered.
    Returns totals; CorruptObject names what is wrong (the item and the part). `sink(shard_entry, data)`
    receives each part whose bytes and digest check out (to keep a local copy); `on_part(done, total)`."""
    check = DatasetCheck(dataset)
    for n, s in enumerate(check.shards):
        try:
            data = bucket.get(s["key"]).data
        except NotFound:
            data = None
        part = read_part(s, data)
        if sink and part.readable:
            sink(s, data)
        check.add(n, part)
        if on_part:
            on_part(n + 1, len(check.shards))
        if check.full:
            break
    return check.finish()


def _checked(entry: dict[str, Any], known: dict[str, dict[str, Any]] | None) -> PartCheck | None:
    rec = (known or {}).get(entry.get("key"))
    if not rec or not rec.get("ok"):
        return None
    if all(rec.get(k) == entry.get(k) for k in ("sha256", "bytes", "rows", "covered")):
        return PartCheck([], True, int(rec["rows"]))
    return None


async def averify_dataset(bucket, dataset: dict[str, Any], on_part=None,
                          known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """verify_dataset for an async bucket (events/storage/aio.py): parts read READ_CONCURRENCY at a time and
    decoded in a thread so the event loop goes on serving heartbeats; checked in the manifest's order, so the
    result and the messages are verify_dataset's. `known`: part key -> a record of a check made at commit (its covered range, rows, bytes, sha256, ok); a part whose
    record matches its entry is not read again."""
    check = DatasetCheck(dataset)
    sem = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(s: dict[str, Any]) -> PartCheck:
        done = _checked(s, known)
        if done is not None:
            return done
        async with sem:
            try:
                data = (await bucket.get(s["key"])).data
            except NotFound:
                data = None
            return await asyncio.to_thread(read_part, s, data)

    tasks = [asyncio.ensure_future(one(s)) for s in check.shards]
    try:
        for n, task in enumerate(tasks):
            check.add(n, await task)
            if on_part:
                on_part(n + 1, len(tasks))
            if check.full:
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return check.finish()
