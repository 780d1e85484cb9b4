"""`bucketrun sim`: turn new inbox objects into S3-notification records and dispatch them.

A folder bucket is watched with watchfiles; an s3:// bucket is polled by listing, for stores without
notifications. On start it reconciles the inbox, so anything dropped while it was down is taken in.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from bucketrun.events import codec, keys
from bucketrun.events.storage import Bucket, ObjectInfo
from bucketrun.events.storage.local import LocalBucket
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.handlers.launchers import Launcher, Routes

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


class Simulation:
    def __init__(self, bucket: Bucket, launcher: Launcher | Routes, poll_s: float = 1.0, writer: str | None = None,
                 sweep_s: float | None = 5.0):
        from bucketrun.events.lifecycle import default_writer

        self.bucket = bucket
        self.ctx = DispatchContext(bucket, launcher, writer or default_writer("sim"))
        self.poll_s = poll_s
        self.sweep_s = sweep_s
        self.stop_event = threading.Event()
        self.seen: dict[str, str] = {}
        self.dispatched = 0
        self.errors = 0
        self.reconcile_s = 30.0
        self.ready = threading.Event()
        self.sweeps = 0  # completed sweep passes, so a test can tell that sweeps really ran

    def handle(self, info: ObjectInfo) -> None:
        if self.seen.get(info.key) == info.etag:
            return
        self.seen[info.key] = info.etag
        try:
            outcomes = dispatch({"Records": [s3_record(self.bucket, info)]}, self.ctx)
            self.dispatched += 1
            for o in outcomes:
                log.info("%s -> job %s: %s", o.inbox_key, o.job_id, o.state)
        except Exception as exc:  # noqa: BLE001 - the simulation must keep running whatever one object does
            self.errors += 1
            self.seen.pop(info.key, None)  # try again on the next change or restart
            log.error("dispatch of %s failed: %s: %s", info.key, type(exc).__name__, exc)

    def reconcile(self) -> int:
        count = 0
        for info in self.bucket.list(keys.INBOX):
            if keys.is_inbox_manifest(info.key):
                self.handle(info)
                count += 1
        return count

    def _sweep_loop(self) -> None:
        """The scheduled sweep, simulated: stalled jobs are retried or failed, retries are launched."""
        from bucketrun.handlers.sweep import sweep

        while not self.stop_event.wait(self.sweep_s):
            try:
                sweep(self.bucket, self.ctx.launchers, self.ctx.writer)
                self.sweeps += 1
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.error("sweep failed: %s", exc)

    def run(self) -> None:
        if self.sweep_s:
            threading.Thread(target=self._sweep_loop, name="bucketrun-sweep", daemon=True).start()
        if isinstance(self.bucket, LocalBucket):
            self._watch(self.bucket)
        else:
            self._poll()

    def _reconcile_logged(self) -> None:
        try:
            n = self.reconcile()
            log.debug("reconciled %d inbox object(s) in %s", n, self.bucket.url)
        except Exception as exc:  # noqa: BLE001 - a failed listing is retried on the next round
            log.error("reconcile of %s failed: %s", self.bucket.url, exc)

    def _watch(self, bucket: LocalBucket) -> None:
        """Reconcile once the watcher is live (its first timeout), so nothing dropped meanwhile is missed,
        then again every `reconcile_s` as a safety net for events the OS dropped."""
        import watchfiles

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
        while True:
            self._reconcile_logged()
            self.ready.set()
            if self.stop_event.wait(self.poll_s):
                return

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="bucketrun-sim", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stop_event.set()
