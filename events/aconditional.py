"""The asyncio twin of events/conditional.py for fleet workers: the same write tokens and the same read-back
rule (a 412 on our own retried write is a win), awaited on an async bucket (events/storage/aio.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from . import codec
from .conditional import CONFLICT_RETRIES, JSON, TOKEN, Outcome, new_token
from .errors import ConditionalConflict, NotFound, PreconditionFailed, StorageError


async def read_json(bucket, key: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        blob = await bucket.get(key)
    except NotFound:
        return None, None
    return codec.loads(blob.data), blob.etag


async def _write(attempt: Callable[[], Awaitable[str]], bucket, key: str, body: dict[str, Any]) -> Outcome:
    for n in range(CONFLICT_RETRIES):
        try:
            return Outcome(True, body, await attempt())
        except ConditionalConflict:
            await asyncio.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** n)))
            current, etag = await read_json(bucket, key)
            if current is not None and current.get(TOKEN) == body[TOKEN]:
                return Outcome(True, current, etag)
        except PreconditionFailed:
            current, etag = await read_json(bucket, key)
            if current is not None and current.get(TOKEN) == body[TOKEN]:
                return Outcome(True, current, etag)
            return Outcome(False, current, etag)
    raise StorageError(f"{key}: conditional write kept conflicting ({CONFLICT_RETRIES} tries)")


async def create_json(bucket, key: str, body: dict[str, Any]) -> Outcome:
    body = {**body, TOKEN: new_token()}
    data = codec.dumps(body)
    return await _write(lambda: bucket.create(key, data, JSON), bucket, key, body)


async def replace_json(bucket, key: str, body: dict[str, Any], etag: str) -> Outcome:
    body = {**body, TOKEN: new_token()}
    data = codec.dumps(body)
    return await _write(lambda: bucket.replace(key, data, etag, JSON), bucket, key, body)


async def create_once(bucket, key: str, data: bytes, content_type: str = JSON) -> bool:
    """For content that is the same whoever writes it (or keyed by its own digest): a 412 is as good as a win."""
    for n in range(CONFLICT_RETRIES):
        try:
            await bucket.create(key, data, content_type)
            return True
        except PreconditionFailed:
            return False
        except ConditionalConflict:
            await asyncio.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** n)))
    raise StorageError(f"{key}: conditional write kept conflicting ({CONFLICT_RETRIES} tries)")


async def create_own(bucket, key: str, data: bytes, content_type: str = JSON) -> None:
    """For a key only this writer may write (a part of its own lease generation): a 412 means a retried
    request of ours landed, or something else sits there. The bytes are compared, and anything else is
    replaced by ours, so what the marker then vouches for is what the key holds."""
    for n in range(CONFLICT_RETRIES):
        try:
            await bucket.create(key, data, content_type)
            return
        except ConditionalConflict:
            await asyncio.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** n)))
            continue
        except PreconditionFailed:
            pass
        try:
            there = await bucket.get(key)
        except NotFound:
            continue  # gone again (deleted as an orphan by a finalizer that saw no marker): create anew
        if there.data == data:
            return
        try:
            await bucket.replace(key, data, there.etag, content_type)
            return
        except (ConditionalConflict, PreconditionFailed):
            await asyncio.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** n)))
    raise StorageError(f"{key}: conditional write kept conflicting ({CONFLICT_RETRIES} tries)")
