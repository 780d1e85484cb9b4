"""The plan: the item list and the shard size, written once (create-if-absent) so two planners cannot disagree.

The item list is stored gzipped under a key named by its own sha256; `plan.json` names it. A planner that
loses the create reads the winner's plan and uses that, whatever its own listing said.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any

from .. import aconditional, codec, keys
from ..errors import CorruptObject, JobError, NotFound
from ..kinds.fleet import MAX_ITEM_CHARS

PLAN_VERSION = 1


class PlanError(JobError):
    """The items cannot be planned (missing file, bad line, nothing under the prefix): a config error."""


@dataclass(frozen=True)
class Plan:
    total: int
    shard_size: int
    items_key: str
    items_sha256: str
    source_bucket: str | None  # None: the job's own bucket
    body: dict[str, Any]
    ours: bool = False  # set by write_plan: the plan lists exactly the items this planner passed in

    @property
    def n_shards(self) -> int:
        return math.ceil(self.total / self.shard_size)

    def base_shards(self) -> list[str]:
        """The plan's shard ids, made once: every worker of a process starts from them (10,000 ids at 507,387
        items, 25 workers), and a plan never changes. Callers must not change the list in place."""
        cached = self.__dict__.get("_base_shards")
        if cached is None:
            cached = [keys.shard_id(i * self.shard_size, min((i + 1) * self.shard_size, self.total))
                      for i in range(self.n_shards)]
            object.__setattr__(self, "_base_shards", cached)  # frozen dataclass: a cache, not a field
        return cached

    @classmethod
    def from_json(cls, body: dict[str, Any], key: str = "plan") -> "Plan":
        try:
            return cls(int(body["total"]), int(body["shard_size"]), str(body["items_key"]),
                       str(body["items_sha256"]), body.get("source_bucket"), body)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptObject(f"{key} is not a fleet plan: {exc!r}") from exc


def _item(value: Any, where: str) -> str:
    if isinstance(value, dict):
        value = value.get("item")
    if not isinstance(value, str) or not value or len(value) > MAX_ITEM_CHARS:
        raise PlanError(f"{where}: an item must be a non-empty string of at most {MAX_ITEM_CHARS} characters "
                        "(or an object with one under \"item\")")
    return value


def items_from_jsonl(data: bytes, key: str) -> list[str]:
    items = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = codec.loads(line)
        except CorruptObject as exc:
            raise PlanError(f"{key} line {n}: not JSON") from exc
        items.append(_item(value, f"{key} line {n}"))
    return items


def items_from_parquet(data: bytes, key: str) -> list[str]:
    import pyarrow as pa  # late: pyarrow (heavy, the fleet extra) stays off the dispatch path (intake plans)
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data), columns=["item"], use_threads=False, pre_buffer=False)
    except (pa.ArrowException, KeyError, ValueError) as exc:
        raise PlanError(f"{key}: not a parquet file with an 'item' column ({exc})") from exc
    column = table.column("item")
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise PlanError(f"{key}: the 'item' column must be strings, not {column.type}")
    items = column.to_pylist()
    for n, value in enumerate(items):
        _item(value, f"{key} row {n}")
    return items


def plan_source(items: Any) -> dict[str, Any]:
    """What plan.json records of where the items came from: the manifest's `items`, with an inline list as its
    length (the list itself is the plan's items object)."""
    source = items.model_dump(mode="json", exclude={"inline"})
    if items.inline is not None:
        source["inline"] = len(items.inline)
    return source


async def list_items(source, prefix: str, suffix: str | None) -> list[str]:
    """Every key under the prefix (ending in suffix), in the store's (lexicographic) order. Filtered page by page
    as the listing streams in, so only the kept keys are ever held, not the store's whole listing."""
    items: list[str] = []
    async for page in source.pages(prefix):
        if suffix is None:
            items.extend(o.key for o in page)
        else:
            items.extend(o.key for o in page if o.key.endswith(suffix))
    return items


async def read_items_file(bucket, key: str) -> list[str]:
    try:
        data = (await bucket.get(key)).data
    except NotFound as exc:
        raise PlanError(f"items file {key} does not exist") from exc
    return items_from_parquet(data, key) if key.endswith(".parquet") else items_from_jsonl(data, key)


def encode_items(items: list[str]) -> tuple[bytes, str]:
    blob = gzip.compress(codec.dumps(items), compresslevel=5, mtime=0)  # mtime 0: same items, same bytes
    return blob, hashlib.sha256(blob).hexdigest()


async def write_plan(bucket, job_id: str, items: list[str], shard_size: int, source: dict[str, Any],
                     planner: str) -> Plan:
    """Create the plan, or return the one already there (the first planner wins, the rest follow it: compare
    `plan.ours` says whether the items in hand are the plan's)."""
    blob, digest = encode_items(items)
    items_key = keys.fleet_items_key(job_id, digest)
    await aconditional.create_once(bucket, items_key, blob, "application/gzip")
    body = {"version": PLAN_VERSION, "total": len(items), "shard_size": shard_size,
            "n_shards": math.ceil(len(items) / shard_size), "items_key": items_key, "items_sha256": digest,
            "source": source, "source_bucket": source.get("bucket"), "planner": planner,
            "planned_at": codec.iso(codec.now())}
    out = await aconditional.create_json(bucket, keys.fleet_plan_key(job_id), body)
    if not out.won and out.body is not None and out.body.get("items_key") != items_key:
        try:  # our list lost: remove it, unless the winner's list is byte-identical (same key)
            await bucket.delete(items_key)
        except Exception:  # noqa: BLE001 - an orphan list is harmless; it is only tidied
            pass
    if out.body is None:
        raise CorruptObject(f"{keys.fleet_plan_key(job_id)} vanished while planning")
    return dataclasses.replace(Plan.from_json(out.body), ours=Plan.from_json(out.body).items_sha256 == digest)


async def read_plan(bucket, job_id: str) -> Plan | None:
    body, _ = await aconditional.read_json(bucket, keys.fleet_plan_key(job_id))
    return Plan.from_json(body, keys.fleet_plan_key(job_id)) if body is not None else None


def decode_items(blob: bytes, plan: Plan) -> list[str]:
    if hashlib.sha256(blob).hexdigest() != plan.items_sha256:
        raise CorruptObject(f"{plan.items_key}: sha256 does not match the plan")
    items = codec.loads(gzip.decompress(blob))
    if not isinstance(items, list) or len(items) != plan.total:
        raise CorruptObject(f"{plan.items_key}: holds {len(items)} items, the plan says {plan.total}")
    return items


async def load_items(bucket, plan: Plan) -> list[str]:
    return decode_items((await bucket.get(plan.items_key)).data, plan)
