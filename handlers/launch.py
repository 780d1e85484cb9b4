"""The one guarded launch step: however many dispatchers race, each attempt is launched once."""

from __future__ import annotations

import hashlib
import logging

from bucketrun.events import codec, keys
from bucketrun.events.conditional import create_json
from bucketrun.events.errors import BucketrunError, IllegalTransition
from bucketrun.events.failures import error_detail
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.lifecycle import JobState, JobView, append_transition, read_view
from bucketrun.events.manifest import JobManifest
from bucketrun.events.retry import record_failure
from bucketrun.events.storage import Bucket

from .launchers.base import Launcher, LaunchError
from .launchers.routes import Routes, as_routes

log = logging.getLogger("bucketrun.launch")


def backend_id_of(view: JobView) -> str | None:
    """The backend id recorded by the current attempt's `launched` transition."""
    for t in reversed(view.history):
        if t.attempt != view.attempt:
            break
        if t.state is JobState.LAUNCHED:
            return t.detail.get("backend_id")
    return None


def cancel_backend(bucket: Bucket, job_id: str, launchers: Routes | Launcher, backend_id: str) -> None:
    """Stop a job's backend work on the launcher of its kind; best effort: a worker that outlives this stops at
    its next heartbeat, when it sees the job left its attempt."""
    try:
        as_routes(launchers).for_job(load_job_manifest(bucket, job_id)).cancel(backend_id)
    except BucketrunError as exc:
        log.warning("backend cancel of %s failed (the worker stops at its next heartbeat): %s", backend_id, exc)


def handoff(view: JobView, manifest: dict) -> dict:
    """What a launch request may carry besides the job's name: its log up to `queued` and its manifest (which holds
    no secrets: intake refuses them). The worker trusts the manifest only if `launched` carries its sha256."""
    return {"events": [t.to_json() for t in view.history], "manifest": manifest}


def launch_attempt(bucket: Bucket, view: JobView, launchers: Routes | Launcher, writer: str,
                   manifest: JobManifest | None = None) -> JobView | None:
    """Launch the job's current attempt once, however many dispatchers or sweeps race here.

    A create-if-absent claim per attempt picks the one caller that calls the launcher; the others return None
    and leave the `launched` transition to the winner. A refused launch is recorded by its failure class and
    the job's new view returned. The claim carries a write token, so a claim whose
    response was lost (botocore retried and got 412) is still recognised as ours.
    """
    job_id, attempt = view.job_id, view.attempt
    claim = {"writer": writer, "at": codec.iso(codec.now())}
    if not create_json(bucket, keys.launch_claim_key(job_id, attempt), claim).won:
        return None
    if manifest is None:  # intake passes what it just validated; the sweep reads it back
        manifest = load_job_manifest(bucket, job_id)
    body = manifest.to_json()
    launcher = None
    try:
        launcher = as_routes(launchers).for_job(manifest)
        if getattr(launcher, "takes_handoff", False):  # the worker need not read back what we just wrote
            backend_id = launcher.launch(bucket.url, job_id, attempt, manifest, handoff=handoff(view, body))
        else:
            backend_id = launcher.launch(bucket.url, job_id, attempt, manifest)
    except LaunchError as exc:
        where = launcher.name if launcher is not None else f"kind {manifest.kind}"
        error = error_detail(exc.cls, f"launch on {where} failed: {exc}", where="launch")["error"]
        record_failure(bucket, job_id, error, writer=writer, attempt=attempt,
                       max_attempts=manifest.resources.max_attempts, view=view)
        return read_view(bucket, job_id, known=view)  # failed, or queued for a later retry: not launched
    try:
        _, view = append_transition(bucket, job_id, JobState.LAUNCHED, writer=writer, attempt=attempt,
                                    expect=JobState.QUEUED, view=view,
                                    detail={"backend": launcher.name, "backend_id": backend_id,
                                            "manifest_sha256": hashlib.sha256(codec.dumps(body)).hexdigest()})
    except IllegalTransition:
        log.warning("job %s left queued (cancelled?) while launching; cancelling %s", job_id, backend_id)
        try:
            launcher.cancel(backend_id)
        except BucketrunError as exc:
            log.warning("cancel of %s failed: %s", backend_id, exc)
        raise
    return view
