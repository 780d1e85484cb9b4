"""A training window's part of its job page: the preflight matrix (host x check, for every attempt), the steps
against the target with the trainer's metrics as a chart, the tail of the training log, the gate, the mirror's
verification and the report. Every bucket read goes through the cache: what is written once (a host's preflight
record, a log chunk, the mirror manifest) is read once; while the window is live its training log is listed each
refresh, its preflight listing until every host has reported, and its report whenever the attempt or the state
changes; an ended window costs no request after its first view."""

from __future__ import annotations

import codecs
import collections
import json
import math
import re
import shlex
import threading
from typing import Any

from markupsafe import Markup

from bucketrun.events import codec, keys
from bucketrun.events.errors import CorruptObject, NotFound
from bucketrun.events.status import attempt_outcome

from ..board import screen_line
from ..jobcache import manifest_text
from . import pages

KIND = "train_window"
CHECKS = ("dataset", "cache", "disk", "inodes", "memory", "GPU")
# an environment finding's `problem` (images/train_window/audit.py) -> its column; anything else shows under disk
ENV_COLUMN = {"disk": "disk", "inodes": "inodes", "memory": "memory", "no_gpu": "GPU", "gpu_memory": "GPU"}
LOG_LINES = 200  # the tail of the current attempt's training log
MAX_SERIES = 8  # metrics charted (the first ones a step line names)
FINDINGS_SHOWN = 3
PENDING_MAX = 65536  # of a line still being drawn (a `\r` bar that never ends its line)
# a training step line: "step 3/10 loss=0.51 valid_acc=0.84", "Step: 3 ...", "{'step': 3, 'loss': 0.5}"
STEP_RE = re.compile(r"""\bstep['"]?\s*[:=]?\s*(\d+)(?:\s*/\s*(\d+))?""", re.IGNORECASE)
PAIR_RE = re.compile(r"""['"]?([A-Za-z_][\w./-]*)['"]?\s*[=:]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"""
                     r"""(?![\w.])""", re.IGNORECASE)
STAGE_RE = re.compile(r"step (\d+)/(\d+)")


# -- pure parsing ------------------------------------------------------------------------------------------

class LogFollower:
    """One attempt's training log, fed chunk by chunk as they appear (each read once): the last LOG_LINES lines as
    a terminal shows them and every step's metrics, kept as it goes, so a long log is never joined or parsed
    again. A line may span chunks (a chunk is whatever the trainer printed in ten seconds), and so may a
    UTF-8 character."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fed: set[str] = set()
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending = ""  # the line being written (a `\\r` bar without its newline yet)
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.by_step: dict[int, dict[str, float | None]] = {}
        self.last: int | None = None

    def feed(self, data: bytes) -> None:
        *done, pending = (self.pending + self.decoder.decode(data)).replace("\r\n", "\n").split("\n")
        self.pending = pending[-PENDING_MAX:]
        lines = [screen_line(line) for line in done]
        self.tail.extend(lines)
        steps, last = step_metrics(lines)
        for step, values in steps.items():
            self.by_step.setdefault(step, {}).update(values)
        self.last = last if last is not None else self.last

    def view(self) -> tuple[list[str], dict[int, dict[str, float | None]], int | None]:
        """(the tail, metrics by step, the last step named), the unfinished line included."""
        drawing = screen_line(self.pending)
        if not drawing.strip():
            return list(self.tail), self.by_step, self.last
        steps, last = step_metrics([drawing])
        by_step = {s: dict(v) for s, v in self.by_step.items()}
        for step, values in steps.items():
            by_step.setdefault(step, {}).update(values)
        return ([*self.tail, drawing][-LOG_LINES:], by_step, last if last is not None else self.last)


def step_metrics(lines: list[str]) -> tuple[dict[int, dict[str, float | None]], int | None]:
    """The numeric `name=value` (or `'name': value`) pairs of every line naming a training step, by step (a later
    line of the same step wins), and the last step any line named."""
    by_step: dict[int, dict[str, float | None]] = {}
    last = None
    for line in lines:
        m = STEP_RE.search(line)
        if not m:
            continue
        step = int(m[1])
        last = step
        found = {}
        for name, value in PAIR_RE.findall(line[:m.start()] + " " + line[m.end():]):
            if name.lower() == "step":
                continue
            number = float(value)
            found[name] = number if math.isfinite(number) else None
        if found:
            by_step.setdefault(step, {}).update(found)
    return by_step, last


def chart_series(by_step: dict[int, dict[str, float | None]]) -> tuple[list[float], list[tuple[str, list]]]:
    steps = sorted(by_step)
    names: list[str] = []
    for s in steps:
        names += [n for n in by_step[s] if n not in names]
    return [float(s) for s in steps], [(n, [by_step[s].get(n) for s in steps]) for n in names[:MAX_SERIES]]


def size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def _said(findings: list[dict[str, Any]]) -> str:
    msgs = [str(f.get("message") or f.get("problem") or "") for f in findings]
    more = f" (and {len(msgs) - FINDINGS_SHOWN} more)" if len(msgs) > FINDINGS_SHOWN else ""
    return "; ".join(msgs[:FINDINGS_SHOWN]) + more


def preflight_cells(verdict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One host's preflight record as {check: {"ok": True|False|None, "text": its finding}}; None: not checked."""
    cells: dict[str, dict[str, Any]] = {}
    data = verdict.get("dataset")
    if not data:
        cells["dataset"] = {"ok": None, "text": "not checked (the manifest names none)"}
    elif data.get("ok"):
        cells["dataset"] = {"ok": True, "text": f"{data.get('files', 0)} files, {size(data.get('bytes'))}, "
                                                f"{data.get('lines', 0):,} lines"}
    else:
        cells["dataset"] = {"ok": False, "text": _said(data.get("findings") or []) or "failed"}
    cache = verdict.get("model_cache")
    if not cache:
        cells["cache"] = {"ok": None, "text": "not checked (the manifest names none)"}
    elif cache.get("ok"):
        how = "sha256 of every file" if cache.get("hashed_bytes") else "sizes only"
        cells["cache"] = {"ok": True, "text": f"{cache.get('repo_id', '')}: {cache.get('files', 0)} files, "
                                              f"{size(cache.get('bytes'))} ({how})"}
    else:
        cells["cache"] = {"ok": False, "text": ("PARTIAL: " if cache.get("partial") else "")
                          + (_said(cache.get("findings") or []) or "failed")}
    env = verdict.get("environment")
    if not env:
        for check in CHECKS[2:]:
            cells[check] = {"ok": None, "text": "not checked"}
        return cells
    facts = {
        "disk": f"{size(env.get('free_disk_bytes'))} free on {env.get('filesystem_path', '?')}",
        "inodes": f"{env['free_inodes']:,} free" if isinstance(env.get("free_inodes"), int)
        else "no fixed inode table",
        "memory": f"{size(env.get('memory_available_bytes'))} available of {size(env.get('memory_total_bytes'))}"
                  + (f" (cgroup limit {size(env['cgroup_limit_bytes'])})" if env.get("cgroup_limit_bytes") else ""),
        "GPU": ", ".join(f"{g.get('name')} {size(g.get('memory_free_bytes'))} free of "
                         f"{size(g.get('memory_total_bytes'))}" for g in env.get("gpus") or [])
               or str(env.get("gpu_note") or "none"),
    }
    short: dict[str, list[dict[str, Any]]] = {}
    for f in env.get("findings") or []:
        short.setdefault(ENV_COLUMN.get(str(f.get("problem")), "disk"), []).append(f)
    for check in CHECKS[2:]:
        cells[check] = {"ok": False, "text": _said(short[check])} if check in short else \
            {"ok": True, "text": facts[check]}
    return cells


def matrix(hosts: list[str], verdicts: dict[int, dict[str, dict[str, Any]]],
           attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the preflight matrix: each host, and per attempt its cells (or why it has none)."""
    rows = []
    for host in hosts:
        per = []
        for a in attempts:
            verdict = verdicts.get(a["attempt"], {}).get(host)
            n = a["attempt"]
            if verdict is not None:
                per.append({"attempt": n, "ok": bool(verdict.get("ok")), "cells": preflight_cells(verdict)})
            elif a["running"]:
                per.append({"attempt": n, "ok": None, "missing": "not reported yet"})
            else:
                blamed = (a.get("failure") or {}).get("where") == f"preflight/{host}"
                per.append({"attempt": n, "ok": False if blamed else None,
                            "missing": "did not report a preflight" + (" (its agent never claimed the offer)"
                                                                       if blamed else "")})
        rows.append({"host": host, "attempts": per})
    return rows


def flat(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A JSON value as (dotted name, text) rows, for a table."""
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out or [(prefix, "-")]
    if isinstance(obj, list):
        if all(not isinstance(x, (dict, list)) for x in obj):
            return [(prefix, ", ".join(str(x) for x in obj) or "-")]
        out = []
        for i, v in enumerate(obj):
            out += flat(v, f"{prefix}[{i}]")
        return out
    return [(prefix, "-" if obj is None else str(obj))]


# -- reads, through the cache ------------------------------------------------------------------------------

def _json(bucket, key: str) -> Any:
    try:
        return codec.loads(bucket.get(key).data)
    except (NotFound, CorruptObject, ValueError):
        return None


def _bytes(bucket, key: str) -> bytes:
    try:
        return bucket.get(key).data
    except NotFound:
        return b""


def _text(bucket, key: str) -> str | None:
    try:
        return bucket.get(key).data.decode("utf-8", "replace")
    except NotFound:
        return None


def _keys(bucket, prefix: str) -> list[str]:
    return [info.key for info in bucket.list(prefix)]


def _preflight(cache, job_id: str, attempt: int, hosts: list[str],
               live: bool) -> dict[int, dict[str, dict[str, Any]]]:
    """Every attempt's preflight records, each read once (a host writes its record once). The listing is read again
    only while the current attempt still waits for a host: once every named host has reported, nothing new can
    appear until the next attempt."""
    bucket = cache.bucket
    complete = cache.fetch(f"window:preflight-complete:{job_id}", dict, live=False)  # attempt -> its final listing
    listing = complete.get(attempt)
    if listing is None:
        listing = cache.fetch(f"window:preflight:{job_id}:{attempt}",
                              lambda: _keys(bucket, keys.preflight_prefix(job_id)), live=live)
    found: dict[int, dict[str, dict[str, Any]]] = {}
    for key in listing:
        parsed = keys.parse_preflight_key(job_id, key)
        if parsed is None:
            continue
        record = cache.fetch(f"window:object:{key}", lambda key=key: _json(bucket, key), live=False)
        if isinstance(record, dict):
            found.setdefault(parsed[0], {})[parsed[1]] = record
    if hosts and set(hosts) <= set(found.get(attempt, {})):
        complete[attempt] = listing
    return found


def _train_log(cache, job_id: str, attempt: int, live: bool) -> tuple[LogFollower, int] | None:
    """An attempt's training log and its number of chunks: listed while it is live, each new chunk read once and
    fed to the attempt's follower (kept in the cache, never re-made)."""
    bucket = cache.bucket
    prefix = keys.train_log_prefix(job_id, attempt)
    chunks = cache.fetch(f"window:log:{job_id}:{attempt}", lambda: _keys(bucket, prefix), live=live)
    if not chunks:
        return None
    follower = cache.fetch(f"window:follower:{job_id}:{attempt}", LogFollower, live=False)
    with follower.lock:  # the event stream renders in threads: one feeds, the others wait for it
        for key in sorted(set(chunks) - follower.fed):
            # the read goes through the cache (counted, within the budget); its bytes are kept by the follower only
            cache.fetch(f"window:chunk:{key}", lambda key=key: follower.feed(_bytes(bucket, key)), live=False)
            follower.fed.add(key)
    return follower, len(chunks)


def _manifest(cache, job_id: str) -> dict[str, Any]:
    # the page's own memo of the manifest (views.job_page fetches it under this name): no second read
    text = cache.fetch(f"manifest:{job_id}", lambda: manifest_text(cache.bucket, keys.manifest_key(job_id)),
                       live=False)
    return json.loads(text) if text else {}


def window_section(cache, job_id: str, entry: dict[str, Any], links) -> Markup | None:
    status, view = entry["status"], entry["view"]
    if view is None:
        return None
    live = not status["terminal"]
    bucket = cache.bucket
    manifest = _manifest(cache, job_id)
    window = manifest.get("window") or {}
    current = status["attempt"]

    # the report is written at the end of an attempt, before the state that ends it: read again only when the
    # attempt or the state changes
    moment = f"{job_id}:{current}:{status['state']}"
    report = cache.fetch(f"window:report.json:{moment}", lambda: _json(bucket, keys.report_json_key(job_id)),
                         live=False)
    report = report if isinstance(report, dict) else None
    report_md = cache.fetch(f"window:report.md:{moment}", lambda: _text(bucket, keys.report_key(job_id)), live=False)

    # the attempts and how each ended: the transition log for the past ones, the status for the current one
    history = list(view.history)
    attempts = []
    for n in range(1, current + 1):
        if n < current:
            told = attempt_outcome(history, n)
            attempts.append({"attempt": n, "running": False, **told})
        else:
            err = status.get("error") or {}
            attempts.append({"attempt": n, "running": live, "outcome": status["state"],
                             "failure": {k: err.get(k) for k in ("class", "message", "where")} if err else None})
    hosts = list((manifest.get("hosts") or {}).get("preflight") or [])
    verdicts = _preflight(cache, job_id, current, hosts, live)
    hosts += sorted({h for per in verdicts.values() for h in per} - set(hosts))

    # the training log of every attempt (an attempt that is over is listed once), its steps and metrics
    by_step: dict[int, dict[str, float | None]] = {}
    tail, log_step = None, None
    for n in range(1, current + 1):
        read = _train_log(cache, job_id, n, live=live and n == current)
        if read is None:
            continue
        follower, chunks = read
        with follower.lock:
            lines, steps, last = follower.view()
        for s, values in steps.items():
            by_step.setdefault(s, {}).update(values)
        if n == current:
            log_step = last
            tail = {"attempt": n, "text": "\n".join(lines), "lines": len(lines), "chunks": chunks}
    final = (report or {}).get("metrics") or {}
    if not by_step and final.get("step") is not None:  # a trainer whose log names no metrics: its last ones
        by_step = {int(final["step"]): {k: v for k, v in final.items() if k != "step"}}
    x, series = chart_series(by_step)
    chart = pages.chart("training metrics", x, series, x_label="step", time_axis=False) if series else None

    # steps against the target
    target = window.get("target_step") or (report or {}).get("target_step")
    start = (target - window["size"]) if target and window.get("size") else None
    candidates = []
    if report and report.get("attempt") == current:
        candidates.append(((report.get("gate") or {}).get("step")))
    latest = view.latest
    if latest is not None and latest.attempt == current:
        candidates.append((latest.detail.get("gate") or {}).get("step"))
    stage = STAGE_RE.search(str((status.get("progress") or {}).get("stage") or ""))
    if stage and (target is None or int(stage[2]) == target):  # not the smoke run's "step 1/1"
        candidates.append(int(stage[1]))
        target = target or int(stage[2])
    candidates.append(log_step)
    step = max((c for c in candidates if isinstance(c, int)), default=None)
    steps = {"step": step, "target": target, "start": start,
             "percent": (100.0 * max(0, (step or 0) - (start or 0)) / max(1, target - (start or 0)))
             if target else None}

    mirror = dict((report or {}).get("mirror") or {})
    mirror_key = mirror.get("manifest") or ((latest.detail.get("mirror") or {}).get("manifest") if latest else None)
    mirror_files = None
    if isinstance(mirror_key, str) and mirror_key.startswith(keys.mirrors_prefix(job_id)):
        body = cache.fetch(f"window:object:{mirror_key}", lambda: _json(bucket, mirror_key), live=False)
        if isinstance(body, dict):
            mirror_files = body.get("files") or []
            mirror.setdefault("verified", body.get("verified"))
    shown_elsewhere = {"preflight", "gate", "mirror", "metrics", "history", "history_lines", "reproduce_lines",
                       "blockers", "reproduce", "job_id", "command", "state", "attempt", "crash_mirror"}
    rest = [(k, flat(v, k)) for k, v in (report or {}).items() if k not in shown_elsewhere]
    return Markup(TEMPLATE.render(
        job_id=job_id, current=current, attempts=attempts,
        earlier=bool(report) and isinstance(report.get("attempt"), int) and report["attempt"] != current, checks=CHECKS, rows=matrix(hosts, verdicts, attempts), steps=steps,
        chart=chart, tail=tail, live=live, report=report, report_md=report_md, gate=(report or {}).get("gate"),
        mirror=mirror, mirror_key=mirror_key, mirror_files=mirror_files, crash=(report or {}).get("crash_mirror"),
        command=shlex.join(report["command"]) if report and report.get("command") else None,
        metrics=sorted(final.items()), rest=rest, launch=(manifest.get("hosts") or {}).get("launch")))


TEMPLATE = pages.ENV.from_string("""<section class="window">
<h2>Preflight</h2>
{% if not rows %}<p>no host has reported a preflight yet</p>{% else %}
<div class="wide"><table class="preflight"><thead><tr><th rowspan="2">host</th>
{% for a in attempts %}<th colspan="{{ checks|length }}" class="attempt {% if a.failure %}bad{% elif a.outcome == 'succeeded' %}good{% endif %}">attempt {{ a.attempt }}: {{ a.outcome }}
{%- if a.failure %} ({{ a.failure['class'] }}{% if a.failure.where %} at {{ a.failure.where }}{% endif %}){% endif %}</th>{% endfor %}</tr>
<tr>{% for a in attempts %}{% for c in checks %}<th>{{ c }}</th>{% endfor %}{% endfor %}</tr></thead>
<tbody>{% for r in rows %}<tr class="host"><th{% if r.attempts|selectattr('ok', 'false')|list %} class="bad"{% endif %}>{{ r.host }}{% if r.host == launch %} <small>(launch)</small>{% endif %}</th>
{% for p in r.attempts %}{% if p.cells %}{% for c in checks %}{% set cell = p.cells[c] %}<td class="check {% if cell.ok %}good{% elif cell.ok is sameas false %}bad{% endif %}" data-attempt="{{ p.attempt }}" data-check="{{ c }}"><b>{% if cell.ok %}ok{% elif cell.ok is sameas false %}FAILED{% else %}-{% endif %}</b> {{ cell.text }}</td>{% endfor %}
{% else %}<td colspan="{{ checks|length }}" class="check{% if p.ok is sameas false %} bad{% endif %}">{{ p.missing }}</td>{% endif %}{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% for a in attempts %}{% if a.failure %}<p class="bad">attempt {{ a.attempt }}: <b>{{ a.failure['class'] }}</b>{% if a.failure.where %} at {{ a.failure.where }}{% endif %}: {{ a.failure.message }}</p>{% endif %}{% endfor %}
{% endif %}
<h2>Steps</h2>
<p class="steps">{% if steps.target %}step <b class="step">{{ steps.step if steps.step is not none else '-' }}</b> of target <b class="target">{{ steps.target }}</b>
{% if steps.percent is not none %} <progress max="100" value="{{ '%.0f' % steps.percent }}"></progress> {{ '%.0f' % steps.percent }}% of the window{% endif %}
{% if steps.start is not none %} (from step {{ steps.start }}){% endif %}{% else %}no target known yet{% endif %}</p>
{% if chart %}{{ chart }}{% elif steps.target %}<p>no metrics logged yet</p>{% endif %}
{% if metrics %}<table class="metrics"><thead><tr><th>metric (last)</th><th>value</th></tr></thead><tbody>
{% for k, v in metrics %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</tbody></table>{% endif %}
{% if tail %}<h2>Training log <small>(attempt {{ tail.attempt }}, last {{ tail.lines }} lines of {{ tail.chunks }} chunk{{ 's' if tail.chunks != 1 }}{% if live %}, followed live{% endif %})</small></h2>
<pre class="log train-log">{{ tail.text }}</pre>{% endif %}
<h2>Gate{% if earlier %} <small>(attempt {{ report.attempt }}'s; attempt {{ current }} has not reached it)</small>{% endif %}</h2>
{% if gate %}<table class="gate"><tbody>
<tr><th>verdict</th><td class="{{ 'good' if gate.passed else 'bad' }}">{{ 'passed' if gate.passed else 'not passed' }}</td></tr>
<tr><th>progress file step</th><td>{{ gate.step }} (target {{ steps.target }})</td></tr>
{% for rel, n in (gate.required or {}).items() %}<tr><th>{{ rel }}</th><td class="{{ 'good' if n else 'bad' }}">{% if n is none %}missing{% elif n == 0 %}empty{% else %}{{ '{:,}'.format(n) }} bytes{% endif %}</td></tr>{% endfor %}
{% for p in gate.problems or [] %}<tr><th>problem</th><td class="bad">{{ p }}</td></tr>{% endfor %}
</tbody></table>{% else %}<p>not reached yet{% if attempts and attempts[-1].failure %} (attempt {{ attempts[-1].attempt }} failed before it){% endif %}</p>{% endif %}
<h2>Mirror verification{% if earlier and mirror %} <small>(attempt {{ report.attempt }}'s)</small>{% endif %}</h2>
{% if mirror %}<table class="mirror"><tbody>
<tr><th>verdict</th><td class="{{ 'good' if mirror.verified else 'bad' }}">{{ 'verified: listed back and every object re-hashed' if mirror.verified else 'NOT verified' }}</td></tr>
<tr><th>prefix</th><td><code>{{ mirror.prefix }}</code></td></tr><tr><th>manifest</th><td><code>{{ mirror_key or '-' }}</code></td></tr>
<tr><th>files</th><td>{{ mirror.files }}</td></tr><tr><th>bytes</th><td>{{ '{:,}'.format(mirror.bytes) if mirror.bytes is number else mirror.bytes }}</td></tr>
{% for p in mirror.problems or [] %}<tr><th>problem</th><td class="bad">{{ p }}</td></tr>{% endfor %}
</tbody></table>
{% if mirror_files %}<table class="mirror-files"><thead><tr><th>file</th><th>bytes</th><th>sha256</th></tr></thead><tbody>
{% for f in mirror_files %}<tr><td>{{ f.path }}</td><td>{{ f.bytes }}</td><td><code class="sha256">{{ f.sha256 }}</code></td></tr>{% endfor %}</tbody></table>{% endif %}
{% else %}<p>no mirror yet</p>{% endif %}
{% if crash %}<p class="{{ 'good' if crash.verified else 'bad' }}">checkpoint saved after the failure: <code>{{ crash.prefix }}</code> (step {{ crash.step }}, {{ 'verified' if crash.verified else 'NOT verified' }})</p>{% endif %}
<h2>Report{% if earlier %} <small>(attempt {{ report.attempt }}'s; attempt {{ current }} writes its own when it ends)</small>{% endif %}</h2>
{% if report %}<table class="report"><tbody>
<tr><th>state</th><td class="state-{{ report.state }}">{{ report.state }}</td></tr><tr><th>attempt</th><td>{{ report.attempt }}</td></tr>
{% if command %}<tr><th>command</th><td><code>{{ command }}</code></td></tr>{% endif %}
{% for k, rows in rest %}{% for name, value in rows %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}{% endfor %}
</tbody></table>
{% if report.blockers is defined %}<h3>What blocks the next window</h3><ul class="blockers">{% for b in report.blockers %}<li class="bad">{{ b }}</li>{% else %}<li class="good">nothing: the checkpoint is verified in the bucket</li>{% endfor %}</ul>{% endif %}
{% if report.history_lines %}<h3>History</h3><ul class="history">{% for line in report.history_lines %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}
{% if report.reproduce_lines %}<h3>Reproduce</h3><pre class="log reproduce">{{ report.reproduce_lines | join('\n') }}</pre>{% endif %}
{% else %}<p>no report yet (one is written at the end of every attempt)</p>{% endif %}
{% if report_md %}<details open><summary>report.md</summary><pre class="log report-md">{{ report_md }}</pre></details>{% endif %}
</section>""")
