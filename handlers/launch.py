"""Launching an attempt on GPU capacity: the launcher interface and the one guarded launch step."""

from __future__ import annotations

from typing import Protocol

from events import codec, keys
from events.errors import BucketrunError, PreconditionFailed
from events.failures import FailureClass, error_detail
from events.lifecycle import JobState, JobView, append_transition
from events.storage import Bucket


class LaunchError(BucketrunError):
    """The capacity provider refused or failed the launch; `cls` says whether a retry can help."""

    def __init__(self, message: str, cls: FailureClass = FailureClass.OTHER):
        super().__init__(message)
        self.cls = cls


class Launcher(Protocol):
    name: str

    def launch(self, bucket_url: str, job_id: str, attempt: int) -> str:
        """Start the worker for this attempt; returns the backend's id for it. The input names only the job."""
        ...


def launch_attempt(bucket: Bucket, view: JobView, launcher: Launcher, writer: str) -> JobView | None:
    """Launch the job's current attempt once, however many dispatchers race here.

    A create-if-absent claim per attempt picks the one dispatcher that calls the launcher; the others
    return None and leave the `launched` transition to the winner.
    """
    job_id, attempt = view.job_id, view.attempt
    claim = {"writer": writer, "at": codec.iso(codec.now()), "launcher": launcher.name}
    try:
        bucket.create(keys.launch_claim_key(job_id, attempt), codec.dumps(claim), "application/json")
    except PreconditionFailed:
        return None
    try:
        backend_id = launcher.launch(bucket.url, job_id, attempt)
    except LaunchError as exc:
        detail = error_detail(exc.cls, f"launch on {launcher.name} failed: {exc}", where="launch")
        _, view = append_transition(bucket, job_id, JobState.FAILED, writer=writer, attempt=attempt,
                                    expect=JobState.QUEUED, detail=detail)
        return view
    _, view = append_transition(bucket, job_id, JobState.LAUNCHED, writer=writer, attempt=attempt,
                                expect=JobState.QUEUED,
                                detail={"backend": launcher.name, "backend_id": backend_id})
    return view
