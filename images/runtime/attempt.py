"""One attempt runtime for every kind: wait for the launch, write `running`, heartbeat and progress, capture
the log to the bucket, stop on cancel, drain on SIGTERM, verify the result, and write the terminal transition
listing each artifact's key, bytes and sha256. A kind supplies only its work: `work(attempt) -> result`.
"""

from __future__ import annotations

import ctypes
import hashlib
import gc
import io
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bucketrun.events import codec, keys, meter, needs
from bucketrun.events.errors import BucketrunError, IllegalTransition, StaleAttempt
from bucketrun.events.failures import FailureClass, JobFailure, error_detail
from bucketrun.events.kinds import get_kind
from bucketrun.events.kinds.validate import load_job_manifest, validate_manifest
from bucketrun.events.lifecycle import (JobState, JobView, append_transition, default_writer, read_next, read_view,
                                        view_from_json)
from bucketrun.events.manifest import JobManifest
from bucketrun.events.retry import record_failure
from bucketrun.events.storage import Bucket, open_bucket

from .heartbeat import Heartbeat
from .stages import Stages, handoffs

log = logging.getLogger("bucketrun.worker")
Work = Callable[["Attempt"], dict[str, Any]]


class Superseded(Exception):
    """The job left this attempt (cancelled, retried) while it ran: write nothing more."""


class Drained(Exception):
    """SIGTERM: the platform is taking the worker away; the attempt ends as `lost` and is retried."""


_draining = threading.Event()
_busy = threading.Event()  # set while an attempt runs in this process
_previous_handler: Any = signal.SIG_DFL


def _on_sigterm(_signum, _frame) -> None:
    _draining.set()
    if _busy.is_set():
        log.warning("SIGTERM: draining the current attempt")
    else:
        stop_after_drain()


def install_drain_handler() -> None:
    """SIGTERM while an attempt runs sets a flag the work checks at its safe points, so the attempt ends as
    `lost` (and is retried) instead of going silent; while idle it stops the process as before."""
    global _previous_handler
    if threading.current_thread() is threading.main_thread():
        _previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)


def stop_after_drain() -> None:
    """Hand SIGTERM to whoever had it before us (the default: exit), once no attempt is left running."""
    signal.signal(signal.SIGTERM, _previous_handler if callable(_previous_handler) else signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def draining() -> bool:
    return _draining.is_set()


class Attempt:
    """What a kind's work sees: its job, a scratch folder, progress, artifacts, and when to stop."""

    def __init__(self, bucket: Bucket, job_id: str, attempt: int, manifest: JobManifest, workdir: Path,
                 beat: Heartbeat):
        self.bucket, self.job_id, self.attempt, self.manifest = bucket, job_id, attempt, manifest
        self.workdir, self.beat = workdir, beat
        self.artifacts: list[dict[str, Any]] = []
        self.stages = Stages()

    def progress(self, stage: str, fraction: float, processed: float | None = None,
                 total: float | None = None) -> None:
        self.beat.update(stage, fraction, processed, total)

    def check(self) -> None:
        """Call between units of work: raises when the job moved on or the worker is being drained."""
        if self.beat.superseded.is_set():
            raise Superseded()
        if draining():
            raise Drained()

    def put_artifact(self, name: str, data: bytes, content_type: str, **meta: Any) -> dict[str, Any]:
        """Written under this attempt's prefix, so a late writer never overwrites a newer attempt's outputs."""
        key = keys.artifact_key(self.job_id, self.attempt, name)
        self.bucket.put(key, data, content_type)
        record = {"key": key, **meta, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.artifacts.append(record)
        return record


class LogShipper:
    """Puts the attempt's log in the bucket while it runs (at most every LOG_EVERY_S, and only when it grew),
    so `bucketrun logs -f` can follow it, and once more at the end. A short job pays only the final PUT."""

    LOG_EVERY_S = 30.0

    def __init__(self, bucket: Bucket, key: str, buffer: io.StringIO):
        self.bucket, self.key, self.buffer = bucket, key, buffer
        self.shipped, self.at = 0, time.monotonic()

    def maybe_ship(self) -> None:
        if time.monotonic() - self.at >= self.LOG_EVERY_S and len(self.buffer.getvalue()) > self.shipped:
            self.ship()

    def ship(self) -> None:
        data = self.buffer.getvalue().encode()
        try:
            self.bucket.put(self.key, data, "text/plain; charset=utf-8")
            self.shipped, self.at = len(data), time.monotonic()
        except BucketrunError as exc:  # the log is advisory; the transition log is the truth
            log.debug("worker log not shipped: %s", exc)


def wait_for_launch(bucket: Bucket, job_id: str, attempt: int, timeout_s: float = 30.0,
                    known: JobView | None = None) -> JobView:
    """The launcher appends `launched` after the backend accepts the job, so a fast worker waits for it. With the
    log as the launcher knew it (`known`, the launch request's copy, ending at `queued`), the next transition is
    read by its key alone; anything but this attempt's `launched` there is checked against the whole log."""
    deadline = time.monotonic() + timeout_s
    handed = known is not None and known.state is JobState.QUEUED and known.attempt == attempt
    view = read_next(bucket, job_id, known) if handed else read_view(bucket, job_id)
    pause = 0.005  # the transition is usually milliseconds behind: look again soon, then back off to 0.2 s
    while view.state is JobState.QUEUED and view.attempt == attempt and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
        view = read_next(bucket, job_id, view) if handed else read_view(bucket, job_id, known=view)
    if handed and (view.state is not JobState.LAUNCHED or view.attempt != attempt):
        view = read_view(bucket, job_id, known=view)  # not the expected next step: the log's latest decides
    return view


def run_attempt(bucket_url: str, job_id: str, attempt: int, writer: str | None = None,
                work: Work | None = None, handoff: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one attempt to a terminal transition; returns a small summary (never secrets). `work` overrides
    the kind's registered callable (tests). `handoff` is what the launch request carried (handlers/launch.py):
    the log up to `queued` and the manifest, which spare the worker reading them back."""
    with meter.working_for(job_id):  # the media and cache keys it reads name no job: they are this one's
        return _run_attempt(bucket_url, job_id, attempt, writer, work, handoff or {})


def handed_manifest(handoff: dict[str, Any], view: JobView, attempt: int) -> JobManifest | None:
    """The manifest the launch request carried, if the `launched` transition read from the bucket vouches for
    it (the sha256 of the manifest the launcher launched with); else None, and the worker reads it back."""
    raw = handoff.get("manifest")
    launched = next((t for t in reversed(view.history) if t.attempt == attempt and t.state is JobState.LAUNCHED), None)
    if not isinstance(raw, dict) or launched is None:
        return None
    if launched.detail.get("manifest_sha256") != hashlib.sha256(codec.dumps(raw)).hexdigest():
        return None
    return validate_manifest(raw)  # as load_job_manifest would: a failure here fails the job the same way


def _run_attempt(bucket_url: str, job_id: str, attempt: int, writer: str | None,
                 work: Work | None, handoff: dict[str, Any]) -> dict[str, Any]:
    bucket = open_bucket(bucket_url)
    writer = writer or default_writer("worker")
    view = wait_for_launch(bucket, job_id, attempt, known=view_from_json(job_id, handoff.get("events")))
    if view.state is not JobState.LAUNCHED or view.attempt != attempt:
        return {"job_id": job_id, "attempt": attempt, "status": "skipped",
                "reason": f"job is {view.state.value if view.state else 'unknown'} on attempt {view.attempt}"}
    try:
        _, view = append_transition(bucket, job_id, JobState.RUNNING, writer=writer, attempt=attempt,
                                    expect=JobState.LAUNCHED, view=view)
    except (IllegalTransition, StaleAttempt) as exc:
        return {"job_id": job_id, "attempt": attempt, "status": "skipped", "reason": str(exc)}

    _busy.set()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger("bucketrun")
    root_logger.addHandler(handler)
    if root_logger.getEffectiveLevel() > logging.INFO:  # the worker log keeps INFO, whatever the host configured
        root_logger.setLevel(logging.INFO)
    started = time.monotonic()
    manifest: JobManifest | None = None
    error: dict[str, Any] | None = None
    detail: dict[str, Any] = {}
    log_counted = False
    try:
        beat = None
        try:
            manifest = handed_manifest(handoff, view, attempt) or load_job_manifest(bucket, job_id)
            spec = get_kind(manifest.kind)
            assert spec is not None  # intake validated the kind
            run = work or spec.load_work()
            shipper = LogShipper(bucket, keys.log_key(job_id, attempt), buffer)
            with Heartbeat(bucket, job_id, attempt, every_s=manifest.resources.heartbeat_s, view=view,
                           on_beat=shipper.maybe_ship) as beat, \
                    tempfile.TemporaryDirectory(prefix="bucketrun-") as tmp:
                ctx = Attempt(bucket, job_id, attempt, manifest, Path(tmp), beat)
                ctx.stages.add("setup", time.monotonic() - started)
                result = run(ctx) or {}
                problems = spec.verify(manifest, {**result, "artifacts": ctx.artifacts})
                if problems:
                    raise JobFailure(FailureClass.CODE_ERROR, "the result failed its completion check: "
                                     + "; ".join(problems)[:500], where="verify")
                stages = {**handoffs(view.history, attempt), **ctx.stages.to_json()}
                detail = {**result, "artifacts": ctx.artifacts, "stages": stages}
        except JobFailure as exc:
            log.error("job failed (%s): %s", exc.cls.value, exc.message)
            error = error_detail(exc.cls, exc.message, where=exc.where)["error"]
        except Superseded:
            return {"job_id": job_id, "attempt": attempt, "status": "superseded"}
        except Drained:
            error = error_detail(FailureClass.LOST, "the worker was stopped (SIGTERM) mid-attempt",
                                 where="worker")["error"]
        except ImportError as exc:  # a kind's stack not installed where it ran: what to install, not a bug
            log.exception("import failed")
            cls = FailureClass.CONFIG_ERROR if needs.extra_of(exc.name) else FailureClass.CODE_ERROR
            error = error_detail(cls, f"{type(exc).__name__}: {exc}{needs.import_advice(exc)}"[:500],
                                 where="worker")["error"]
        except Exception as exc:  # noqa: BLE001 - the job must end in a state, whatever broke
            log.exception("unexpected error")
            error = error_detail(FailureClass.CODE_ERROR, f"internal error: {type(exc).__name__}: {exc}"[:500],
                                 where="worker")["error"]
        elapsed = {"elapsed_s": round(time.monotonic() - started, 3)}
        # The heartbeat kept the view current; a write that lost a race re-reads inside append_transition.
        view = beat.view if beat is not None and beat.view is not None else view
        # the last log PUT comes after the terminal transition: count it now so that transition records it, and
        # take the real one off the meter once shipped (below)
        meter.count(meter.A, keys.log_key(job_id, attempt))
        log_counted = True
        try:
            if error is None:
                t, _ = append_transition(bucket, job_id, JobState.SUCCEEDED, writer=writer, attempt=attempt,
                                         expect=JobState.RUNNING, detail={**detail, **elapsed}, view=view)
            else:
                max_attempts = manifest.resources.max_attempts if manifest else 1
                t = record_failure(bucket, job_id, error, writer=writer, attempt=attempt,
                                   max_attempts=max_attempts, extra=elapsed, view=view)
        except (IllegalTransition, StaleAttempt) as exc:
            log.warning("result not recorded: %s", exc)
            return {"job_id": job_id, "attempt": attempt, "status": "superseded", "reason": str(exc)}
        return {"job_id": job_id, "attempt": attempt, "status": t.state.value,
                "artifacts": [a["key"] for a in t.detail.get("artifacts", [])]}
    finally:
        _busy.clear()
        root_logger.removeHandler(handler)
        LogShipper(bucket, keys.log_key(job_id, attempt), buffer).ship()
        meter.settle(job_id, {meter.A: 1} if log_counted else {})
        release_memory()


def release_memory() -> None:
    """Hand the heap an attempt freed back to the OS (glibc keeps it otherwise), so a warm worker idles at what it
    holds, not at its largest job's high-water mark. After the terminal transition: nobody waits on it."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: no library search, no subprocess
    except AttributeError:  # not glibc (musl, macOS): nothing to trim
        return
    trim(0)
