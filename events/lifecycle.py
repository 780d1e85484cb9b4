"""The job lifecycle: one enum, one transition table, and `append_transition`, the only writer of a state.

Each transition is a write-once object at jobs/<id>/events/<seq>.json created with If-None-Match, so two
writers racing for the same sequence number cannot both win; the loser re-reads and decides again. The same
writer keeps index/live/<id>.json present exactly while the job is not terminal.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from . import codec, keys, meter
from .conditional import create_json, create_once
from .errors import CorruptObject, IllegalTransition, NotFound, StaleAttempt, StorageError, UnknownJob
from .storage import Bucket, ObjectInfo

log = logging.getLogger("bucketrun.lifecycle")


class JobState(str, Enum):
    SUBMITTED = "submitted"
    QUEUED = "queued"
    LAUNCHED = "launched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


S = JobState
TERMINAL = frozenset({S.SUCCEEDED, S.REJECTED, S.CANCELLED, S.FAILED})

# None is "no history yet". Any move into QUEUED from QUEUED/LAUNCHED/RUNNING/FAILED is a retry and starts a
# new attempt (QUEUED -> QUEUED retries a failed launch). FAILED is terminal until someone retries it.
TRANSITIONS: dict[JobState | None, frozenset[JobState]] = {
    None: frozenset({S.SUBMITTED, S.REJECTED, S.CANCELLED}),  # cancelled while still waiting in the inbox
    S.SUBMITTED: frozenset({S.QUEUED, S.REJECTED, S.CANCELLED}),
    S.QUEUED: frozenset({S.LAUNCHED, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.LAUNCHED: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.SUCCEEDED: frozenset(),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
}


RETRY_FROM = frozenset({S.QUEUED, S.LAUNCHED, S.RUNNING, S.FAILED})


def is_legal(current: JobState | None, target: JobState) -> bool:
    return target in TRANSITIONS[current]


@dataclass(frozen=True)
class Transition:
    seq: int
    state: JobState
    at: str
    attempt: int
    writer: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "state": self.state.value, "at": self.at, "attempt": self.attempt,
                "writer": self.writer, "detail": self.detail}

    @classmethod
    def from_json(cls, obj: Any, key: str = "") -> "Transition":
        try:
            return cls(int(obj["seq"]), JobState(obj["state"]), str(obj["at"]), int(obj["attempt"]),
                       str(obj["writer"]), dict(obj.get("detail") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptObject(f"{key or 'transition'} is not a transition object: {exc!r}") from exc

    @property
    def time(self) -> datetime:
        return codec.parse_iso(self.at)


@dataclass(frozen=True)
class JobView:
    """A job as its transition log tells it; derived, never stored."""

    job_id: str
    history: tuple[Transition, ...]

    @property
    def latest(self) -> Transition | None:
        return self.history[-1] if self.history else None

    @property
    def state(self) -> JobState | None:
        return self.latest.state if self.latest else None

    @property
    def attempt(self) -> int:
        return self.latest.attempt if self.latest else 0

    @property
    def next_seq(self) -> int:
        return (self.latest.seq + 1) if self.latest else 1


def default_writer(role: str) -> str:
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


def read_view(bucket: Bucket, job_id: str, known: JobView | None = None) -> JobView:
    """Reads only events after the ones already known, so a re-read after a lost race is cheap."""
    history = list(known.history) if known else []
    start = keys.event_key(job_id, history[-1].seq) if history else None
    for info in bucket.list(keys.events_prefix(job_id), start_after=start):
        if keys.parse_event_key(info.key) is None:
            continue
        try:
            obj = codec.loads(bucket.get(info.key).data)
        except NotFound:
            continue
        except CorruptObject as exc:
            raise CorruptObject(f"{info.key} is not valid JSON ({exc})") from exc
        history.append(Transition.from_json(obj, info.key))
    return JobView(job_id, tuple(history))


def read_next(bucket: Bucket, job_id: str, known: JobView) -> JobView:
    """The one transition after those known, by its key: a GET, no LIST. Any later one is not looked for: a
    conditional append at the next sequence number loses its race to it and re-reads (`append_transition`)."""
    key = keys.event_key(job_id, known.next_seq)
    try:
        obj = codec.loads(bucket.get(key).data)
    except NotFound:
        return known
    except CorruptObject as exc:
        raise CorruptObject(f"{key} is not valid JSON ({exc})") from exc
    return JobView(job_id, known.history + (Transition.from_json(obj, key),))


def view_from_json(job_id: str, events: Any) -> JobView | None:
    """A view handed over as JSON (a launch request's copy of the log so far), or None if it is not one: gaps or
    foreign events make it useless, and the reader then reads the bucket as before."""
    try:
        history = tuple(Transition.from_json(e) for e in events)
    except (CorruptObject, TypeError):
        return None
    if not history or [t.seq for t in history] != list(range(1, len(history) + 1)):
        return None
    return JobView(job_id, history)


def require_view(bucket: Bucket, job_id: str) -> JobView:
    view = read_view(bucket, job_id)
    if not view.history:
        raise UnknownJob(f"no job {job_id!r} in {bucket.url}")
    return view


def append_transition(
    bucket: Bucket,
    job_id: str,
    target: JobState,
    *,
    writer: str,
    detail: dict[str, Any] | None = None,
    attempt: int | None = None,
    expect: JobState | set[JobState] | None = None,
    view: JobView | None = None,
) -> tuple[Transition, JobView]:
    """The only writer of job state.

    `attempt` fences workers: a writer of attempt N cannot write once the job is on another attempt.
    `expect` lets a caller say which state it decided from; if the job moved elsewhere meanwhile it
    raises IllegalTransition instead of writing on top of a state the caller never saw.
    Moves to QUEUED from a launched/running/failed job start a new attempt.
    The transition's detail carries `requests`: what this process spent on the job since its last transition
    (events/meter.py), so a job's request count is the sum over its history.
    """
    expected = {expect} if isinstance(expect, JobState) else expect
    view = view if view is not None else read_view(bucket, job_id)
    carried = dict.fromkeys(meter.CLASSES, 0)  # counts taken into a write that lost its race
    try:
        return _append(bucket, job_id, target, writer, detail, attempt, expected, view, carried)
    except BaseException:
        meter.give_back(job_id, carried)  # not recorded: the next transition this process writes carries them
        raise


def _append(bucket: Bucket, job_id: str, target: JobState, writer: str, detail: dict[str, Any] | None,
            attempt: int | None, expected: set[JobState] | None, view: JobView,
            carried: dict[str, int]) -> tuple[Transition, JobView]:
    while True:
        current = view.state
        if attempt is not None and current is not None and attempt != view.attempt:
            raise StaleAttempt(f"job {job_id}: attempt {attempt} is stale, the job is on attempt {view.attempt}")
        if expected is not None and current not in expected:
            raise IllegalTransition(f"job {job_id} is {current.value if current else 'new'}, "
                                    f"not {'/'.join(sorted(s.value for s in expected))}")
        if not is_legal(current, target):
            raise IllegalTransition(f"job {job_id}: {current.value if current else 'new'} -> {target.value} "
                                    "is not allowed")
        next_attempt = view.attempt or 1
        if target is S.QUEUED and current in RETRY_FROM:
            next_attempt = view.attempt + 1
        if not target.terminal and (current is None or current.terminal):
            mark_live(bucket, job_id)  # before the job can be live without being in the index
        # this process's requests for the job since its last record, and this write's own (its PUT, and the
        # free DELETE of the live marker after a terminal one): recorded here, so counting costs no request
        own = {"a": 1, "b": 0, "d": 1 if target.terminal and current is not None else 0}
        carried.update(meter.add(carried, meter.take(job_id)))
        counts = meter.add(carried, own)
        transition = Transition(view.next_seq, target, codec.iso(codec.now()), next_attempt, writer,
                                {**(detail or {}), "requests": {**counts, "by": writer.split("@", 1)[0]}})
        written = create_json(bucket, keys.event_key(job_id, transition.seq), transition.to_json())
        if not written.won:  # another writer took this sequence number: catch up and decide again
            view = read_view(bucket, job_id, known=view)
            continue
        carried.update(dict.fromkeys(meter.CLASSES, 0))  # recorded now
        if target.terminal and current is not None:
            unmark_live(bucket, job_id)  # after: a writer dying in between leaves a marker the sweep repairs
        meter.settle(job_id, own)
        return transition, JobView(job_id, view.history + (transition,))


def mark_live(bucket: Bucket, job_id: str) -> None:
    create_once(bucket, keys.live_key(job_id), codec.dumps({"job_id": job_id, "at": codec.iso(codec.now())}))


def unmark_live(bucket: Bucket, job_id: str) -> None:
    try:
        bucket.delete(keys.live_key(job_id))
    except StorageError as exc:
        log.warning("job %s ended but its live marker stays (the sweep removes it): %s", job_id, exc)


def live_jobs(bucket: Bucket) -> list[tuple[str, ObjectInfo]]:
    """The jobs the index says are not terminal, in time order: one listing per thousand live jobs."""
    out = []
    for info in bucket.list(keys.LIVE):
        job_id = keys.job_id_from_index(info.key, keys.LIVE)
        if job_id:
            out.append((job_id, info))
    return out


def list_job_ids(bucket: Bucket) -> list[str]:
    """Every job id in time order, from a folder listing of jobs/: one request per thousand jobs, however many
    objects a fleet's folder holds."""
    return list(bucket.folders(keys.JOBS))
