"""`bucketrun get JOB`: a succeeded job's results brought home and verified before anything is trusted or torn
down: artifacts by sha256; a fleet's dataset row by row; a training window's verified mirror file by file against
its manifest, then loaded where that needs no training framework. Every file is written under a temporary name
beside its own and renamed only once it checks, so an interrupted get never leaves a file that looks complete."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bucketrun.events import codec
from bucketrun.events.digest import sha256_file
from bucketrun.events.errors import CorruptObject, NotFound
from bucketrun.events.fleet.dataset import verify_dataset
from bucketrun.events.lifecycle import JobState
from bucketrun.events.status import job_status

from .common import CliError, bucket_of
from .loadcheck import LoadError, load_check

PARTIAL = ".bucketrun-partial"  # a download in progress; the next get of the same file replaces it
MIRROR_MANIFEST = ".bucketrun-mirror.json"  # the window's mirror manifest, kept beside the files it vouches for


class Mismatch(Exception):
    """A fetched object is missing or is not what its record says."""


class Fetch:
    """One get: what was fetched, what checked, what failed; printed as it goes unless --json."""

    def __init__(self, bucket, out: Path, quiet: bool):
        self.bucket, self.out, self.quiet = bucket, out, quiet
        self.files: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)

    def file(self, key: str, target: Path, sha256: str, size: int | None) -> dict[str, Any]:
        """Fetch, check the digest and size, rename into place, then load-check it; recorded either way."""
        rec: dict[str, Any] = {"key": key, "path": str(target), "bytes": size, "sha256": sha256, "verified": False,
                               "loaded": None, "error": None}
        self.files.append(rec)
        try:
            fetch(self.bucket, key, target, sha256, size)
            rec["loaded"] = load_check(target)
            rec["verified"] = True
        except Mismatch as exc:
            rec["error"] = str(exc)
        except LoadError as exc:
            rec["error"] = f"{target} {exc}"
        return rec

    @property
    def verified(self) -> int:
        return sum(f["verified"] for f in self.files)

    @property
    def errors(self) -> list[str]:
        return [f["error"] for f in self.files if f["error"]]

    def tally(self) -> str:
        return f"verified {self.verified}/{len(self.files)}, errors {len(self.errors)}"


def fetch(bucket, key: str, target: Path, sha256: str, size: int | None) -> None:
    """Download `key` to `target` + PARTIAL (streamed, never whole in memory), check it, then rename: under its
    final name a file is always whole and checked; a bad or interrupted one is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + PARTIAL)
    try:
        try:
            bucket.download(key, tmp)
        except NotFound:
            raise Mismatch(f"{key} is missing from the bucket") from None
        got, digest = tmp.stat().st_size, sha256_file(tmp)
        if digest != sha256 or (size is not None and got != size):
            raise Mismatch(f"{key} does not match its recorded sha256/bytes ({got} B, sha256 {digest[:16]}; "
                           f"recorded {size} B, {sha256[:16]}); not trusting it")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_checked(target: Path, data: bytes) -> None:
    """Bytes already checked in memory, written so a reader never sees half of them under the final name."""
    tmp = target.with_name(target.name + PARTIAL)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_get(args) -> int:
    bucket = bucket_of(args)
    status = job_status(bucket, args.job)
    if status["state"] != JobState.SUCCEEDED.value:
        raise CliError(f"bucketrun: job {args.job} is {status['state']}, it has no verified artifacts")
    out = Path(args.out or args.job)
    got = Fetch(bucket, out, quiet=args.json)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for a in status["artifacts"]:
            target = out / Path(a["key"]).name
            if not got.file(a["key"], target, a["sha256"], a["bytes"])["verified"]:
                continue
            got.say(str(target))
            if a.get("format") == "dataset":
                _get_dataset(got, codec.loads(target.read_bytes()))
        if status.get("window"):
            _get_mirror(got, status["window"]["mirror"])
    except OSError as exc:
        raise CliError(f"bucketrun: cannot write into {out}: {exc.strerror or exc}") from exc
    if args.json:
        print(json.dumps({"job_id": args.job, "out": str(out), "files": got.files, **got.extra,
                          "verified": got.verified, "total": len(got.files),
                          "errors": got.errors}, sort_keys=True))
    else:
        print(f"{out}/: {got.tally()}")
    if got.errors:
        more = f" (and {len(got.errors) - 1} more)" if len(got.errors) > 1 else ""
        print(f"bucketrun: {got.errors[0]}{more}; {got.tally()}", file=sys.stderr)
        return 1
    return 0


def _get_mirror(got: Fetch, mirror: dict[str, Any]) -> None:
    """A training window's verified mirror: each file in the mirror manifest, checked against its sha256 and
    size, then load-checked; the manifest itself is kept as MIRROR_MANIFEST."""
    try:
        raw = got.bucket.get(mirror["manifest"]).data
        manifest = codec.loads(raw)
    except (NotFound, CorruptObject) as exc:
        raise CliError(f"bucketrun: the window's mirror manifest {mirror['manifest']} cannot be read: {exc}") from None
    if not manifest.get("verified"):
        raise CliError(f"bucketrun: the mirror manifest {mirror['manifest']} is not a verified one")
    got.say(f"{got.out}/ from {manifest['prefix']} (step {manifest['step']}, {len(manifest['files'])} files, "
            f"{manifest['bytes']} B)")
    for f in manifest["files"]:
        rel = f["path"]
        if rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
            raise CliError(f"bucketrun: the mirror manifest names {rel!r}, a path outside the output folder")
        rec = got.file(manifest["prefix"] + rel, got.out / rel, f["sha256"], f["bytes"])
        if rec["verified"]:
            got.say(f"  {rel}  {f['bytes']} B  sha256 ok" + (f"  {rec['loaded']}" if rec["loaded"] else ""))
    write_checked(got.out / MIRROR_MANIFEST, raw)
    loaded = Counter(r["loaded"].split(":")[0] for r in got.files if r["loaded"])
    got.extra["mirror"] = {"manifest": mirror["manifest"], "prefix": manifest["prefix"], "step": manifest["step"],
                           "loaded": dict(loaded)}
    if loaded:
        got.say("  loaded: " + ", ".join(f"{n} {what}" for what, n in sorted(loaded.items())))


def _get_dataset(got: Fetch, dataset: dict) -> None:
    """A fleet's dataset: every part is checked (bytes, sha256, each item exactly once) before any is kept."""
    if importlib.util.find_spec("pyarrow") is None:
        raise CliError("bucketrun: reading a fleet dataset needs pyarrow: pip install 'bucketrun[fleet]'")
    parts = got.out / "parts"
    parts.mkdir(exist_ok=True)

    def keep(entry: dict[str, Any], data: bytes) -> None:  # a part whose bytes, digest and parquet checked
        target = parts / Path(entry["key"]).name
        write_checked(target, data)
        got.files.append({"key": entry["key"], "path": str(target), "bytes": entry["bytes"],
                          "sha256": entry["sha256"], "verified": True, "loaded": "parquet", "error": None})

    try:
        stats = verify_dataset(got.bucket, dataset, sink=keep)
    except CorruptObject as exc:
        for f in parts.iterdir():  # nothing of a dataset that does not verify is left to be trusted
            f.unlink()
        raise CliError(f"bucketrun: {exc}") from exc
    got.extra["dataset"] = {"parts_dir": str(parts), **stats}
    got.say(f"{parts}/ ({stats['parts']} parts, {stats['rows']} rows, {stats['items']} items, "
            f"{stats['dead_letters']} dead-lettered: verified)")
    _get_item_files(got, sorted(parts.iterdir()), got.out / "items")


def _get_item_files(got: Fetch, part_files: list[Path], out: Path) -> None:
    """A processor's per-item files (the transcribe processor's transcripts): each row's `<name>_key` column
    with a `<name>_sha256` beside it, fetched and checked, as items/<item index>.<name> (the item's first row)
    or items/<item index>-<item_row>.<name> (its further rows, when a processor returns several per item)."""
    import pyarrow.parquet as pq  # late: pyarrow (heavy, the fleet extra) only to read a fleet's dataset

    wanted = []
    for path in part_files:
        table = pq.read_table(path, use_threads=False, pre_buffer=False)  # no Arrow pool at exit (arrow#34314)
        names = [c[: -len("_key")] for c in table.column_names
                 if c.endswith("_key") and f"{c[: -len('_key')]}_sha256" in table.column_names]
        for row in table.select(["item_index", "item_row",
                                 *(f"{n}_{x}" for n in names for x in ("key", "sha256"))]).to_pylist():
            wanted += [(row["item_index"], row["item_row"], n, row[f"{n}_key"], row[f"{n}_sha256"])
                       for n in names if row[f"{n}_key"]]
    if not wanted:
        return
    out.mkdir(exist_ok=True)
    ok = 0
    for index, ordinal, name, key, sha256 in wanted:
        target = out / (f"{index:09d}.{name}" if not ordinal else f"{index:09d}-{ordinal}.{name}")
        ok += got.file(key, target, sha256, None)["verified"]
    got.say(f"{out}/ ({ok} per-item files: verified)" if ok == len(wanted) else
            f"{out}/ ({ok} of {len(wanted)} per-item files verified)")


def register(add) -> None:
    p = add("get", cmd_get, "download a succeeded job's results and verify them (a window's mirror: by loading)")
    p.add_argument("job")
    p.add_argument("--out", help="folder to write into (default: ./JOB)")
    p.add_argument("--json", action="store_true", help="one JSON object: each file fetched, its check, the tally")
