"""Commands on the bucket itself: `init`, the one explicit way to create a folder bucket."""

from __future__ import annotations

from bucketrun.events import keys
from .common import bucket_of


def cmd_init(args) -> int:
    """A folder bucket is created; an s3:// bucket must exist already, and is checked by one listing."""
    bucket = bucket_of(args, create=True)
    next(iter(bucket.list(keys.INBOX)), None)  # reachable, and the credentials can list it
    kind = "S3 bucket" if bucket.url.startswith("s3://") else "folder bucket"
    print(f"{kind} ready: {bucket.url}")
    return 0


def register(add) -> None:
    add("init", cmd_init, "create a folder bucket (or check that an s3:// bucket is reachable)")
