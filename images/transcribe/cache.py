"""The worker's side of the result cache (events/result_cache.py): look a result up, serve it under a job, and
store a fresh one once, with create-if-absent, so identical jobs racing leave exactly one entry."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from pydantic import ValidationError

from bucketrun.events import codec, keys
from bucketrun.events.conditional import create_json, create_once
from bucketrun.events.codec import DecodeError
from bucketrun.events.errors import BucketrunError, NotFound
from bucketrun.events.result_cache import CacheEntry, CachedFile
from bucketrun.events.storage import Bucket
from bucketrun.images.runtime.attempt import Attempt

log = logging.getLogger("bucketrun.worker")


class BrokenEntry(Exception):
    """An entry whose files are gone or changed: the job transcribes afresh (the entry stays, write-once)."""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lookup(bucket: Bucket, digest: str, media_sha256: str) -> CacheEntry | None:
    try:
        blob = bucket.get(keys.transcript_cache_entry_key(digest, media_sha256))
        return CacheEntry.model_validate(codec.loads(blob.data))
    except NotFound:
        return None
    except (DecodeError, ValidationError) as exc:
        log.warning("cache entry for %s… is unreadable (%s); transcribing afresh", media_sha256[:12], exc)
        return None


def lookup_alias(bucket: Bucket, digest: str, media_id: str) -> str | None:
    """The sha256 of the media a site extractor's id was last fetched as, if any job recorded it."""
    try:
        return str(codec.loads(bucket.get(keys.transcript_cache_alias_key(digest, media_id)).data)["media_sha256"])
    except NotFound:
        return None
    except (DecodeError, KeyError, TypeError):
        return None


def serve(ctx: Attempt, entry: CacheEntry, formats: list[str]) -> None:
    """Copy the requested formats under the job's own attempt prefix, each checked against the entry's sha256
    before it is written: a cached result is served only as the bytes it was stored with."""
    by_format = {f.format: f for f in entry.files}
    blobs = []
    for fmt in formats:
        record = by_format.get(fmt)
        if record is None:
            raise BrokenEntry(f"the entry has no {fmt} file")
        try:
            data = ctx.bucket.get(record.key).data
        except NotFound as exc:
            raise BrokenEntry(f"{record.key} is missing") from exc
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise BrokenEntry(f"{record.key} does not match its sha256")
        blobs.append((fmt, record, data))
    for fmt, record, data in blobs:
        ctx.put_artifact(f"transcript.{fmt}", data, record.content_type, format=fmt)


def store(ctx: Attempt | Any, digest: str, media_sha256: str, media_id: str | None, options: dict[str, Any],
          rendered: dict[str, tuple[bytes, str]], summary: dict[str, Any]) -> dict[str, Any]:
    """Files first, then the entry (create-if-absent) that makes them a result; a producer that loses the race
    removes its own files and leaves the winner's entry. Returns what the job records about the cache. `ctx`:
    an attempt, or anything with its `bucket`, `job_id` and `attempt` (the fleet's transcribe processor)."""
    prefix = keys.transcript_cache_files_prefix(digest, media_sha256, ctx.job_id, ctx.attempt)
    files = []
    for fmt, (data, content_type) in rendered.items():
        key = f"{prefix}transcript.{fmt}"
        ctx.bucket.put(key, data, content_type)
        files.append(CachedFile(format=fmt, key=key, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                content_type=content_type))
    entry = CacheEntry(media_sha256=media_sha256, media_id=media_id, options=options, files=files, summary=summary,
                       job_id=ctx.job_id, attempt=ctx.attempt, at=codec.iso(codec.now()))
    entry_key = keys.transcript_cache_entry_key(digest, media_sha256)
    won = create_json(ctx.bucket, entry_key, entry.model_dump(mode="json")).won
    if not won:
        for f in files:
            try:
                ctx.bucket.delete(f.key)
            except BucketrunError as exc:  # an orphan costs bytes, never correctness
                log.warning("could not remove %s after losing the cache race: %s", f.key, exc)
    if media_id:
        create_once(ctx.bucket, keys.transcript_cache_alias_key(digest, media_id),
                    codec.dumps({"media_id": media_id, "media_sha256": media_sha256}))
    return {"entry": entry_key, "stored": won}
