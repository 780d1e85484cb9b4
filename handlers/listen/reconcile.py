"""The inbox reconcile every dispatcher daemon shares (`bucketrun sim`, `bucketrun listen`): one full listing of
the inbox dispatches each manifest not seen yet, so a notification the store lost, or one sent while the daemon
was down, still becomes a job. Names users drop are in no order, so only a full listing never misses one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

from bucketrun.events import codec, keys
from bucketrun.events.storage import Bucket, ObjectInfo

from ..dispatch import DispatchContext, dispatch



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


class Inbox:
    """What a daemon has dispatched from the inbox (key -> ETag), so a re-listing dispatches only what is new.
    `on_dispatched` runs after each successful dispatch (the simulation wakes its sweep); `log` is the daemon's."""

    def __init__(self, ctx: DispatchContext, on_dispatched: Callable[[], None] | None = None,
                 log: logging.Logger | None = None):
        self.ctx = ctx
        self.log = log or logging.getLogger("bucketrun.reconcile")
        self.on_dispatched = on_dispatched
        self.seen: dict[str, str] = {}  # inbox key -> the ETag dispatched
        self.failed: dict[str, str] = {}  # inbox key -> the ETag whose dispatch failed (retried every pass)
        self.dispatched = 0
        self.errors = 0
        self.polls = 0  # completed inbox listings

    def handle(self, info: ObjectInfo) -> bool:
        """Dispatch an object not yet seen with this ETag. True if it is new: not seen, and not a retry of a
        failed dispatch (which must not keep a poll at its fastest forever)."""
        etag = info.etag
        if self.seen.get(info.key) == etag:
            return False
        new = self.failed.get(info.key) != etag
        self.seen[info.key] = etag
        try:
            dispatch({"Records": [s3_record(self.ctx.bucket, info)]}, self.ctx)  # it logs "key -> job" itself
            self.dispatched += 1
            self.failed.pop(info.key, None)
            if self.on_dispatched is not None:
                self.on_dispatched()
        except Exception as exc:  # noqa: BLE001 - the daemon must keep running whatever one object does
            self.errors += 1
            self.seen.pop(info.key, None)  # try again on the next pass
            self.failed[info.key] = etag
            self.log.error("dispatch of %s failed: %s: %s", info.key, type(exc).__name__, exc)
        return new

    def note(self, key: str, etag: str | None) -> None:
        """A manifest dispatched through a notification: the next listing need not dispatch it again."""
        if etag:
            self.seen[key] = etag
            self.failed.pop(key, None)

    def reconcile(self) -> int:
        """Take in every inbox manifest not seen yet, from one full listing; returns how many were new."""
        listed: set[str] = set()
        new = 0
        for info in self.ctx.bucket.list(keys.INBOX):
            if keys.is_inbox_manifest(info.key):
                listed.add(info.key)
                new += self.handle(info)
        # Objects gone from the inbox (`bucketrun gc`) are forgotten, so memory follows the inbox, not history.
        self.seen = {k: v for k, v in self.seen.items() if k in listed}
        self.failed = {k: v for k, v in self.failed.items() if k in listed}
        self.polls += 1
        return new

    def reconcile_logged(self) -> int:
        """`reconcile`, with a failed listing logged and retried on the next round instead of raised."""
        try:
            n = self.reconcile()
            self.log.debug("reconciled %s: %d new inbox object(s)", self.ctx.bucket.url, n)
            return n
        except Exception as exc:  # noqa: BLE001 - a failed listing is retried on the next round
            self.log.error("reconcile of %s failed: %s", self.ctx.bucket.url, exc)
            return 0
