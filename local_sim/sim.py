"""`bucketrun sim`: turn new inbox objects into S3-notification records and dispatch them.

A folder bucket is watched with watchfiles; an s3:// bucket is polled by listing the whole inbox, for stores
without notifications (names users drop are in no order, so only a full listing never misses one). On start it
reconciles the inbox, so anything dropped while it was down is taken in. Polls and sweeps back off while they
find nothing (`Pacing`), so an idle simulation costs a few requests a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import watchfiles

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import default_writer, live_jobs
from bucketrun.events.storage import Bucket, ObjectInfo
from bucketrun.events.storage.local import LocalBucket
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.handlers.launchers import Launcher, Routes
from bucketrun.handlers.launchers.agent import AgentLauncher
from bucketrun.handlers.launchers.fleet import FleetLauncher
from bucketrun.handlers.launchers.fleet_local import LocalFleetBackend
from bucketrun.handlers.sweep import sweep

log = logging.getLogger("bucketrun.sim")


def s3_record(bucket: Bucket, info: ObjectInfo) -> dict[str, Any]:
    """One record shaped as AWS sends it: the key URL-encoded, the ETag unquoted."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "local",
        "eventTime": codec.iso(info.last_modified or codec.now()),
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket.name, "arn": f"arn:aws:s3:::{bucket.name}"},
            "object": {"key": quote_plus(bucket.full_key(info.key), safe="/"), "size": info.size,
                       "eTag": info.etag.strip('"'), "sequencer": f"{int(codec.now().timestamp() * 1e6):016X}"},
        },
    }


@dataclass(frozen=True)
class Pacing:
    """The wait before the next pass: `base` after a pass that found work, doubling up to `cap` after each one
    that found none. Idle passes on S3 are billed requests; a busy bucket is still served at `base`."""

    base: float
    cap: float

    def next(self, current: float | None, busy: bool) -> float:
        """`current`: the last wait (None before the first)."""
        if busy or current is None:
            return self.base
        return min(current * 2, max(self.cap, self.base))


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
            self._fleets = FleetLauncher({"local": LocalFleetBackend()})
            launcher = Routes(default=launcher, by_kind={"fleet": self._fleets, "train_window": AgentLauncher()})
        self.ctx = DispatchContext(bucket, launcher, writer or default_writer("sim"))
        self.poll_pacing = Pacing(poll_s, poll_max_s)
        self.sweep_s = sweep_s
        self.sweep_pacing = Pacing(sweep_s or 0.0, sweep_max_s)
        self.stop_event = threading.Event()
        self._wake_sweep = threading.Event()  # set when a new job was dispatched: the sweep comes back to its base
        self.seen: dict[str, str] = {}  # inbox key -> the ETag dispatched
        self.failed: dict[str, str] = {}  # inbox key -> the ETag whose dispatch failed (retried every pass)
        self.dispatched = 0
        self.errors = 0
        self.reconcile_s = 30.0
        self.ready = threading.Event()
        self.sweeps = 0  # completed sweep passes, so a test can tell that sweeps really ran
        self.polls = 0  # completed inbox listings (s3 polling and reconciles)
        self.snapshot_s = snapshot_s
        self.snapshots = None  # the snapshot refresher, made on the first pass that wants one
        self._snapshot_owed = True  # jobs were live since the last refresh (or the sim just started)

    def handle(self, info: ObjectInfo) -> bool:
        """Dispatch an object not yet seen with this ETag. True if it is new: not seen, and not a retry of a
        failed dispatch (which must not keep the poll at its fastest forever)."""
        etag = info.etag
        if self.seen.get(info.key) == etag:
            return False
        new = self.failed.get(info.key) != etag
        self.seen[info.key] = etag
        try:
            dispatch({"Records": [s3_record(self.bucket, info)]}, self.ctx)  # it logs "key -> job" itself
            self.dispatched += 1
            self.failed.pop(info.key, None)
            self._snapshot_owed = True  # even a job that ends before the next sweep is in the next snapshot
            self._wake_sweep.set()
        except Exception as exc:  # noqa: BLE001 - the simulation must keep running whatever one object does
            self.errors += 1
            self.seen.pop(info.key, None)  # try again on the next pass
            self.failed[info.key] = etag
            log.error("dispatch of %s failed: %s: %s", info.key, type(exc).__name__, exc)
        return new

    def reconcile(self) -> int:
        """Take in every inbox manifest not seen yet, from one full listing; returns how many were new."""
        listed: set[str] = set()
        new = 0
        for info in self.bucket.list(keys.INBOX):
            if keys.is_inbox_manifest(info.key):
                listed.add(info.key)
                new += self.handle(info)
        # Objects gone from the inbox (`bucketrun gc`) are forgotten, so memory follows the inbox, not history.
        self.seen = {k: v for k, v in self.seen.items() if k in listed}
        self.failed = {k: v for k, v in self.failed.items() if k in listed}
        self.polls += 1
        return new

    def sweep_once(self) -> bool:
        """One sweep pass, if there is anything to sweep; True if jobs are live, so the pacing knows whether to
        back off. Idle, the probe costs five listings (live jobs, owed notices and next stages, fleets and hosts to
        tear down)."""
        live = bool(live_jobs(self.bucket))
        if live or any(next(iter(self.bucket.list(prefix)), None) is not None
                       for prefix in (keys.NOTIFY_WATCH, keys.THEN_WATCH, keys.FLEET_INDEX, keys.TEARDOWN)):
            sweep(self.bucket, self.ctx.launchers, self.ctx.writer)
        return live

    def _sweep_loop(self) -> None:
        """The scheduled sweep, simulated: stalled jobs are retried or failed, retries are launched, notices
        sent. Every `sweep_s` while jobs are live (stall detection needs passes well within stall_after_s);
        backing off to `sweep_max_s` while none are, and back to `sweep_s` as soon as a new job is dispatched."""
        wait = self.sweep_pacing.base
        while True:
            self._wake_sweep.wait(wait)
            if self.stop_event.is_set():
                return
            self._wake_sweep.clear()
            try:
                live = self.sweep_once()
                self.sweeps += 1
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.error("sweep failed: %s", exc)
                live = False
            self.refresh_snapshot(live)
            wait = self.sweep_pacing.next(wait, live)

    def refresh_snapshot(self, live: bool) -> None:
        """After a sweep pass: refresh the dashboard snapshot (handlers/ui/snapshot.py) if the bucket has one, at
        most every `snapshot_s`, while jobs are live and once more after the last one ended. An idle bucket costs
        nothing more; on a busy one the check is one GET of dashboard/state.json per period."""
        self._snapshot_owed = self._snapshot_owed or live
        if self.snapshot_s == 0 or not self._snapshot_owed:
            return
        try:
            if self.snapshots is None:
                # late: the snapshot renders with jinja2 (the ui extra), which a sim without it does not need
                from bucketrun.handlers.ui.snapshot import Refresher

                self.snapshots = Refresher(self.bucket, self.snapshot_s)
            if not self.snapshots.due():
                return
            self.snapshots.maybe_refresh()
            self._snapshot_owed = live
        except ImportError as exc:
            log.info("dashboard snapshot not refreshed: %s (pip install 'bucketrun[ui]')", exc)
            self.snapshot_s = 0
        except Exception as exc:  # noqa: BLE001 - a snapshot never stops the sweep; the next period tries again
            log.error("dashboard snapshot failed: %s: %s", type(exc).__name__, exc)

    def run(self) -> None:
        if self.sweep_s:
            threading.Thread(target=self._sweep_loop, name="bucketrun-sweep", daemon=True).start()
        if isinstance(self.bucket, LocalBucket):
            self._watch(self.bucket)
        else:
            self._poll()

    def _reconcile_logged(self) -> int:
        try:
            n = self.reconcile()
            log.debug("reconciled %s: %d new inbox object(s)", self.bucket.url, n)
            return n
        except Exception as exc:  # noqa: BLE001 - a failed listing is retried on the next round
            log.error("reconcile of %s failed: %s", self.bucket.url, exc)
            return 0

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
        self._wake_sweep.set()
        if self._fleets is not None:  # fleet workers still running are drained (SIGTERM), then stopped
            self._fleets.close()
