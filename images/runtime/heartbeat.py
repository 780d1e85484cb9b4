"""Progress and liveness for a running attempt: a throttled progress object plus a background heartbeat
that also notices when the job left this attempt (cancelled or retried) so the worker can stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bucketrun.events import codec
from bucketrun.events.errors import BucketrunError
from bucketrun.events.lifecycle import JobState, JobView, read_view
from bucketrun.events.progress import Progress, write_progress
from bucketrun.events.storage import Bucket

log = logging.getLogger("bucketrun.worker")


class Heartbeat:
    def __init__(self, bucket: Bucket, job_id: str, attempt: int, every_s: float = 10.0, min_gap_s: float = 1.0,
                 view: JobView | None = None, on_beat: Callable[[], None] | None = None):
        self.bucket, self.job_id, self.attempt = bucket, job_id, attempt
        self.view = view  # what is known of the log, so each check reads only newer events
        self.on_beat = on_beat  # more work for each beat (the runtime ships the worker log)
        self.every_s, self.min_gap_s = every_s, min_gap_s
        self.started = time.monotonic()
        self.stage, self.fraction, self.processed_s, self.total_s = "starting", 0.0, None, None
        self.superseded = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        # No write yet: the `running` transition just written is the first sign of life, and the beat thread
        # writes within every_s. Stages that pass within min_gap_s of the start cost no request.
        self._last_write = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def update(self, stage: str, fraction: float, processed_s: float | None = None,
               total_s: float | None = None) -> None:
        with self._lock:
            self.stage, self.fraction = stage, max(0.0, min(fraction, 1.0))
            self.processed_s, self.total_s = processed_s, total_s
        self.write(force=fraction >= 1.0)

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.min_gap_s:
            return
        with self._lock:
            elapsed = now - self.started
            eta = elapsed * (1 - self.fraction) / self.fraction if 0 < self.fraction < 1 else (0.0 if self.fraction >= 1 else None)
            progress = Progress(self.attempt, self.stage, round(self.fraction * 100, 1), round(elapsed, 2),
                                None if eta is None else round(eta, 2), codec.iso(codec.now()),
                                self.processed_s, self.total_s)
            self._last_write = now
        try:
            write_progress(self.bucket, self.job_id, progress)
        except BucketrunError as exc:  # progress is advisory; the transition log is the truth
            log.warning("progress write failed: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write(force=True)
            if self.on_beat is not None:
                self.on_beat()
            try:
                view = self.view = read_view(self.bucket, self.job_id, known=self.view)
            except BucketrunError:
                continue
            if view.attempt != self.attempt or view.state is not JobState.RUNNING:
                log.warning("job %s is now %s (attempt %s); stopping attempt %s", self.job_id,
                            view.state.value if view.state else None, view.attempt, self.attempt)
                self.superseded.set()
                return
