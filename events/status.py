"""One job's status as scripts see it (`bucketrun status --json`), derived from its log and progress."""

from __future__ import annotations

from typing import Any

from . import codec, keys
from .errors import NotFound, UnknownJob
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


def attempt_outcome(history: list[Any], attempt: int) -> dict[str, Any]:
    """How attempt `attempt` ended, as the transition log tells it: failed, retried after a failure (the next
    attempt's `queued` carries it), or the last state it reached."""
    mine = [t for t in history if t.attempt == attempt]
    failed = next((t for t in reversed(mine) if t.state.value == "failed"), None)
    retry = next((t.detail["retry"] for t in history if t.attempt == attempt + 1 and t.state.value == "queued"
                  and isinstance(t.detail.get("retry"), dict)), None)
    error = (failed.detail.get("error") if failed else None) or (retry or {}).get("error") or {}
    state = "failed" if failed else "retried" if retry is not None else (mine[-1].state.value if mine else "unknown")
    return {"outcome": state, "failure": {k: error.get(k) for k in ("class", "message", "where")} if error else None}


WAITING = "waiting"  # not a lifecycle state: a manifest in the inbox that no dispatcher has taken in yet


def waiting_in_inbox(bucket: Bucket, job_id: str) -> str | None:
    """The inbox key of a job dropped under its own id (as `bucketrun submit` names it) that has no history
    yet, or None. Says "no dispatcher has taken it" instead of "no such job"."""
    if not keys.is_job_id(job_id):
        return None
    key = keys.inbox_key(f"{job_id}.json")
    return key if bucket.exists(key) else None


def final_progress(view: JobView, progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """A succeeded job's progress is final: 100%, and a training window's step is the one its gate passed at.
    The last heartbeat (`training: step 9/10`, 82%) was written before the gate and the mirror."""
    latest = view.latest
    if latest is None or latest.state is not JobState.SUCCEEDED:
        return progress
    step = (latest.detail.get("gate") or {}).get("step")
    target = (latest.detail.get("mirror") or {}).get("step", step)
    stage = f"training: step {step}/{target}" if step is not None else "succeeded"
    return {**(progress or {}), "attempt": view.attempt, "stage": stage, "percent": 100.0, "eta_s": 0.0,
            "updated_at": latest.at, "final": True}


def window_outputs(view: JobView) -> dict[str, Any] | None:
    """Where a training window's report and verified mirror are, once it has ended with one."""
    latest = view.latest
    if latest is None or latest.state is not JobState.SUCCEEDED or "mirror" not in latest.detail:
        return None
    return {"report": keys.report_key(view.job_id), "report_json": keys.report_json_key(view.job_id),
            "mirror": latest.detail["mirror"]}


def host_teardown(bucket: Bucket, job_id: str) -> dict[str, Any] | None:
    """What became (or is to become) of a window's rented host: pending approval, done or dropped."""
    try:
        return codec.loads(bucket.get(keys.host_teardown_record_key(job_id)).data)
    except NotFound:
        return None


READ = object()  # job_status's default: read the progress object; a caller that already holds it passes it


def job_status(bucket: Bucket, job_id: str, view: JobView | None = None, progress: Any = READ) -> dict[str, Any]:
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
    progress = read_progress(bucket, job_id) if progress is READ else progress
    if progress is not None and progress.get("attempt") != view.attempt:
        progress = None  # a stale attempt's progress says nothing about this one
    return {
        "job_id": job_id,
        "state": latest.state.value,
        "attempt": view.attempt,
        "updated_at": latest.at,
        "submitted_at": view.history[0].at,
        "progress": final_progress(view, progress),
        "artifacts": artifacts_of(view),
        "error": error_of(view),
        "terminal": latest.state.terminal,
        **({"window": {**window_outputs(view), "teardown": host_teardown(bucket, job_id)}}
           if window_outputs(view) else {}),
    }
