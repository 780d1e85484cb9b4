"""The one dispatch entry point: the local simulation and the cloud function both call `dispatch`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bucketrun.events import keys
from bucketrun.events.errors import BucketrunError, IllegalTransition, UnknownJob
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.storage import Bucket

from .control import cancel
from .intake import IntakeOutcome, intake
from .launch import backend_id_of, cancel_backend
from .launchers.base import Launcher
from .launchers.routes import Routes
from .records import ObjectRecord, parse_records

log = logging.getLogger("bucketrun.dispatch")


@dataclass
class DispatchContext:
    bucket: Bucket
    launchers: Routes | Launcher  # one launcher serves every kind, or Routes picks one per kind
    writer: str


def route(record: ObjectRecord, bucket: Bucket) -> str | None:
    """The bucket-relative key of an inbox manifest or a control request, or None if we do not own it."""
    if record.bucket and bucket.name != "local" and record.bucket != bucket.name:
        return None
    key = bucket.relative_key(record.key)
    if key is None:
        return None
    return key if keys.is_inbox_manifest(key) or keys.job_id_from_cancel_request(key) else None


def dispatch(event: dict[str, Any], ctx: DispatchContext) -> list[IntakeOutcome]:
    """Handle every record; failures are raised after the rest are done, so the platform retries them. Even
    an unexpected error in one record never skips the records after it."""
    outcomes: list[IntakeOutcome] = []
    errors: list[Exception] = []
    for record in parse_records(event):
        key = route(record, ctx.bucket)
        if key is None:
            continue
        try:
            cancel_job = keys.job_id_from_cancel_request(key)
            if cancel_job:
                outcome = _cancel(ctx, key, cancel_job)
            else:
                outcome = intake(ctx.bucket, key, ctx.launchers, ctx.writer,
                                 record.size if isinstance(record.size, int) else None)
        except BucketrunError as exc:
            log.error("intake of %s failed: %s", key, exc)
            errors.append(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a bug must not cost the rest of the batch
            log.exception("intake of %s failed unexpectedly", key)
            errors.append(exc)
            continue
        log.info("%s -> job %s (%s)", key, outcome.job_id, outcome.state)
        outcomes.append(outcome)
    if errors:
        raise errors[0]
    return outcomes


def _cancel(ctx: DispatchContext, key: str, job_id: str) -> IntakeOutcome:
    """A cancel request object: idempotent, so a redelivery or an already-ended job is not an error.
    A job the command line already cancelled still gets its backend job cancelled here."""
    try:
        t = cancel(ctx.bucket, job_id, ctx.writer, ctx.launchers, reason=f"cancel requested by {key}")
        return IntakeOutcome(key, job_id, t.state.value)
    except (IllegalTransition, UnknownJob) as exc:
        view = read_view(ctx.bucket, job_id)
        backend_id = backend_id_of(view) if view.state is JobState.CANCELLED else None
        if backend_id:
            cancel_backend(ctx.bucket, job_id, ctx.launchers, backend_id)
        return IntakeOutcome(key, job_id, None, str(exc))
