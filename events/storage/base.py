"""The storage contract every backend meets; tests/test_storage_contract.py runs against each one."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import InvalidKey, NotFound, StorageError


class ObjectInfo:
    """One object as a listing or HEAD saw it. `etag` may be a callable of the key, so the folder backend hashes
    a file only when someone asks for its ETag; likewise `stat`, a callable of the key returning (size,
    last_modified), is called once on first use of either, so a listing need not stat every file. Callables of
    the key, not per-object closures: a listing then makes one object per key, which keeps the collector cheap.
    `store_time` is the store's own clock at the answer (S3's `Date` header), which leases judge expiry by."""

    __slots__ = ("key", "_etag", "_size", "_last_modified", "_stat", "store_time")

    def __init__(self, key: str, etag: str | Callable[[str], str], size: int = 0,
                 last_modified: datetime | None = None, store_time: datetime | None = None, *,
                 stat: Callable[[str], tuple[int, datetime | None]] | None = None):
        self.key, self._etag, self._size, self._last_modified = key, etag, size, last_modified
        self._stat, self.store_time = stat, store_time

    @property
    def etag(self) -> str:
        if callable(self._etag):
            self._etag = self._etag(self.key)
        return self._etag

    def _resolve(self) -> None:
        stat, self._stat = self._stat, None
        self._size, self._last_modified = stat(self.key)

    @property
    def size(self) -> int:
        if self._stat is not None:
            self._resolve()
        return self._size

    @property
    def last_modified(self) -> datetime | None:
        if self._stat is not None:
            self._resolve()
        return self._last_modified

    def __repr__(self) -> str:
        return f"ObjectInfo({self.key!r}, size={self.size})"


@dataclass(frozen=True)
class Blob:
    key: str
    data: bytes
    etag: str
    last_modified: datetime | None = None
    store_time: datetime | None = None


def check_key(key: str) -> str:
    """Keys that every backend can hold: no empty or dot segments, no leading slash."""
    if not key or key.startswith("/") or len(key.encode()) > 1024:
        raise InvalidKey(f"invalid key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", "..") or "\x00" in part:
            raise InvalidKey(f"invalid key {key!r}: bad segment {part!r}")
    return key


class Bucket(abc.ABC):
    """Keys are relative to the bucket URL's prefix; `url` reopens the same bucket in another process."""

    url: str
    name: str  # the bucket's name as notifications carry it ("local" for a folder)

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Unconditional write; returns the new ETag."""

    @abc.abstractmethod
    def create(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write only if absent (If-None-Match: *); PreconditionFailed if the key exists, ConditionalConflict
        if the store could not decide against a concurrent write (S3's 409): use events.conditional."""

    @abc.abstractmethod
    def replace(self, key: str, data: bytes, etag: str, content_type: str = "application/octet-stream") -> str:
        """Write only if the current ETag equals `etag` (If-Match); PreconditionFailed otherwise."""

    @abc.abstractmethod
    def get(self, key: str) -> Blob:
        """Data and ETag from one read, so a later replace() compares against what was read."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Lexicographic (UTF-8 byte) order, keys strictly after `start_after`. Lazy: each key is yielded as
        the store gives it (page by page), never after the whole listing is held, so a listing of millions of
        keys costs memory for what the caller keeps."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error (as on S3)."""

    @abc.abstractmethod
    def full_key(self, key: str) -> str:
        """The key as the store and its notifications name it (with the URL's prefix)."""

    @abc.abstractmethod
    def relative_key(self, full_key: str) -> str | None:
        """Inverse of full_key; None for keys outside this bucket's prefix."""

    def download(self, key: str, dest: "Path") -> str:
        """Write the object to a local file without holding it in memory (backends stream); returns its ETag.
        Media can be hours long, so a worker never reads it into one bytes object."""
        blob = self.get(key)
        dest.write_bytes(blob.data)
        return blob.etag

    def upload(self, key: str, src: "Path", content_type: str = "application/octet-stream",
               progress: "Callable[[int], None] | None" = None) -> str:
        """Put a local file without holding it in memory (backends stream); `progress` is told the bytes of
        each piece sent, for a bar. A user's media can be gigabytes."""
        data = src.read_bytes()
        etag = self.put(key, data, content_type)
        if progress is not None:
            progress(len(data))
        return etag

    def folders(self, prefix: str) -> Iterator[str]:
        """The names one level below `prefix` (which ends in "/"), in order: S3's Delimiter listing, so a
        dashboard finds every job in one request per thousand jobs, however many objects each job holds."""
        seen = None
        for info in self.list(prefix):
            name = info.key[len(prefix):].split("/", 1)[0]
            if "/" in info.key[len(prefix):] and name != seen:
                seen = name
                yield name

    def presign_get(self, key: str, expires_s: int) -> str:
        """A URL anyone can GET the object with, without credentials, for `expires_s` seconds (S3's presigned
        GET; a folder's file:// URL). A store that cannot make one says so."""
        raise StorageError(f"{type(self).__name__} cannot presign a URL for {key}: only s3:// and folder buckets can")

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True
