"""One job's status as scripts see it (`bucketrun status --json`), derived from its log and progress."""

from __future__ import annotations

from typing import Any

from . import keys
from .errors import UnknownJob
from .lifecycle import JobState, JobView, read_view
from .progress import read_progress
from .storage import Bucket


def artifacts_of(view: JobView) -> list[dict[str, Any]]:
    latest = view.latest
    if latest is None or latest.state is not JobState.SUCCEEDED:
        return []
    return list(latest.detail.get("artifacts", []))


def error_of(view: JobView) -> dict[str, Any] | None:
    latest = view.latest
    if latest and latest.state in (JobState.FAILED, JobState.REJECTED, JobState.CANCELLED):
        return latest.detail.get("error")
    return None


WAITING = "waiting"  # not a lifecycle state: a manifest in the inbox that no dispatcher has taken in yet


def waiting_in_inbox(bucket: Bucket, job_id: str) -> str | None:
    """The inbox key of a job dropped under its own id (as `bucketrun submit` names it) that has no history
    yet, or None. Says "no dispatcher has taken it" instead of "no such job"."""
    if not keys.is_job_id(job_id):
        return None
    key = keys.inbox_key(f"{job_id}.json")
    return key if bucket.exists(key) else None


def job_status(bucket: Bucket, job_id: str, view: JobView | None = None) -> dict[str, Any]:
    view = view if view is not None else read_view(bucket, job_id)
    if not view.history:
        inbox = waiting_in_inbox(bucket, job_id)
        if inbox is None:
            raise UnknownJob(f"no job {job_id!r} in {bucket.url}")
        return {"job_id": job_id, "state": WAITING, "attempt": 0, "updated_at": None, "submitted_at": None,
                "progress": None, "artifacts": [], "error": None, "terminal": False, "inbox": inbox,
                "note": "waiting in the inbox; no dispatcher has taken it in yet"}
    latest = view.latest
    assert latest is not None
    progress = read_progress(bucket, job_id)
    if progress is not None and progress.get("attempt") != view.attempt:
        progress = None  # a stale attempt's progress says nothing about this one
    return {
        "job_id": job_id,
        "state": latest.state.value,
        "attempt": view.attempt,
        "updated_at": latest.at,
        "submitted_at": view.history[0].at,
        "progress": progress,
        "artifacts": artifacts_of(view),
        "error": error_of(view),
        "terminal": latest.state.terminal,
    }
