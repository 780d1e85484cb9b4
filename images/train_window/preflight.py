"""A host's preflight for a training window: the dataset and the model cache verified by counts, bytes and
hashes (never by a folder existing), and the environment audited, written to jobs/<id>/preflight/<attempt>/<host>.json.
The window launches only once every named host has passed."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.kinds.train_window import TrainWindowBody
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.storage import Bucket

from ..runtime.agent import host_path
from .audit import audit
from .fingerprint import Verification, verify_dataset, verify_hf_cache

log = logging.getLogger("bucketrun.preflight")


def _verification(v: Verification) -> dict[str, Any]:
    return {"ok": v.ok, "files": v.files, "bytes": v.bytes, "lines": v.lines, "hashed_bytes": v.hashed_bytes,
            "seconds": round(v.seconds, 3), "findings": [dataclasses.asdict(f) for f in v.findings]}


def sync_prefix(bucket: Bucket, prefix: str, dest: Path) -> dict[str, Any]:
    """Download a bucket prefix to `dest` (files whose size already matches are kept; verification decides)."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    fetched = kept = 0
    for info in bucket.list(prefix):
        target = dest / info.key[len(prefix):]
        if target.is_file() and target.stat().st_size == info.size:
            kept += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".bucketrun-partial")
        tmp.write_bytes(bucket.get(info.key).data)
        os.replace(tmp, target)
        fetched += 1
    return {"prefix": prefix, "fetched": fetched, "kept": kept}


def check_host(body: TrainWindowBody, bucket: Bucket | None = None, root: Path | None = None) -> dict[str, Any]:
    """Every check of one host, as a JSON-ready verdict; `ok` only if all passed."""
    started = time.monotonic()
    out: dict[str, Any] = {}
    if body.dataset is not None:
        path = host_path(body.dataset.path, root)
        sync = None
        if body.dataset.prefix and bucket is not None:
            try:
                sync = sync_prefix(bucket, body.dataset.prefix, path)
            except BucketrunError as exc:
                sync = {"error": str(exc)}
        out["dataset"] = {"path": str(path), **_verification(verify_dataset(path, body.dataset.fingerprint))}
        if sync is not None:
            out["dataset"]["sync"] = sync
    if body.model_cache is not None:
        cache = body.model_cache
        path = host_path(cache.cache_dir, root)
        out["model_cache"] = {"path": str(path), "repo_id": cache.repo_id, "mode": cache.mode,
                              **_verification(verify_hf_cache(path, cache.fingerprint, cache.mode))}
        out["model_cache"]["partial"] = any(f["problem"] in ("missing", "missing_blob", "incomplete_blob", "bytes",
                                                            "broken_link", "sha256")
                                            for f in out["model_cache"]["findings"])
    run_dir = host_path(body.checkpoint.run_dir.format(target_step=body.window.target_step), root)
    env = audit(run_dir, body.requirements.model_dump(exclude_none=True))
    out["environment"] = {"ok": env.ok, **env.to_dict()}
    out["ok"] = all(part["ok"] for part in out.values() if isinstance(part, dict))
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def findings_of(verdict: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for part in ("dataset", "model_cache", "environment") for f in (verdict.get(part) or {}).get("findings", [])]


def run_preflight(bucket: Bucket, job_id: str, attempt: int, label: str, root: Path | None = None) -> dict[str, Any]:
    manifest = load_job_manifest(bucket, job_id)
    body: TrainWindowBody = manifest.body  # type: ignore[assignment]
    verdict = check_host(body, bucket, root)
    write_verdict(bucket, job_id, attempt, label, verdict)
    log.info("preflight on %s: %s", label, "passed" if verdict["ok"] else f"{len(findings_of(verdict))} findings")
    return {"job_id": job_id, "attempt": attempt, "host": label, "ok": verdict["ok"]}


def write_verdict(bucket: Bucket, job_id: str, attempt: int, label: str, verdict: dict[str, Any]) -> None:
    """jobs/<id>/preflight/<attempt>/<host>.json: one per attempt, so the report can tell every attempt's story."""
    record = {"job_id": job_id, "attempt": attempt, "host": label, "agent": os.environ.get("BUCKETRUN_AGENT_ID"),
              "at": codec.iso(codec.now()), **verdict}
    bucket.put(keys.preflight_key(job_id, attempt, label), codec.dumps(record), "application/json")


def read_preflight(bucket: Bucket, job_id: str, label: str, attempt: int) -> dict[str, Any] | None:
    """A host's verdict for this attempt, or None while it has not reported."""
    try:
        return codec.loads(bucket.get(keys.preflight_key(job_id, attempt, label)).data)
    except NotFound:
        return None
