"""The asyncio twin of the S3 backend for fleet workers (heartbeats and prefetch beside the work).

It reuses S3Keys for every request shape and `translate` for every error, so only the await differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import NotFound, PreconditionFailed
from .base import Blob, ObjectInfo
from .s3_common import S3Keys, client_config, meter_requests, translate


class AsyncS3Bucket:
    """Use as `async with AsyncS3Bucket(name, prefix) as b:` so one aiohttp session serves all calls."""

    def __init__(self, bucket: str, prefix: str = ""):
        self.k = S3Keys(bucket, prefix)
        self.url = self.k.url
        self._ctx = None
        self.client = None

    async def __aenter__(self):
        import aioboto3  # late: aioboto3 (heavy, the async extra) only once a fleet worker opens S3

        # one pool for every worker task of the process: each may have a claim, a commit, a renewal and a
        # heartbeat in flight, and a renewal must not queue behind the others' reads
        self._ctx = aioboto3.Session().client("s3", config=client_config(max_pool_connections=64))
        self.client = await self._ctx.__aenter__()
        meter_requests(self.client, self.k.prefix)
        return self

    async def __aexit__(self, *exc):
        await self._ctx.__aexit__(*exc)

    async def _call(self, op: str, key: str, **params):
        try:
            return await getattr(self.client, op)(**params)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, op, key, self.k.url) from exc

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        return (await self._call("put_object", key, **self.k.put_params(key, data, content_type)))["ETag"]

    async def create(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        params = self.k.put_params(key, data, content_type, if_none_match=True)
        return (await self._call("put_object", key, **params))["ETag"]

    async def replace(self, key: str, data: bytes, etag: str, content_type: str = "application/octet-stream") -> str:
        params = self.k.put_params(key, data, content_type, if_match=etag)
        try:
            return (await self._call("put_object", key, **params))["ETag"]
        except NotFound as exc:  # If-Match on a missing key: some stores answer 404; the contract says 412
            raise PreconditionFailed(f"put_object {key}: precondition failed (no such key)") from exc

    async def get(self, key: str) -> Blob:
        response = await self._call("get_object", key, **self.k.key_params(key))
        try:
            async with response["Body"] as stream:
                data = await stream.read()
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "get_object", key, self.k.url) from exc
        return self.k.blob(key, data, response)

    async def head(self, key: str) -> ObjectInfo:
        return self.k.info(key, await self._call("head_object", key, **self.k.key_params(key)))

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for page in self.pages(prefix, start_after):
            for item in page:
                yield item

    async def pages(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[list[ObjectInfo]]:
        """One list per ListObjectsV2 response, yielded as it arrives: nothing past the current page is held,
        and a caller that wants every key pays one await per page, not per key."""
        token = None
        while True:
            response = await self._call("list_objects_v2", prefix, **self.k.list_params(prefix, start_after, token))
            items, token = self.k.list_page(response)
            if items:
                yield items
            if not token:
                return

    async def delete(self, key: str) -> None:
        await self._call("delete_object", key, **self.k.key_params(key))
