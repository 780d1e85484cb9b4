"""The success gate, the mirror and resume. bucketrun reads the progress file itself: the step must be the
target and every required file real; then the run directory goes to the bucket with sha256 and is verified by
listing it back and re-reading every object. A mirror manifest, written last, is what a resume trusts."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.conditional import create_json
from bucketrun.events.errors import NotFound
from bucketrun.events.kinds.train_window import Checkpoint, Mirror
from bucketrun.events.storage import Bucket

from .supervise import PIDFILE, read_step



def required_files(ck: Checkpoint, step: int) -> list[str]:
    return [f.format(target_step=step) for f in ck.required_files]


def gate(run_dir: Path, ck: Checkpoint, target_step: int) -> dict[str, Any]:
    """What the run directory proves: the step, and each required file's bytes (missing or empty fail)."""
    step = read_step(run_dir / ck.progress_file, ck.step_field)
    files, problems = {}, []
    for rel in required_files(ck, target_step):
        p = run_dir / rel
        size = p.stat().st_size if p.is_file() else None
        files[rel] = size
        if size is None:
            problems.append(f"{rel} is missing")
        elif size == 0:
            problems.append(f"{rel} is empty")
    if step is None:
        problems.insert(0, f"{ck.progress_file} is missing or has no '{ck.step_field}'")
    elif step != target_step:
        problems.insert(0, f"{ck.progress_file} reads step {step}, the target is {target_step}")
    return {"passed": not problems, "step": step, "required": files, "problems": problems}


def selected(run_dir: Path, mirror: Mirror) -> list[str]:
    out = []
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if not p.is_file() or p.name == PIDFILE or p.name.endswith(".bucketrun-partial"):
            continue
        if any(fnmatch.fnmatch(rel, g) for g in mirror.include) and not any(fnmatch.fnmatch(rel, g)
                                                                             for g in mirror.exclude):
            out.append(rel)
    return out


def mirror_run_dir(bucket: Bucket, run_dir: Path, mirror: Mirror, job_id: str, attempt: int, step: int,
                   progress: Any = None) -> dict[str, Any]:
    """Upload, list back, re-read and compare, then write the mirror manifest (create-if-absent): the manifest
    exists only for a mirror that verified."""
    prefix = keys.mirror_prefix(job_id, attempt, step)
    files = []
    names = selected(run_dir, mirror)
    for i, rel in enumerate(names):
        data = (run_dir / rel).read_bytes()
        bucket.put(prefix + rel, data)
        files.append({"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        if progress:
            progress(i + 1, len(names))
    problems = verify_mirror(bucket, prefix, files)
    body = {"job_id": job_id, "attempt": attempt, "step": step, "prefix": prefix, "files": files,
            "bytes": sum(f["bytes"] for f in files), "verified": not problems, "problems": problems,
            "at": codec.iso(codec.now())}
    if not problems:
        create_json(bucket, keys.mirror_manifest_key(job_id, attempt, step), body)
    return {**body, "manifest": keys.mirror_manifest_key(job_id, attempt, step) if not problems else None}


def verify_mirror(bucket: Bucket, prefix: str, files: list[dict[str, Any]]) -> list[str]:
    """The listing must hold exactly these keys with these sizes, and every object must hash as uploaded."""
    listed = {i.key[len(prefix):]: i.size for i in bucket.list(prefix)}
    problems = []
    for f in files:
        if f["path"] not in listed:
            problems.append(f"{f['path']} is not in the bucket listing")
        elif listed[f["path"]] != f["bytes"]:
            problems.append(f"{f['path']} lists as {listed[f['path']]} bytes, uploaded {f['bytes']}")
        elif hashlib.sha256(bucket.get(prefix + f["path"]).data).hexdigest() != f["sha256"]:
            problems.append(f"{f['path']} reads back with a different sha256")
    extra = sorted(set(listed) - {f["path"] for f in files})
    if extra:
        problems.append(f"unexpected objects under the mirror: {', '.join(extra[:5])}")
    return problems


def newest_mirror(bucket: Bucket, job_id: str) -> dict[str, Any] | None:
    """The newest verified mirror (highest step; its manifest is written only after verification)."""
    best = None
    for info in bucket.list(keys.mirrors_prefix(job_id)):
        name = info.key[len(keys.mirrors_prefix(job_id)):]
        if "/" in name or not name.endswith(".json"):
            continue
        body = codec.loads(bucket.get(info.key).data)
        if body.get("verified") and (best is None or body["step"] > best["step"]):
            best = body
    return best


def local_checkpoint(run_dir: Path, ck: Checkpoint) -> int | None:
    """The run directory's own checkpoint step, only if its required files are real (not a partial one)."""
    step = read_step(run_dir / ck.progress_file, ck.step_field)
    if step is None:
        return None
    ok = all((run_dir / rel).is_file() and (run_dir / rel).stat().st_size > 0 for rel in required_files(ck, step))
    return step if ok else None


def read_mirror(bucket: Bucket, key: str) -> dict[str, Any] | None:
    try:
        body = codec.loads(bucket.get(key).data)
    except NotFound:
        return None
    return body if body.get("verified") else None


def prepare_resume(bucket: Bucket, job_id: str, run_dir: Path, ck: Checkpoint,
                   resume_from: str | None = None) -> dict[str, Any]:
    """Start from the newest verified checkpoint: the host's own if it is complete and not behind the bucket's,
    else the bucket's mirror (this job's newest, or `resume_from`), downloaded and re-hashed. A partial local
    checkpoint is set aside, never used."""
    run_dir.mkdir(parents=True, exist_ok=True)
    local = local_checkpoint(run_dir, ck)
    mirror = newest_mirror(bucket, job_id)
    if mirror is None and resume_from:
        mirror = read_mirror(bucket, resume_from)
        if mirror is None:
            raise FileNotFoundError(f"resume_from {resume_from} is not a verified mirror manifest")
    progress = run_dir / ck.progress_file
    if local is not None and (mirror is None or local >= mirror["step"]):
        return {"from": "host", "step": local}
    if local is None and progress.exists():
        aside = progress.with_name(progress.name + ".partial")
        os.replace(progress, aside)
    if mirror is None:
        return {"from": "scratch", "step": None, "set_aside_partial": (run_dir / (ck.progress_file + ".partial")).exists()}
    for f in mirror["files"]:
        try:
            data = bucket.get(mirror["prefix"] + f["path"]).data
        except NotFound as exc:
            raise RuntimeError(f"mirror {mirror['prefix']} lost {f['path']}") from exc
        if hashlib.sha256(data).hexdigest() != f["sha256"]:
            raise RuntimeError(f"mirror object {f['path']} does not match its manifest")
        target = run_dir / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".bucketrun-partial")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return {"from": "bucket", "step": mirror["step"], "prefix": mirror["prefix"]}


def clear_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
