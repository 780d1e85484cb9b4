"""Async buckets for asyncio workers: aioboto3 for S3 (s3_async.py), and the folder backend run in threads, so
a fleet worker has one await-able contract whatever the bucket URL says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from . import open_bucket, resolve_bucket_url, split_s3_url
from .base import Blob, ObjectInfo


class AsyncLocalBucket:
    """The folder backend behind `asyncio.to_thread`: its file operations block, the event loop must not."""

    def __init__(self, url: str):
        self.sync = open_bucket(url, create=True)
        self.url = self.sync.url

    async def __aenter__(self) -> "AsyncLocalBucket":
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        return await asyncio.to_thread(self.sync.put, key, data, content_type)

    async def create(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        return await asyncio.to_thread(self.sync.create, key, data, content_type)

    async def replace(self, key: str, data: bytes, etag: str, content_type: str = "application/octet-stream") -> str:
        return await asyncio.to_thread(self.sync.replace, key, data, etag, content_type)

    async def get(self, key: str) -> Blob:
        return await asyncio.to_thread(self.sync.get, key)

    async def head(self, key: str) -> ObjectInfo:
        return await asyncio.to_thread(self.sync.head, key)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        items = await asyncio.to_thread(lambda: list(self.sync.list(prefix, start_after)))
        for item in items:
            yield item

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.sync.delete, key)


def open_async_bucket(url: str | None = None):
    """Use as `async with open_async_bucket(url) as bucket:`."""
    url = resolve_bucket_url(url)
    if url.startswith("s3://"):
        from .s3_async import AsyncS3Bucket

        name, prefix = split_s3_url(url)
        return AsyncS3Bucket(name, prefix)
    return AsyncLocalBucket(url)
