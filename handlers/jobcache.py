"""What the dashboard and `bucketrun top` show, read through one cache: a live job is read at most every `refresh`
seconds, an ended job never again once read, and all re-reads together stay within `budget` requests a minute;
the bucket is wrapped so the reader counts its own calls and cannot write."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from bucketrun.events import codec, keys
from bucketrun.events.errors import CorruptObject, NotFound
from bucketrun.events.hosts import read_hosts
from bucketrun.events.lifecycle import JobView, list_job_ids, read_view
from bucketrun.events.status import job_status

from .board import kind_of, source_of, waiting_rows

T = TypeVar("T")
# Re-reads refill at 85% of the budget with a burst of a twelfth: 5 + 51 of 60, plus one read's overshoot (a job
# with a new event costs 3), stays within the budget in any minute, not just on average.
REFILL = 0.85
READS = ("get", "head", "list", "exists", "folders")
PAGE = 1000
UNSEEN = object()  # a progress ETag the listing did not reach
WRITES = ("put", "create", "replace", "delete", "upload")


class CountingBucket:
    """The caller's bucket, read-only: each read is counted (the footer shows the count); a write raises."""

    def __init__(self, bucket) -> None:
        self._bucket = bucket
        self.url = bucket.url
        self.calls = 0
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()

    def per_minute(self) -> int:
        """Requests in the last 60 s, as the footer shows them."""
        with self._lock:
            cut = time.monotonic() - 60
            while self._recent and self._recent[0] < cut:
                self._recent.popleft()
            return len(self._recent)

    def __getattr__(self, name: str):
        if name in WRITES:
            raise PermissionError(f"the dashboard never writes to the bucket (it tried {name})")
        method = getattr(self._bucket, name)
        if name not in READS:
            return method

        def counted(*args, **kwargs):
            self._count()
            result = method(*args, **kwargs)
            return self._paged(result) if name in ("list", "folders") else result

        return counted

    def _count(self) -> None:
        with self._lock:
            self.calls += 1
            self._recent.append(time.monotonic())

    def _paged(self, items):
        """A listing is a request per page of 1,000 keys (S3's ListObjectsV2), each counted as the caller reaches
        it: a fleet's 10,000 done markers are 10 requests, not 1."""
        for n, item in enumerate(items):
            if n and n % PAGE == 0:
                self._count()
            yield item


class Cache:
    """Jobs keyed by id with when they were read; the job list, the hosts and each page section's reads (`fetch`)
    are re-read at most every `refresh`. Re-reads spend from a bucket of `budget` requests a minute, oldest first,
    so ten live jobs cost what one does and a page over budget shows slightly older data rather than more calls.
    A first read is never refused: a page must show something."""

    def __init__(self, bucket: CountingBucket, refresh: float = 2.0, budget: float = 60.0) -> None:
        self.bucket, self.refresh, self.budget = bucket, refresh, budget
        self.jobs: dict[str, tuple[float, dict[str, Any]]] = {}
        self._memo: dict[str, tuple[float, Any, bool]] = {}
        self._listing: tuple[float, list[str], list[dict[str, Any]]] | None = None
        self._hosts: tuple[float, list[dict[str, Any]]] | None = None
        self._lock = threading.RLock()
        self._tokens, self._filled = self._burst, time.monotonic()
        self._depth = 0
        self._inbox: dict[tuple[str, str], Any] = {}  # waiting manifests already read, by (key, ETag)

    @property
    def _burst(self) -> float:
        return self.budget / 12

    def _fresh(self, at: float) -> bool:
        return time.monotonic() - at < self.refresh

    def _may_reread(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._filled) * self.budget * REFILL / 60)
        self._filled = now
        return self._tokens > 0

    def _charged(self, fn: Callable[[], T], first: bool = False) -> T:
        """Run `fn`, taking the requests it made from the budget (once: a read inside a read is not charged twice).
        A first read is not taken from it: opening a page of many jobs costs one read of each, and then the page
        stays live rather than frozen until that debt is paid."""
        if self._depth or first:
            self._depth += 1
            try:
                return fn()
            finally:
                self._depth -= 1
        before, self._depth = self.bucket.calls, 1
        try:
            return fn()
        finally:
            self._depth = 0
            self._tokens -= self.bucket.calls - before

    def fetch(self, name: str, fn: Callable[[], T], live: bool = True, every: float | None = None) -> T:
        """`fn()`'s value, kept under `name`: re-read when older than `refresh` (or `every`, for what changes
        slowly) and the budget allows; a value fetched with live=False (an ended job's) is never read again."""
        with self._lock:
            hit = self._memo.get(name)
            fresh = hit is not None and (self._fresh(hit[0]) if every is None else time.monotonic() - hit[0] < every)
            if hit is not None and (not hit[2] or fresh or not self._may_reread()):
                return hit[1]
            value = self._charged(fn, first=hit is None)
            self._memo[name] = (time.monotonic(), value, live)
            return value

    def job(self, job_id: str) -> dict[str, Any] | None:
        """One job's view, status, kind and source, or None when it has no history (waiting or unknown)."""
        with self._lock:
            cached = self.jobs.get(job_id)
            if cached and (cached[1]["status"]["terminal"] or self._fresh(cached[0]) or not self._may_reread()):
                return cached[1]
            return self._charged(lambda: self._read_job(job_id, cached), first=cached is None)

    def _read_job(self, job_id: str, cached: tuple[float, dict[str, Any]] | None) -> dict[str, Any] | None:
        """A first read of the job, or a re-read that costs one listing when nothing changed (see _news)."""
        entry0 = cached[1] if cached and cached[1].get("view") else None
        try:
            news = self._news(job_id, entry0["view"]) if entry0 else None
            changed = news is None or news[0]
            view = read_view(self.bucket, job_id, known=entry0["view"] if entry0 else None) if changed \
                else entry0["view"]
        except CorruptObject as exc:  # one bad object must not hide every other job
            entry = {"job_id": job_id, "view": None, "kind": "-", "source": "-", "corrupt": str(exc),
                     "status": {"state": "corrupt", "attempt": 0, "terminal": False, "progress": None,
                                "artifacts": [], "error": None}}
            self.jobs[job_id] = (time.monotonic(), entry)
            return entry
        if view.state is None:
            return None
        etag = news[1] if news else UNSEEN
        if entry0 and etag is not UNSEEN and etag == entry0.get("progress_etag"):
            progress, etag = entry0.get("progress"), entry0.get("progress_etag")
        elif etag is None:
            progress = None
        else:
            progress, etag = self._progress(job_id)
        entry = {"job_id": job_id, "view": view, "progress": progress, "progress_etag": etag,
                 "status": job_status(self.bucket, job_id, view, progress=progress),
                 "kind": entry0["kind"] if entry0 else kind_of(self.bucket, view), "source": source_of(view)}
        self.jobs[job_id] = (time.monotonic(), entry)
        return entry

    def _news(self, job_id: str, known: JobView) -> tuple[bool, Any]:
        """One listing of the job's folder after its last known event: whether events were added, and the progress
        object's ETag (None: there is none) when it lies within that first page of keys, as it does for every kind
        but a fleet, whose fleet/ markers sort before it (UNSEEN: read it)."""
        events, progress_key = keys.events_prefix(job_id), keys.progress_key(job_id)
        start = keys.event_key(job_id, known.history[-1].seq) if known.history else None
        added = False
        for n, info in enumerate(self.bucket.list(keys.job_prefix(job_id), start_after=start), start=1):
            if info.key.startswith(events):
                added = added or keys.parse_event_key(info.key) is not None
            elif info.key == progress_key:
                return added, info.etag
            elif info.key > progress_key:
                return added, None
            if n >= PAGE:
                return added, UNSEEN
        return added, None

    def _progress(self, job_id: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            blob = self.bucket.get(keys.progress_key(job_id))
        except NotFound:
            return None, None
        try:
            return codec.loads(blob.data), blob.etag
        except CorruptObject:  # half a progress object says nothing; the job's state still shows
            return None, None

    def _refresh_round(self) -> None:
        """Re-read what is stale, least recently read first, while the budget lasts: the job listing and each live
        job take turns, so a page of many live jobs refreshes them all in turn instead of the first ones (or the
        listing) over and over."""
        assert self._listing is not None
        due: list[tuple[float, str | None]] = [] if self._fresh(self._listing[0]) else [(self._listing[0], None)]
        due += [(at, j) for j, (at, entry) in self.jobs.items()
                if not entry["status"]["terminal"] and not self._fresh(at)]
        for _, job_id in sorted(due, key=lambda d: d[0]):
            if not self._may_reread():
                return
            if job_id is None:
                self._charged(self._list)
            else:
                self._charged(lambda: self._read_job(job_id, self.jobs.get(job_id)))

    def listing(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Every job id and the waiting rows; re-read in turn with the live jobs (see _refresh_round)."""
        with self._lock:
            if self._listing is None:
                self._charged(self._list, first=True)
            else:
                self._refresh_round()
            return self._listing[1], self._listing[2]

    def _list(self) -> None:
        ids = list_job_ids(self.bucket)
        # a job with objects but no history yet (a request_id's claim writes jobs/<id>/intake.json before the
        # drop) is still waiting: only the ones with history are taken
        taken = {job_id for job_id in ids if job_id in self.jobs or self.job(job_id) is not None}
        self._listing = (time.monotonic(), ids, waiting_rows(self.bucket, taken, self._inbox))

    def rows(self) -> list[dict[str, Any]]:
        """Every job, the waiting included, newest first, as the jobs page shows them."""
        ids, waiting = self.listing()
        now = codec.now()
        rows = []
        for job_id in ids:
            entry = self.job(job_id)
            if entry is None:
                continue
            status, view = entry["status"], entry["view"]
            ended = (view.latest.time if view and status["terminal"] else now)
            started = keys.job_time(job_id)
            rows.append({"job_id": job_id, "kind": entry["kind"], "state": status["state"],
                         "source": entry["source"], "attempt": status["attempt"], "at": started,
                         "age_s": (now - started).total_seconds(), "duration_s": (ended - started).total_seconds(),
                         "live": not status["terminal"], "percent": percent(status)})
        for w in waiting:
            at = keys.job_time(w["job_id"]) if w["job_id"] else (codec.parse_iso(w["updated_at"])
                                                                if w["updated_at"] != "-" else now)
            rows.append({"job_id": w["job_id"], "kind": w["kind"], "state": w["state"], "source": w["source"],
                         "attempt": 0, "at": at, "age_s": (now - at).total_seconds(), "duration_s": None,
                         "live": True, "percent": None})
        rows.sort(key=lambda r: r["at"], reverse=True)
        return rows

    def hosts(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._hosts is None or (not self._fresh(self._hosts[0]) and self._may_reread()):
                hosts = self._charged(lambda: sorted(read_hosts(self.bucket),
                                                     key=lambda h: (h["status"] != "alive", h.get("agent", ""))),
                                      first=self._hosts is None)
                self._hosts = (time.monotonic(), hosts)
            return self._hosts[1]


def percent(status: dict[str, Any]) -> float | None:
    if status["state"] == "succeeded":
        return 100.0
    p = status.get("progress") or {}
    return None if p.get("percent") is None else float(p["percent"])


def manifest_text(bucket, key: str) -> str | None:
    """The manifest as indented JSON (escaped by the template like every other value), or None if unreadable."""
    try:
        manifest = codec.loads(bucket.get(key).data)
    except (NotFound, CorruptObject, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    notify = manifest.get("notify")
    if isinstance(notify, dict) and isinstance(notify.get("webhook"), str) and urlsplit(notify["webhook"]).query:
        # the notifier never logs a webhook's query (it may carry the receiver's token); neither does a page
        manifest = {**manifest, "notify": {**notify, "webhook": notify["webhook"].split("?", 1)[0] + "?(hidden)"}}
    return json.dumps(manifest, indent=2, sort_keys=True)
