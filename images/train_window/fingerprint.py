"""Compute and verify, on a host, the dataset and model-cache fingerprints of events/fingerprints.py: by counts,
bytes and hashes, never by a folder merely existing. Verifying never raises for a bad dataset or cache; it
returns findings, each a short code plus one sentence naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound
from huggingface_hub.file_download import repo_folder_name

from bucketrun.events.fingerprints import (MAX_FILES, CacheFile, CacheFingerprint, DatasetFile,
                                           DatasetFingerprint, split_of)

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is optional
    import json

    _loads = json.loads

CHUNK = 1 << 20
MAX_LINE_BYTES = 64 << 20  # a longer "line" is a binary file or a runaway record; never held in memory
MAX_BAD_LINES = 5  # bad lines named one by one per file; the rest are counted


class FingerprintError(ValueError):
    """The path given to a fingerprint function cannot be fingerprinted (not a directory, no such repo...)."""


@dataclass
class Finding:
    check: Literal["dataset", "model_cache"]
    path: str
    problem: str  # missing, not_a_file, bytes, sha256, lines, truncated_line, bad_line, min_lines, ...
    expected: str | int | None
    found: str | int | None
    message: str
    line: int | None = None  # 1-based, for bad_line


@dataclass
class Verification:
    ok: bool
    findings: list[Finding] = field(default_factory=list)
    files: int = 0  # files present and read (or sized, in quick mode)
    bytes: int = 0  # bytes of those files
    lines: int = 0  # JSONL lines counted
    seconds: float = 0.0
    hashed_bytes: int = 0  # bytes actually read through sha256: 0 in quick mode


@dataclass
class _Scan:
    bytes: int = 0
    sha256: str = ""
    lines: int = 0
    bad_lines: list[int] = field(default_factory=list)
    bad_count: int = 0
    truncated: bool = False


def _parses(raw: bytes) -> bool:
    try:
        _loads(raw)
    except ValueError:  # orjson.JSONDecodeError, json.JSONDecodeError and UnicodeDecodeError all are
        return False
    return True


def _scan_file(path: Path, jsonl: bool) -> _Scan:
    """Hash a file in 1 MiB chunks; for JSONL also count lines and parse each one, in the same single pass."""
    s = _Scan()
    h = hashlib.sha256()
    carry, overlong, last_ok = b"", False, True

    def line_done(raw: bytes | None) -> None:  # None: a line too long to keep
        nonlocal last_ok
        s.lines += 1
        last_ok = raw is not None and _parses(raw)
        if not last_ok:
            s.bad_count += 1
            if len(s.bad_lines) < MAX_BAD_LINES:
                s.bad_lines.append(s.lines)

    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            s.bytes += len(chunk)
            if not jsonl:
                continue
            parts = (carry + chunk).split(b"\n")
            carry = parts.pop()
            for raw in parts:
                line_done(None if overlong else raw)
                overlong = False
            if len(carry) > MAX_LINE_BYTES:
                carry, overlong = b"", True
    s.sha256 = h.hexdigest()
    if jsonl and (carry or overlong):  # a last line without its newline: the write was cut off
        line_done(None if overlong else carry)
        s.truncated = True
    elif jsonl and s.lines and not last_ok:
        s.truncated = True
    if s.truncated and not last_ok:  # the last line is reported as truncated_line, not also as bad_line
        s.bad_count -= 1
        if s.bad_lines and s.bad_lines[-1] == s.lines:
            s.bad_lines.pop()
    return s


def _dataset_files(root: Path) -> list[str]:
    """Regular files under root (symlinks to files count; symlinked dirs are not walked), hidden ones skipped."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.isfile(os.path.join(dirpath, name)):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def fingerprint_dataset(path: str | Path, min_lines: dict[str, int] | None = None) -> DatasetFingerprint:
    """The contract for a dataset known to be good; refuses one that would fail its own verification."""
    root = Path(path)
    if not root.is_dir():
        raise FingerprintError(f"{root} is not a directory")
    names = _dataset_files(root)
    if not names:
        raise FingerprintError(f"{root} holds no files to fingerprint")
    if len(names) > MAX_FILES:
        raise FingerprintError(f"{root} holds {len(names):,} files, more than {MAX_FILES:,}")
    files = []
    for name in names:
        jsonl = name.endswith(".jsonl")
        s = _scan_file(root / name, jsonl)
        if s.bad_count or s.truncated:
            raise FingerprintError(f"{name}: {s.bad_count:,} bad lines, last line "
                                   f"{'truncated' if s.truncated else 'complete'}; refusing to fingerprint it")
        files.append(DatasetFile(path=name, bytes=s.bytes, sha256=s.sha256, lines=s.lines if jsonl else None))
    try:
        return DatasetFingerprint(files=files, min_lines=dict(min_lines or {}))
    except ValueError as exc:  # pydantic's ValidationError, e.g. min_lines above what is there
        raise FingerprintError(f"{root}: {exc}") from None


def verify_dataset(path: str | Path, fp: DatasetFingerprint) -> Verification:
    """Every fingerprinted file present, with its bytes, sha256 and line count; every JSONL line parses."""
    t0 = time.monotonic()
    root = Path(path)
    v = Verification(ok=False)

    def add(p: str, problem: str, expected, found, message: str, line: int | None = None) -> None:
        v.findings.append(Finding("dataset", p, problem, expected, found, message, line))

    split_lines: dict[str, int] = {}
    for f in fp.files:
        target = root / f.path
        if not target.exists():
            add(f.path, "missing", f"{f.bytes:,} bytes", None, f"{f.path}: missing")
            continue
        if not target.is_file():
            add(f.path, "not_a_file", "a regular file", "a directory" if target.is_dir() else "not a file",
                f"{f.path}: is not a regular file")
            continue
        jsonl = f.path.endswith(".jsonl")  # the contract gives these, and only these, a line count
        try:
            s = _scan_file(target, jsonl)
        except OSError as exc:
            add(f.path, "not_a_file", "a readable file", type(exc).__name__, f"{f.path}: unreadable ({exc.strerror})")
            continue
        v.files += 1
        v.bytes += s.bytes
        v.hashed_bytes += s.bytes
        v.lines += s.lines
        if jsonl:
            split_lines[split_of(f.path)] = split_lines.get(split_of(f.path), 0) + s.lines
        if s.bytes != f.bytes:
            add(f.path, "bytes", f.bytes, s.bytes, f"{f.path}: {s.bytes:,} bytes, expected {f.bytes:,}")
        if s.sha256 != f.sha256:
            add(f.path, "sha256", f.sha256, s.sha256,
                f"{f.path}: sha256 {s.sha256[:12]}…, expected {f.sha256[:12]}…")
        if f.lines is not None and s.lines != f.lines:
            add(f.path, "lines", f.lines, s.lines, f"{f.path}: {s.lines:,} lines, expected {f.lines:,}")
        if s.truncated:
            add(f.path, "truncated_line", "a complete last line ending in a newline", f"line {s.lines:,}",
                f"{f.path}: last line {s.lines:,} is cut off (no trailing newline or not valid JSON)", s.lines)
        for n in s.bad_lines:
            add(f.path, "bad_line", "valid JSON", f"line {n:,}", f"{f.path}: line {n:,} is not valid JSON", n)
        if s.bad_count > len(s.bad_lines):
            add(f.path, "bad_line", "valid JSON", f"{s.bad_count:,} bad lines",
                f"{f.path}: {s.bad_count:,} lines are not valid JSON (first {len(s.bad_lines)} listed)")
    for split, minimum in sorted(fp.min_lines.items()):
        got = split_lines.get(split, 0)
        if got < minimum:
            add(f"{split}.jsonl", "min_lines", minimum, got, f"split {split!r}: {got:,} lines, at least {minimum:,} "
                "needed")
    v.ok = not v.findings
    v.seconds = time.monotonic() - t0
    return v


def hf_repo_folder(cache_dir: str | Path, repo_id: str, repo_type: str = "model") -> Path:
    """Where huggingface_hub keeps a repo: <cache>/models--org--name (its own naming, not re-derived here)."""
    return Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def _about(folder: Path, warning: Exception) -> bool:
    """Whether a scan warning concerns this repo folder (not models--org--name2 beside models--org--name)."""
    return re.search(re.escape(str(folder)) + r"(?![\w.-])", str(warning)) is not None


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def fingerprint_hf_cache(cache_dir: str | Path, repo_id: str, revision: str | None = None,
                         repo_type: Literal["model", "dataset", "space"] = "model") -> CacheFingerprint:
    """The contract for a cached snapshot known to be good: every file of the revision (refs/main's when None)."""
    cache = Path(cache_dir)
    if not cache.is_dir():
        raise FingerprintError(f"{cache} is not a directory")
    folder = hf_repo_folder(cache.resolve(), repo_id, repo_type)  # scan_cache_dir reports resolved paths
    info = scan_cache_dir(cache)
    problems = [str(w) for w in info.warnings if _about(folder, w)]
    if problems:
        raise FingerprintError(f"{repo_type} {repo_id} is damaged in {cache}: {problems[0]}")
    if any(i.file_path.parent == folder / "blobs" for i in info.incomplete_files):
        raise FingerprintError(f"{repo_type} {repo_id} has interrupted downloads (*.incomplete) in {cache}; "
                               "finish or clear them before fingerprinting")
    repo = next((r for r in info.repos if r.repo_id == repo_id and r.repo_type == repo_type), None)
    if repo is None:
        raise FingerprintError(f"{repo_type} {repo_id} is not in {cache}")
    if revision is None:
        rev = repo.refs.get("main")
        if rev is None:
            raise FingerprintError(f"{repo_type} {repo_id} has no refs/main in {cache}; name a revision")
    else:
        rev = next((r for r in repo.revisions if r.commit_hash == revision), None)
        if rev is None:
            raise FingerprintError(f"revision {revision} of {repo_id} is not in {cache}")
    ref = "main" if "main" in rev.refs else (min(rev.refs) if rev.refs else None)
    files = []
    for f in sorted(rev.files, key=lambda f: f.file_path.relative_to(rev.snapshot_path).as_posix()):
        sha, n = _sha256(f.file_path)  # opening the snapshot path follows its symlink(s) to the blob
        files.append(CacheFile(path=f.file_path.relative_to(rev.snapshot_path).as_posix(), bytes=n, sha256=sha))
    if not files:
        raise FingerprintError(f"revision {rev.commit_hash} of {repo_id} has no files in {cache}")
    return CacheFingerprint(repo_id=repo_id, repo_type=repo_type, revision=rev.commit_hash, ref=ref, files=files)


def verify_hf_cache(cache_dir: str | Path, fp: CacheFingerprint,
                    mode: Literal["quick", "full"] = "quick") -> Verification:
    """The snapshot holds every fingerprinted file, linked to a whole blob of the right size (quick) and hash (full).

    scan_cache_dir gives the structure and skips a repo it finds damaged (a broken link, a ref to a missing
    commit), so the files are also checked on disk directly: the findings name the damaged file, not just the repo.
    """
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', not {mode!r}")
    t0 = time.monotonic()
    v = Verification(ok=False)
    name = f"{fp.repo_type} {fp.repo_id}"

    def add(p: str, problem: str, expected, found, message: str) -> None:
        v.findings.append(Finding("model_cache", p, problem, expected, found, message))

    def done() -> Verification:
        v.ok = not v.findings
        v.seconds = time.monotonic() - t0
        return v

    cache = Path(cache_dir)
    folder = hf_repo_folder(cache, fp.repo_id, fp.repo_type)
    if not cache.is_dir():
        add(str(cache), "no_repo", folder.name, None, f"{name}: cache dir {cache} does not exist")
        return done()
    folder = hf_repo_folder(cache.resolve(), fp.repo_id, fp.repo_type)  # scan_cache_dir reports resolved paths
    blobs = folder / "blobs"
    try:
        info = scan_cache_dir(cache)
        incomplete = sorted(i.file_path for i in info.incomplete_files if i.file_path.parent == blobs)
        for w in info.warnings:  # a shared cache's other repos are not this check's business
            if _about(folder, w):
                add(folder.name, "scan_warning", None, type(w).__name__, f"{name}: huggingface_hub says: {w}")
    except (CacheNotFound, OSError, ValueError) as exc:
        incomplete = sorted(blobs.glob("*.incomplete"))
        add(str(cache), "scan_warning", None, type(exc).__name__, f"{name}: scanning {cache} failed: {exc}")
    if not folder.is_dir():
        add(folder.name, "no_repo", folder.name, None, f"{name}: not in the cache ({folder.name} does not exist)")
        return done()
    for p in incomplete:
        add(f"blobs/{p.name}", "incomplete_blob", None, p.stat().st_size if p.exists() else None,
            f"{name}: blobs/{p.name} is an interrupted download")

    if fp.ref is not None:
        ref_file = folder / "refs" / fp.ref
        try:
            points_to = ref_file.read_text().strip()
        except OSError:
            points_to = None
        if points_to != fp.revision:
            add(f"refs/{fp.ref}", "ref_mismatch", fp.revision, points_to,
                f"{name}: refs/{fp.ref} " + (f"points to {points_to}" if points_to else "is missing")
                + f", expected {fp.revision}")

    snapshot = folder / "snapshots" / fp.revision
    if not snapshot.is_dir():
        add(f"snapshots/{fp.revision}", "missing", fp.revision, None,
            f"{name}: revision {fp.revision} is not in the cache")
        return done()
    for f in fp.files:
        p = snapshot / f.path
        if p.is_symlink() and not p.exists():
            first_hop = Path(os.path.abspath(p.parent / os.readlink(p)))
            if first_hop.parent == blobs:
                add(f.path, "missing_blob", f"blobs/{first_hop.name}", None,
                    f"{name}: {f.path} links to blobs/{first_hop.name}, which is missing")
            else:
                add(f.path, "broken_link", "a link into blobs/", os.readlink(p),
                    f"{name}: {f.path} is a broken link to {os.readlink(p)}")
            continue
        if not p.exists():
            add(f.path, "missing", f"{f.bytes:,} bytes", None, f"{name}: {f.path} is missing from the snapshot")
            continue
        if not p.is_file():
            add(f.path, "not_a_file", "a file", "a directory" if p.is_dir() else "not a file",
                f"{name}: {f.path} is not a file")
            continue
        size = p.stat().st_size
        v.files += 1
        v.bytes += size
        if size != f.bytes:
            add(f.path, "bytes", f.bytes, size, f"{name}: {f.path} is {size:,} bytes, expected {f.bytes:,}")
            continue  # the hash cannot match; reading it would only cost time
        if mode == "full":
            try:
                sha, n = _sha256(p)
            except OSError as exc:
                add(f.path, "not_a_file", "a readable file", type(exc).__name__,
                    f"{name}: {f.path} is unreadable ({exc.strerror})")
                continue
            v.hashed_bytes += n
            if sha != f.sha256:
                add(f.path, "sha256", f.sha256, sha,
                    f"{name}: {f.path} has sha256 {sha[:12]}…, expected {f.sha256[:12]}…")
    return done()
