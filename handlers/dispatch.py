"""The one dispatch entry point: the local simulation and the cloud function both call `dispatch`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from events import keys
from events.errors import BucketrunError
from events.storage import Bucket

from .intake import IntakeOutcome, intake
from .launch import Launcher
from .records import ObjectRecord, parse_s3_event

log = logging.getLogger("bucketrun.dispatch")


@dataclass
class DispatchContext:
    bucket: Bucket
    launcher: Launcher
    writer: str


def route(record: ObjectRecord, bucket: Bucket) -> str | None:
    """The bucket-relative inbox key this record asks us to take in, or None if we do not own it."""
    if record.bucket and bucket.name != "local" and record.bucket != bucket.name:
        return None
    key = bucket.relative_key(record.key)
    return key if key is not None and keys.is_inbox_manifest(key) else None


def dispatch(event: dict[str, Any], ctx: DispatchContext) -> list[IntakeOutcome]:
    """Handle every record; failures are raised after the rest are done, so the platform retries them."""
    outcomes: list[IntakeOutcome] = []
    errors: list[BucketrunError] = []
    for record in parse_s3_event(event):
        key = route(record, ctx.bucket)
        if key is None:
            continue
        try:
            outcome = intake(ctx.bucket, key, ctx.launcher, ctx.writer)
        except BucketrunError as exc:
            log.error("intake of %s failed: %s", key, exc)
            errors.append(exc)
            continue
        log.info("%s -> job %s (%s)", key, outcome.job_id, outcome.state)
        outcomes.append(outcome)
    if errors:
        raise errors[0]
    return outcomes
