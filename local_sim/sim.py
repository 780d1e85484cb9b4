"""`bucketrun sim`: turn new inbox objects into S3-notification records and dispatch them.

A folder bucket is watched with watchfiles; an s3:// bucket is polled by listing the whole inbox, for stores
without notifications (names users drop are in no order, so only a full listing never misses one). On start it
reconciles the inbox, so anything dropped while it was down is taken in. Polls and sweeps back off while they
find nothing (`Pacing`), so an idle simulation costs a few requests a minute. The reconcile and the sweep loop are
handlers/listen's, shared with `bucketrun listen` (a daemon fed by the store's own notifications).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import watchfiles

from bucketrun.events import keys
from bucketrun.events.lifecycle import default_writer
from bucketrun.events.storage import Bucket, ObjectInfo
from bucketrun.events.storage.local import LocalBucket
from bucketrun.handlers.dispatch import DispatchContext
from bucketrun.handlers.launchers import Launcher, Routes
from bucketrun.handlers.listen.local import local_routes
from bucketrun.handlers.listen.reconcile import Inbox, s3_record
from bucketrun.handlers.listen.sweeper import Pacing, Sweeper

__all__ = ["Pacing", "Simulation", "s3_record"]  # s3_record and Pacing live in handlers/listen, shared with `listen`

log = logging.getLogger("bucketrun.sim")


class Simulation:
    def __init__(self, bucket: Bucket, launcher: Launcher | Routes, poll_s: float = 1.0, writer: str | None = None,
                 sweep_s: float | None = 5.0, poll_max_s: float = 10.0, sweep_max_s: float = 30.0,
                 snapshot_s: float | None = None):
        """`poll_s`/`sweep_s`: the interval while manifests arrive / jobs are live; `*_max_s`: the most either
        backs off to while idle (equal to the base: no backoff). `snapshot_s`: the sweep refreshes the bucket's
        dashboard snapshot at most this often (None: what `bucketrun ui --snapshot` recorded; 0: never)."""
        self.bucket = bucket
        self._fleets = None
        if not isinstance(launcher, Routes):  # one process launcher for every kind; fleets get local processes
            launcher, self._fleets = local_routes(launcher)
        self.ctx = DispatchContext(bucket, launcher, writer or default_writer("sim"))
        self.poll_pacing = Pacing(poll_s, poll_max_s)
        self.sweeper = Sweeper(self.ctx, sweep_s, sweep_max_s, snapshot_s, log=log)
        self.inbox = Inbox(self.ctx, on_dispatched=self.sweeper.wake, log=log)
        self.sweep_s = sweep_s
        self.stop_event = threading.Event()
        self.reconcile_s = 30.0
        self.ready = threading.Event()

    # The inbox and the sweep are handlers/listen's, shared with `bucketrun listen`; these name what tests read.
    @property
    def seen(self) -> dict[str, str]:
        return self.inbox.seen

    @seen.setter
    def seen(self, value: dict[str, str]) -> None:
        self.inbox.seen = value

    @property
    def dispatched(self) -> int:
        return self.inbox.dispatched

    @property
    def errors(self) -> int:
        return self.inbox.errors

    @property
    def polls(self) -> int:
        """Completed inbox listings (s3 polling and reconciles)."""
        return self.inbox.polls

    @property
    def sweeps(self) -> int:
        return self.sweeper.sweeps

    @property
    def snapshots(self):
        return self.sweeper.snapshots

    def handle(self, info: ObjectInfo) -> bool:
        return self.inbox.handle(info)

    def reconcile(self) -> int:
        return self.inbox.reconcile()

    def sweep_once(self) -> bool:
        return self.sweeper.sweep_once()

    def refresh_snapshot(self, live: bool) -> None:
        self.sweeper.refresh_snapshot(live)

    def run(self) -> None:
        self.sweeper.start()
        if isinstance(self.bucket, LocalBucket):
            self._watch(self.bucket)
        else:
            self._poll()

    def _reconcile_logged(self) -> int:
        return self.inbox.reconcile_logged()

    def _watch(self, bucket: LocalBucket) -> None:
        """Reconcile once the watcher is live (its first timeout), so nothing dropped meanwhile is missed,
        then again every `reconcile_s` as a safety net for events the OS dropped."""
        inbox = bucket.root / keys.INBOX.rstrip("/")
        inbox.mkdir(parents=True, exist_ok=True)
        last_reconcile = None
        for changes in watchfiles.watch(inbox, stop_event=self.stop_event, debounce=400, step=20,
                                        rust_timeout=200, yield_on_timeout=True):
            now = time.monotonic()
            if last_reconcile is None or now - last_reconcile > self.reconcile_s:
                self._reconcile_logged()
                last_reconcile = now
                self.ready.set()
            for change, path in sorted(changes, key=lambda c: c[1]):
                if change == watchfiles.Change.deleted:
                    continue
                key = bucket.relative_key(Path(path).relative_to(bucket.root).as_posix())
                if key and keys.is_inbox_manifest(key):
                    try:
                        self.handle(bucket.head(key))
                    except Exception as exc:  # noqa: BLE001
                        log.error("cannot read %s: %s", key, exc)

    def _poll(self) -> None:
        """List the whole inbox every `poll_s` while manifests arrive, backing off to `poll_max_s`
        while none do (a failed listing counts as idle, so an unreachable store is not hammered)."""
        wait = None
        while True:
            new = self._reconcile_logged()
            self.ready.set()
            wait = self.poll_pacing.next(wait, new > 0)
            if self.stop_event.wait(wait):
                return

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="bucketrun-sim", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stop_event.set()
        self.sweeper.stop()
        if self._fleets is not None:  # fleet workers still running are drained (SIGTERM), then stopped
            self._fleets.close()
