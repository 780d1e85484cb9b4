"""Recording a failure: the one place where a failure's class becomes a retry or a final `failed`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from . import codec
from .failures import FailureClass, backoff_s
from .lifecycle import JobState, JobView, Transition, append_transition, read_view
from .storage import Bucket


def attempt_history(view: JobView) -> list[dict[str, Any]]:
    """Each earlier attempt's failure, from the retry transitions in the log."""
    return [t.detail["retry"] for t in view.history if t.state is JobState.QUEUED and "retry" in t.detail]


def decide_failure(view: JobView, error: dict[str, Any], max_attempts: int) -> JobState:
    """Pure: retry (QUEUED) for a retryable class with attempts left, else FAILED."""
    retryable = FailureClass(error.get("class", "other")).retryable
    return JobState.QUEUED if retryable and view.attempt < max_attempts else JobState.FAILED


def record_failure(bucket: Bucket, job_id: str, error: dict[str, Any], *, writer: str, attempt: int,
                   max_attempts: int, view: JobView | None = None, now: datetime | None = None,
                   extra: dict[str, Any] | None = None) -> Transition:
    """Append the remedy for `error` on behalf of `attempt` (fenced: a stale attempt raises StaleAttempt)."""
    view = view or read_view(bucket, job_id)
    target = decide_failure(view, error, max_attempts)
    now = now or codec.now()
    if target is JobState.QUEUED:
        delay = backoff_s(view.attempt)
        detail = {"retry": {"attempt": view.attempt, "error": error,
                            "not_before": codec.iso(now + timedelta(seconds=delay))}, **(extra or {})}
    else:
        attempts = attempt_history(view) + [{"attempt": view.attempt, "error": error}]
        detail = {"error": {**error, "attempts": len(attempts)}, "attempts": attempts, **(extra or {})}
    transition, _ = append_transition(bucket, job_id, target, writer=writer, attempt=attempt, detail=detail,
                                      view=view)
    return transition
