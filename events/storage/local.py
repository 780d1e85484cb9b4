"""A local folder standing in for a bucket, with S3's conditional-write guarantees across processes.

Creates are os.link() of a finished temp file (atomic, never torn, fails if the key exists); replaces and
deletes hold an flock stripe for the key so If-Match compare-and-swap is linearisable between processes. Every
write fsyncs the file, then its folder: an acknowledged write survives a power cut, name and bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from .. import meter
from ..errors import BucketMissing, InvalidKey, NotFound, PreconditionFailed, StorageError
from .base import Blob, Bucket, ObjectInfo, check_key

INTERNAL = ".bucketrun"
_STRIPES = 256


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _file_etag(path: str | Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return '"' + h.hexdigest() + '"'


def _copy(src, out, progress=None) -> str:
    """Stream one file into another in 1 MiB pieces; returns the ETag (MD5) of what was copied."""
    h = hashlib.md5(usedforsecurity=False)
    for chunk in iter(lambda: src.read(1 << 20), b""):
        out.write(chunk)
        h.update(chunk)
        if progress is not None:
            progress(len(chunk))
    return '"' + h.hexdigest() + '"'


def _sync_dir(folder: Path) -> None:
    """fsync a folder after a name was linked or renamed into it: the file's fsync makes its bytes durable, this
    its name, so an object acknowledged as written survives a power cut (as a Postgres commit with fsync does)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, timezone.utc)


def _store_now() -> datetime:
    """The folder's clock is this machine's (file mtimes come from it), read directly, not through codec."""
    return datetime.fromtimestamp(time.time(), timezone.utc)


class LocalBucket(Bucket):
    def __init__(self, root: Path, create: bool = True):
        """`create=False` refuses a folder that does not exist yet: a mistyped bucket is an error, not a new
        bucket nobody watches."""
        self.root = Path(root).absolute()
        self.url = str(self.root)
        self._root_str = os.path.join(self.url, "")  # the listing joins keys onto it as strings: no Path per key
        self.name = "local"
        if not create and not self.root.is_dir():
            raise BucketMissing(f"no bucket at {self.root}: the folder does not exist "
                                f"(create it with `bucketrun --bucket {self.root} init`)")
        try:
            (self.root / INTERNAL / "tmp").mkdir(parents=True, exist_ok=True)
            (self.root / INTERNAL / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot use {self.root} as a bucket: {exc.strerror}") from exc

    # -- helpers -------------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        check_key(key)
        if key == INTERNAL or key.startswith(INTERNAL + "/"):
            raise InvalidKey(f"key {key!r} is reserved for the folder backend")
        return self.root / key

    @contextlib.contextmanager
    def _lock(self, key: str):
        stripe = int(hashlib.sha1(key.encode()).hexdigest(), 16) % _STRIPES
        fd = os.open(self.root / INTERNAL / "locks" / f"{stripe:03d}", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _tmp(self, data: bytes) -> Path:
        tmp = self.root / INTERNAL / "tmp" / uuid.uuid4().hex
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def _install(self, path: Path, data: bytes, exclusive: bool) -> str:
        """Move finished bytes into place; retried because a concurrent delete may prune the parent folder."""
        tmp = self._tmp(data)
        try:
            for _ in range(5):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if exclusive:
                        os.link(tmp, path)
                    else:
                        if path.is_dir():
                            raise InvalidKey(f"key {self._rel(path)!r} clashes with a folder of keys")
                        os.replace(tmp, path)
                    _sync_dir(path.parent)
                    return _etag(data)
                except FileNotFoundError:
                    continue
                except FileExistsError as exc:
                    raise PreconditionFailed(f"{self._rel(path)} already exists", retried=False) from exc
                except (NotADirectoryError, IsADirectoryError) as exc:
                    raise InvalidKey(f"key {self._rel(path)!r} clashes with an existing key") from exc
                except OSError as exc:
                    raise StorageError(f"write {self._rel(path)}: {exc.strerror}") from exc
            raise StorageError(f"write {self._rel(path)}: folder kept vanishing")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _prune(self, folder: Path) -> None:
        while folder != self.root:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    # -- contract ------------------------------------------------------------------------------------
    def put(self, key, data, content_type="application/octet-stream"):
        meter.count(meter.A, key)  # a folder costs nothing; counted as the store it stands in for
        path = self._path(key)
        with self._lock(key):
            return self._install(path, data, exclusive=False)

    def create(self, key, data, content_type="application/octet-stream"):
        meter.count(meter.A, key)
        path = self._path(key)
        if path.is_dir():
            raise InvalidKey(f"key {key!r} clashes with a folder of keys")
        return self._install(path, data, exclusive=True)

    def replace(self, key, data, etag, content_type="application/octet-stream"):
        meter.count(meter.A, key)
        path = self._path(key)
        with self._lock(key):
            try:
                current = _file_etag(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
                raise PreconditionFailed(f"{key} does not exist") from exc
            if current != etag:
                raise PreconditionFailed(f"{key} changed (ETag {current} != {etag})")
            return self._install(path, data, exclusive=False)

    def get(self, key):
        meter.count(meter.B, key)
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(key) from exc
        except OSError as exc:
            raise StorageError(f"read {key}: {exc.strerror}") from exc
        try:  # after the read: a racing replace can only make last_modified look newer
            modified = _mtime(path.stat())
        except OSError:
            modified = None
        return Blob(key, data, _etag(data), modified, _store_now())

    def download(self, key, dest):
        meter.count(meter.B, key)
        path = self._path(key)
        try:
            with open(path, "rb") as src, open(dest, "wb") as out:
                return _copy(src, out)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(key) from exc
        except OSError as exc:
            raise StorageError(f"download {key}: {exc.strerror}") from exc

    def upload(self, key, src, content_type="application/octet-stream", progress=None):
        meter.count(meter.A, key)
        path = self._path(key)
        tmp = self.root / INTERNAL / "tmp" / uuid.uuid4().hex
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as out:
                etag = _copy(fin, out, progress)
                out.flush()
                os.fsync(out.fileno())
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                raise InvalidKey(f"key {key!r} clashes with a folder of keys")
            os.replace(tmp, path)
            _sync_dir(path.parent)
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise InvalidKey(f"key {key!r} clashes with an existing key") from exc
        except OSError as exc:
            raise StorageError(f"upload {key}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return etag

    def head(self, key):
        meter.count(meter.B, key)
        path = self._path(key)
        try:
            if not path.is_file():
                raise NotFound(key)
            etag = _file_etag(path)
            st = path.stat()  # after the hash: a racing replace can only make the object look newer, not older
            return ObjectInfo(key, etag, st.st_size, _mtime(st), _store_now())
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(key) from exc

    def list(self, prefix="", start_after=None) -> Iterator[ObjectInfo]:
        """A depth-first walk that sorts each folder as it enters it, so keys stream out in full-key order
        without walking, sorting or statting the tree first (size, mtime and ETag are read when asked)."""
        folder, _, match = prefix.rpartition("/")
        parts = prefix.split("/")[:-1]  # the folders the prefix names; [""] for a leading "/"
        if parts and (parts[0] == INTERNAL or any(part in ("", ".", "..") for part in parts)):
            return  # no key has such a segment (check_key), and the path could leave the bucket
        rel = folder + "/" if folder else ""
        etag_of, stat_of = self._listed_etag, self._listed_stat  # bound once: no new objects per key
        meter.count(meter.A, prefix)  # one LIST, and one more per 1,000 keys after the first, as S3 pages
        listed = 0
        stack = [iter(self._entries(rel, match, start_after))]
        while stack:
            for key in stack[-1]:
                if key[-1] == "/":  # a folder: walk it before the parent's next entry
                    after = start_after if start_after is not None and start_after.startswith(key) else None
                    stack.append(iter(self._entries(key, "", after)))
                    break
                listed += 1
                if listed % 1000 == 1 and listed > 1:
                    meter.count(meter.A, prefix)
                yield ObjectInfo(key, etag_of, stat=stat_of)
            else:
                stack.pop()

    def folders(self, prefix):
        if not prefix.endswith("/") or any(part in ("", ".", "..") for part in prefix.split("/")[:-1]):
            return iter(())
        return iter([key[len(prefix):-1] for key in self._entries(prefix, "", None)
                     if key[-1] == "/" and key[:-1] != INTERNAL])

    def _entries(self, rel: str, match: str, after: str | None) -> list[str]:
        """One folder's keys and sub-folders (as "rel/name/") in full-key order: a folder's keys all start with
        its name + "/", so that is where it sorts ("a.b" < "a/..." < "a0"). Skips what sorts <= `after`."""
        try:
            with os.scandir(self._root_str + rel) as it:
                found = []
                for entry in it:
                    name = entry.name
                    if not name.startswith(match) or (not rel and name == INTERNAL):
                        continue
                    if not entry.is_dir():
                        found.append(rel + name)
                    elif not entry.is_symlink():  # as os.walk: a linked folder is not walked into
                        found.append(rel + name + "/")
        except (FileNotFoundError, NotADirectoryError):
            return []  # pruned while listing, as a racing S3 list may also miss it
        found.sort()
        if after is not None:
            found = [k for k in found if k > after or (k[-1] == "/" and after.startswith(k))]
        return found

    def _listed_etag(self, key: str) -> str:
        try:
            return _file_etag(self._root_str + key)
        except FileNotFoundError:
            return ""  # deleted since it was listed: matches no If-Match

    def _listed_stat(self, key: str) -> tuple[int, datetime | None]:
        try:
            st = os.stat(self._root_str + key)
        except (FileNotFoundError, NotADirectoryError):
            return 0, None  # deleted since it was listed
        return st.st_size, _mtime(st)

    def delete(self, key):
        meter.count(meter.D, key)
        path = self._path(key)
        with self._lock(key):
            try:
                path.unlink()
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.ENOTDIR):
                    return
                raise StorageError(f"delete {key}: {exc.strerror}") from exc
        self._prune(path.parent)

    def full_key(self, key):
        return key

    def relative_key(self, full_key):
        return None if full_key.startswith(INTERNAL + "/") else full_key

    def presign_get(self, key, expires_s):
        """A folder needs no signature: its file:// URL (readable by whoever can read the folder; no expiry)."""
        return self._path(key).as_uri()

    def path_of(self, key: str) -> Path:
        """Where a key lives on disk, for the watcher and for users browsing the folder."""
        return self._path(key)
