"""Garbage collection of the inbox: remove inbox objects whose jobs ended long ago.

Users' drops are never removed by intake, so without this every poll of an s3:// inbox lists every manifest
ever dropped. An object goes only when intake has taken it in, its job is terminal, and the job's newest event is
older than the cutoff: never one whose job is live, and never one with no job yet (a dispatcher has still to take
it in). Removing it cannot make intake create a job again, since nothing sees it again. `survey` reads what one
object's verdict needs, `decide` is pure, `apply` deletes; `collect` runs them object by object, so the gap between
reading an object and deleting it is a few requests long.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from bucketrun.events import codec, keys
from bucketrun.events.envelope import MAX_MANIFEST_BYTES
from bucketrun.events.errors import CorruptObject, NotFound
from bucketrun.events.lifecycle import JobState, Transition
from bucketrun.events.storage import Bucket, ObjectInfo

from .intake import decide_intake

log = logging.getLogger("bucketrun.gc")


@dataclass(frozen=True)
class InboxEntry:
    """What gc learned about one inbox object. Fields past `last_modified` stay None when it did not look."""

    key: str
    last_modified: datetime | None
    job_id: str | None = None  # the job intake made of it; None: no intake claim, not taken in yet
    state: JobState | None = None  # the job's state; None: no history yet
    ended_at: datetime | None = None  # the time of the job's newest event
    problem: str | None = None  # a claim or event that could not be read: the object is kept


class Verdict(str, Enum):
    REMOVE = "remove"
    RECENT = "recent"  # the object itself is newer than the cutoff, so its job cannot have ended before it
    NOT_TAKEN_IN = "not taken in"  # no job yet: a dispatcher has still to take it in
    LIVE = "live"
    ENDED_RECENTLY = "ended recently"
    UNREADABLE = "unreadable"


def decide(entry: InboxEntry, cutoff: datetime) -> Verdict:
    """Remove only an object whose job is terminal and whose newest event is older than `cutoff`."""
    if entry.last_modified is not None and entry.last_modified >= cutoff:
        return Verdict.RECENT
    if entry.problem is not None:
        return Verdict.UNREADABLE
    if entry.job_id is None or entry.state is None:
        return Verdict.NOT_TAKEN_IN
    if not entry.state.terminal:
        return Verdict.LIVE
    if entry.ended_at is None or entry.ended_at >= cutoff:
        return Verdict.ENDED_RECENTLY
    return Verdict.REMOVE


def survey(bucket: Bucket, info: ObjectInfo, cutoff: datetime) -> InboxEntry | None:
    """Find the object's job the way intake named it: the intake identity `decide_intake` gives its bytes (its
    request_id if the manifest is valid and has one, else the object's key and ETag), then that identity's claim
    in index/intake/. An object newer than the cutoff costs nothing; None if it vanished meanwhile."""
    entry = InboxEntry(info.key, info.last_modified)
    if entry.last_modified is not None and entry.last_modified >= cutoff:
        return entry
    if info.size > MAX_MANIFEST_BYTES:  # intake never reads one this large, and names it by key and ETag
        etag, data, size = info.etag, None, info.size
    else:
        try:
            blob = bucket.get(info.key)
        except NotFound:
            return None
        etag, data, size = blob.etag, blob.data, len(blob.data)
    token = decide_intake(info.key, etag, size, data).token
    try:
        job_id = codec.loads(bucket.get(keys.idempotency_key(token)).data)["job_id"]
        latest = _latest_transition(bucket, job_id)
    except NotFound:
        return entry
    except (CorruptObject, KeyError, TypeError) as exc:
        return InboxEntry(info.key, info.last_modified, problem=f"{type(exc).__name__}: {exc}")
    if latest is None:
        return InboxEntry(info.key, info.last_modified, job_id)
    return InboxEntry(info.key, info.last_modified, job_id, latest.state, latest.time)


def _latest_transition(bucket: Bucket, job_id: str) -> Transition | None:
    """The newest event alone: one listing and one read, however long the job's history."""
    newest = None
    for info in bucket.list(keys.events_prefix(job_id)):
        if keys.parse_event_key(info.key) is not None:
            newest = info.key
    if newest is None:
        return None
    return Transition.from_json(codec.loads(bucket.get(newest).data), newest)


def apply(bucket: Bucket, entry: InboxEntry) -> None:
    bucket.delete(entry.key)
    log.info("removed %s (job %s, %s)", entry.key, entry.job_id, entry.state.value if entry.state else "-")


def collect(bucket: Bucket, cutoff: datetime, dry_run: bool = False) -> Iterator[tuple[InboxEntry, Verdict]]:
    """Every inbox manifest with its verdict, removing (unless `dry_run`) each one the verdict allows."""
    for info in bucket.list(keys.INBOX):
        if not keys.is_inbox_manifest(info.key):
            continue  # intake ignores it, so no job will ever vouch for it: not ours to remove
        entry = survey(bucket, info, cutoff)
        if entry is None:
            continue
        verdict = decide(entry, cutoff)
        if verdict is Verdict.REMOVE and not dry_run:
            apply(bucket, entry)
        yield entry, verdict
