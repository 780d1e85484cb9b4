"""The dataset check row by row: real parts (commit.py's to_parquet, the processor schema with its base columns),
real done markers resolved into the dataset body the finalizer writes, on a folder bucket, checked by
verify_dataset (`bucketrun get`) and averify_dataset (the finalizer, async bucket). Each corruption is written
the way it would reach a reader: a part forged with dataset.json rewritten to match it (bytes, sha256, rows)."""

from __future__ import annotations

import asyncio
import hashlib
import re

import pyarrow as pa
import pytest

from bucketrun.events import codec, keys
from bucketrun.events.errors import CorruptObject
from bucketrun.events.fleet.dataset import (averify_dataset, check_marker, check_part_rows,
                                            dataset_body, resolve, verify_dataset)
from bucketrun.events.fleet.plan import Plan
from bucketrun.events.storage import open_bucket
from bucketrun.events.storage.aio import open_async_bucket
from bucketrun.images.fleet.commit import PARQUET, to_parquet
from bucketrun.images.fleet.processors import BASE_COLUMNS, schema_of

OUT = "out/"


class TextProcessor:
    columns = {"text": pa.string()}


SCHEMA = schema_of(TextProcessor())


def per_item(i: int) -> int:
    return i % 3 + 1  # several rows per item, not the same number for each


def rows_of(items, n=per_item) -> list[dict]:
    return [{"item_index": i, "item_row": r, "item": f"it{i}", "error": None, "text": f"t{i}.{r}"}
            for i in items for r in range(n(i))]


def part_key(lo: int, hi: int) -> str:
    return keys.fleet_part_key(OUT, keys.shard_id(lo, hi), 1)


class Fleet:
    """A finished fleet in a folder bucket: a part per committed shard, the markers, dataset.json."""

    def __init__(self, root, total: int, shard_size: int):
        self.bucket = open_bucket(str(root))
        self.plan = Plan(total, shard_size, "items/k", "d" * 64, None, {})
        self.markers: dict[str, dict] = {}

    def put_part(self, key: str, rows: list[dict], schema: pa.Schema = SCHEMA) -> dict:
        data = to_parquet(rows, schema)
        self.bucket.put(key, data, PARQUET)
        return {"key": key, "rows": len(rows), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def commit(self, lo, hi, covered=None, children=(), dead=(), rows=None):
        shard = keys.shard_id(lo, hi)
        part = None
        if covered:
            part = self.put_part(part_key(lo, hi), rows if rows is not None else rows_of(range(*covered)))
        self.markers[shard] = {"shard": shard, "generation": 1, "worker": "w", "covered": covered, "part": part,
                               "items_failed": 0, "children": [list(c) for c in children],
                               "dead": [{"index": i, "item": f"it{i}", "reason": "poison"} for i in dead],
                               "at": codec.iso(codec.now())}

    def finalize(self) -> dict:
        cov = resolve(self.plan, self.markers)
        assert cov.complete
        self.write(dataset_body("J", self.plan, cov, "test"))
        return self.dataset()

    def write(self, body: dict) -> None:
        self.bucket.put(keys.fleet_dataset_key(OUT), codec.dumps(body), "application/json")

    def dataset(self) -> dict:
        return codec.loads(self.bucket.get(keys.fleet_dataset_key(OUT)).data)

    def forge(self, key: str, rows: list[dict], **entry) -> dict:
        """Replace a part's rows and rewrite dataset.json to match: its entry's bytes, sha256 and rows, the
        totals (and any other entry fields given)."""
        body = self.dataset()
        s = next(s for s in body["shards"] if s["key"] == key)
        s.update(self.put_part(key, rows), **entry)
        body["rows"] = sum(s["rows"] for s in body["shards"])
        body["bytes"] = sum(s["bytes"] for s in body["shards"])
        self.write(body)
        return self.dataset()


def standard(root) -> Fleet:
    """12 items in shards of 6: [0,6) drained at 4 with its remainder [4,6) committing 4 and dead-lettering 5;
    [6,12) bisected into [6,9) and [9,12). Items have 1-3 rows each."""
    f = Fleet(root, 12, 6)
    f.commit(0, 6, covered=[0, 4], children=[(4, 6)])
    f.commit(4, 6, covered=[4, 5], dead=[5])
    f.commit(6, 12, children=[(6, 9), (9, 12)])
    f.commit(6, 9, covered=[6, 9])
    f.commit(9, 12, covered=[9, 12])
    return f


A, B, C, D = part_key(0, 6), part_key(4, 6), part_key(6, 9), part_key(9, 12)  # items 0-3, 4, 6-8, 9-11


@pytest.fixture(params=["verify_dataset", "averify_dataset"])
def verify(request):
    """Either reader, on the fleet's folder bucket: the sync one `bucketrun get` uses, the async one the finalizer
    runs before it creates dataset.json."""
    if request.param == "verify_dataset":
        return lambda fleet, dataset: verify_dataset(fleet.bucket, dataset)

    def averify(fleet, dataset):
        async def go():
            async with open_async_bucket(fleet.bucket.url) as b:
                return await averify_dataset(b, dataset)

        return asyncio.run(go())

    return averify


def fails(verify, fleet, dataset, *messages: str) -> str:
    with pytest.raises(CorruptObject) as exc:
        verify(fleet, dataset)
    text = str(exc.value)
    for m in messages:
        assert re.search(m, text), f"{m!r} not in {text!r}"
    return text


def test_the_schema_carries_each_rows_ordinal():
    assert BASE_COLUMNS["item_row"] == pa.int64()
    assert SCHEMA.names[:4] == ["item_index", "item_row", "item", "error"]


def test_a_good_dataset_with_several_rows_per_item_verifies(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    dataset = f.finalize()
    rows = sum(per_item(i) for i in range(12) if i != 5)
    assert dataset["rows"] == rows and len(dataset["shards"]) == 4
    assert verify(f, dataset) == {"items": 12, "rows": rows, "parts": 4, "dead_letters": 1}


def test_rows_out_of_order_are_still_one_item_each(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    f.finalize()
    rows = rows_of(range(6, 9))
    assert verify(f, f.forge(C, rows[::-1]))["rows"] == f.dataset()["rows"]


def test_a_forged_part_repeating_an_item_fails_naming_the_item_and_the_part(tmp_path, verify):
    """The same (item, ordinal) twice in one part, with dataset.json consistent with the forged part: the set of
    item indices per part is unchanged and the row total is summed from the same parts, so only the rows tell."""
    f = standard(tmp_path / "bucket")
    f.finalize()
    rows = rows_of(range(0, 4))
    dup = next(r for r in rows if r["item_index"] == 2 and r["item_row"] == 1)
    dataset = f.forge(A, rows + [dup])
    s = next(s for s in dataset["shards"] if s["key"] == A)
    data = f.bucket.get(A).data
    assert (s["bytes"], s["sha256"], s["rows"]) == (len(data), hashlib.sha256(data).hexdigest(), len(rows) + 1)
    assert dataset["rows"] == sum(s["rows"] for s in dataset["shards"])
    fails(verify, f, dataset, re.escape(f"item 2 ('it2') appears twice (ordinal 1) in part {A}"))


def test_an_item_with_a_gap_in_its_ordinals_fails(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    f.finalize()
    rows = [r for r in rows_of(range(9, 12)) if (r["item_index"], r["item_row"]) != (11, 1)]  # 11 has 0, 1, 2
    fails(verify, f, f.forge(D, rows),
          re.escape(f"item 11 ('it11') in part {D} has ordinals 0, 2, not 0..1: ordinal 1 is missing"))


def test_an_item_in_two_parts_fails_naming_both(tmp_path, verify):
    """dataset.json forged so two entries' covered ranges overlap: each part is correct on its own (its rows are
    exactly its covered range's), only the accounting across parts sees item 3 twice."""
    f = standard(tmp_path / "bucket")
    f.finalize()
    dataset = f.forge(B, rows_of(range(3, 5)), covered=[3, 5])
    fails(verify, f, dataset, re.escape(f"item 3 ('it3') appears in two parts: {A} and {B}"))


def test_an_item_split_across_two_parts_is_a_duplicate(tmp_path, verify):
    """Item 3's two rows divided between two parts (ordinal 0 in its own, ordinal 1 in the next): a duplicate
    naming both parts, whatever each part says of itself."""
    f = standard(tmp_path / "bucket")
    f.finalize()
    three = rows_of([3], n=lambda i: 2)
    f.forge(A, rows_of(range(0, 3)) + three[:1])
    dataset = f.forge(B, three[1:] + rows_of([4]))
    fails(verify, f, dataset,
          re.escape(f"item 3 ('it3') appears in two parts: {A} and {B}"),
          re.escape(f"unplanned item 3 ('it3') in part {B} (outside its covered range [4, 5))"))


def test_an_unplanned_item_fails(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    f.finalize()
    # item 7 belongs to [6,9)'s part; item 40 to no part of a 12-item plan
    dataset = f.forge(A, rows_of(range(0, 4)) + rows_of([7, 40], n=lambda i: 1))
    fails(verify, f, dataset,
          re.escape(f"unplanned item 7 ('it7') in part {A} (outside its covered range [0, 4))"),
          re.escape(f"unplanned item 40 ('it40') in part {A} (outside the plan's [0, 12))"))


def test_a_missing_item_fails(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    f.finalize()
    dataset = f.forge(C, rows_of([6, 8]))  # item 7 lost from its own part
    fails(verify, f, dataset, re.escape(f"missing item 7 in part {C}"),
          re.escape("1 planned items have no rows and no dead letter: missing item 7"))


def test_missing_planned_items_fail_when_a_part_is_left_out_of_the_manifest(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    dataset = f.finalize()
    dataset["shards"] = [s for s in dataset["shards"] if s["key"] != C]
    dataset["rows"] = sum(s["rows"] for s in dataset["shards"])
    fails(verify, f, dataset, re.escape("3 planned items have no rows and no dead letter: missing item 6, 7, 8"))


def test_a_dead_lettered_item_that_also_has_rows_fails(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    dataset = f.finalize()
    dataset["dead_letters"].append({"index": 1, "item": "it1", "reason": "poison"})
    fails(verify, f, dataset, re.escape(f"dead-lettered item 1 ('it1') also has rows in part {A}"))


def test_a_part_whose_bytes_differ_from_the_manifest_fails(tmp_path, verify):
    """The same items and ordinals, other contents: a valid part, just not the one dataset.json names."""
    f = standard(tmp_path / "bucket")
    dataset = f.finalize()
    f.put_part(C, [{**r, "text": "other"} for r in rows_of(range(6, 9))])
    fails(verify, f, dataset, re.escape(f"part {C}: bytes or sha256 differ from the dataset manifest"))


def test_a_missing_part_object_fails(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    dataset = f.finalize()
    f.bucket.delete(D)
    fails(verify, f, dataset, re.escape(f"part {D} is missing from the bucket"),
          re.escape("missing item 9, 10, 11"))


def test_a_part_without_the_ordinal_column_fails(tmp_path, verify):
    f = standard(tmp_path / "bucket")
    f.finalize()
    old = pa.schema([fld for fld in SCHEMA if fld.name != "item_row"])
    body = f.dataset()
    s = next(s for s in body["shards"] if s["key"] == C)
    s.update(f.put_part(C, [{k: v for k, v in r.items() if k != "item_row"} for r in rows_of(range(6, 9))], old))
    f.write(body)
    fails(verify, f, f.dataset(), re.escape(f"part {C} has no item_row column"))


def test_rows_without_an_ordinal_fail(tmp_path, verify):
    """A worker that does not write item_row yet: to_parquet makes the column null."""
    f = standard(tmp_path / "bucket")
    f.finalize()
    dataset = f.forge(C, [{k: v for k, v in r.items() if k != "item_row"} for r in rows_of(range(6, 9))])
    fails(verify, f, dataset, re.escape(f"part {C}: {sum(per_item(i) for i in range(6, 9))} rows have no "
                                        "item_index or no item_row"))


def test_check_part_rows_is_pure_and_names_each_problem():
    entry = {"key": "P", "covered": [2, 5], "rows": 6}
    assert check_part_rows(entry, [2, 3, 3, 4, 4, 4], [0, 1, 0, 0, 2, 1]) == []
    assert check_part_rows({**entry, "rows": 5}, [2, 3, 3, 4, 4], [0, 0, 1, 0, 0]) == [
        "item 4 appears twice (ordinal 0) in part P"]
    assert check_part_rows({**entry, "rows": 3}, [2, 4, 6], [0, 0, 0], ["a", "b", "c"]) == [
        "unplanned item 6 ('c') in part P (outside its covered range [2, 5))",
        "missing item 3 in part P (in its covered range [2, 5), without rows)"]
    assert check_part_rows({"key": "P", "covered": [2, 10], "rows": 1}, [2], [0]) == [
        "missing item 3 in part P (in its covered range [2, 10), without rows) (7 items of it have none)",
        "missing item 4 in part P", "missing item 5 in part P"]
    assert check_part_rows(entry, [2, 3, 4], [0, 0, 0]) == ["part P holds 3 rows, the manifest says 6"]
    assert check_part_rows({**entry, "rows": 4}, [2, 3, 4, 4], [0, 1, 0, 2]) == [
        "item 3 in part P has ordinals 1, not 0..0: ordinal 0 is missing",
        "item 4 in part P has ordinals 0, 2, not 0..1: ordinal 1 is missing"]
    many = check_part_rows({**entry, "covered": [0, 1], "rows": 30}, list(range(100, 130)), [0] * 30)
    assert len(many) == 11 and many[-1] == "... and 21 more problems in part P"


def test_a_marker_leaving_a_gap_is_refused():
    """Its covered range, dead items and children must tile its shard: a gap would lose items silently."""
    shard = keys.shard_id(0, 10)
    ok = {"covered": [0, 4], "part": {"key": "p"}, "dead": [{"index": 4}], "children": [[5, 10]]}
    assert check_marker(shard, ok) == [(5, 10)]
    gaps = [
        {**ok, "dead": []},  # item 4: neither covered, dead, nor a child's
        {**ok, "children": [[6, 10]]},  # item 5
        {**ok, "children": [[5, 9]]},  # item 9, at the end
        {"covered": None, "part": None, "dead": [], "children": [[0, 3], [4, 10]]},  # a bisection missing 3
        {"covered": [1, 4], "part": {"key": "p"}, "dead": [{"index": 4}], "children": [[5, 10]]},  # item 0
    ]
    for m in gaps:
        with pytest.raises(CorruptObject, match="does not tile"):
            check_marker(shard, m)
    plan = Plan(10, 10, "k", "d" * 64, None, {})
    with pytest.raises(CorruptObject, match="does not tile"):
        resolve(plan, {shard: {**ok, "children": [[6, 10]]}, keys.shard_id(6, 10): {"covered": [6, 10],
                                                                                    "part": {"key": "q"}}})


def test_get_refuses_a_forged_dataset_and_keeps_none_of_its_parts(tmp_path):
    from bucketrun.handlers.cli.common import CliError
    from bucketrun.handlers.cli.get import Fetch, _get_dataset

    f = standard(tmp_path / "bucket")
    f.finalize()
    rows = rows_of(range(6, 9))
    dataset = f.forge(C, rows + rows[:1])
    out = tmp_path / "got"
    out.mkdir()
    with pytest.raises(CliError, match=re.escape(f"item 6 ('it6') appears twice (ordinal 0) in part {C}")):
        _get_dataset(Fetch(f.bucket, out, quiet=True), dataset)
    assert list((out / "parts").iterdir()) == []


def test_averify_reports_progress_in_the_manifests_order(tmp_path):
    f = standard(tmp_path / "bucket")
    dataset = f.finalize()
    seen = []

    async def go():
        async with open_async_bucket(f.bucket.url) as b:
            return await averify_dataset(b, dataset, on_part=lambda n, total: seen.append((n, total)))

    assert asyncio.run(go())["parts"] == 4
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_get_keeps_each_rows_file_when_an_item_has_several_rows(tmp_path):
    """A processor's per-item files (`<name>_key` + `<name>_sha256`): the item's first row's as
    items/<index>.<name>, its further rows' as items/<index>-<ordinal>.<name>, none overwriting another."""
    from bucketrun.handlers.cli.get import Fetch, _get_dataset

    schema = schema_of(type("Files", (), {"columns": {"txt_key": pa.string(), "txt_sha256": pa.string()}})())
    f = Fleet(tmp_path / "bucket", 2, 2)
    rows = []
    for i in range(2):
        for r in range(2):
            data = f"item {i} row {r}".encode()
            f.bucket.put(f"files/{i}-{r}.txt", data)
            rows.append({"item_index": i, "item_row": r, "item": f"it{i}", "error": None,
                         "txt_key": f"files/{i}-{r}.txt", "txt_sha256": hashlib.sha256(data).hexdigest()})
    shard = keys.shard_id(0, 2)
    f.markers[shard] = {"shard": shard, "generation": 1, "worker": "w", "covered": [0, 2], "children": [],
                        "dead": [], "items_failed": 0, "part": f.put_part(part_key(0, 2), rows, schema)}
    out = tmp_path / "got"
    out.mkdir()
    _get_dataset(Fetch(f.bucket, out, quiet=True), f.finalize())
    got = {p.name: p.read_text() for p in (out / "items").iterdir()}
    assert got == {"000000000.txt": "item 0 row 0", "000000000-1.txt": "item 0 row 1",
                   "000000001.txt": "item 1 row 0", "000000001-1.txt": "item 1 row 1"}


# -- parts checked at commit (images/fleet/commit.py) ---------------------------------------------------------

def averify_known(f: Fleet, dataset: dict, known: dict) -> dict:
    async def go():
        async with open_async_bucket(f.bucket.url) as b:
            return await averify_dataset(b, dataset, known=known)

    return asyncio.run(go())


def vouched(dataset: dict) -> dict:
    """What the finalizer takes from markers whose part was checked at commit: each entry, as the marker had it."""
    return {s["key"]: {**s, "ok": True} for s in dataset["shards"]}


def test_a_part_checked_at_commit_is_not_read_again_and_a_stale_check_is_not_trusted(tmp_path):
    """A check record stands in for reading a part only while it matches the part's entry (sha256, bytes, rows,
    covered range): a part forged after its check, with dataset.json rewritten to match, is read and caught."""
    f = standard(tmp_path / "bucket")
    good = f.finalize()
    known = vouched(good)
    for k in (A, C):  # vouched for: the finalizer does not need to read them
        f.bucket.delete(k)
    assert averify_known(f, good, known)["parts"] == 4
    with pytest.raises(CorruptObject, match="missing"):
        averify_known(f, good, {})  # without the records, the deleted parts are missed
    g = standard(tmp_path / "bucket2")
    known = vouched(g.finalize())
    rows = rows_of(range(0, 4))
    forged = g.forge(A, rows + [rows[0]])  # after its check: the record's sha256 no longer matches
    with pytest.raises(CorruptObject, match=re.escape(f"appears twice (ordinal 0) in part {A}")):
        averify_known(g, forged, known)
    with pytest.raises(CorruptObject, match="appears twice"):  # a record that says the check failed is not taken
        averify_known(g, forged, {k: {**r, "ok": False} for k, r in vouched(forged).items()})


def test_a_commit_refuses_rows_that_do_not_check(tmp_path):
    """The worker's own commit runs the row check on the bytes it is about to write: a repeated (item, ordinal)
    never becomes a part or a marker."""
    from bucketrun.events.fleet import claims
    from bucketrun.images.fleet.commit import RowsDoNotCheck, commit_shard

    url = open_bucket(str(tmp_path / "bucket")).url
    rows = rows_of(range(0, 3))

    async def go():
        async with open_async_bucket(url) as b:
            lease = await claims.claim_fresh(b, keys.fleet_lease_key("J", keys.shard_id(0, 3)), "w", 30.0)
            with pytest.raises(RowsDoNotCheck, match=r"item 1 \('it1'\) appears twice"):
                await commit_shard(b, "J", OUT, lease, "w", (0, 3), rows + [rows[1]], SCHEMA)
            assert [o.key async for o in b.list(OUT)] == []
            assert [o.key async for o in b.list(keys.fleet_done_prefix("J"))] == []
            good = await commit_shard(b, "J", OUT, lease, "w", (0, 3), rows, SCHEMA)
            assert good.won and good.marker["part"]["checked"]

    asyncio.run(go())
