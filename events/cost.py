"""What a job cost: its object-store requests (as its writers recorded them in its history) priced at list prices,
and its GPU time (each instance's $/h times the time it was held). A pure function of objects a status reader has
already read, so showing the cost costs no request; `status`, `status --json`, the dashboard and the report call
`cost_of`. What is and is not counted: docs/cost.md.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from . import codec
from .fleet.instances import read_instances
from .lifecycle import JobView
from .meter import CLASSES
from .pricing import Prices
from .pricing import prices as prices_from_env

NOT_RECORDED = "not recorded"


def recorded_requests(view: JobView) -> dict[str, Any]:
    """The sum of every transition's `requests` (each writer's counts since its last transition), by class and by
    writer role, plus a fleet's `ledger_requests` (its worker processes' counts, summed by the finalizer)."""
    total = dict.fromkeys(CLASSES, 0)
    by: dict[str, dict[str, int]] = {}
    for t in view.history:
        for field, role in (("requests", None), ("ledger_requests", "fleet workers")):
            rec = t.detail.get(field)
            if not isinstance(rec, dict):
                continue
            who = role or str(rec.get("by") or t.writer.split("@", 1)[0])
            row = by.setdefault(who, dict.fromkeys(CLASSES, 0))
            for c in CLASSES:
                n = int(rec.get(c) or 0)
                total[c] += n
                row[c] += n
    return {**total, "total": total["a"] + total["b"], "by": by}


def items_of(view: JobView) -> int | None:
    """A fleet's item count, from its terminal transition's dataset summary."""
    for t in reversed(view.history):
        dataset = t.detail.get("dataset")
        if isinstance(dataset, dict) and dataset.get("items_total"):
            return int(dataset["items_total"])
    return None


def gpu_cost(instances: list[dict[str, Any]] | None, now: datetime) -> dict[str, Any]:
    """Each instance's $/h times the time held: launch to teardown, or to `now` while still held. Takes instance
    records (jobs/<id>/fleet/instances/) or the rows of a fleet's cost.json. An instance without a price (a host
    agent, a Runpod serverless worker) makes the total "not recorded" rather than a made-up zero."""
    if not instances:
        return {"usd": None, "instances": 0, "hours": 0.0, "held": 0, "unpriced": 0, "note": NOT_RECORDED}
    usd, hours_total, held, unpriced = 0.0, 0.0, 0, 0
    for inst in instances:
        if inst.get("started_at"):
            end = codec.parse_iso(inst["terminated_at"]) if inst.get("terminated_at") else now
            hours = max(0.0, (end - codec.parse_iso(inst["started_at"])).total_seconds() / 3600)
            running = not inst.get("terminated_at")
        else:  # a cost.json row: its hours were computed when it was written
            hours, running = float(inst.get("hours") or 0.0), bool(inst.get("running"))
        held += running
        hours_total += hours
        price = inst.get("price_per_hour")
        if price is None:
            unpriced += 1
        else:
            usd += float(price) * hours
    note = None if not unpriced else f"{unpriced} instance(s) with no price recorded"
    return {"usd": round(usd, 6) if unpriced < len(instances) else None, "instances": len(instances),
            "hours": round(hours_total, 4), "held": held, "unpriced": unpriced, "note": note}


def cost_of(view: JobView, instances: list[dict[str, Any]] | None = None, *, prices: Prices | None = None,
            now: datetime | None = None) -> dict[str, Any]:
    """The cost of a job from its history (`view`) and its launchers' instance records (`instances`, None when the
    kind rents none). `prices` defaults to BUCKETRUN_PRICING's entry (ConfigError on a bad value)."""
    p = prices or prices_from_env()
    req = recorded_requests(view)
    items = items_of(view)
    per_item = None
    if items:
        per_item = {c: round(req[c] / items, 6) for c in ("a", "b", "d", "total")}
    requests_usd = p.usd(req["a"], req["b"])
    gpu = gpu_cost(instances, now or codec.now())
    total = requests_usd + (gpu["usd"] or 0.0)
    return {"requests": req, "items": items, "per_item": per_item, "pricing": p.to_json(),
            "requests_usd": round(requests_usd, 9), "gpu": gpu, "total_usd": round(total, 6)}


def job_cost(bucket, view: JobView) -> dict[str, Any]:
    """`cost_of` for a job: its history's requests; a fleet's GPU time from its launcher's instance records (the
    only reads this adds, and only for a fleet)."""
    kind = view.history[0].detail.get("kind") if view.history else None
    return cost_of(view, read_instances(bucket, view.job_id) if kind == "fleet" else None)


def usd(x: float | None) -> str:
    """Dollars to a width that shows a request's worth ($0.0000045) and a GPU's ($1.23) alike."""
    if x is None:
        return NOT_RECORDED
    if x == 0 or x >= 0.01:
        return f"${x:.2f}"
    return f"${x:.{2 - math.floor(math.log10(x))}f}".rstrip("0")  # three significant figures, no exponent


def cost_line(cost: dict[str, Any]) -> str:
    """One line for `bucketrun status`: requests by class, their price, and the GPU's."""
    r, g = cost["requests"], cost["gpu"]
    line = f"requests {r['total']} (A {r['a']}, B {r['b']}"
    line += f", {r['d']} free delete{'s' if r['d'] != 1 else ''})" if r["d"] else ")"
    if cost["per_item"]:
        line += f", {cost['per_item']['total']:.3f}/item over {cost['items']:,} items"
    line += f" ≈ {usd(cost['requests_usd'])} at {cost['pricing']['name']} list prices; GPU "
    if g["usd"] is None:
        line += NOT_RECORDED + (f" ({g['instances']} instances)" if g["instances"] else "")
    else:
        line += f"{usd(g['usd'])} ({g['instances']} instance{'s' if g['instances'] != 1 else ''}"
        line += f", {g['held']} still held)" if g["held"] else ")"
    return line
