"""Quarantine: a suspected shard's items run in a child process of their own, one at a time, so that a death
there is that shard's and names the one item under way.

A worker process holds several workers; when one item hard-exits it, every worker in it dies, and the shards they
were inside cannot be told apart from the culprit. Each is suspected (a death on its lease) and run here. The
parent keeps the lease (it renews it and commits) and reads the child's record file: `begin i` before an item,
its rows after. A child that dies leaves `begin k` without rows: item k killed it, alone in its process.

    python -m bucketrun.images.fleet.quarantine SPEC.json   (started by the worker, never by hand)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import logging
import os
import pickle
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bucketrun.events import codec
from bucketrun.events.errors import BucketrunError

log = logging.getLogger("bucketrun.fleet")
PR_SET_PDEATHSIG = 1


class QuarantineFailed(BucketrunError):
    """The child died before its first item (it could not start): no item's doing, so nothing is charged."""


@dataclass
class Outcome:
    """What a quarantine run left: each finished item's output (rows, or an error string), the item under way
    when the child died (None if it died between items or did not die), and whether it died."""

    outputs: dict[int, tuple[list[dict[str, Any]] | None, str | None]] = field(default_factory=dict)
    under_way: int | None = None
    died: bool = False
    stopped: bool = False  # the parent ended it (drain, stop, lost lease): nobody's fault
    returncode: int | None = None

    @property
    def started(self) -> bool:
        return bool(self.outputs) or self.under_way is not None


def read_records(path: Path) -> tuple[dict[int, tuple[Any, Any]], int | None, bool]:
    """The record file, up to a torn last record (the child died mid-write): outputs, begun-and-unfinished, end."""
    outputs: dict[int, tuple[Any, Any]] = {}
    begun: int | None = None
    ended = False
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return outputs, None, False
    buf = io.BytesIO(data)
    while True:
        try:
            rec = pickle.load(buf)  # noqa: S301 - written by our own child process, never by a user
        except (EOFError, pickle.UnpicklingError, ValueError, AttributeError, IndexError):
            break
        if rec[0] == "begin":
            begun = rec[1]
        elif rec[0] == "out":
            outputs[rec[1]] = (rec[2], rec[3])
            begun = None
        elif rec[0] == "end":
            ended = True
    return outputs, begun, ended


async def run(spec: dict[str, Any], workdir: Path, should_stop) -> Outcome:
    """Run the shard's items in a child; `should_stop()` is polled, and a true answer kills the child."""
    folder = Path(tempfile.mkdtemp(prefix="quarantine-", dir=workdir))
    spec_path, out_path = folder / "spec.json", folder / "records.pickle"
    spec_path.write_bytes(codec.dumps({**spec, "out": str(out_path), "parent_pid": os.getpid()}))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bucketrun.images.fleet.quarantine",
                                                str(spec_path), stdin=asyncio.subprocess.DEVNULL)
    stopped = False
    try:
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.2)
                break
            except asyncio.TimeoutError:
                if should_stop():
                    stopped = True
                    proc.kill()
    finally:
        if proc.returncode is None:  # cancelled: never leave the child behind
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
    outputs, begun, ended = read_records(out_path)
    for p in (spec_path, out_path):
        p.unlink(missing_ok=True)
    folder.rmdir()
    died = not stopped and (proc.returncode != 0 or not ended)
    return Outcome(outputs, begun if (died or stopped) else None, died, stopped, proc.returncode)


# -- the child --------------------------------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    """A child outliving its worker would hold nothing and commit nothing: have the kernel end it (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)


async def _child(spec: dict[str, Any]) -> None:
    from bucketrun.events.storage import open_bucket
    from bucketrun.events.storage.aio import open_async_bucket

    from .processors import ProcessorContext, make_processor

    out = open(spec["out"], "ab", buffering=0)  # noqa: SIM115 - every record reaches the file as written

    def record(*rec: Any) -> None:
        out.write(pickle.dumps(rec))

    async with open_async_bucket(spec["source_url"]) as source:
        with tempfile.TemporaryDirectory(prefix="bucketrun-quarantine-") as tmp:
            ctx = ProcessorContext(source, Path(tmp), spec["device"], spec["worker"],
                                   output=open_bucket(spec["bucket_url"]), output_prefix=spec["output_prefix"],
                                   job_id=spec["job_id"], attempt=spec["attempt"])
            processor = make_processor(spec["factory"], spec["options"], ctx)
            try:
                for i, item in enumerate(spec["items"], spec["lo"]):
                    record("begin", i)
                    try:
                        payload = await processor.fetch(item)
                    except Exception as exc:  # noqa: BLE001 - as in the worker: the item's error row
                        record("out", i, None, f"fetch failed: {type(exc).__name__}: {exc}"[:500])
                        continue
                    try:
                        record("out", i, list(processor.process(item, payload) or [{}]), None)
                    except Exception as exc:  # noqa: BLE001 - the item's error is its row
                        record("out", i, None, f"{type(exc).__name__}: {exc}"[:1000])
            finally:
                processor.close()
    record("end")
    out.close()


def main(argv: list[str] | None = None) -> int:
    spec = codec.loads(Path((argv or sys.argv[1:])[0]).read_bytes())
    _die_with_parent(spec["parent_pid"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_child(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
