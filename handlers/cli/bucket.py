"""Commands on the bucket itself: `init`, the one explicit way to create a folder bucket, and `put`, the way
media gets into one (a bucket key is what a transcription's manifest names)."""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from bucketrun.events import keys
from bucketrun.events.errors import InvalidKey
from bucketrun.events.storage import Bucket

from .common import CliError, bucket_of

BAR_FROM = 8 << 20  # files this large get a progress bar on stderr
MEDIA = "media/"


def cmd_init(args) -> int:
    """A folder bucket is created; an s3:// bucket must exist already, and is checked by one listing."""
    bucket = bucket_of(args, create=True)
    next(iter(bucket.list(keys.INBOX)), None)  # reachable, and the credentials can list it
    kind = "S3 bucket" if bucket.url.startswith("s3://") else "folder bucket"
    print(f"{kind} ready: {bucket.url}")
    return 0


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def put_file(bucket: Bucket, path: Path, key: str | None = None, addressed: bool = False) -> tuple[str, int, str]:
    """Upload a local file (streamed, with a bar past BAR_FROM); returns (key, bytes, sha256). `addressed`: the
    default key carries the content's digest, so two files of one name never replace each other."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CliError(f"bucketrun: {path} is not a file")
        digest = sha256_of(path)
    except OSError as exc:
        raise CliError(f"bucketrun: cannot read {path}: {exc.strerror}") from exc
    key = key or MEDIA + (f"{digest[:12]}-" if addressed else "") + path.name
    if key.endswith("/"):
        key += path.name
    if key.startswith(keys.INBOX) or posixpath.basename(key) == "":
        raise CliError(f"bucketrun: {key!r} is not a key for a file (inbox/ is for manifests: use submit)")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        if size < BAR_FROM:
            bucket.upload(key, path, content_type)
        else:
            with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn(), console=Console(stderr=True)) as bar:
                task = bar.add_task(f"put {key}", total=size)
                bucket.upload(key, path, content_type, progress=lambda n: bar.advance(task, n))
    except InvalidKey as exc:
        raise CliError(f"bucketrun: {exc}") from exc
    return key, size, digest


def cmd_put(args) -> int:
    key, size, digest = put_file(bucket_of(args), Path(args.file), args.key)
    print(f"{key}  {size} B  sha256 {digest}")
    return 0


def register(add) -> None:
    add("init", cmd_init, "create a folder bucket (or check that an s3:// bucket is reachable)")
    p = add("put", cmd_put, "upload a file to the bucket (default key: media/<name>); prints its sha256")
    p.add_argument("file", help="a local file, such as the media a transcription names by its key")
    p.add_argument("key", nargs="?", default=None, help="the bucket key (default media/<file name>; "
                                                        "one ending in / takes the file name)")
