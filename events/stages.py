"""A training window's next stage (`then`), owed once the window succeeds. Its agent drops it right after
`succeeded`; an index marker, armed at intake, lets the sweep drop it when that agent died in between. The inbox
key and the request id are derived from the job, so both droppers together still make one job."""

from __future__ import annotations

from typing import Any

from . import codec, keys
from .conditional import create_once
from .kinds.train_window import next_stage
from .kinds.validate import load_job_manifest, parse_manifest
from .lifecycle import JobState, read_view
from .manifest import JobManifest
from .storage import Bucket


def owes_next_stage(manifest: JobManifest | None) -> bool:
    return manifest is not None and manifest.kind == "train_window" and manifest.body.then is not None


def arm(bucket: Bucket, job_id: str, manifest: JobManifest | None) -> bool:
    """Mark a window whose manifest names a next stage, before it can succeed (at intake, and again on retry)."""
    if not owes_next_stage(manifest):
        return False
    create_once(bucket, keys.then_watch_key(job_id), codec.dumps({"job_id": job_id, "at": codec.iso(codec.now())}))
    return True


def watched(bucket: Bucket) -> list[str]:
    out = []
    for info in bucket.list(keys.THEN_WATCH):
        job_id = keys.job_id_from_index(info.key, keys.THEN_WATCH)
        if job_id:
            out.append(job_id)
    return out


def submit_next_stage(bucket: Bucket, job_id: str) -> dict[str, Any]:
    """Drop the next stage of a succeeded window (create-once), then stop watching it. A window that ended any
    other way owes nothing until it is retried; one still live is left for a later pass."""
    view = read_view(bucket, job_id)
    if view.state is None or not view.state.terminal:
        return {"job_id": job_id, "then": "wait"}
    if view.state is not JobState.SUCCEEDED:
        bucket.delete(keys.then_watch_key(job_id))
        return {"job_id": job_id, "then": "none", "state": view.state.value}
    manifest = load_job_manifest(bucket, job_id)
    key = None
    if owes_next_stage(manifest):
        mirror = view.latest.detail.get("mirror") or {}
        raw = codec.dumps(next_stage(job_id, manifest.body, mirror))
        parse_manifest(raw)  # intake would reject it the same way; say so here, in the caller's log
        key = keys.then_inbox_key(job_id)
        created = create_once(bucket, key, raw)
    bucket.delete(keys.then_watch_key(job_id))
    return {"job_id": job_id, "then": "submitted" if key and created else "already" if key else "none",
            "inbox": key}
