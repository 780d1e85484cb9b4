"""Commands on the bucket itself: `init`, the one explicit way to create a folder bucket, and `put`, the way
media gets into one (a bucket key is what a transcription's manifest names)."""

from __future__ import annotations

import mimetypes
import posixpath
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from bucketrun.events import keys
from bucketrun.events.digest import sha256_file
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


def put_file(bucket: Bucket, path: Path, key: str | None = None, addressed: bool = False) -> tuple[str, int, str]:
    """Upload a local file (streamed, with a bar past BAR_FROM); returns (key, bytes, sha256). `addressed`: the
    default key carries the content's digest, so two files of one name never replace each other."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CliError(f"bucketrun: {path} is not a file")
        digest = sha256_file(path)
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
    """A file to KEY (default media/<name>), or a folder's files under PREFIX/ (default <folder name>/)."""
    bucket, src = bucket_of(args), Path(args.file)
    if not src.is_dir():
        key, size, digest = put_file(bucket, src, args.key)
        print(f"{key}  {size} B  sha256 {digest}")
        return 0
    prefix = (args.key or src.resolve().name).rstrip("/") + "/"
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise CliError(f"bucketrun: {src} holds no files")
    for path in files:
        key, size, digest = put_file(bucket, path, prefix + path.relative_to(src).as_posix())
        print(f"{key}  {size} B  sha256 {digest}")
    return 0


def register(add) -> None:
    add("init", cmd_init, "create a folder bucket (or check that an s3:// bucket is reachable)")
    p = add("put", cmd_put, "upload a file (or a folder's files) to the bucket; prints each key and sha256")
    p.add_argument("file", help="a local file, such as the media a transcription names by its key, or a folder")
    p.add_argument("key", nargs="?", default=None, help="the bucket key (default media/<file name>; one ending in "
                                                        "/ takes the file name); for a folder, the key prefix "
                                                        "(default <folder name>/)")
