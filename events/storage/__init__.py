"""The storage contract (base), its backends, and the URL that selects one."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from .base import Blob, Bucket, ObjectInfo
from .local import LocalBucket

__all__ = ["Blob", "Bucket", "ObjectInfo", "open_bucket", "default_bucket_url", "resolve_bucket_url"]

ENV_BUCKET = "BUCKETRUN_BUCKET"


def default_bucket_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "bucketrun" / "bucket")


def resolve_bucket_url(explicit: str | None = None) -> str:
    """--bucket, else BUCKETRUN_BUCKET, else a local folder."""
    return explicit or os.environ.get(ENV_BUCKET) or default_bucket_url()


def split_s3_url(url: str) -> tuple[str, str]:
    rest = url[len("s3://"):]
    name, _, prefix = rest.partition("/")
    if not name:
        raise ConfigError(f"bucket URL {url!r} has no bucket name (expected s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return name, (prefix + "/" if prefix else "")


def open_bucket(url: str | None = None, create: bool = True) -> Bucket:
    """A plain path or file:// is a local folder; s3://bucket/prefix is any S3-compatible store. With
    `create=False` a folder bucket must already exist (S3 buckets are never created here)."""
    url = resolve_bucket_url(url)
    if url.startswith("s3://"):
        from .s3 import S3Bucket  # late: boto3 (heavy) only for an s3:// bucket, never for a folder

        name, prefix = split_s3_url(url)
        return S3Bucket(name, prefix)
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"unsupported bucket URL {url!r}: use a folder path, file://PATH or s3://BUCKET/PREFIX")

    path = url[len("file://"):] if url.startswith("file://") else url
    return LocalBucket(Path(path).expanduser(), create=create)
