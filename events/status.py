"""One job's status as scripts see it (`bucketrun status --json`), derived from its log and progress."""

from __future__ import annotations

from typing import Any

from .lifecycle import JobState, JobView, require_view
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


def job_status(bucket: Bucket, job_id: str, view: JobView | None = None) -> dict[str, Any]:
    view = view or require_view(bucket, job_id)
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
