"""A job as one row and one line: where it came from, its kind, the manifests waiting in the inbox, a transition's
detail in a few words. `ls`, `logs`, `top` and the dashboard all show jobs this way."""

from __future__ import annotations

import posixpath
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import CorruptObject, NotFound
from bucketrun.events.lifecycle import JobState, JobView, Transition
from bucketrun.events.status import WAITING

WIDTH = 160  # a summary longer than this is cut with "..."


def _cut(text: str, width: int = WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def transition_error(t: Transition) -> dict[str, Any] | None:
    d = t.detail or {}
    return d.get("error") or (d.get("retry") or {}).get("error")


def summary(t: Transition) -> str:
    """What a person wants from a transition's detail, in a few words; the raw object is in `--json`."""
    d = t.detail or {}
    error = transition_error(t)
    if error:
        said = f"{error.get('class')}: {error.get('message', '')}"
        if d.get("retry"):
            said = f"retry after {said}"
        return _cut(said)
    if t.state is JobState.SUBMITTED:
        return _cut("from " + (f"request {d['request_id']}" if d.get("request_id") else
                               (d.get("inbox") or {}).get("key", "?")))
    if t.state is JobState.LAUNCHED:
        return _cut(f"on {d.get('backend', '?')} ({d.get('backend_id', '?')})")
    if t.state is JobState.SUCCEEDED:
        arts = d.get("artifacts") or []
        dataset = d.get("dataset") or {}
        if dataset:
            return _cut(f"{dataset.get('items_covered')}/{dataset.get('items_total')} items, {dataset.get('rows')} "
                        f"rows: {dataset.get('key')}")
        return _cut(f"{len(arts)} artifacts" + (f": {arts[0]['key']}" + (" ..." if len(arts) > 1 else "")
                                                if arts else ""))
    if t.state is JobState.CANCELLED:
        return _cut(f"by {t.writer}")
    return ""


def source_of(view: JobView) -> str:
    """Where a job came from: its request_id, else its inbox key."""
    first = view.history[0].detail if view.history else {}
    if first.get("request_id"):
        return f"request:{first['request_id']}"
    return (first.get("inbox") or {}).get("key") or "-"


def kind_of(bucket, view: JobView) -> str:
    """From the submitted transition (written since kinds were recorded there), else the stored manifest."""
    first = view.history[0].detail if view.history else {}
    if first.get("kind"):
        return first["kind"]
    try:
        return str(codec.loads(bucket.get(keys.manifest_key(view.job_id)).data).get("kind") or "-")
    except (NotFound, CorruptObject, AttributeError):  # not a JSON object: a job whose intake rejected it
        return "-"


def waiting_rows(bucket, taken: set[str], memo: dict[tuple[str, str], Any] | None = None) -> list[dict[str, Any]]:
    """Manifests in the inbox that no dispatcher has taken in: named by their own job id (as `submit` names
    them), or any other name whose intake index entry is missing. `memo` keeps what was read per (key, ETag) across
    calls, so a page that lists the inbox every few seconds reads each waiting manifest once."""
    memo = {} if memo is None else memo
    rows = []
    for info in bucket.list(keys.INBOX):
        if not keys.is_inbox_manifest(info.key):
            continue
        name = posixpath.basename(info.key)[: -len(".json")]
        if keys.is_job_id(name) and name in taken:
            continue
        seen = (info.key, info.etag)
        if seen not in memo:
            try:
                manifest = codec.loads(bucket.get(info.key).data)
            except (NotFound, CorruptObject):
                manifest = None
            memo[seen] = {"manifest": manifest if isinstance(manifest, dict) else {}, "claimed": False}
        manifest = memo[seen]["manifest"]
        if not keys.is_job_id(name):  # taken in under another id if its intake identity is claimed
            if not memo[seen]["claimed"]:  # once claimed, claimed for good
                rid = manifest.get("request_id")
                token = keys.request_token(rid) if isinstance(rid, str) else keys.object_token(info.key, info.etag)
                memo[seen]["claimed"] = bucket.exists(keys.idempotency_key(token))
            if memo[seen]["claimed"]:
                continue
        kind = str(manifest.get("kind") or "-")
        at = info.last_modified.isoformat().replace("+00:00", "Z") if info.last_modified else "-"
        rows.append({"job_id": name if keys.is_job_id(name) else None, "state": WAITING, "kind": kind,
                     "attempt": 0, "updated_at": at, "source": info.key})
    return rows


def ago(seconds: float | None) -> str:
    """A duration as a person reads it at a glance: 45s, 3m, 2h, 1d."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def screen_line(line: str) -> str:
    """A line as a terminal shows it: a `\\r`-redrawn progress bar in its last drawn state."""
    drawn = [part for part in line.split("\r") if part.strip()]
    return drawn[-1] if drawn else line.rsplit("\r", 1)[-1]
