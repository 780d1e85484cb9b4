"""Launching an attempt on GPU capacity: the launcher interface and the one guarded launch step."""

from __future__ import annotations

import logging
from enum import Enum
from typing import Protocol

from events import codec, keys
from events.errors import BucketrunError, IllegalTransition, NotFound, PreconditionFailed
from events.failures import FailureClass, error_detail
from events.lifecycle import JobState, JobView, append_transition
from events.manifest import Resources, load_job_manifest
from events.retry import record_failure
from events.storage import Bucket

log = logging.getLogger("bucketrun.launch")


class LaunchError(BucketrunError):
    """The capacity provider refused or failed the launch; `cls` says whether a retry can help."""

    def __init__(self, message: str, cls: FailureClass = FailureClass.CODE_ERROR):
        super().__init__(message)
        self.cls = cls


class BackendStatus(str, Enum):
    """What a backend says of one launched attempt (Runpod's words, shared by every launcher)."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    UNKNOWN = "UNKNOWN"  # the backend has no such job (lost, expired, or never accepted)


class Launcher(Protocol):
    name: str

    def launch(self, bucket_url: str, job_id: str, attempt: int, resources: Resources) -> str:
        """Start the worker for this attempt; returns the backend's id. The input names only the job."""
        ...

    def status(self, backend_id: str) -> BackendStatus: ...

    def cancel(self, backend_id: str) -> None: ...


def backend_id_of(view: JobView) -> str | None:
    """The backend id recorded by the current attempt's `launched` transition."""
    for t in reversed(view.history):
        if t.attempt != view.attempt:
            break
        if t.state is JobState.LAUNCHED:
            return t.detail.get("backend_id")
    return None


def launch_attempt(bucket: Bucket, view: JobView, launcher: Launcher, writer: str,
                   resources: Resources | None = None) -> JobView | None:
    """Launch the job's current attempt once, however many dispatchers or sweeps race here.

    A create-if-absent claim per attempt picks the one caller that calls the launcher; the others
    return None and leave the `launched` transition to the winner.
    """
    job_id, attempt = view.job_id, view.attempt
    claim = {"writer": writer, "at": codec.iso(codec.now()), "launcher": launcher.name}
    try:
        bucket.create(keys.launch_claim_key(job_id, attempt), codec.dumps(claim), "application/json")
    except PreconditionFailed:
        return None
    if resources is None:  # intake passes what it just validated; the sweep reads it back
        try:
            resources = load_job_manifest(bucket, job_id).resources
        except NotFound:
            resources = Resources()
    try:
        backend_id = launcher.launch(bucket.url, job_id, attempt, resources)
    except LaunchError as exc:
        error = error_detail(exc.cls, f"launch on {launcher.name} failed: {exc}", where="launch")["error"]
        record_failure(bucket, job_id, error, writer=writer, attempt=attempt,
                       max_attempts=resources.max_attempts, view=view)
        return None
    try:
        _, view = append_transition(bucket, job_id, JobState.LAUNCHED, writer=writer, attempt=attempt,
                                    expect=JobState.QUEUED, view=view,
                                    detail={"backend": launcher.name, "backend_id": backend_id})
    except IllegalTransition:
        log.warning("job %s left queued (cancelled?) while launching; cancelling %s", job_id, backend_id)
        try:
            launcher.cancel(backend_id)
        except BucketrunError as exc:
            log.warning("cancel of %s failed: %s", backend_id, exc)
        raise
    return view
