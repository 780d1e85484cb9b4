"""Operator actions on a job: cancel (any non-terminal state) and retry (a failed job, as a new attempt)."""

from __future__ import annotations

from bucketrun.events import stages
from bucketrun.events.errors import IllegalTransition, NotFound, UnknownJob
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.lifecycle import JobState, Transition, append_transition, read_view, require_view
from bucketrun.events.status import waiting_in_inbox
from bucketrun.events.storage import Bucket

from .launch import backend_id_of, cancel_backend
from .launchers.base import Launcher
from .launchers.routes import Routes
from .notify import arm as arm_notice


def cancel(bucket: Bucket, job_id: str, writer: str, launchers: Routes | Launcher | None = None,
           reason: str = "cancelled by request") -> Transition:
    """Cancelled is terminal, so the job never launches again; a running worker stops at its next
    heartbeat, and a backend job is cancelled too when a launcher for it is at hand."""
    view = read_view(bucket, job_id)
    if not view.history and waiting_in_inbox(bucket, job_id) is None:
        raise UnknownJob(f"no job {job_id!r} in {bucket.url}")
    if view.state is not None and view.state.terminal:
        raise IllegalTransition(f"job {job_id} is already {view.state.value}")
    if view.state is None:  # still waiting in the inbox: once cancelled, intake finds it ended and never launches
        reason = f"{reason} while waiting in the inbox"
    backend_id = backend_id_of(view) if view.state in (JobState.LAUNCHED, JobState.RUNNING) else None
    transition, _ = append_transition(bucket, job_id, JobState.CANCELLED, writer=writer, view=view,
                                      expect=view.state,
                                      detail={"error": {"class": "cancelled", "message": reason}})
    if launchers is not None and backend_id:
        cancel_backend(bucket, job_id, launchers, backend_id)
    return transition


def retry(bucket: Bucket, job_id: str, writer: str) -> Transition:
    """A failed job goes back to queued as a new attempt; the sweep (or sim) launches it."""
    view = require_view(bucket, job_id)
    if view.state is not JobState.FAILED:
        raise IllegalTransition(f"job {job_id} is {view.state.value if view.state else 'new'}; only a failed "
                                "job can be retried")
    try:  # the retried job will end again, and that end is owed a notice (and any next stage) too
        manifest = load_job_manifest(bucket, job_id)
        arm_notice(bucket, job_id, manifest)
        stages.arm(bucket, job_id, manifest)
    except NotFound:
        pass
    transition, _ = append_transition(bucket, job_id, JobState.QUEUED, writer=writer, view=view,
                                      expect=JobState.FAILED,
                                      detail={"retry": {"attempt": view.attempt, "requested": True,
                                                        "error": (view.latest.detail or {}).get("error")}})
    return transition
