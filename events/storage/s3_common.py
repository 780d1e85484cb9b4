"""What the sync (boto3) and async (aioboto3) S3 backends share: request shapes, results and error translation.

Both backends only move these dicts over the wire, so a precondition or a missing key means the same thing
in a Lambda, the local simulation and an asyncio fleet worker.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from botocore.config import Config

from .. import meter
from ..errors import ConditionalConflict, NotFound, PreconditionFailed, StorageError
from .base import Blob, ObjectInfo, check_key

log = logging.getLogger("bucketrun.storage")
PRECONDITION_CODES = {"PreconditionFailed", "412"}
CONFLICT_CODES = {"ConditionalRequestConflict", "409"}
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def client_config(max_pool_connections: int = 10):
    """Standard botocore settings only; checksums 'when_required' keeps R2 and older MinIO happy."""
    addressing = os.environ.get("BUCKETRUN_S3_ADDRESSING_STYLE", "auto")
    return Config(
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": 5, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": addressing},
    )


class S3Keys:
    """Prefix handling shared by both backends: the URL's prefix is invisible to callers."""

    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    def full_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def relative_key(self, full_key: str) -> str | None:
        if not full_key.startswith(self.prefix):
            return None
        return full_key[len(self.prefix):] or None

    def put_params(self, key: str, data: bytes, content_type: str, *, if_none_match: bool = False,
                   if_match: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.full_key(key), "Body": data,
                                  "ContentType": content_type}
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = if_match
        return params

    def key_params(self, key: str) -> dict[str, Any]:
        return {"Bucket": self.bucket, "Key": self.full_key(key)}

    def list_params(self, prefix: str, start_after: str | None, token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if token:
            params["ContinuationToken"] = token
        elif start_after is not None:
            params["StartAfter"] = self.prefix + start_after
        return params

    def list_page(self, response: dict[str, Any]) -> tuple[list[ObjectInfo], str | None]:
        items = [
            ObjectInfo(o["Key"][len(self.prefix):], o.get("ETag", ""), o.get("Size", 0), o.get("LastModified"))
            for o in response.get("Contents", [])
        ]
        token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return items, token

    def blob(self, key: str, data: bytes, response: dict[str, Any]) -> Blob:
        return Blob(key, data, response["ETag"], response.get("LastModified"), store_time(response))

    def info(self, key: str, response: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(key, response["ETag"], response.get("ContentLength", 0), response.get("LastModified"),
                          store_time(response))


def store_time(response: dict[str, Any]) -> datetime | None:
    """The store's clock when it answered (the HTTP `Date` header): what lease expiry is judged by."""
    date = (response.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        return None


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code or status


def translate(exc: Exception, op: str, key: str, url: str = "") -> Exception:
    """Map a botocore/aiobotocore error onto ours, naming the bucket; callers `raise translate(e, ...) from e`."""
    code = error_code(exc)
    where = f" in {url}" if url else ""
    if code in PRECONDITION_CODES:
        # A 412 here may answer a resend of ours that no layer reports (aiohttp's resend of a request whose
        # answer was dropped shows in neither botocore's RetryAttempts nor its events): `retried` stays True.
        return PreconditionFailed(f"{op} {key}{where}: precondition failed ({code})")
    if code in CONFLICT_CODES:
        return ConditionalConflict(f"{op} {key}{where}: a concurrent conditional write is in flight ({code})")
    if code in NOT_FOUND_CODES:
        return NotFound(f"{key}{where}")
    if code in {"NoSuchBucket"}:
        return StorageError(f"the bucket {url or key} does not exist (or this endpoint has no such bucket)")
    if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return StorageError(f"{op} {key}{where}: access denied ({code}); check the AWS credential chain")
    if isinstance(exc, _CONNECTION_ERRORS):
        return StorageError(f"cannot reach the S3 endpoint for {url or key}: {type(exc).__name__}: "
                            f"{str(exc)[:200]}")
    detail = code or type(exc).__name__
    return StorageError(f"{op} {key}{where}: {detail}: {str(exc)[:300]}")


try:
    from botocore.exceptions import ConnectionError as _BotoConnectionError
    from botocore.exceptions import EndpointConnectionError

    _CONNECTION_ERRORS: tuple[type[Exception], ...] = (EndpointConnectionError, _BotoConnectionError)
except ImportError:  # pragma: no cover - botocore is a core dependency
    _CONNECTION_ERRORS = ()


def meter_requests(client, prefix: str) -> None:
    """Count every HTTP request the client sends (each retry and multipart part too) against the job its key
    names (events/meter.py): per attempt, as the store bills, not per call."""

    def remember(params=None, context=None, **_kw):
        if context is not None and params:
            context["bucketrun_key"] = str(params.get("Key") or params.get("Prefix") or "")

    def on_request(request=None, operation_name: str = "", **_kw):
        key = (getattr(request, "context", None) or {}).get("bucketrun_key")
        if key:
            meter.count_op(operation_name, key[len(prefix):] if key.startswith(prefix) else key)

    client.meta.events.register("before-parameter-build.s3", remember)
    client.meta.events.register("request-created.s3", on_request)


def announce_retries(client, url: str) -> None:
    """Say, once per call, that the store is being retried and where, instead of retrying in silence (an
    unreachable endpoint costs botocore's whole retry budget, 10-20 s)."""
    endpoint = client.meta.endpoint_url

    def on_retry(attempts: int = 0, caught_exception: Exception | None = None, response=None, **_kw):
        if attempts == 1 and (caught_exception is not None or _retryable_status(response)):
            why = type(caught_exception).__name__ if caught_exception is not None else \
                f"HTTP {response[0].status_code}"
            log.warning("bucketrun: %s (%s) did not answer (%s); retrying...", endpoint, url, why)
        return None  # never decides: botocore's own retry handler does

    client.meta.events.register("needs-retry.s3", on_retry)
    parts = url.split("/", 3)  # s3://bucket/prefix/: S3Keys' url, whose prefix ends in "/"
    meter_requests(client, parts[3] if len(parts) > 3 else "")  # every sync client is announced, so metered too


def _retryable_status(response) -> bool:
    try:
        return response[0].status_code >= 500 or response[0].status_code == 429
    except (TypeError, IndexError, AttributeError):
        return False
