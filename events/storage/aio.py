"""Async buckets for asyncio workers: aioboto3 for S3 (s3_async.py), and the folder backend run in threads, so
a fleet worker has one await-able contract whatever the bucket URL says."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator

from . import open_bucket, resolve_bucket_url, split_s3_url
from .base import Blob, Bucket, ObjectInfo


def _take(it: Iterator[ObjectInfo], n: int) -> list[ObjectInfo]:
    return list(itertools.islice(it, n))


class AsyncLocalBucket:
    """The folder backend (or any sync Bucket passed in) behind `asyncio.to_thread`: its file operations block,
    the event loop must not."""

    page = 1000  # keys per trip to the listing's thread, as an S3 page: few hops, and little held at a time

    def __init__(self, url: str | Bucket):
        self.sync = url if isinstance(url, Bucket) else open_bucket(url, create=True)
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
        async for page in self.pages(prefix, start_after):
            for item in page:
                yield item

    async def pages(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[list[ObjectInfo]]:
        """The listing in pages, as AsyncS3Bucket.pages: the first keys arrive before the rest are walked, and a
        caller that wants every key pays one await per page, not per key."""
        it = self.sync.list(prefix, start_after)
        try:
            while True:
                page = await asyncio.to_thread(_take, it, self.page)
                if page:
                    yield page
                if len(page) < self.page:
                    return
        finally:
            with contextlib.suppress(ValueError, AttributeError):  # ValueError: still running in its thread
                it.close()  # (our await was cancelled); AttributeError: a plain iterator, nothing to close

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.sync.delete, key)


def open_async_bucket(url: str | None = None):
    """Use as `async with open_async_bucket(url) as bucket:`."""
    url = resolve_bucket_url(url)
    if url.startswith("s3://"):
        name, prefix = split_s3_url(url)
        from .s3_async import AsyncS3Bucket  # late, as open_bucket's boto3: aioboto3 only for an s3:// bucket

        return AsyncS3Bucket(name, prefix)
    return AsyncLocalBucket(url)
