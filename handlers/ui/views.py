"""Each dashboard page as a pure function of the cache: (status code, title, <main> HTML). The live server, its
event stream and the snapshot all render through these, differing only in their `Links` (how a page names other
pages, artifacts and its script and style)."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from markupsafe import Markup

from bucketrun.events import codec, keys
from bucketrun.events.cost import cost_line, cost_of
from bucketrun.events.errors import ConfigError, CorruptObject, NotFound
from bucketrun.events.fleet.instances import read_instances
from bucketrun.events.lifecycle import JobState
from bucketrun.events.status import WAITING, waiting_in_inbox

from .. import client
from ..board import screen_line, summary
from . import assets, pages, sections
from ..jobcache import Cache, manifest_text, percent

INSTANCES_S = 60.0  # a running fleet's instance records (its GPU cost) are listed at most this often
LOG_LINES = 200  # the tail of a worker log a job page shows; `bucketrun logs --worker` prints all of it


@dataclass(frozen=True)
class Page:
    status: int
    title: str
    main: Markup


class Links:
    """The live server's URLs; a snapshot subclasses this to name its own files and inline its assets."""

    searchable = True  # the jobs page's search and filters need a server to answer them

    def jobs(self, **params: Any) -> str:
        query = urlencode({k: v for k, v in params.items() if v})
        return "/?" + query if query else "/"

    def job(self, job_id: str) -> str | None:
        return f"/jobs/{job_id}"

    def artifact(self, job_id: str, n: int, key: str) -> str:
        return f"/jobs/{job_id}/artifacts/{n}"

    def hosts(self) -> str:
        return "/hosts"

    def assets(self) -> Markup:
        return assets.linked()

    def banner(self) -> Markup:
        return Markup("")


def resolve(cache: Cache, path: str, query: dict[str, str], links: Links) -> Page:
    """The page at `path` (as the server routes it), so the event stream can re-render whatever a browser shows."""
    if path == "/":
        return jobs_page(cache, query, links)
    if path == "/hosts":
        return hosts_page(cache, links)
    if path.startswith("/jobs/") and path.count("/") == 2:
        return job_page(cache, path[len("/jobs/"):], links)
    return not_found(f"nothing at {path}")


def not_found(what: str) -> Page:
    return Page(404, "not found", pages.render("not_found", what=what))


def jobs_page(cache: Cache, query: dict[str, str], links: Links) -> Page:
    q = (query.get("q") or "").strip()
    state, kind = query.get("state") or None, query.get("kind") or None
    rows = cache.rows()
    states = sorted({s.value for s in JobState} | {WAITING})
    kinds = sorted({r["kind"] for r in rows if r["kind"] != "-"})
    shown = [r for r in rows if (state is None or r["state"] == state) and (kind is None or r["kind"] == kind)
             and (not q or (r["job_id"] or "").startswith(q))]

    def link(**change: Any) -> str:
        return links.jobs(**{"q": q, "state": state, "kind": kind, **change})

    return Page(200, "jobs", pages.render("jobs", rows=shown, q=q, state=state, kind=kind, states=states,
                                          kinds=kinds, link=link, links=links))


def hosts_page(cache: Cache, links: Links) -> Page:
    return Page(200, "hosts", pages.render("hosts", hosts=cache.hosts(), links=links))


def job_page(cache: Cache, job_id: str, links: Links) -> Page:
    if not keys.is_job_id(job_id):  # never a read of a key made from an arbitrary path
        return not_found("not a job id")
    bucket = cache.bucket
    entry = cache.job(job_id)
    common = {"job_id": job_id, "summary": summary, "links": links, "section": None, "deliveries": [], "log": None,
              "cost": None}
    if entry is None:
        inbox = cache.fetch(f"inbox:{job_id}", lambda: waiting_in_inbox(bucket, job_id))
        if inbox is None:
            return not_found(f"no job {job_id} in this bucket")
        status = {"state": WAITING, "attempt": 0, "progress": None, "artifacts": [], "error": None,
                  "terminal": False, "note": f"waiting in the inbox ({inbox}); no dispatcher has taken it in yet"}
        manifest = cache.fetch(f"manifest:{inbox}", lambda: manifest_text(bucket, inbox), live=False)
        kind = str((json.loads(manifest) if manifest else {}).get("kind") or "-")
        return Page(200, job_id, pages.render("job", kind=kind, source=inbox, status=status, percent=None,
                                              timeline=[], manifest=manifest, **common))
    if entry.get("corrupt"):
        return Page(200, job_id, pages.render("job", kind="-", source="-", status={
            **entry["status"], "note": entry["corrupt"]}, percent=None, timeline=[], manifest=None, **common))
    status, view = entry["status"], entry["view"]
    live = not status["terminal"]
    history = list(view.history)
    manifest = cache.fetch(f"manifest:{job_id}", lambda: manifest_text(bucket, keys.manifest_key(job_id)), live=False)
    common["section"] = sections.render(entry["kind"], cache, job_id, entry, links)
    common["deliveries"] = cache.fetch(f"notify:{job_id}", lambda: _deliveries(bucket, job_id), live=live) \
        if _notifies(manifest) else []
    common["cost"] = _cost(cache, view, entry["kind"], live)
    common["log"] = cache.fetch(f"log:{job_id}:{status['attempt']}",
                                lambda: _log_tail(bucket, job_id, status["attempt"]), live=live)
    return Page(200, job_id, pages.render(
        "job", kind=entry["kind"], source=entry["source"], status=status, percent=percent(status),
        timeline=list(zip(history, client.state_durations(history))), manifest=manifest, **common))


def _cost(cache: Cache, view, kind: str, live: bool) -> str:
    """The job's cost as `bucketrun status` prints it: requests from its history (no read); a fleet's GPU time from
    its launcher's instance records, listed at most once a minute while it runs (the fleet section's pace)."""
    instances = None
    if kind == "fleet":
        instances = cache.fetch(f"instances:{view.job_id}", lambda: read_instances(cache.bucket, view.job_id),
                                live=live, every=INSTANCES_S)
    try:
        return cost_line(cost_of(view, instances))
    except ConfigError as exc:  # a bad BUCKETRUN_PRICING: say so on the page, as status says it on stderr
        return str(exc)


def _notifies(manifest: str | None) -> bool:
    """Only a job whose manifest asked for a webhook has delivery records: the others cost no listing."""
    return bool(manifest and (json.loads(manifest).get("notify") or {}).get("webhook"))


def _deliveries(bucket, job_id: str) -> list[dict[str, Any]]:
    """Each terminal transition's webhook record; the URL without its query, which may carry a receiver's token."""
    out = []
    for info in bucket.list(f"{keys.job_prefix(job_id)}notify/"):
        try:
            record = codec.loads(bucket.get(info.key).data)
        except (NotFound, CorruptObject):
            continue
        url = urlsplit(str(record.get("webhook") or ""))
        out.append({**record, "to": f"{url.scheme}://{url.netloc}{url.path}" if url.netloc else "?",
                    "attempts": list(record.get("attempts") or [])})
    return out


def _log_tail(bucket, job_id: str, attempt: int) -> dict[str, Any] | None:
    try:
        data = bucket.get(keys.log_key(job_id, attempt)).data
    except NotFound:
        return None
    lines = data.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line starts no line of its own
    lines = [screen_line(line) for line in lines]  # a `\r` bar in its last state, as a terminal shows it
    tail = lines[-LOG_LINES:]
    return {"attempt": attempt, "lines": len(tail), "text": "\n".join(tail)}


def artifact_key(cache: Cache, job_id: str, n: int) -> str | None:
    """The key of a job's n-th recorded artifact: the server streams only what a job's history names."""
    entry = cache.job(job_id) if keys.is_job_id(job_id) else None
    arts = entry["status"]["artifacts"] if entry else []
    return arts[n]["key"] if 0 <= n < len(arts) else None


def download_name(key: str) -> str:
    return posixpath.basename(key).replace('"', "").replace("\\", "") or "artifact"
