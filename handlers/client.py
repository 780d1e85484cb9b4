"""What a user's client does: drop a manifest into the inbox, and follow a job until it ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bucketrun.events import codec, keys, meter
from bucketrun.events.errors import PreconditionFailed
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import read_view
from bucketrun.events.status import job_status
from bucketrun.events.storage import Bucket

from .intake import claim_job_id


def submit(bucket: Bucket, raw: bytes) -> tuple[str, bool]:
    """Validate, then drop as inbox/<job id>.json (create-if-absent). Returns (job id, newly dropped).

    With a request_id the client claims the id first, so a repeated submit prints the existing job.
    """
    manifest = parse_manifest(raw)  # ManifestRejected: the CLI prints it as one line
    job_id = keys.new_job_id()
    inbox = keys.inbox_key(f"{job_id}.json")
    if manifest.request_id:
        claimed, _ = claim_job_id(bucket, keys.request_token(manifest.request_id), job_id, inbox)
        if claimed != job_id:
            return claimed, False
    try:
        bucket.create(inbox, raw, "application/json")
    except PreconditionFailed:
        pass  # only possible if this very id was already dropped; the job exists
    meter.take(job_id)  # the intake that names the job records this PUT, wherever it runs (`bucketrun demo`: here)
    return job_id, True


def wait(bucket: Bucket, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None,
         poll_s: float = 0.25, timeout_s: float | None = None, pending_hint_s: float = 15.0,
         on_pending: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Poll the job's log and progress until it reaches a terminal state (or the timeout). If nothing has
    taken the manifest in after `pending_hint_s`, `on_pending` is told once (no dispatcher is running?)."""
    started = time.monotonic()
    deadline = None if timeout_s is None else started + timeout_s
    view, hinted, seen, shown_at = None, False, 0, 0.0
    while True:
        view = read_view(bucket, job_id, known=view)
        if view.history:
            # A poll that finds no new transition costs one listing: the status (several reads) is built only
            # when the log moved, or at most once a second for a caller that shows progress. A fast poll must not
            # take CPU from the worker it waits for.
            moved = len(view.history) != seen
            if moved or (on_update and time.monotonic() - shown_at >= 1.0):
                seen, shown_at = len(view.history), time.monotonic()
                status = job_status(bucket, job_id, view)
                if on_update:
                    on_update(status)
                if status["terminal"]:
                    return status
        else:
            if on_update:
                on_update({"job_id": job_id, "state": "dropped", "progress": None, "terminal": False})
            if on_pending and not hinted and time.monotonic() - started > pending_hint_s:
                hinted = True
                on_pending(keys.inbox_key(f"{job_id}.json"))
        if deadline is not None and time.monotonic() > deadline:
            return job_status(bucket, job_id, view) if view.history else {
                "job_id": job_id, "state": "dropped", "terminal": False}
        time.sleep(poll_s)


def state_durations(history: list[Any], now_iso: str | None = None) -> list[float | None]:
    """Seconds spent in each state: until the next transition, or until now for a non-terminal latest."""
    out: list[float | None] = []
    for i, t in enumerate(history):
        if i + 1 < len(history):
            out.append((history[i + 1].time - t.time).total_seconds())
        elif not t.state.terminal:
            out.append(((codec.parse_iso(now_iso) if now_iso else codec.now()) - t.time).total_seconds())
        else:
            out.append(None)
    return out
