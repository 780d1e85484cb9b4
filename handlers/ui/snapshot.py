"""A snapshot of the dashboard in the bucket itself: `dashboard/index.html`, `dashboard/hosts.html` and a page per
live or recently ended job (`dashboard/jobs/<id>.html`), each one self-contained HTML file (style, script, uPlot
and data inline) that anyone who can read the bucket can open with nothing running: from a public bucket domain,
a folder, or (on S3/R2) a presigned URL.

Pages are the live dashboard's views (views.py) with `SnapshotLinks`: other pages are relative files, artifacts
relative bucket keys (or, in the presigned copy under `dashboard/signed/`, presigned URLs with one expiry).

Only what changed is written. `dashboard/state.json` keeps a digest of each page's content with the parts that
move with the clock alone masked (ages, time in state, "5s ago"), so a page whose data did not change is not
rewritten because a second passed; the page's banner says when it was taken, and its ages are as of then. A
refresh costs one GET of state.json, the reads of the dashboard's cache (only live jobs are re-read once the
cache holds the ended ones), and one PUT per changed page plus one for state.json; nothing changed, no write.
The sweep (local_sim/sim.py, handlers/aws_lambda.py) refreshes a bucket's snapshot once `bucketrun ui
--snapshot` has written state.json, at most every `every` seconds."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from bucketrun.events import codec
from bucketrun.events.errors import CorruptObject, NotFound
from bucketrun.events.lifecycle import JobState

from . import assets, pages, views
from ..jobcache import Cache, CountingBucket

log = logging.getLogger("bucketrun.snapshot")

ROOT = "dashboard/"
STATE = ROOT + "state.json"
SIGNED = "signed/"  # the presigned copy: dashboard/signed/<page>, every link in it presigned
HTML = "text/html; charset=utf-8"
EVERY_S = 60.0
RECENT_S = 86400.0  # an ended job keeps a page refreshed this long after it ended (its page stays afterwards)
PRESIGN_S = 7 * 86400  # SigV4's longest presigned URL, on S3 and R2
TERMINAL = {s.value for s in JobState if s.terminal}
# what moves with the clock alone: a table cell that is only a duration ("5s", "12.3s", "3m ago")
VOLATILE = re.compile(r">\s*-?\d+(?:\.\d+)?[smhd](?: ago)?\s*<")


class SnapshotLinks(views.Links):
    """How a snapshot page names the others: relative files under dashboard/ (`depth` is how many folders below
    the bucket's root the page is: 1 for index.html, 2 for jobs/<id>.html), artifacts as bucket keys relative to
    the page (so they open from a public bucket domain or a folder); with `sign`, every link is a presigned URL
    instead. Its assets are inlined; there is no search (a static page cannot answer a query)."""

    searchable = False

    def __init__(self, depth: int, paged: set[str], banner: str, sign: Callable[[str], str] | None = None) -> None:
        self.depth, self.paged, self._banner, self.sign = depth, paged, banner, sign

    def _page(self, name: str) -> str:
        if self.sign is not None:
            return self.sign(ROOT + SIGNED + name)
        return ("../" * (self.depth - 1)) + name

    def jobs(self, **params: Any) -> str:
        return self._page("index.html")

    def job(self, job_id: str) -> str | None:
        return self._page(f"jobs/{job_id}.html") if job_id in self.paged else None

    def artifact(self, job_id: str, n: int, key: str) -> str:
        if self.sign is not None:
            return self.sign(key)
        return "../" * self.depth + quote(key, safe="/")

    def hosts(self) -> str:
        return self._page("hosts.html")

    def assets(self) -> Markup:
        return assets.inlined()

    def banner(self) -> Markup:
        return Markup('<span class="snapshot">') + Markup.escape(self._banner) + Markup("</span>")


@dataclass
class Result:
    written: list[str] = field(default_factory=list)  # page names under dashboard/ written (plain or signed)
    reads: int = 0
    writes: int = 0
    pages: int = 0
    jobs: int = 0
    url: str | None = None
    signed_until: str | None = None


def read_state(bucket) -> dict[str, Any] | None:
    """dashboard/state.json, or None when no snapshot was ever taken (the sweep then leaves the bucket alone)."""
    try:
        state = codec.loads(bucket.get(STATE).data)
    except (NotFound, CorruptObject, ValueError):
        return None
    return state if isinstance(state, dict) else None


def digest(title: str, main: str) -> str:
    """The page's content with its clock-only parts masked: equal digests mean nothing worth rewriting changed."""
    return hashlib.sha256((title + "\0" + VOLATILE.sub("><", main)).encode()).hexdigest()


def _wanted(rows: list[dict[str, Any]], now) -> list[str]:
    """The jobs that get a page: live and waiting ones, and those that ended within RECENT_S."""
    out = []
    for r in rows:
        if not r["job_id"]:
            continue
        ended = None if r["state"] not in TERMINAL or r["duration_s"] is None else \
            r["at"] + timedelta(seconds=r["duration_s"])
        if ended is None or (now - ended).total_seconds() < RECENT_S:
            out.append(r["job_id"])
    return out


def take(bucket, cache: Cache, every: float, state: dict[str, Any] | None, sign_for: float | None = None,
         now=None) -> Result:
    """Render every page from `cache` (reading through its counting wrapper) and write, through the real
    `bucket`, the ones whose digest differs from `state`'s, then state.json if anything in it changed.
    `sign_for`: also (re)write the presigned copy of every page, valid that many seconds; otherwise the presigned
    copy is kept up to date (changed pages only) while state.json's `signed_until` has not passed."""
    counted: CountingBucket = cache.bucket
    before = counted.calls
    now = now or codec.now()
    state = state or {}
    old: dict[str, str] = dict(state.get("pages") or {})
    signed_until = state.get("signed_until")
    force_signed = sign_for is not None
    if force_signed:
        signed_until = codec.iso(now + timedelta(seconds=sign_for))
    expires = (codec.parse_iso(signed_until) - now).total_seconds() if signed_until else 0
    if force_signed:
        expires = sign_for  # exactly what was asked (the ISO time above is rounded to the millisecond)
    if expires < 60:  # an expired (or expiring) presigned copy is not kept up
        signed_until, expires = None, 0
    sign = (lambda key: bucket.presign_get(key, int(expires))) if signed_until else None

    rows = cache.rows()
    fresh = _wanted(rows, now)
    paged = set(fresh) | {n[len("jobs/"):-len(".html")] for n in old if n.startswith("jobs/")}
    banner = f"snapshot taken at {codec.iso(now)}; refreshed by the sweep every {every:g} s"

    def render(name: str, depth: int, page_of: Callable[[views.Links], views.Page]) -> None:
        links = SnapshotLinks(depth, paged, banner)
        page = page_of(links)
        new = digest(page.title, str(page.main))
        pages_now[name] = new
        changed = old.get(name) != new
        footer = {"bucket_url": counted.url, "bucket_calls": counted.calls - before,
                  "per_minute": counted.per_minute()}
        if changed:
            html = pages.frame(page.title, page.main, links, None, **footer)
            bucket.put(ROOT + name, html.encode(), HTML)
            result.written.append(name)
            result.writes += 1
        if sign is not None and (changed or force_signed):
            signed = SnapshotLinks(depth, paged, banner, sign)
            page = page_of(signed)
            html = pages.frame(page.title, page.main, signed, None, **footer)
            bucket.put(ROOT + SIGNED + name, html.encode(), HTML)
            result.written.append(SIGNED + name)
            result.writes += 1

    result = Result(jobs=len(rows))
    pages_now: dict[str, str] = dict(old)
    for job_id in fresh:
        render(f"jobs/{job_id}.html", 2, lambda links, j=job_id: views.job_page(cache, j, links))
    render("hosts.html", 1, lambda links: views.hosts_page(cache, links))
    render("index.html", 1, lambda links: views.jobs_page(cache, {}, links))
    result.pages = len(fresh) + 2
    new_state = {"version": 1, "every": every, "pages": pages_now, "signed_until": signed_until,
                 "taken_at": codec.iso(now) if result.written else state.get("taken_at")}
    if new_state != {k: state.get(k) for k in new_state}:
        bucket.put(STATE, json.dumps(new_state, indent=1, sort_keys=True).encode(), "application/json")
        result.writes += 1
    result.reads = counted.calls - before
    result.signed_until = signed_until
    if sign is not None:
        result.url = sign(ROOT + SIGNED + "index.html")
    return result


def snapshot_once(bucket, every: float = EVERY_S, print_url: bool = False) -> Result:
    """`bucketrun ui --snapshot`: one snapshot with a fresh cache (ended jobs are read once here). With
    `print_url`, a URL to open it by: a folder's file:// path (its relative links work as they are), or on S3 a
    presigned URL of the presigned copy, every link inside presigned for PRESIGN_S."""
    counted = CountingBucket(bucket)
    state = read_state(counted)  # counted: the figure printed is every read the snapshot made
    sign_for = None
    if print_url:
        probe = bucket.presign_get(ROOT + "index.html", PRESIGN_S)  # raises where the store cannot presign
        sign_for = None if probe.startswith("file:") else PRESIGN_S
    result = take(bucket, Cache(counted, refresh=3600.0, budget=1e9), every, state, sign_for=sign_for)
    if print_url and result.url is None:
        result.url = bucket.presign_get(ROOT + "index.html", PRESIGN_S)
    result.reads = counted.calls
    return result


class Refresher:
    """The sweep's side: at most once per `every` seconds (this process's clock), and only on a bucket where a
    snapshot was taken (dashboard/state.json exists: one GET tells), render through a cache kept between passes
    (an ended job is read once, a live one each pass) and write what changed. `every` None: the figure
    `bucketrun ui --snapshot --snapshot-every` recorded in state.json (60 s unless given); 0: never."""

    def __init__(self, bucket, every: float | None = None) -> None:
        self.bucket, self.every = bucket, every
        self.counted = CountingBucket(bucket)
        self.cache: Cache | None = None
        self._last: float | None = None
        self._interval = every if every else EVERY_S
        self.refreshes = 0  # passes that rendered (a test counts them)

    def due(self) -> bool:
        return self.every != 0 and (self._last is None or time.monotonic() - self._last >= self._interval)

    def maybe_refresh(self) -> Result | None:
        if not self.due():
            return None
        self._last = time.monotonic()
        before = self.counted.calls
        state = read_state(self.counted)
        if state is None:
            return None
        every = self.every if self.every is not None else float(state.get("every") or EVERY_S)
        if every <= 0:
            return None
        self._interval = every
        if self.cache is None or self.cache.refresh != every / 2:
            # live data older than half a period is re-read; within one pass nothing is read twice
            self.cache = Cache(self.counted, refresh=every / 2, budget=1e9)
        result = take(self.bucket, self.cache, every, state)
        result.reads = self.counted.calls - before  # state.json's GET included
        self.refreshes += 1
        if result.written:
            log.info("snapshot: %d page(s) written (%d reads, %d writes)", len(result.written), result.reads,
                     result.writes)
        return result
