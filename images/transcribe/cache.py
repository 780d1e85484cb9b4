"""The worker's side of the result cache (events/result_cache.py): look a result up, serve it under a job, and
store a fresh one once, with create-if-absent, so identical jobs racing leave exactly one entry.

An entry points at the producing job's own artifacts (write-once) instead of copying them, so a miss costs one
lookup and one entry; every hit re-checks each file's sha256, and an entry whose files are gone or changed is a
miss that the fresh result replaces (If-Match on the broken entry's ETag)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from pydantic import ValidationError

from bucketrun.events import codec, keys, meter
from bucketrun.events.conditional import create_json, create_once, replace_json
from bucketrun.events.codec import DecodeError
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.result_cache import CacheEntry, CachedFile
from bucketrun.events.storage import Bucket
from bucketrun.images.runtime.attempt import Attempt

log = logging.getLogger("bucketrun.worker")


class BrokenEntry(Exception):
    """An entry whose files are gone (their job's artifacts deleted) or changed: the job transcribes afresh and
    its result replaces the entry."""


def lookup(bucket: Bucket, digest: str, media_sha256: str) -> CacheEntry | None:
    return find(bucket, digest, media_sha256)[0]


def find(bucket: Bucket, digest: str, media_sha256: str) -> tuple[CacheEntry | None, str | None]:
    """(the entry, its ETag) when one is readable; (None, its ETag) when the key holds something unreadable; both
    ETags let a fresh result replace an entry found broken. (None, None) when there is none."""
    try:
        blob = bucket.get(keys.transcript_cache_entry_key(digest, media_sha256))
    except NotFound:
        return None, None
    try:
        return CacheEntry.model_validate(codec.loads(blob.data)), blob.etag
    except (DecodeError, ValidationError) as exc:
        log.warning("cache entry for %s… is unreadable (%s); transcribing afresh", media_sha256[:12], exc)
        return None, blob.etag


def lookup_alias(bucket: Bucket, digest: str, media_id: str) -> str | None:
    """The sha256 of the media a site extractor's id was last fetched as, if any job recorded it."""
    try:
        return str(codec.loads(bucket.get(keys.transcript_cache_alias_key(digest, media_id)).data)["media_sha256"])
    except NotFound:
        return None
    except (DecodeError, KeyError, TypeError):
        return None


def read_files(bucket: Bucket, entry: CacheEntry, formats: list[str]) -> dict[str, tuple[bytes, str]]:
    """The requested formats of an entry as (bytes, content type), each checked against the entry's sha256: a
    cached result is served only as the bytes it was stored with. BrokenEntry if one is missing or changed."""
    by_format = {f.format: f for f in entry.files}
    out = {}
    for fmt in formats:
        record = by_format.get(fmt)
        if record is None:
            raise BrokenEntry(f"the entry has no {fmt} file")
        try:
            data = bucket.get(record.key).data
        except NotFound as exc:
            raise BrokenEntry(f"{record.key} is missing") from exc
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise BrokenEntry(f"{record.key} does not match its sha256")
        out[fmt] = (data, record.content_type)
    return out


def serve(ctx: Attempt, entry: CacheEntry, formats: list[str]) -> None:
    """Copy the requested formats under the job's own attempt prefix, all checked before any is written, so the
    job's outputs are its own (status, fetch, webhooks see them as any job's) and outlive the producer's."""
    with meter.charged_to(ctx.job_id):  # the producer's artifact keys name the producer; these reads are ours
        files = read_files(ctx.bucket, entry, formats)
    for fmt, (data, content_type) in files.items():
        ctx.put_artifact(f"transcript.{fmt}", data, content_type, format=fmt)


def store(bucket: Bucket, job_id: str, attempt: int, digest: str, media_sha256: str, media_id: str | None,
          options: dict[str, Any], rendered: dict[str, tuple[bytes, str]], summary: dict[str, Any],
          artifacts: list[dict[str, Any]] = (), broken_etag: str | None = None) -> dict[str, Any]:
    """The entry (create-if-absent, or replacing the broken entry with ETag `broken_etag`) that makes job
    `job_id`'s `attempt` artifacts a result; formats the job did not write as artifacts are put under the cache's
    own prefix first (all of them for a caller with no artifacts, the fleet processor). A producer that loses the
    race removes only those copies and leaves the winner's entry. Returns what the job records about the cache."""
    written = {a.get("format"): a for a in artifacts}
    prefix = keys.transcript_cache_files_prefix(digest, media_sha256, job_id, attempt)
    files, copies = [], []
    for fmt, (data, content_type) in rendered.items():
        art = written.get(fmt)
        if art is not None:
            files.append(CachedFile(format=fmt, key=art["key"], bytes=art["bytes"], sha256=art["sha256"],
                                    content_type=content_type))
            continue
        key = f"{prefix}transcript.{fmt}"
        bucket.put(key, data, content_type)
        copies.append(key)
        files.append(CachedFile(format=fmt, key=key, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                content_type=content_type))
    entry = CacheEntry(media_sha256=media_sha256, media_id=media_id, options=options, files=files, summary=summary,
                       job_id=job_id, attempt=attempt, at=codec.iso(codec.now()))
    entry_key = keys.transcript_cache_entry_key(digest, media_sha256)
    body = entry.model_dump(mode="json")
    won = (replace_json(bucket, entry_key, body, broken_etag) if broken_etag else
           create_json(bucket, entry_key, body)).won
    if not won:
        for key in copies:
            try:
                bucket.delete(key)
            except BucketrunError as exc:  # an orphan costs bytes, never correctness
                log.warning("could not remove %s after losing the cache race: %s", key, exc)
    if media_id:
        create_once(bucket, keys.transcript_cache_alias_key(digest, media_id),
                    codec.dumps({"media_id": media_id, "media_sha256": media_sha256}))
    return {"entry": entry_key, "stored": won}
