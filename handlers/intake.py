"""Intake: an inbox object becomes exactly one job, validated, queued and launched.

`decide_intake` and `next_action` are pure; `intake` applies them and re-decides after any lost race.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bucketrun.events import codec, keys, meter, stages
from bucketrun.events.conditional import create_json, create_once, replace_json
from bucketrun.events.envelope import MAX_MANIFEST_BYTES
from bucketrun.events.errors import IllegalTransition, NotFound, StorageError
from bucketrun.events.failures import FailureClass, error_detail
from bucketrun.events.kinds import kind_names
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import JobState, JobView, append_transition, read_view
from bucketrun.events.manifest import JobManifest, ManifestRejected
from bucketrun.events.storage import Bucket

from .launch import launch_attempt
from .launchers.base import Launcher
from .launchers.routes import Routes
from .notify import arm as arm_notice

log = logging.getLogger("bucketrun.intake")


@dataclass(frozen=True)
class IntakeDecision:
    inbox_key: str
    etag: str
    token: str  # the idempotency identity: a request_id, or the inbox object itself
    proposed_job_id: str
    manifest: JobManifest | None  # normalised (defaults filled) when accepted
    rejection: dict[str, Any] | None  # error detail when rejected


def decide_intake(inbox_key: str, etag: str, size: int, raw: bytes | None) -> IntakeDecision:
    """Validate a dropped object. `raw` is None when it was too large to read. Whatever the bytes do to the
    validator, the answer is a decision: an input that breaks it becomes a rejected job, never a lost one."""
    base = posixpath.basename(inbox_key)[: -len(".json")]
    proposed = base if keys.is_job_id(base) else keys.new_job_id()
    token = keys.object_token(inbox_key, etag)
    try:
        if raw is None:
            raise ManifestRejected(f"manifest is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
        manifest = parse_manifest(raw)
    except ManifestRejected as exc:
        detail = error_detail(FailureClass.BAD_INPUT, exc.message[:2000], where=inbox_key, fields=exc.fields)
        kind = _claimed_kind(raw)
        if kind:
            detail["kind"] = kind  # `ls` and the dashboard show what the rejected manifest meant to be
        return IntakeDecision(inbox_key, etag, token, proposed, None, detail)
    except Exception as exc:  # noqa: BLE001 - a validator crash must still leave a rejected job behind
        log.exception("validating %s crashed", inbox_key)
        detail = error_detail(FailureClass.BAD_INPUT, f"manifest could not be validated ({type(exc).__name__})",
                              where=inbox_key)
        return IntakeDecision(inbox_key, etag, token, proposed, None, detail)
    if manifest.request_id:
        token = keys.request_token(manifest.request_id)
    return IntakeDecision(inbox_key, etag, token, proposed, manifest, None)


def _claimed_kind(raw: bytes | None) -> str | None:
    """The `kind` a rejected manifest names, if it names a known one (never arbitrary text from the drop)."""
    try:
        obj = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None
    kind = obj.get("kind") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) and kind in kind_names() else None


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


def claim_job_id(bucket: Bucket, token: str, proposed: str, inbox_key: str) -> tuple[str, bool]:
    """Map an intake identity to one job id, and make sure the job's intake.json records that identity.

    Two create-if-absent writes: index/intake/<token> names the job, jobs/<id>/intake.json owns the id. Every
    call finishes what a crashed one left half done, and an id already owned by another identity (a re-upload
    under the same inbox name) is never adopted: the claim is re-pointed at a fresh id. Returns (job id, whether
    this call created the ownership record, i.e. the job can have no history yet)."""
    ckey = keys.idempotency_key(token)
    first = {"job_id": proposed, "token": token, "inbox_key": inbox_key, "at": codec.iso(codec.now())}
    out = create_json(bucket, ckey, first)
    for _ in range(8):
        claim = out.body
        if claim is None:  # the claim vanished under us (an operator's cleanup): claim again
            out = create_json(bucket, ckey, first)
            continue
        job_id = claim["job_id"]
        owner = create_json(bucket, keys.intake_key(job_id),
                            {"token": token, "inbox_key": claim.get("inbox_key", inbox_key), "at": claim["at"]})
        if owner.won or (owner.body or {}).get("token") == token:
            return job_id, owner.won
        out = replace_json(bucket, ckey, {**claim, "job_id": keys.new_job_id()}, out.etag)  # a new write token too
        if not out.won and out.body is not None and out.body.get("job_id") == job_id:
            raise StorageError(f"{ckey}: cannot re-point the intake claim away from {job_id}")
    raise StorageError(f"{ckey}: intake claim kept moving")


@dataclass
class IntakeOutcome:
    inbox_key: str
    job_id: str | None
    state: str | None
    note: str = ""


def intake(bucket: Bucket, inbox_key: str, launchers: Routes | Launcher, writer: str,
           size_hint: int | None = None) -> IntakeOutcome:
    """`size_hint`, the size the notification reported, saves a HEAD when it is within the limit."""
    with meter.unnamed() as unnamed:  # the inbox read and the identity claim, until the job has its id
        outcome = _intake(bucket, inbox_key, launchers, writer, size_hint, unnamed)
    return outcome


def _intake(bucket: Bucket, inbox_key: str, launchers: Routes | Launcher, writer: str, size_hint: int | None,
            unnamed: dict[str, int]) -> IntakeOutcome:
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
    job_id, fresh = claim_job_id(bucket, decision.token, decision.proposed_job_id, inbox_key)
    meter.give_back(job_id, unnamed)
    unnamed.clear()
    if fresh:  # the submitter's PUT of the inbox object, counted once, by the intake that named the job
        meter.count_for(job_id, meter.A)
    if decision.manifest is not None:
        # Write-once, and the same bytes for every delivery of this identity.
        create_once(bucket, keys.manifest_key(job_id), codec.dumps(decision.manifest.to_json()))
        arm_notice(bucket, job_id, decision.manifest)  # before the job can reach a terminal state
        stages.arm(bucket, job_id, decision.manifest)  # likewise: a next stage is owed once it succeeds
    view = advance(bucket, job_id, launchers, writer, decision, view=JobView(job_id, ()) if fresh else None)
    return IntakeOutcome(inbox_key, job_id, view.state.value if view.state else None)


def advance(bucket: Bucket, job_id: str, launchers: Routes | Launcher, writer: str,
            decision: IntakeDecision | None = None, view: JobView | None = None) -> JobView:
    """Drive a job through intake's states; safe to call any number of times from any number of places.
    `view`: what the caller knows of the log (an empty one for a job it has just claimed)."""
    view = view if view is not None else read_view(bucket, job_id)
    for _ in range(20):
        action = next_action(view, decision)
        if action is None:
            return view
        try:
            if action is Action.LAUNCH:
                manifest = decision.manifest if decision else None
                # Launched, or refused and recorded (failed, or queued with a backoff the sweep honours); None:
                # another dispatcher holds this attempt's launch. Either way intake's part is over.
                return launch_attempt(bucket, view, launchers, writer, manifest) or view
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
    detail: dict[str, Any] = {"inbox": inbox}
    if decision and decision.manifest:
        detail["kind"] = decision.manifest.kind  # `bucketrun ls` shows and filters by it without a manifest read
        if decision.manifest.request_id:
            detail["request_id"] = decision.manifest.request_id  # where the job came from, for `bucketrun ls`
    return JobState.SUBMITTED, detail


def _inbox(decision: IntakeDecision | None) -> dict[str, Any]:
    return {"key": decision.inbox_key, "etag": decision.etag} if decision else {}
