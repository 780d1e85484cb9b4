"""The scheduled sweep as a daemon on this machine runs it (`bucketrun sim`, `bucketrun listen`): stalled jobs are
retried or failed, retries launched, notices sent, fleets and hosts torn down, the dashboard snapshot refreshed. A
notification only ever says "a manifest arrived"; everything after that is found by sweeping."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from bucketrun.events import keys
from bucketrun.events.lifecycle import live_jobs

from ..dispatch import DispatchContext
from ..sweep import sweep


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


class Sweeper:
    def __init__(self, ctx: DispatchContext, sweep_s: float | None = 5.0, sweep_max_s: float = 30.0,
                 snapshot_s: float | None = None, log: logging.Logger | None = None):
        """`sweep_s`: the interval while jobs are live (None: no sweep thread); `sweep_max_s`: the most it backs
        off to while none are. `snapshot_s`: refresh the bucket's dashboard snapshot at most this often (None: what
        `bucketrun ui --snapshot` recorded; 0: never)."""
        self.ctx = ctx
        self.sweep_s = sweep_s
        self.pacing = Pacing(sweep_s or 0.0, sweep_max_s)
        self.log = log or logging.getLogger("bucketrun.sweep")
        self.stop_event = threading.Event()
        self._wake = threading.Event()  # set when a new job was dispatched: the sweep comes back to its base
        self.sweeps = 0  # completed sweep passes, so a test can tell that sweeps really ran
        self.snapshot_s = snapshot_s
        self.snapshots = None  # the snapshot refresher, made on the first pass that wants one
        self.snapshot_owed = True  # jobs were live since the last refresh (or the daemon just started)

    def wake(self) -> None:
        """A job was dispatched: sweep soon, and put it in the next snapshot even if it ends before then."""
        self.snapshot_owed = True
        self._wake.set()

    def sweep_once(self) -> bool:
        """One sweep pass, if there is anything to sweep; True if jobs are live, so the pacing knows whether to
        back off. Idle, the probe costs five listings (live jobs, owed notices and next stages, fleets and hosts to
        tear down)."""
        bucket = self.ctx.bucket
        live = bool(live_jobs(bucket))
        if live or any(next(iter(bucket.list(prefix)), None) is not None
                       for prefix in (keys.NOTIFY_WATCH, keys.THEN_WATCH, keys.FLEET_INDEX, keys.TEARDOWN)):
            sweep(bucket, self.ctx.launchers, self.ctx.writer)
        return live

    def loop(self) -> None:
        """Every `sweep_s` while jobs are live (stall detection needs passes well within stall_after_s); backing
        off to `sweep_max_s` while none are, and back to `sweep_s` as soon as a new job is dispatched."""
        wait = self.pacing.base
        while True:
            self._wake.wait(wait)
            if self.stop_event.is_set():
                return
            self._wake.clear()
            try:
                live = self.sweep_once()
                self.sweeps += 1
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                self.log.error("sweep failed: %s", exc)
                live = False
            self.refresh_snapshot(live)
            wait = self.pacing.next(wait, live)

    def start(self) -> threading.Thread | None:
        if not self.sweep_s:
            return None
        thread = threading.Thread(target=self.loop, name="bucketrun-sweep", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    def refresh_snapshot(self, live: bool) -> None:
        """After a sweep pass: refresh the dashboard snapshot (handlers/ui/snapshot.py) if the bucket has one, at
        most every `snapshot_s`, while jobs are live and once more after the last one ended. An idle bucket costs
        nothing more; on a busy one the check is one GET of dashboard/state.json per period."""
        self.snapshot_owed = self.snapshot_owed or live
        if self.snapshot_s == 0 or not self.snapshot_owed:
            return
        try:
            if self.snapshots is None:
                # late: the snapshot renders with jinja2 (the ui extra), which a daemon without it does not need
                from ..ui.snapshot import Refresher

                self.snapshots = Refresher(self.ctx.bucket, self.snapshot_s)
            if not self.snapshots.due():
                return
            self.snapshots.maybe_refresh()
            self.snapshot_owed = live
        except ImportError as exc:
            self.log.info("dashboard snapshot not refreshed: %s (pip install 'bucketrun[ui]')", exc)
            self.snapshot_s = 0
        except Exception as exc:  # noqa: BLE001 - a snapshot never stops the sweep; the next period tries again
            self.log.error("dashboard snapshot failed: %s: %s", type(exc).__name__, exc)
