"""From done markers to the dataset: which shards' parts make up the one committed row set, and the check that
it holds every planned item exactly once. `resolve` is pure; `verify_dataset` reads the parts back."""

from __future__ import annotations

import hashlib
import io
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


def verify_dataset(bucket, dataset: dict[str, Any], on_part=None, sink=None) -> dict[str, Any]:
    """Download every part (sync bucket), check its bytes and sha256, and check row by row that each planned
    item index appears in exactly one part or dead letter. Returns totals; CorruptObject names what is wrong.
    `sink(shard_entry, data)` receives each part whose bytes and digest check out (to keep a local copy)."""
    import pyarrow.parquet as pq

    total = int(dataset["items_total"])
    seen = bytearray(total)
    problems: list[str] = []
    rows = 0
    for n, s in enumerate(dataset["shards"]):
        try:
            data = bucket.get(s["key"]).data
        except NotFound:
            problems.append(f"{s['key']}: missing")
            continue
        if len(data) != s["bytes"] or hashlib.sha256(data).hexdigest() != s["sha256"]:
            problems.append(f"{s['key']}: bytes or sha256 differ from the dataset manifest")
            continue
        if sink:
            sink(s, data)
        # No Arrow thread pool: one outliving the interpreter aborts the process at exit (apache/arrow#34314).
        table = pq.read_table(io.BytesIO(data), columns=["item_index"], use_threads=False, pre_buffer=False)
        rows += table.num_rows
        lo, hi = s["covered"]
        for i in set(table.column("item_index").to_pylist()):
            if not lo <= i < hi:
                problems.append(f"{s['key']}: item {i} outside its shard [{lo}, {hi})")
            elif seen[i]:
                problems.append(f"item {i} appears in more than one part")
            else:
                seen[i] = 1
        if on_part:
            on_part(n + 1, len(dataset["shards"]))
        if len(problems) > 20:
            break
    for d in dataset.get("dead_letters", []):
        if seen[d["index"]]:
            problems.append(f"dead-lettered item {d['index']} also has rows")
        seen[d["index"]] = 1
    missing = total - sum(seen)
    if missing and len(problems) <= 20:
        first = seen.index(0)
        problems.append(f"{missing} planned items have no rows and no dead letter (first: index {first})")
    if rows != dataset["rows"]:
        problems.append(f"the parts hold {rows} rows, the manifest says {dataset['rows']}")
    if problems:
        raise CorruptObject("dataset does not verify: " + "; ".join(problems[:20]))
    return {"items": total, "rows": rows, "parts": len(dataset["shards"]),
            "dead_letters": len(dataset.get("dead_letters", []))}
