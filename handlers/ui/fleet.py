"""A fleet's section of its job page: the workers, the totals, items/s over time and the shard map, from
jobs/<id>/fleet/ (plan.json, done/, leases/, heartbeats/, workers/, instances/, cost.json) read through the cache.

What a re-read costs (one `cache.fetch` per page refresh, so at most one per `--refresh`): a listing of done/, of
leases/ and of heartbeats/ (a request per 1,000 keys each). Only what is new or changed is read beyond that, and
kept here between refreshes:
- a heartbeat whose Last-Modified moved (a worker beats every heartbeat_s, so up to a GET per worker per beat; at
  most HEARTBEAT_READS a refresh, the longest-unread first: a worker's state is the listing's, its counts may lag);
- a done marker only for a shard of one item (the only kind that can hold a dead letter), once: markers are
  write-once. Every other number comes from the listing itself (shard ids are item ranges, Last-Modified is the
  commit time). Done keys sort by shard while commits land anywhere in the plan, so a listing `start_after` the
  last key seen would miss new ones: done/ is listed whole, which is one request per 1,000 shards;
- a lease's body only when it is not done and no heartbeat says it is held (an expired holder or an offered
  remainder), again only when its Last-Modified moved, at most LEASE_READS a refresh (and MARKER_READS markers: a
  fleet of one-item shards catches up over a few refreshes);
- plan.json, the manifest and each worker's registration once; instances/ every SIDE_S (GETs of changed records
  only); cost.json once the fleet has ended.
An ended fleet (live=False) is read once more and never again.

The worker rows and the totals are `events.fleet.status` (`worker_row`, `summarize`), as `bucketrun fleet status`
shows them: a worker is alive, draining (told to stop: it finishes its shard and claims no other), stale (no beat
for 2 x heartbeat_s), offline (it said so), or stopping (the fleet has ended and its last beat has not come); the
rate is the recent rates of the workers at work (alive or draining) while the fleet runs and
its average over the wall time once it has ended (never 0 for a fleet that did work)."""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from collections import deque
from datetime import datetime
from typing import Any

from markupsafe import Markup

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, CorruptObject, NotFound
from bucketrun.events.fleet.instances import fleet_cost
from bucketrun.events.fleet.status import beat_workers, heartbeat_worker, summarize, worker_row
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.lease import RELEASED

from . import pages

RATE_WINDOW_S = 300.0  # a worker's items/min is over this much of its own heartbeat counter
MAX_SEGMENTS = 500  # the shard strip's most <span>s; past this the plan is cut into equal bins
CHART_BINS = 60
LEASE_READS = 50  # lease bodies read in one refresh at most
HEARTBEAT_READS = 25  # changed heartbeats read in one refresh at most: a hundred workers' counts take four
MARKER_READS = 200  # one-item done markers read in one refresh at most (all of them once the fleet has ended)
SIDE_S = 60.0  # instances/ (the $/h) re-listed at most this often while the fleet runs
STATES = ("done", "leased", "expired", "free")

_READS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cache -> {job_id: FleetReads}
_LOCK = threading.Lock()


def _epoch(at: datetime | str | None) -> float | None:
    if at is None:
        return None
    if isinstance(at, str):
        try:
            at = codec.parse_iso(at)
        except ValueError:
            return None
    return at.timestamp()


def _get(bucket, key: str) -> dict[str, Any] | None:
    try:
        body = codec.loads(bucket.get(key).data)
    except (NotFound, CorruptObject, ValueError):
        return None
    return body if isinstance(body, dict) else None


class FleetReads:
    """What this server has read of one fleet, kept between refreshes so only new or changed objects are read."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.body = None  # the validated manifest's fleet body
        self.plan: dict[str, Any] | None = None
        self.done: dict[str, float] = {}  # shard -> commit time (the marker's Last-Modified)
        self.markers: dict[str, dict[str, Any]] = {}  # shard of one item -> its marker (dead letters)
        self.leases: dict[str, float] = {}  # shard -> the lease's Last-Modified
        self.lease_bodies: dict[str, tuple[float, dict[str, Any]]] = {}
        # worker -> (listed Last-Modified, the heartbeat as last read, the Last-Modified it was read at)
        self.beats: dict[str, tuple[float, dict[str, Any], float]] = {}
        self.samples: dict[str, deque[tuple[float, int]]] = {}  # worker -> (beat time, items_done)
        self.registrations: dict[str, dict[str, Any] | None] = {}
        self.instances: dict[str, tuple[float, dict[str, Any]]] = {}  # key -> (Last-Modified, record)
        self.instances_at: float | None = None
        self.cost: dict[str, Any] | None = None

    # -- reads ---------------------------------------------------------------------------------------------
    def read(self, bucket, view, live: bool) -> dict[str, Any]:
        job_id = self.job_id
        now = codec.now()
        if self.body is None:
            self.body = load_job_manifest(bucket, job_id).body
        if self.plan is None:
            self.plan = _get(bucket, keys.fleet_plan_key(job_id))

        prefix = keys.fleet_done_prefix(job_id)
        done = {}
        for info in bucket.list(prefix):
            shard = keys.fleet_shard_of(info.key, prefix)
            if shard:
                done[shard] = _epoch(info.last_modified) or 0.0
        self.done = done
        reads = 0
        for shard in done:
            lo, hi = keys.parse_shard_id(shard)
            if hi - lo == 1 and shard not in self.markers and (reads < MARKER_READS or not live):
                reads += 1
                self.markers[shard] = _get(bucket, keys.fleet_done_key(job_id, shard)) or {}

        hb_prefix = keys.fleet_heartbeats_prefix(job_id)
        beats, changed = {}, []
        for info in bucket.list(hb_prefix):
            at = _epoch(info.last_modified) or 0.0
            worker = heartbeat_worker(info.key, hb_prefix, {})
            known = self.beats.get(worker)
            # the state (alive, stale) is the listing's Last-Modified; the body (counts, shard) is re-read when it
            # moved, the longest-unread first, at most HEARTBEAT_READS a refresh while the fleet runs (a new worker's
            # first beat is always read)
            beats[worker] = (at, known[1] if known else None, known[2] if known else None)
            if known is None or known[2] != at:
                changed.append((known[2] if known else -1.0, worker, info.key, at))
        changed.sort()
        first = [c for c in changed if c[0] == -1.0]  # a worker not yet shown is always read: a page shows them all
        for _, worker, key, at in first + changed[len(first):][:None if not live else HEARTBEAT_READS]:
            beat = _get(bucket, key)
            if beat is not None:
                beats[worker] = (at, beat, at)
                for w, b in beat_workers(key, hb_prefix, beat).items():
                    self._sample(w, b, at)
        beats = {w: b for w, b in beats.items() if b[1] is not None}
        self.beats = beats
        for worker, (_, beat, _) in beats.items():  # a beat from before process beats: its registration
            if "workers" not in beat and worker not in self.registrations:
                self.registrations[worker] = _get(bucket, keys.fleet_worker_key(job_id, worker))

        held = {h.get("shard") for b in self.worker_beats().values() if b[1].get("state") not in ("offline", "finished")
                for h in b[1].get("holding") or []}
        lease_prefix = keys.fleet_leases_prefix(job_id)
        leases, reads = {}, 0
        for info in bucket.list(lease_prefix):
            shard = keys.fleet_shard_of(info.key, lease_prefix)
            if not shard or shard in done:
                continue
            at = leases[shard] = _epoch(info.last_modified) or 0.0
            known = self.lease_bodies.get(shard)
            if shard not in held and (known is None or known[0] != at) and (reads < LEASE_READS or not live):
                reads += 1
                body = _get(bucket, info.key)
                if body is not None:
                    self.lease_bodies[shard] = (at, body)
        self.leases = leases
        self.lease_bodies = {s: b for s, b in self.lease_bodies.items() if s in leases}

        if not live or self.instances_at is None or time.monotonic() - self.instances_at >= SIDE_S:
            self._read_instances(bucket)
        if not live:
            self.cost = _get(bucket, keys.fleet_prefix(job_id) + "cost.json")
        return self.model(view, now, held)

    def worker_beats(self) -> dict[str, tuple[float, dict[str, Any]]]:
        """Worker -> (its beat's Last-Modified, its beat): a process's beat names all its workers."""
        prefix = keys.fleet_heartbeats_prefix(self.job_id)
        return {w: (at, b) for name, (at, beat, _) in self.beats.items()
                for w, b in beat_workers(f"{prefix}{name}.json", prefix, beat).items()}

    def _sample(self, worker: str, beat: dict[str, Any], at: float) -> None:
        """The worker's items_done at its beat's time; a restarted worker (its count went down) starts over."""
        t = _epoch(beat.get("at")) or at
        n = int(beat.get("items_done") or 0)
        samples = self.samples.setdefault(worker, deque())
        if samples and n < samples[-1][1]:
            samples.clear()
        if not samples or t > samples[-1][0]:
            samples.append((t, n))
        while len(samples) > 2 and samples[1][0] <= t - RATE_WINDOW_S:
            samples.popleft()

    def _read_instances(self, bucket) -> None:
        prefix = keys.fleet_instances_prefix(self.job_id)
        seen = {}
        for info in bucket.list(prefix):
            at = _epoch(info.last_modified) or 0.0
            known = self.instances.get(info.key)
            if known is not None and known[0] == at:
                seen[info.key] = known
                continue
            record = _get(bucket, info.key)
            if record is not None:
                seen[info.key] = (at, record)
        self.instances, self.instances_at = seen, time.monotonic()

    # -- the model the section renders -----------------------------------------------------------------------
    def model(self, view, now: datetime, held: set[str]) -> dict[str, Any]:
        body, plan = self.body, self.plan
        t_now = now.timestamp()
        instances = [r for _, r in self.instances.values()]
        price = {r.get("worker"): r.get("price_per_hour") for r in instances if not r.get("terminated_at")}
        rows = []
        for worker, (at, beat) in self.worker_beats().items():
            row = worker_row(worker, beat, t_now - at, body.heartbeat_s)
            reg = beat if beat.get("process") else self.registrations.get(worker) or {}
            gpu = (reg.get("gpu") or {}).get("name") if isinstance(reg.get("gpu"), dict) else None
            row.update({"backend": body.workers.backend, "gpu": gpu or body.workers.gpu_type or reg.get("device"),
                        "for_s": (t_now - _epoch(row["current_since"])) if row["current_shard"]
                        and row["current_since"] else None,
                        "per_min": self._per_min(worker, row["state"], beat, t_now),
                        "price_per_hour": price.get(worker)})
            rows.append(row)
        cost = self.cost or (fleet_cost(instances, now) if instances else None)
        st = summarize(self.job_id, view, plan, self.done, rows, cost)
        lease_s = body.lease_s
        states: dict[str, str] = {}
        for shard, at in self.leases.items():
            known = self.lease_bodies.get(shard)
            lease = known[1] if known else None
            if shard not in held and lease is not None and lease.get("state") == RELEASED:
                states[shard] = "free"  # offered or handed back: anyone may claim it
            else:
                ttl = float((lease or {}).get("ttl_s") or lease_s)
                states[shard] = "leased" if t_now - at < ttl else "expired"
        dead = []
        for shard, marker in sorted(self.markers.items()):
            for d in marker.get("dead") or []:
                dead.append({**d, "shard": shard, "worker": marker.get("worker"), "at": marker.get("at")})
        total = plan["total"] if plan else 0
        strip = shard_map(total, self.done, states, base_shards(plan)) if plan else None
        return {"st": st, "strip": strip, "dead": dead, "chart": rate_series(total, self.done, st["started_at"]),
                "in_flight": sum(s == "leased" for s in states.values()),
                "expired": sum(s == "expired" for s in states.values()),
                "shard_size": plan.get("shard_size") if plan else body.shard_size, "read_at": codec.iso(now)}

    def _per_min(self, worker: str, state: str, beat: dict[str, Any], t_now: float) -> tuple[float, str] | None:
        """Items a minute over the last RATE_WINDOW_S by the worker's own items_done counter, sampled at each beat
        this server read: ("window"). Until two samples are in the window, an alive worker's own recent rate (its
        last ten shards, from its heartbeat): ("recent"). None for a worker with neither."""
        samples = [s for s in self.samples.get(worker, ()) if s[0] >= t_now - RATE_WINDOW_S]
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            end = t_now if state not in ("alive", "draining") else samples[-1][0]  # a silent one did nothing since
            return (60.0 * (samples[-1][1] - samples[0][1]) / max(end - samples[0][0], 1e-9), "window")
        if state in ("alive", "draining") and beat.get("items_per_s") is not None:
            return (60.0 * float(beat["items_per_s"]), "recent")
        return None


def base_shards(plan: dict[str, Any] | None) -> list[str]:
    if not plan:
        return []
    total, size = int(plan["total"]), int(plan["shard_size"])
    return [keys.shard_id(lo, min(lo + size, total)) for lo in range(0, total, size)]


def shard_map(total: int, done: dict[str, float], leases: dict[str, str], base: list[str]) -> dict[str, Any]:
    """The plan's item range painted by state: a lease that is not done (leased, expired, or free once released)
    over done, over free. A remainder inside a partially committed parent shows as its lease says, not as its
    parent's done. Adjacent items of one state make one segment; over MAX_SEGMENTS, the range is cut into
    MAX_SEGMENTS equal bins each showing its dominant state. Items and shards per state are exact either way."""
    if total <= 0:
        return {"segments": [], "items": dict.fromkeys(STATES, 0), "shards": dict.fromkeys(STATES, 0),
                "binned": False, "extra": 0}
    layers = [("done", [keys.parse_shard_id(s) for s in done])]  # lowest first: later layers paint over
    for state in ("free", "expired", "leased"):
        layers.append((state, [keys.parse_shard_id(s) for s, v in leases.items() if v == state]))
    cuts = sorted({0, total} | {min(max(x, 0), total) for _, rs in layers for r in rs for x in r})
    index = {c: i for i, c in enumerate(cuts)}
    n = len(cuts) - 1
    painted = ["free"] * n
    for state, ranges in layers:
        diff = [0] * (n + 1)
        for lo, hi in ranges:
            lo, hi = min(max(lo, 0), total), min(max(hi, 0), total)
            if hi > lo:
                diff[index[lo]] += 1
                diff[index[hi]] -= 1
        run = 0
        for i in range(n):
            run += diff[i]
            if run > 0:
                painted[i] = state
    segments = _merge([(painted[i], cuts[i], cuts[i + 1]) for i in range(n)])
    items = dict.fromkeys(STATES, 0)
    for state, lo, hi in segments:
        items[state] += hi - lo
    shards = dict.fromkeys(STATES, 0)
    shards["done"] = len(done)
    for state in leases.values():
        shards[state] += 1
    shards["free"] += sum(1 for s in base if s not in done and s not in leases)
    extra = len(({*done} | {*leases}) - set(base))  # children: remainders and split-off parts
    binned = len(segments) > MAX_SEGMENTS
    if binned:
        segments = _merge(_bins(segments, total, MAX_SEGMENTS))
    return {"segments": [{"state": s, "lo": lo, "hi": hi, "percent": 100.0 * (hi - lo) / total}
                         for s, lo, hi in segments],
            "items": items, "shards": shards, "binned": binned, "extra": extra}


def _merge(segments: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for state, lo, hi in segments:
        if out and out[-1][0] == state and out[-1][2] == lo:
            out[-1] = (state, out[-1][1], hi)
        elif hi > lo:
            out.append((state, lo, hi))
    return out


def _bins(segments: list[tuple[str, int, int]], total: int, n: int) -> list[tuple[str, int, int]]:
    """Equal bins of the item range, each the state most of its items are in."""
    out, i = [], 0
    for b in range(n):
        lo, hi = total * b // n, total * (b + 1) // n
        if hi <= lo:
            continue
        counts: dict[str, int] = {}
        while i < len(segments) and segments[i][2] <= lo:
            i += 1
        j = i
        while j < len(segments) and segments[j][1] < hi:
            s, a, z = segments[j]
            counts[s] = counts.get(s, 0) + min(z, hi) - max(a, lo)
            j += 1
        out.append((max(counts, key=lambda s: (counts[s], -STATES.index(s))), lo, hi))
    return out


def rate_series(total: int, done: dict[str, float], started_at: str | None) -> dict[str, Any] | None:
    """Items/s over time: the items each done marker added to what was done before it (the union of the done
    shards' ranges, as items done counts them), at the marker's Last-Modified (its commit time), summed into up
    to CHART_BINS equal bins from the job's first `running` (or the first commit) to the last commit, each
    divided by the bin's width. A commit rate: a shard's items all count when it commits."""
    if not done:
        return None
    events = sorted((at, keys.parse_shard_id(s)) for s, at in done.items())
    starts: list[int] = []
    ends: list[int] = []
    added = []
    for at, (lo, hi) in events:
        lo, hi = max(lo, 0), min(hi, total) if total else hi
        i = j = bisect.bisect_left(ends, lo)  # the first interval that reaches lo
        new_lo, new_hi, overlap = lo, hi, 0
        while j < len(starts) and starts[j] <= hi:
            overlap += max(0, min(hi, ends[j]) - max(lo, starts[j]))
            new_lo, new_hi = min(new_lo, starts[j]), max(new_hi, ends[j])
            j += 1
        starts[i:j], ends[i:j] = [new_lo], [new_hi]
        added.append((at, max(0, hi - lo - overlap)))
    t0 = min(_epoch(started_at) or events[0][0], events[0][0])
    t1 = events[-1][0]
    width = max(1.0, (t1 - t0) / CHART_BINS)
    n = int((t1 - t0) // width) + 1
    sums = [0] * n
    for at, k in added:
        sums[min(n - 1, int((at - t0) // width))] += k
    return {"x": [round(t0 + i * width, 3) for i in range(n)], "items_per_s": [round(s / width, 3) for s in sums],
            "width_s": width, "items": sum(sums)}


def _reads(cache, job_id: str) -> FleetReads:
    with _LOCK:  # pages render on the server's worker threads
        per_cache = _READS.setdefault(cache, {})
        if job_id not in per_cache:
            per_cache[job_id] = FleetReads(job_id)
        return per_cache[job_id]


def section(cache, job_id: str, entry: dict[str, Any], links) -> Markup | None:
    """The fleet's section, read through the cache (re-read at most every `refresh`, never once ended)."""
    live = not entry["status"]["terminal"]
    reads = _reads(cache, job_id)

    def read() -> dict[str, Any]:
        try:
            return reads.read(cache.bucket, entry["view"], live)
        except (BucketrunError, ValueError) as exc:  # a missing or bad manifest: kept like a value, not retried
            return {"error": f"cannot read the fleet: {exc}"}  # on every load; the rest of the page still shows

    model = cache.fetch(f"fleet:{job_id}", read, live=live)
    if "error" in model:
        return Markup('<section class="fleet"><h2>Fleet</h2><p class="bad">') + Markup.escape(model["error"]) + \
            Markup("</p></section>")
    chart = None
    if model["chart"]:
        c = model["chart"]
        chart = pages.chart(f"items/s (committed, {c['width_s']:.0f} s bins)", c["x"],
                            [("items/s", c["items_per_s"])])
    return Markup(TEMPLATE.render(m=model, st=model["st"], chart=chart, links=links, job_id=job_id,
                                  live=live, duration=duration))


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0.0, s)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


FLEET = """<section class="fleet"><h2>Fleet</h2>
{% if not st.planned %}<p>not planned yet: no worker has written the plan</p>{% else %}
<table class="totals fleet-totals"><tbody>
<tr><th>items</th><td class="items-done">{{ st.items_done }}/{{ st.items_total }}
 ({{ '%.1f' % (100.0 * st.items_done / (st.items_total or 1)) }}%)</td></tr>
<tr><th>shards</th><td class="shards">{{ st.shards_done }} done; {{ st.shards_planned }} planned of {{ m.shard_size }} items{% if m.strip.extra %}, {{ m.strip.extra }} more split off or left over by the workers{% endif %}</td></tr>
<tr><th>rate</th><td class="rate">{% if st.items_per_s is none %}-{% elif st.rate == 'average' %}{{ '%.2f' % st.items_per_s }} items/s average over {{ duration(st.wall_s) }} (final){% else %}{{ '%.2f' % st.items_per_s }} items/s{% endif %}</td></tr>
<tr><th>ETA</th><td class="eta">{% if st.eta_s %}{{ duration(st.eta_s) }}{% elif st.rate == 'average' %}ended {{ st.state }}{% else %}-{% endif %}</td></tr>
<tr><th>leases</th><td class="leases">{{ m.in_flight }} in flight, <span class="{{ 'stale' if m.expired else '' }}">{{ m.expired }} expired</span></td></tr>
<tr><th>workers</th><td class="workers-count">{{ st.workers_alive }} alive of {{ st.workers | length }}{% if st.workers_stopping %} ({{ st.workers_stopping }} stopping){% endif %}</td></tr>
<tr><th>failed items</th><td class="failed">{{ st.items_failed }}</td></tr>
<tr><th>dead letters</th><td class="dead-count{{ ' bad' if m.dead else '' }}">{{ m.dead | length }}</td></tr>
{% if st.cost %}<tr><th>cost</th><td>${{ '%.2f' % st.cost.total_usd }} over {{ st.cost.instances | length }} instances</td></tr>{% endif %}
{% if st.dataset %}<tr><th>dataset</th><td><code>{{ st.dataset.key }}</code> {{ st.dataset.rows }} rows in {{ st.dataset.shards }} parts</td></tr>{% endif %}
</tbody></table>
{% if m.dead %}<h3>Dead letters</h3><table class="dead-letters"><thead><tr><th>item</th><th>#</th><th>error</th><th>shard</th><th>worker</th></tr></thead><tbody>
{% for d in m.dead %}<tr class="dead-letter"><td><code>{{ d['item'] }}</code></td><td>{{ d['index'] }}</td><td class="bad">{{ d['reason'] or d['error'] }}</td><td>{{ d.shard }}</td><td>{{ d.worker }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
<h3>Workers</h3>
<table class="fleet-workers"><thead><tr><th>worker</th><th>backend</th><th>GPU</th><th>state</th><th>shard</th><th>for</th><th>items done</th><th>items/min (5 min)</th><th>failures</th><th>last error</th><th>$/h</th></tr></thead><tbody>
{% for w in st.workers %}<tr class="worker worker-{{ w.state }}"><td>{{ w.worker }}</td><td>{{ w.backend }}</td><td>{{ w.gpu or '-' }}</td>
<td class="state {{ 'good' if w.state in ('alive', 'draining') else ('stale' if w.state == 'stale' else '') }}">{{ w.state }}</td>
<td>{% if w.current_shard %}{% if w.state != 'alive' %}<small>was on</small> {% endif %}{{ w.current_shard }}{% else %}-{% endif %}</td><td>{{ duration(w.for_s) if w.current_shard and w.state == 'alive' else '-' }}</td><td>{{ w.items_done }}</td>
<td>{% if w.per_min %}{{ '%.1f' % w.per_min[0] }}{% if w.per_min[1] == 'recent' %} <small>(recent)</small>{% endif %}{% else %}-{% endif %}</td>
<td>{{ w.items_failed + w.dead_lettered }}</td><td{% if w.last_error %} class="bad" title="{{ w.last_error }}"{% endif %}>{{ (w.last_error or '-') | truncate(120) }}</td>
<td>{{ '%.3f' % w.price_per_hour if w.price_per_hour is not none else '-' }}</td></tr>
{% else %}<tr><td colspan="11">no worker has beaten yet</td></tr>{% endfor %}
</tbody></table>
{{ chart or '' }}
<h3>Shards</h3>
<div class="strip" title="the plan's {{ st.items_total }} items, in order">{% for s in m.strip.segments %}<span class="s-{{ s.state }}" style="width:{{ '%.3f' % s.percent }}%" title="{{ s.state }}: items {{ s.lo }}-{{ s.hi }}"></span>{% endfor %}</div>
<p class="legend">{% for state in ('done', 'leased', 'expired', 'free') %}<span class="s-{{ state }}"></span>{{ state }} <b class="n-{{ state }}">{{ m.strip.shards[state] }}</b> shards ({{ m.strip['items'][state] }} items){% endfor %}
{% if m.strip.binned %}<br><small>{{ m.strip.segments | length }} segments: the plan cut into equal bins, each showing the state most of its items are in</small>{% endif %}</p>
{% endif %}</section>"""

TEMPLATE = pages.ENV.from_string(FLEET)
