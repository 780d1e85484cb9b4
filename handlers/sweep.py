"""The sweep: visit every live (non-terminal) job, detect silence past `stall_after`, ask the backend, and write
what it found as a transition. `decide` is pure; `sweep_job` applies it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from bucketrun.events import codec, keys, stages
from bucketrun.events.envelope import Resources
from bucketrun.events.errors import BucketrunError, IllegalTransition, NotFound, StaleAttempt
from bucketrun.events.failures import FailureClass, error_detail
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.lifecycle import JobState, JobView, append_transition, live_jobs, read_view, unmark_live
from bucketrun.events.manifest import ManifestRejected
from bucketrun.events.progress import read_progress
from bucketrun.events.retry import record_failure
from bucketrun.events.storage import Bucket, ObjectInfo

from .fleet_teardown import sweep_fleets
from .host_teardown import sweep_hosts
from .intake import advance, intake
from .launch import backend_id_of
from .launchers.base import BackendStatus, Launcher
from .launchers.routes import Routes, as_routes
from .notify import Notifier, notify_job
from .notify import arm as arm_notice

log = logging.getLogger("bucketrun.sweep")
INTAKE_GRACE_S = 30.0  # a job left in submitted/queued-unclaimed this long lost its dispatcher


class Step(str, Enum):
    NONE = "none"
    ADVANCE = "advance"  # intake stopped midway (submitted, or queued with no launch claim)
    LOST_LAUNCH = "lost_launch"  # a launch was claimed but `launched` never came
    ASK_BACKEND = "ask_backend"  # launched/running and silent past stall_after


@dataclass(frozen=True)
class Decision:
    step: Step
    silent_s: float = 0.0
    why: str = ""


def last_sign_of_life(view: JobView, progress: dict[str, Any] | None) -> datetime:
    latest = view.latest
    assert latest is not None
    signs = [latest.time]
    if progress and progress.get("attempt") == view.attempt and progress.get("updated_at"):
        signs.append(codec.parse_iso(progress["updated_at"]))
    return max(signs)


def decide(view: JobView, progress: dict[str, Any] | None, resources: Resources, now: datetime,
           launch_claimed: bool) -> Decision:
    state = view.state
    if state is None or state.terminal:
        return Decision(Step.NONE)
    silent = (now - last_sign_of_life(view, progress)).total_seconds()
    if state is JobState.SUBMITTED:
        return Decision(Step.ADVANCE, silent) if silent > INTAKE_GRACE_S else Decision(Step.NONE, silent)
    if state is JobState.QUEUED:
        not_before = view.latest.detail.get("retry", {}).get("not_before")
        if not_before and now < codec.parse_iso(not_before):
            return Decision(Step.NONE, silent, "retry backoff")
        if not launch_claimed:
            retry = bool(view.latest.detail.get("retry"))
            return Decision(Step.ADVANCE, silent) if retry or silent > INTAKE_GRACE_S else Decision(Step.NONE)
        if silent > resources.stall_after_s:
            return Decision(Step.LOST_LAUNCH, silent, "launch claimed but never recorded")
        return Decision(Step.NONE, silent)
    if silent > resources.stall_after_s:
        return Decision(Step.ASK_BACKEND, silent, f"silent for {silent:.0f} s (stall_after {resources.stall_after_s:.0f} s)")
    return Decision(Step.NONE, silent)


_BACKEND_CLASSES = {
    BackendStatus.FAILED: (FailureClass.CODE_ERROR, "the backend reports the worker failed without recording why"),
    BackendStatus.TIMED_OUT: (FailureClass.TIMED_OUT, "the backend's execution timeout ended the worker"),
    BackendStatus.UNKNOWN: (FailureClass.LOST, "the backend has no live worker for this attempt (lost or preempted)"),
    BackendStatus.COMPLETED: (FailureClass.LOST, "the backend reports completion but no result reached the bucket"),
    BackendStatus.IN_PROGRESS: (FailureClass.STALL, "the worker is running but silent"),
}


def sweep_job(bucket: Bucket, job_id: str, launchers: Routes | Launcher, writer: str,
              now: datetime | None = None, marker: ObjectInfo | None = None) -> dict[str, Any] | None:
    """One live job: advance it, retry it, or ask its backend. `marker`, its index/live/ entry, lets a job
    that ended (or never began) be dropped from the index: the repair for a writer that died midway."""
    now = now or codec.now()
    view = read_view(bucket, job_id)
    if view.state is None or view.state.terminal:
        return _repair_index(bucket, job_id, view, launchers, writer, now, marker)
    try:
        manifest = load_job_manifest(bucket, job_id)
        resources = manifest.resources
    except NotFound:
        manifest, resources = None, Resources()
    claimed = bucket.exists(keys.launch_claim_key(job_id, view.attempt)) if view.state is JobState.QUEUED else True
    decision = decide(view, read_progress(bucket, job_id), resources, now, claimed)
    if decision.step is Step.NONE:
        return None
    outcome: dict[str, Any] = {"job_id": job_id, "step": decision.step.value, "attempt": view.attempt}
    try:
        if decision.step is Step.ADVANCE:
            if manifest is not None:  # its dispatcher may have died before arming the webhook notice
                arm_notice(bucket, job_id, manifest)
                stages.arm(bucket, job_id, manifest)
            outcome["state"] = advance(bucket, job_id, launchers, writer, view=view).state.value
        elif decision.step is Step.LOST_LAUNCH:
            error = error_detail(FailureClass.LOST, f"{decision.why} after {decision.silent_s:.0f} s",
                                 where="launch")["error"]
            outcome["state"] = record_failure(bucket, job_id, error, writer=writer, attempt=view.attempt,
                                              max_attempts=resources.max_attempts, view=view).state.value
        else:
            launcher = as_routes(launchers).for_job(manifest) if manifest else None
            outcome.update(_ask_backend(bucket, view, launcher, writer, resources, decision))
    except (IllegalTransition, StaleAttempt) as exc:
        outcome["state"] = "moved-on"
        outcome["note"] = str(exc)  # someone else (worker, another sweep) wrote first: nothing to do
    log.info("sweep %s", outcome)
    return outcome


def _repair_index(bucket: Bucket, job_id: str, view: JobView, launchers: Routes | Launcher, writer: str,
                  now: datetime, marker: ObjectInfo | None) -> dict[str, Any] | None:
    """A live marker for an ended job (its writer died after the terminal write) is removed. One for a job
    with no history (its dispatcher died before the first write) gets its intake redone from the inbox."""
    if view.state is not None:
        unmark_live(bucket, job_id)
        return {"job_id": job_id, "step": "unindex", "state": view.state.value}
    marked_at = marker.last_modified if marker is not None else None
    if marked_at is None or (now - marked_at).total_seconds() <= INTAKE_GRACE_S:
        return None
    try:
        inbox_key = codec.loads(bucket.get(keys.intake_key(job_id)).data).get("inbox_key")
    except NotFound:
        inbox_key = None
    if inbox_key and bucket.exists(inbox_key):
        outcome = intake(bucket, inbox_key, launchers, writer)
        return {"job_id": job_id, "step": "re-intake", "state": outcome.state, "inbox": inbox_key}
    unmark_live(bucket, job_id)  # nothing left to take in: the job never came to be
    return {"job_id": job_id, "step": "unindex", "state": None}


def _ask_backend(bucket: Bucket, view: JobView, launcher: Launcher | None, writer: str, resources: Resources,
                 decision: Decision) -> dict[str, Any]:
    backend_id = backend_id_of(view)
    status = launcher.status(backend_id) if backend_id and launcher else BackendStatus.UNKNOWN
    if status is BackendStatus.IN_QUEUE:
        return {"backend": status.value, "state": view.state.value}  # still waiting for capacity
    if status is BackendStatus.CANCELLED:
        t, _ = append_transition(bucket, view.job_id, JobState.CANCELLED, writer=writer, attempt=view.attempt,
                                 view=view, detail={"error": {"class": "cancelled",
                                                              "message": "cancelled at the backend"}})
        return {"backend": status.value, "state": t.state.value}
    cls, message = _BACKEND_CLASSES[status]
    if status is BackendStatus.IN_PROGRESS and backend_id and launcher:
        try:
            launcher.cancel(backend_id)  # a silent worker is stopped before its attempt is retried
        except BucketrunError as exc:
            log.warning("cancel of stalled %s failed: %s", backend_id, exc)
    logs = _logs(launcher, backend_id)
    where = f"; its log: {', '.join(logs[:4])}{' ...' if len(logs) > 4 else ''}" if logs else ""
    error = error_detail(cls, f"{message}; {decision.why}{where}", where="sweep")["error"]
    t = record_failure(bucket, view.job_id, error, writer=writer, attempt=view.attempt,
                       max_attempts=resources.max_attempts, view=view, extra={"backend_status": status.value})
    return {"backend": status.value, "state": t.state.value, "class": cls.value}


def _logs(launcher: Launcher | None, backend_id: str | None) -> list[str]:
    """A launcher that knows where its workers write (a local process's file, an agent's host) says so: the
    failure names it."""
    logs = getattr(launcher, "logs", None)
    if logs is None or not backend_id:
        return []
    try:
        return list(logs(backend_id))
    except BucketrunError as exc:
        log.warning("logs of %s not found: %s", backend_id, exc)
        return []


def sweep(bucket: Bucket, launchers: Routes | Launcher, writer: str, now: datetime | None = None,
          notifier: Notifier | None = None) -> list[dict[str, Any]]:
    """One pass over the live jobs (index/live/) and the owed notices (index/notify/): its cost follows live
    jobs, not the bucket's size. One job's error never stops the pass, and a notice never fails a job."""
    notifier = notifier or Notifier.from_env()
    outcomes = []
    for job_id, marker in live_jobs(bucket):
        try:
            outcome = sweep_job(bucket, job_id, launchers, writer, now, marker)
        except BucketrunError as exc:
            log.error("sweep of %s failed: %s", job_id, exc)
            outcome = {"job_id": job_id, "error": str(exc)}
        if outcome:
            outcomes.append(outcome)

    outcomes += sweep_fleets(bucket, launchers)

    outcomes += sweep_hosts(bucket, launchers)
    for job_id in stages.watched(bucket):  # a next stage its agent did not live to drop
        try:
            owed = stages.submit_next_stage(bucket, job_id)
        except (BucketrunError, ManifestRejected) as exc:
            log.error("next stage of %s not submitted: %s", job_id, exc)
            owed = {"job_id": job_id, "then": "error", "error": str(exc)}
        if owed["then"] != "wait":
            outcomes.append(owed)
    for info in bucket.list(keys.NOTIFY_WATCH):
        job_id = keys.job_id_from_index(info.key, keys.NOTIFY_WATCH)
        if not job_id:
            continue
        try:
            notice = notify_job(bucket, job_id, notifier, writer, now)
        except BucketrunError as exc:
            log.error("notice for %s failed: %s", job_id, exc)
            notice = {"job_id": job_id, "notify": "error", "error": str(exc)}
        if notice:
            outcomes.append(notice)
    return outcomes
