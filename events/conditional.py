"""The bucket's conditional writes, in one place: create-once and compare-and-swap of JSON objects.

Every write carries a unique `write_token`. A PUT whose response was lost and that botocore retried comes
back as 412; reading the object back and finding our own token tells "my write landed" from "someone else
won". S3's 409 ConditionalRequestConflict is neither: it is retried, then decided by the same read-back.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import codec
from .errors import ConditionalConflict, NotFound, PreconditionFailed, StorageError
from .storage import Bucket

TOKEN = "write_token"
CONFLICT_RETRIES = 6
JSON = "application/json"


@dataclass(frozen=True)
class Outcome:
    """`won`: this call's write is the one in the bucket. `body`/`etag`: what the key holds now (ours, or
    the winner's when we lost; body None when the winner has since deleted it)."""

    won: bool
    body: dict[str, Any] | None
    etag: str | None


def new_token() -> str:
    return uuid.uuid4().hex


def _read(bucket: Bucket, key: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        blob = bucket.get(key)
    except NotFound:
        return None, None
    return codec.loads(blob.data), blob.etag


def _conflict_pause(n: int) -> None:
    time.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** n)))


def _write(attempt: Callable[[], str], bucket: Bucket, key: str, body: dict[str, Any]) -> Outcome:
    for n in range(CONFLICT_RETRIES):
        try:
            return Outcome(True, body, attempt())
        except ConditionalConflict:
            _conflict_pause(n)
            current, etag = _read(bucket, key)
            if current is not None and current.get(TOKEN) == body[TOKEN]:
                return Outcome(True, current, etag)  # the conflicting write was ours and landed
            continue
        except PreconditionFailed:
            current, etag = _read(bucket, key)
            if current is not None and current.get(TOKEN) == body[TOKEN]:
                return Outcome(True, current, etag)  # our own write, its response lost and retried
            return Outcome(False, current, etag)
    raise StorageError(f"{key}: conditional write kept conflicting ({CONFLICT_RETRIES} tries)")


def create_json(bucket: Bucket, key: str, body: dict[str, Any]) -> Outcome:
    """Create `key` only if absent. Lost: the existing object's body."""
    body = {**body, TOKEN: new_token()}
    data = codec.dumps(body)
    return _write(lambda: bucket.create(key, data, JSON), bucket, key, body)


def replace_json(bucket: Bucket, key: str, body: dict[str, Any], etag: str) -> Outcome:
    """Replace `key` only if it still has `etag`. Lost: what it holds now."""
    body = {**body, TOKEN: new_token()}
    data = codec.dumps(body)
    return _write(lambda: bucket.replace(key, data, etag, JSON), bucket, key, body)


def create_once(bucket: Bucket, key: str, data: bytes, content_type: str = JSON) -> bool:
    """Create-if-absent for content that is the same whoever writes it (a manifest, a marker): a 412 after
    a lost response is as good as a win, so no token is needed. True if this call created it."""
    for n in range(CONFLICT_RETRIES):
        try:
            bucket.create(key, data, content_type)
            return True
        except PreconditionFailed:
            return False
        except ConditionalConflict:
            _conflict_pause(n)
    raise StorageError(f"{key}: conditional write kept conflicting ({CONFLICT_RETRIES} tries)")


def update_json(bucket: Bucket, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
                max_rounds: int = 20) -> Outcome:
    """Read, change, write back with If-Match (or If-None-Match when absent), re-reading after a lost race.
    `change` returns the new body, or None to leave the object as it is (the outcome is then not a win)."""
    current, etag = _read(bucket, key)
    for n in range(max_rounds):
        new = change(current)
        if new is None:
            return Outcome(False, current, etag)
        out = replace_json(bucket, key, new, etag) if etag else create_json(bucket, key, new)
        if out.won:
            return out
        # Lost to another writer: wait a jittered, growing moment before the next round, or the same loser can
        # keep re-reading just before each winner writes (seen: 20 lost rounds in a row on a loaded machine).
        time.sleep(random.uniform(0, min(0.5, 0.005 * 2 ** n)))
        current, etag = _read(bucket, key)
    raise StorageError(f"{key}: lost {max_rounds} compare-and-swap rounds in a row")
