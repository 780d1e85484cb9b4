"""The one guarded launch step: however many dispatchers race, each attempt is launched once."""

from __future__ import annotations

import logging

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, IllegalTransition, NotFound, PreconditionFailed
from bucketrun.events.failures import FailureClass, error_detail
from bucketrun.events.lifecycle import JobState, JobView, append_transition
from bucketrun.events.manifest import Resources, load_job_manifest
from bucketrun.events.retry import record_failure
from bucketrun.events.storage import Bucket

from .launchers.base import BackendStatus, Launcher, LaunchError

log = logging.getLogger("bucketrun.launch")


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
