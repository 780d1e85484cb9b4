"""One contract, every backend: the folder, S3 over boto3, and S3 over aioboto3."""

from __future__ import annotations

import hashlib

import asyncio
import multiprocessing
import os
import random
import threading
import types

import pytest

from bucketrun.events.errors import InvalidKey, NotFound, PreconditionFailed
from bucketrun.events.fleet.plan import list_items
from bucketrun.events.storage import local as local_backend
from bucketrun.events.storage import open_bucket, split_s3_url
from bucketrun.events.storage.aio import AsyncLocalBucket
from bucketrun.events.storage.local import LocalBucket
from bucketrun.events.storage.s3_async import AsyncS3Bucket

from conftest import make_s3_bucket


class SyncOverAsync:
    """Drives AsyncS3Bucket from the synchronous contract tests through one event loop thread."""

    def __init__(self, name: str, prefix: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.inner = self._run(AsyncS3Bucket(name, prefix).__aenter__())
        self.url = self.inner.url

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self):
        self._run(self.inner.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def __getattr__(self, op):
        method = getattr(self.inner, op)
        if op == "list":
            async def collect(*a, **kw):
                return [x async for x in method(*a, **kw)]
            return lambda *a, **kw: iter(self._run(collect(*a, **kw)))
        return lambda *a, **kw: self._run(method(*a, **kw))

    def exists(self, key):
        try:
            self.head(key)
            return True
        except NotFound:
            return False


@pytest.fixture(params=["local", "s3", "s3-async"])
def store(request, tmp_path):
    if request.param == "local":
        yield open_bucket(str(tmp_path / "b"))
        return
    request.getfixturevalue("s3_endpoint")
    name = make_s3_bucket()
    if request.param == "s3":
        yield open_bucket(f"s3://{name}/pre/fix")
    else:
        shim = SyncOverAsync(name, "pre/fix/")
        yield shim
        shim.close()


def test_put_get_head_roundtrip(store):
    etag = store.put("a/b.json", b'{"x": 1}', "application/json")
    blob = store.get("a/b.json")
    assert blob.data == b'{"x": 1}' and blob.etag == etag
    info = store.head("a/b.json")
    assert info.size == 8 and info.etag == etag
    assert store.put("a/b.json", b"other") != etag


def test_missing_key_is_not_found(store):
    with pytest.raises(NotFound):
        store.get("nope.json")
    with pytest.raises(NotFound):
        store.head("nope.json")


def test_create_if_absent(store):
    store.create("once.json", b"1")
    with pytest.raises(PreconditionFailed):
        store.create("once.json", b"2")
    assert store.get("once.json").data == b"1"


def test_replace_if_unchanged(store):
    etag = store.put("cas.json", b"v1")
    new = store.replace("cas.json", b"v2", etag)
    with pytest.raises(PreconditionFailed):
        store.replace("cas.json", b"v3", etag)  # stale ETag
    assert store.get("cas.json").data == b"v2"
    store.replace("cas.json", b"v3", new)
    assert store.get("cas.json").data == b"v3"


def test_replace_missing_key_fails_precondition(store):
    # If-Match on a missing key is a lost compare-and-swap (S3 answers 412, or 404 which we translate).
    with pytest.raises(PreconditionFailed):
        store.replace("ghost.json", b"x", '"0123456789abcdef0123456789abcdef"')
    assert not store.exists("ghost.json")


def test_list_is_lexicographic_by_prefix_and_start_after(store):
    names = ["jobs/b/2", "jobs/a/1", "jobs/a/10", "jobs/a/2", "inbox/x.json", "jobs/é/1", "jobs/Z/1"]
    for n in names:
        store.put(n, n.encode())
    listed = [i.key for i in store.list("jobs/")]
    assert listed == sorted((n for n in names if n.startswith("jobs/")), key=lambda s: s.encode())
    assert [i.key for i in store.list("jobs/a/")] == ["jobs/a/1", "jobs/a/10", "jobs/a/2"]
    assert [i.key for i in store.list("jobs/a/", start_after="jobs/a/10")] == ["jobs/a/2"]
    assert [i.key for i in store.list("jobs/a")] == ["jobs/a/1", "jobs/a/10", "jobs/a/2"]
    assert all(i.etag and i.size > 0 for i in store.list("jobs/"))


# Valid on every backend (no key is also a folder of keys), and each pair straddles "/" (0x2F) in byte order:
# "a!", "a+", "a-", "a.b" sort before the folder "a/", "a0" and "ab" after it; then non-ASCII, where UTF-8 byte
# order puts U+E000 before U+FB00 before U+1F600 (UTF-16 order would put the emoji first).
TRICKY = ["t/a.b", "t/a/b", "t/a/b.c", "t/a/c/d", "t/a0", "t/a-", "t/a!/x", "t/a+b", "t/ab/x", "t/a b", "t/A",
          "t/~", "t/é/x", "t/e", "t/\ue000", "t/\U0001f600", "t/\ufb00/y", "t/a.b.c/x", "t/a~/z", "t/Z"]


def _byte_order(keys):
    return sorted(keys, key=lambda k: k.encode())


def test_list_orders_tricky_names_as_sorted_full_keys(store):
    for n in TRICKY:
        store.put(n, b"x")
    want = _byte_order(TRICKY)
    assert [i.key for i in store.list("t/")] == want
    assert [i.key for i in store.list("t/a")] == [k for k in want if k.startswith("t/a")]
    assert [i.key for i in store.list("t/a/")] == ["t/a/b", "t/a/b.c", "t/a/c/d"]
    for cut in range(len(want)):  # start_after at every key: the folder backend skips whole sub-folders
        assert [i.key for i in store.list("t/", start_after=want[cut])] == want[cut + 1:], want[cut]
    assert [i.key for i in store.list("t/", start_after="t/a/")] == [k for k in want if k > "t/a/"]


def test_local_walk_matches_sorted_keys_of_random_trees(tmp_path):
    """Many random trees of names that straddle "/" in byte order, against sorted() of the full key set."""
    rng = random.Random(7)
    for trial in range(20):
        bucket = LocalBucket(tmp_path / f"r{trial}")
        keys: set[str] = set()
        for _ in range(60):
            key = "/".join("".join(rng.choice("a.-0~é") for _ in range(rng.randint(1, 3)))
                           for _ in range(rng.randint(1, 4)))
            clash = any(k.startswith(key + "/") or key.startswith(k + "/") for k in keys)
            dots = any(part in (".", "..") for part in key.split("/"))
            if key not in keys and not clash and not dots:
                bucket.put(key, b"")
                keys.add(key)
        assert [i.key for i in bucket.list()] == sorted(keys)
        for prefix in ("a", "a.", "a/", "0", "é"):
            assert [i.key for i in bucket.list(prefix)] == sorted(k for k in keys if k.startswith(prefix))
        after = rng.choice(sorted(keys))
        assert [i.key for i in bucket.list(start_after=after)] == sorted(k for k in keys if k > after)


def test_local_list_is_lazy_and_stats_nothing(tmp_path, monkeypatch):
    """The first key comes after opening only the folders on its path, and no file is statted for it."""
    bucket = LocalBucket(tmp_path / "b")
    for d in range(5):
        bucket.put(f"l/{d}/x", b"xyz")
    opened, statted = [], []
    scandir, stat = os.scandir, os.stat
    monkeypatch.setattr(local_backend.os, "scandir", lambda p: opened.append(p) or scandir(p))
    monkeypatch.setattr(local_backend.os, "stat", lambda p, *a, **kw: statted.append(p) or stat(p, *a, **kw))
    it = bucket.list("l/")
    assert isinstance(it, types.GeneratorType) and not opened  # nothing is read until asked
    first = next(it)
    assert first.key == "l/0/x" and len(opened) == 2 and not statted  # "l/" and "l/0/" only
    assert first.size == 3 and first.last_modified is not None and len(statted) == 1
    assert [i.key for i in it] == [f"l/{d}/x" for d in range(1, 5)] and len(opened) == 6


def test_local_list_refuses_paths_outside_the_keys(tmp_path):
    bucket = LocalBucket(tmp_path / "b")
    bucket.put("k", b"1")
    (tmp_path / "outside").write_bytes(b"x")
    assert [i.key for i in bucket.list("../")] == [] and [i.key for i in bucket.list("./")] == []
    assert [i.key for i in bucket.list("/k")] == [] and [i.key for i in bucket.list("k/")] == []
    assert [i.key for i in bucket.list(".bucketrun/")] == [] and [i.key for i in bucket.list()] == ["k"]


def _small_pages(store, monkeypatch, n: int = 2):
    """S3 answers `n` keys per ListObjectsV2 request (MaxKeys), so a few keys make several pages; returns a list
    that records each request's parameters."""
    inner = store.inner if isinstance(store, SyncOverAsync) else store
    k, calls = inner.k, []
    list_params = k.list_params

    def paged(*a):
        calls.append(params := {**list_params(*a), "MaxKeys": n})
        return params
    monkeypatch.setattr(k, "list_params", paged)
    return calls


def _async_view(store):
    """(async bucket, runner): aio.py's wrapper over a sync backend, or the aioboto3 backend on its own loop."""
    if isinstance(store, SyncOverAsync):
        return store.inner, store._run
    return AsyncLocalBucket(store), asyncio.run


def test_listing_streams_page_by_page(store, monkeypatch):
    """Consumed lazily: the first page is in hand after one ListObjectsV2 request, or after walking only the
    folders its keys are in, before the rest of the listing is asked for."""
    names = [f"p/{i}/k" for i in range(5)]
    for n in names:
        store.put(n, b"x")
    local = isinstance(store, LocalBucket)
    if local:
        progress, scandir = [], os.scandir  # folders opened
        monkeypatch.setattr(local_backend.os, "scandir", lambda p: progress.append(p) or scandir(p))
    else:
        progress = _small_pages(store, monkeypatch)  # ListObjectsV2 requests
    bucket, run = _async_view(store)
    if isinstance(bucket, AsyncLocalBucket):
        bucket.page = 2

    async def first_page_then_rest():
        pages = bucket.pages("p/")
        first = await pages.__anext__()
        seen = len(progress)
        return first, seen, [page async for page in pages]

    first, seen, rest = run(first_page_then_rest())
    assert [i.key for i in first] == names[:2] and [[i.key for i in page] for page in rest] == [names[2:4], names[4:]]
    assert (seen, len(progress)) == ((3, 6) if local else (1, 3))  # "p/", "p/0/", "p/1/" of six; 1 of 3 pages
    if not isinstance(store, SyncOverAsync):  # the sync backends' own list() is as lazy
        before = len(progress)
        it = store.list("p/", start_after="p/0/k")
        assert next(it).key == "p/1/k" and len(progress) - before == (3 if local else 1)
        assert [i.key for i in it] == names[2:]


def test_list_items_filters_suffix_as_pages_arrive(store, monkeypatch):
    keys = ["s/a.tar", "s/b.json", "s/c.tar", "s/d/e.tar", "s/tar", "s/x.tar.gz", "s0.tar", "other/z.tar"]
    for k in keys:
        store.put(k, b"x")
    if not isinstance(store, LocalBucket):
        _small_pages(store, monkeypatch)
    bucket, run = _async_view(store)
    if isinstance(bucket, AsyncLocalBucket):
        bucket.page = 2
    assert run(list_items(bucket, "s/", ".tar")) == ["s/a.tar", "s/c.tar", "s/d/e.tar"]
    assert run(list_items(bucket, "s/", None)) == _byte_order(k for k in keys if k.startswith("s/"))
    assert run(list_items(bucket, "s", ".tar")) == ["s/a.tar", "s/c.tar", "s/d/e.tar", "s0.tar"]
    assert run(list_items(bucket, "none/", ".tar")) == []


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_folders_names_each_folder_once_in_order_and_no_plain_key(backend, tmp_path, request):
    """The dashboard finds jobs by folder: one name per folder, however many keys it holds, and not a key
    that only shares the prefix; the base class's fallback over list() says the same."""
    if backend == "local":
        store = open_bucket(str(tmp_path / "b"))
    else:
        request.getfixturevalue("s3_endpoint")
        store = open_bucket(f"s3://{make_s3_bucket()}/pre/fix")
    for key in ["jobs/b/1", "jobs/b/x/2", "jobs/a/1", "jobs/c.json", "jobsx/d/1", "jobs/a0/e"]:
        store.put(key, b"1")
    assert list(store.folders("jobs/")) == ["a", "a0", "b"]
    assert list(type(store).__mro__[1].folders(store, "jobs/")) == ["a", "a0", "b"]  # Bucket's fallback
    assert list(store.folders("none/")) == []


def test_delete_is_idempotent(store):
    store.put("d/x", b"1")
    store.delete("d/x")
    store.delete("d/x")
    assert not store.exists("d/x")
    assert [i.key for i in store.list("d/")] == []


def test_download_streams_to_a_file(store, tmp_path):
    if isinstance(store, SyncOverAsync):
        pytest.skip("the async backend serves fleet workers, which read whole objects")
    data = bytes(range(256)) * 9000  # 2.3 MB: more than one chunk
    etag = store.put("media/big.bin", data)
    dest = tmp_path / "big.bin"
    assert store.download("media/big.bin", dest) == etag
    assert dest.read_bytes() == data
    with pytest.raises(NotFound):
        store.download("media/none.bin", tmp_path / "none.bin")


def test_upload_streams_a_file_in_and_reports_its_progress(store, tmp_path):
    """20 MB: several 1 MiB pieces on the folder, a multipart transfer on S3; the bar sees every byte."""
    if isinstance(store, SyncOverAsync):
        pytest.skip("the async backend serves fleet workers, which never upload files")
    data = hashlib.sha256(b"seed").digest() * (20 * (1 << 20) // 32)
    src = tmp_path / "talk.bin"
    src.write_bytes(data)
    told: list[int] = []
    etag = store.upload("media/talk.bin", src, "audio/ogg", progress=told.append)
    assert store.get("media/talk.bin").data == data and store.head("media/talk.bin").etag == etag
    assert sum(told) == len(data) and len(told) > 1
    assert [i.key for i in store.list("media/")] == ["media/talk.bin"]  # no temporary object left behind


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a"])
def test_invalid_keys_are_refused(store, key):
    with pytest.raises(InvalidKey):
        store.put(key, b"x")


def test_prefix_is_invisible_to_callers(s3_endpoint):
    name = make_s3_bucket()
    a, b = open_bucket(f"s3://{name}/team-a"), open_bucket(f"s3://{name}/team-b")
    a.put("inbox/x.json", b"a")
    assert [i.key for i in a.list("")] == ["inbox/x.json"]
    assert list(b.list("")) == []
    assert a.full_key("inbox/x.json") == "team-a/inbox/x.json"
    assert a.relative_key("team-b/inbox/x.json") is None
    assert split_s3_url("s3://n/p/q/") == ("n", "p/q/")


# -- races between processes ---------------------------------------------------------------------------

N_RACERS = 8


@pytest.fixture(params=["local", "s3", "s3-async"])
def race_url(request, tmp_path):
    """(url, backend) on every backend; an "s3-async" racer opens its own AsyncS3Bucket on the url."""
    if request.param == "local":
        return str(tmp_path / "bucket"), "local"
    request.getfixturevalue("s3_endpoint")  # its PUTs are made atomic, as S3's are (conftest)
    return f"s3://{make_s3_bucket()}/team-a", request.param


def _race(backend, url, barrier, op):
    """Open the racer's own bucket, wait for every racer, then make one conditional write."""
    if backend != "s3-async":
        bucket = open_bucket(url)
        barrier.wait()
        op(bucket)
        return

    async def run():  # its own client in its own event loop, as a fleet worker would have
        async with AsyncS3Bucket(*split_s3_url(url)) as bucket:
            barrier.wait()
            await op(bucket)

    asyncio.run(run())


def _race_create(backend, url, barrier, results, i):
    try:
        _race(backend, url, barrier, lambda b: b.create("race/create.json", f"writer-{i}".encode()))
        results.put(("won", i))
    except PreconditionFailed:
        results.put(("lost", i))


def _race_cas(backend, url, etag, barrier, results, i):
    try:
        _race(backend, url, barrier, lambda b: b.replace("race/cas.json", f"writer-{i}".encode(), etag))
        results.put(("won", i))
    except PreconditionFailed:
        results.put(("lost", i))


def _run_racers(target, *args):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(N_RACERS), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results, i)) for i in range(N_RACERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    return outcomes


def test_race_create_exactly_one_wins(race_url):
    url, backend = race_url
    outcomes = _run_racers(_race_create, backend, url)
    assert sorted(i for _, i in outcomes) == list(range(N_RACERS)), outcomes  # every racer answered
    winners = [i for what, i in outcomes if what == "won"]
    assert len(winners) == 1, outcomes
    assert open_bucket(url).get("race/create.json").data == f"writer-{winners[0]}".encode()


def test_race_compare_and_swap_exactly_one_wins(race_url):
    url, backend = race_url
    etag = open_bucket(url).put("race/cas.json", b"start")
    outcomes = _run_racers(_race_cas, backend, url, etag)
    assert sorted(i for _, i in outcomes) == list(range(N_RACERS)), outcomes  # every racer answered
    winners = [i for what, i in outcomes if what == "won"]
    assert len(winners) == 1, outcomes
    assert open_bucket(url).get("race/cas.json").data == f"writer-{winners[0]}".encode()
