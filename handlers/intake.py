"""Intake: an inbox object becomes exactly one job, validated, queued and launched.

`decide_intake` and `next_action` are pure; `intake` applies them and re-decides after any lost race.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import IllegalTransition, NotFound, PreconditionFailed
from bucketrun.events.failures import FailureClass, error_detail
from bucketrun.events.lifecycle import JobState, JobView, append_transition, read_view
from bucketrun.events.manifest import MAX_MANIFEST_BYTES, ManifestRejected, Resources, parse_manifest
from bucketrun.events.storage import Bucket

from .launch import launch_attempt
from .launchers.base import Launcher
from .notify import arm as arm_notice


@dataclass(frozen=True)
class IntakeDecision:
    inbox_key: str
    etag: str
    token: str  # the idempotency identity: a request_id, or the inbox object itself
    proposed_job_id: str
    manifest: dict[str, Any] | None  # normalised (defaults filled) when accepted
    rejection: dict[str, Any] | None  # error detail when rejected


def decide_intake(inbox_key: str, etag: str, size: int, raw: bytes | None) -> IntakeDecision:
    """Validate a dropped object. `raw` is None when it was too large to read."""
    base = posixpath.basename(inbox_key)[: -len(".json")]
    proposed = base if keys.is_job_id(base) else keys.new_job_id()
    token = f"object:{inbox_key}:{etag}"
    try:
        if raw is None:
            raise ManifestRejected(f"manifest is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
        manifest = parse_manifest(raw)
    except ManifestRejected as exc:
        detail = error_detail(FailureClass.BAD_INPUT, exc.message, where=inbox_key, fields=exc.fields)
        return IntakeDecision(inbox_key, etag, token, proposed, None, detail)
    if manifest.request_id:
        token = f"request:{manifest.request_id}"
    return IntakeDecision(inbox_key, etag, token, proposed, manifest.model_dump(mode="json"), None)


class Action(str, Enum):
    REJECT = "reject"
    SUBMIT = "submit"
    QUEUE = "queue"
    LAUNCH = "launch"


def next_action(view: JobView, decision: IntakeDecision | None = None) -> Action | None:
    """What intake does next for a job in this state; None when intake's part is over."""
    state = view.state
    if state is None:
        if decision is None:
            return None
        return Action.REJECT if decision.rejection else Action.SUBMIT
    return {JobState.SUBMITTED: Action.QUEUE, JobState.QUEUED: Action.LAUNCH}.get(state)


def claim_job_id(bucket: Bucket, token: str, proposed: str, inbox_key: str) -> str:
    """Map an intake identity to one job id, first writer wins (If-None-Match)."""
    ckey = keys.idempotency_key(token)
    body = {"job_id": proposed, "token": token, "inbox_key": inbox_key, "at": codec.iso(codec.now())}
    try:
        etag = bucket.create(ckey, codec.dumps(body), "application/json")
    except PreconditionFailed:
        return codec.loads(bucket.get(ckey).data)["job_id"]
    intake = {"token": token, "inbox_key": inbox_key, "at": body["at"]}
    try:
        bucket.create(keys.intake_key(proposed), codec.dumps(intake), "application/json")
        return proposed
    except PreconditionFailed:
        if codec.loads(bucket.get(keys.intake_key(proposed)).data).get("token") == token:
            return proposed
    # The proposed id (from the inbox name) already belongs to another drop: take a fresh one.
    fresh = keys.new_job_id()
    bucket.replace(ckey, codec.dumps({**body, "job_id": fresh}), etag, "application/json")
    bucket.create(keys.intake_key(fresh), codec.dumps(intake), "application/json")
    return fresh


@dataclass
class IntakeOutcome:
    inbox_key: str
    job_id: str | None
    state: str | None
    note: str = ""


def intake(bucket: Bucket, inbox_key: str, launcher: Launcher, writer: str,
           size_hint: int | None = None) -> IntakeOutcome:
    """`size_hint`, the size the notification reported, saves a HEAD when it is within the limit."""
    try:
        if size_hint is not None and size_hint <= MAX_MANIFEST_BYTES:
            raw = bucket.get(inbox_key)
            size, etag = len(raw.data), raw.etag
        else:
            info = bucket.head(inbox_key)
            raw = bucket.get(inbox_key) if info.size <= MAX_MANIFEST_BYTES else None
            size, etag = info.size, (raw.etag if raw is not None else info.etag)
    except NotFound:
        return IntakeOutcome(inbox_key, None, None, "object vanished before intake")
    data = raw.data if raw is not None and size <= MAX_MANIFEST_BYTES else None
    decision = decide_intake(inbox_key, etag, size, data)
    job_id = claim_job_id(bucket, decision.token, decision.proposed_job_id, inbox_key)
    if decision.manifest is not None:
        try:
            bucket.create(keys.manifest_key(job_id), codec.dumps(decision.manifest), "application/json")
        except PreconditionFailed:
            pass  # written by an earlier delivery; manifests are write-once
        arm_notice(bucket, job_id, decision.manifest)  # before the job can reach a terminal state
    view = advance(bucket, job_id, launcher, writer, decision)
    return IntakeOutcome(inbox_key, job_id, view.state.value if view.state else None)


def advance(bucket: Bucket, job_id: str, launcher: Launcher, writer: str,
            decision: IntakeDecision | None = None) -> JobView:
    """Drive a job through intake's states; safe to call any number of times from any number of places."""
    view = read_view(bucket, job_id)
    for _ in range(20):
        action = next_action(view, decision)
        if action is None:
            return view
        try:
            if action is Action.LAUNCH:
                resources = (Resources.model_validate(decision.manifest.get("resources") or {})
                             if decision and decision.manifest else None)
                launched = launch_attempt(bucket, view, launcher, writer, resources)
                if launched is None:
                    return view  # another dispatcher holds this attempt's launch
                view = launched
                continue
            target, detail = _transition_for(action, decision)
            _, view = append_transition(bucket, job_id, target, writer=writer, detail=detail,
                                        expect=view.state, view=view)
        except IllegalTransition:
            view = read_view(bucket, job_id, known=view)
    return view


def _transition_for(action: Action, decision: IntakeDecision | None) -> tuple[JobState, dict[str, Any]]:
    if action is Action.QUEUE:
        return JobState.QUEUED, {}
    inbox = _inbox(decision)
    if action is Action.REJECT:
        assert decision is not None and decision.rejection is not None
        return JobState.REJECTED, {**decision.rejection, "inbox": inbox}
    return JobState.SUBMITTED, {"inbox": inbox}


def _inbox(decision: IntakeDecision | None) -> dict[str, Any]:
    return {"key": decision.inbox_key, "etag": decision.etag} if decision else {}
