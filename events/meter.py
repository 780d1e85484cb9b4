"""Object-store requests this process made, by job and price class, until a writer records them.

The storage backends feed it (each HTTP request to S3, each operation on a folder bucket); a writer takes a
job's counts into the transition (or fleet ledger) it writes anyway, so counting adds no request of its own.
Classes follow the stores' price lists: A = writes and lists, B = reads, and deletes, which R2 and S3 do not
charge for, kept apart as "d" (docs/cost.md).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator

from . import keys

A, B, D = "a", "b", "d"
CLASSES = (A, B, D)
MAX_JOBS = 10_000  # jobs a long-lived process (a sweep) keeps counts for; the oldest are dropped past it

# S3 operations by price class (R2's and S3's lists agree on these); anything else we never call is class A.
_OPS = {
    "GetObject": B, "HeadObject": B,
    "DeleteObject": D, "DeleteObjects": D, "AbortMultipartUpload": D,
}
_JOB_PREFIX = re.compile(r"(\d{8}T\d{9}Z-[0-9a-hjkmnp-tv-z]{6})(?:-|\.json$|$)")

_lock = threading.Lock()
_counts: OrderedDict[str, list[int]] = OrderedDict()
_local = threading.local()  # .pending: this thread's counts on keys that name no job, while a job is being named


def op_class(op: str) -> str:
    """An S3 operation's price class: GET and HEAD are B, deletes are free, the rest (PUT, COPY, POST, LIST,
    multipart parts) are A."""
    return _OPS.get(op, A)


def job_of(key: str) -> str | None:
    """The job a key (or a listing's prefix) belongs to: jobs/<id>/..., or any key whose last segment is the
    job id (index/live/<id>.json, inbox/<id>.json, control/cancel/<id>.json) or starts with it (an agent offer
    index/agents/<label>/<id>-<attempt>-<role>.json). None for shared keys (index/intake/<sha256>.json)."""
    job = keys.job_id_from_key(key)
    if job is not None:
        return job
    m = _JOB_PREFIX.match(key.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def count(cls: str, key: str, n: int = 1) -> None:
    """One request of class `cls` on `key`; keys that name no job are not kept."""
    charged = getattr(_local, "charged", None)
    if charged is not None:
        count_for(charged, cls, n)
        return
    job = job_of(key)
    if job is None:
        pending = getattr(_local, "pending", None)
        if pending is not None:
            pending[cls] = pending.get(cls, 0) + n
            return
        job = getattr(_local, "job", None) or _process_job
        if job is None:
            return
    count_for(job, cls, n)


_process_job: str | None = None  # a process that works for one job only (a fleet worker process)


def work_for(job_id: str | None) -> None:
    """This whole process works for one job: requests on keys that name none (its inputs) are the job's."""
    global _process_job
    _process_job = job_id


@contextlib.contextmanager
def working_for(job_id: str) -> Iterator[None]:
    """This thread works for the job meanwhile: requests on keys that name no job (the media it downloads, the
    result cache it consults, under other prefixes) are the job's."""
    outer, _local.job = getattr(_local, "job", None), job_id
    try:
        yield
    finally:
        _local.job = outer


@contextlib.contextmanager
def charged_to(job_id: str) -> Iterator[None]:
    """Every request of this thread meanwhile is the job's, even on another job's keys: a cache hit reading the
    producing job's artifacts does it for the new job, and the producer never records it."""
    outer, _local.charged = getattr(_local, "charged", None), job_id
    try:
        yield
    finally:
        _local.charged = outer


def count_for(job: str, cls: str, n: int = 1) -> None:
    """Requests that belong to the job though their key does not name it."""
    with _lock:
        row = _counts.get(job)
        if row is None:
            row = _counts[job] = [0, 0, 0]
            if len(_counts) > MAX_JOBS:
                _counts.popitem(last=False)
        row[CLASSES.index(cls)] += n


@contextlib.contextmanager
def unnamed() -> Iterator[dict[str, int]]:
    """Hold this thread's requests on keys that name no job (intake's read of `inbox/anything.json`, its claim of
    `index/intake/<sha256>.json`) until the caller knows whose they were and gives them back to that job."""
    outer, _local.pending = getattr(_local, "pending", None), {}
    try:
        yield _local.pending
    finally:
        _local.pending = outer


def count_op(op: str, key: str) -> None:
    count(op_class(op), key)


def take(job_id: str) -> dict[str, int]:
    """This process's counts for the job since the last take, cleared: the writer now owns them."""
    with _lock:
        row = _counts.pop(job_id, None) or [0, 0, 0]
    return dict(zip(CLASSES, row))


def give_back(job_id: str, counts: dict[str, int]) -> None:
    """Counts taken for a write that did not happen (or beyond what it stated): the next record carries them."""
    for cls in CLASSES:
        if counts.get(cls, 0) > 0:
            with _lock:
                row = _counts.setdefault(job_id, [0, 0, 0])
                row[CLASSES.index(cls)] += counts[cls]


def add(x: dict[str, int], y: dict[str, int]) -> dict[str, int]:
    return {c: int(x.get(c, 0)) + int(y.get(c, 0)) for c in CLASSES}


def settle(job_id: str, stated: dict[str, int]) -> None:
    """After a write whose own requests were stated in advance: take what the meter saw since, and give back
    whatever exceeds the statement (a retried PUT, a read-back) for the next record."""
    seen = take(job_id)
    give_back(job_id, {c: seen[c] - stated.get(c, 0) for c in CLASSES})
