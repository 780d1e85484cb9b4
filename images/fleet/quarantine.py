"""Quarantine: a suspected shard's items run in a child process of their own, one at a time, so that a death
there is that shard's and names the one item under way.

A worker process holds several workers; when one item hard-exits it, every worker in it dies, and the shards they
were inside cannot be told apart from the culprit. Each is suspected (a death on its lease) and run here. The
parent keeps the lease (it renews it and commits) and reads the child's record file: `begin i` before an item,
its rows after. A child that dies leaves `begin k` without rows: item k killed it, alone in its process.

    python -m bucketrun.images.fleet.quarantine   (started by the worker, never by hand: the job on the first
                                                  line of stdin, then one shard a line)
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

import orjson

from bucketrun.events import codec
from bucketrun.events.errors import BucketrunError
from bucketrun.events.storage import open_bucket
from bucketrun.events.storage.aio import open_async_bucket

from .processors import CURRENT_WORKER, ProcessorContext, make_processor

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


def _line(obj: Any) -> bytes:
    """One JSON object on one line (codec.dumps indents)."""
    return orjson.dumps(obj) + b"\n"


class Quarantine:
    """One child process per worker process, running one suspected shard at a time (a lock), so a death in it
    is that shard's. It is started on first use and lives on, so a run of innocent suspects (a killed process
    leaves one per worker) pays for one start, not one each; a child that died is started afresh."""

    def __init__(self, workdir: Path, job_spec: dict[str, Any]):
        self.workdir, self.job_spec = workdir, job_spec
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def _start(self) -> asyncio.subprocess.Process:
        if self.proc is None or self.proc.returncode is not None:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bucketrun.images.fleet.quarantine", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE)
            self.proc.stdin.write(_line({**self.job_spec, "parent_pid": os.getpid()}))
        return self.proc

    async def run(self, lo: int, items: list[str], should_stop, worker: str) -> Outcome:
        """Run items [lo, lo + len(items)) in the child for `worker`; `should_stop()` is polled, and a true
        answer kills it."""
        async with self.lock:
            if should_stop():  # drained or lost while waiting for its turn
                return Outcome(stopped=True)
            folder = Path(tempfile.mkdtemp(prefix="quarantine-", dir=self.workdir))
            out_path = folder / "records.pickle"
            stopped, done = False, False
            proc = await self._start()
            try:
                proc.stdin.write(_line({"lo": lo, "items": items, "out": str(out_path), "worker": worker}))
                await proc.stdin.drain()
                line = asyncio.ensure_future(proc.stdout.readline())
                while True:
                    finished, _ = await asyncio.wait({line}, timeout=0.2)
                    if finished:
                        done = line.result() == b"done\n"  # b"": the child died
                        break
                    if should_stop():
                        stopped = True
                        break
            except (BrokenPipeError, ConnectionResetError):  # it died before it read the shard
                pass
            finally:
                if not done:  # died, stopped or cancelled: never leave a child mid-shard behind
                    await self.close()
                    if "line" in locals():
                        line.cancel()
            outputs, begun, ended = read_records(out_path)
            out_path.unlink(missing_ok=True)
            folder.rmdir()
            died = not stopped and not (done and ended)
            return Outcome(outputs, begun if (died or stopped) else None, died, stopped,
                           None if done else proc.returncode)

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()


# -- the child --------------------------------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    """A child outliving its worker would hold nothing and commit nothing: have the kernel end it (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)


async def _child(spec: dict[str, Any]) -> None:
    """Make the processor once, then run each shard read from stdin, recording each item, then `done`."""
    loop = asyncio.get_running_loop()
    async with open_async_bucket(spec["source_url"]) as source:
        with tempfile.TemporaryDirectory(prefix="bucketrun-quarantine-") as tmp:
            ctx = ProcessorContext(source, Path(tmp), spec["device"], spec["worker"],
                                   output=open_bucket(spec["bucket_url"]), output_prefix=spec["output_prefix"],
                                   job_id=spec["job_id"], attempt=spec["attempt"])
            processor = make_processor(spec["factory"], spec["options"], ctx)
            try:
                while line := await loop.run_in_executor(None, sys.stdin.buffer.readline):
                    shard = codec.loads(line)
                    CURRENT_WORKER.set(shard["worker"])
                    with open(shard["out"], "ab", buffering=0) as out:  # each record reaches the file as written
                        await _shard(processor, shard, lambda *rec: out.write(pickle.dumps(rec)))
                    sys.stdout.buffer.write(b"done\n")
                    sys.stdout.buffer.flush()
            finally:
                processor.close()


async def _shard(processor, shard: dict[str, Any], record) -> None:
    for i, item in enumerate(shard["items"], shard["lo"]):
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
    record("end")


def main() -> int:
    spec = codec.loads(sys.stdin.buffer.readline())
    _die_with_parent(spec["parent_pid"])
    # stdout carries the protocol alone: whatever the processor prints goes to stderr.
    sys.stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_child(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
