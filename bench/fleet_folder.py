"""bench/fleet.py's folder side: bucketrun's embedded default, a local folder as the bucket (every object fsynced
as it is written), one fresh folder per run on the same file system as the Postgres cluster's data."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fleet_common import store_diagnosis

INTERNAL = ".bucketrun"  # the folder backend's own temp files and locks (events/storage/local.py)


class FolderStore:
    """Read-only view of a folder bucket straight from the disk (not through the bucket API), for progress and
    the tail timeline."""

    def __init__(self, root: Path):
        self.root = root

    def keys(self, prefix: str = "") -> list[str]:
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        out = []
        for dirpath, dirnames, files in os.walk(base):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if d != INTERNAL]
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel + "/"
            out += [rel + f for f in files if (rel + f).startswith(prefix)]
        return out

    def count(self, folder: str) -> int:
        """Files in one folder (a done/ prefix): one scandir, no stat."""
        try:
            with os.scandir(self.root / folder) as it:
                return sum(1 for e in it if e.name.endswith(".json"))
        except FileNotFoundError:
            return 0

    def body(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except OSError:
            return None

    def mtime(self, key: str) -> float | None:
        try:
            return (self.root / key).stat().st_mtime
        except OSError:
            return None


def filesystem_of(path: Path) -> str:
    """The file system type under a path (ext4, tmpfs, ...): fsync on tmpfs would be free, so it is recorded."""
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[1].split()[1]
    except Exception:  # noqa: BLE001 - a label only
        return "unknown"


class Folder:
    """The `folder` side: one temp dir for the bench, a fresh bucket folder in it per run; no request counter
    (a folder has no server to count at)."""

    side = "folder"
    counter = None

    def __init__(self, base: str | None = None):
        self.base = Path(tempfile.mkdtemp(prefix="bucketrun-fleet-folder-", dir=base))
        self.fs = filesystem_of(self.base)

    def new_bucket(self, label: str, items_key: str, items: bytes) -> tuple[str, str]:
        from bucketrun.events.storage import open_bucket

        name = f"bench-fleet-{label}-{uuid.uuid4().hex[:6]}"
        url = str(self.base / name)
        open_bucket(url).put(items_key, items, "application/x-ndjson")
        return name, url

    def store(self, name: str) -> FolderStore:
        return FolderStore(self.base / name)

    def diagnose(self, name: str, job_id: str, sample_s: float = 0) -> dict[str, Any]:
        return store_diagnosis(self.store(name), job_id)

    def drop_bucket(self, name: str) -> None:
        shutil.rmtree(self.base / name, ignore_errors=True)

    def stop(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
