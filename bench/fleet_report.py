"""bench/fleet.py's figures: medians per side, the ratios the issue sets goals for, the projection to real stores
(S3's published per-prefix rates, a stated per-request latency, list prices from events/pricing.py), and the
markdown report, so the JSON and the README tables come from one place."""

from __future__ import annotations

from typing import Any

from fleet_common import median

SIDES = ("postgres", "folder", "moto")
HTTP_OPS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")
WRITES, READS = ("PUT", "POST", "DELETE"), ("GET", "HEAD", "LIST")  # S3's per-prefix classes (a LIST is a GET)
CLASS_A, CLASS_B = ("PUT", "POST", "LIST"), ("GET", "HEAD")  # priced classes; DELETE is free on both stores
S3_PREFIX_RATE = {"write": 3_500, "read": 5_500}  # requests/s per partitioned prefix, AWS's published figures
# Requests a shard's worker makes one after another: its lease, its part and its done marker (heartbeats,
# ledgers, progress run beside the work, not in its way).
SERIES = ("lease claim", "lease renew", "lease release", "lease read", "lease put", "part", "done marker")
PRICED_ITEMS = 507_387


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": runs, "n": len(ok), "failed": len(runs) - len(ok)}
    if not ok:
        return out
    out["median_items_per_s"] = round(median([r["items_per_s"] for r in ok]), 1)
    out["median_wall_s"] = round(median([r["wall_s"] for r in ok]), 3)
    tails = [r["tail_s"] for r in ok if r.get("tail_s") is not None]
    if tails:
        out["median_tail_s"] = round(median(tails), 2)
        out["max_tail_s"] = max(tails)
    if all(r.get("requests") for r in ok):
        per = lambda f: {k: round(median([f(r).get(k, 0) / r["items"] for r in ok]), 4)  # noqa: E731
                         for k in sorted({k for r in ok for k in f(r)})}
        out["median_requests_per_item"] = per(lambda r: {k: v for k, v in r["requests"].items()
                                                         if k in HTTP_OPS or k == "total"})
        out["median_requests_per_item_by_operation"] = per(lambda r: r["requests"]["by_operation"])
        out["median_requests_per_item_by_operation_http"] = per(lambda r: r["requests"]["by_operation_http"])
    return out


def projection(rpi: dict[str, float], by_area: dict[str, float], args: dict[str, Any]) -> dict[str, Any]:
    """What a real store would allow at these requests per item: S3's per-prefix rates (every key of a job under
    one prefix, unpartitioned: the worst case), the workers' own ceiling at a stated latency per request made in
    series, and the list-price dollars for 507,387 items."""
    from bucketrun.events.pricing import TABLE

    w = sum(rpi.get(op, 0) for op in WRITES)
    r = sum(rpi.get(op, 0) for op in READS)
    s3 = min(S3_PREFIX_RATE["write"] / w if w else float("inf"), S3_PREFIX_RATE["read"] / r if r else float("inf"))
    series = sum(v for k, v in by_area.items() if k in SERIES) * args["shard_size"]
    every = rpi.get("total", 0) * args["shard_size"]
    lat = args["latency_ms"] / 1000
    per_worker = lambda n: args["workers"] * args["shard_size"] / (n * lat) if n else None  # noqa: E731
    a = sum(rpi.get(op, 0) for op in CLASS_A) * PRICED_ITEMS
    b = sum(rpi.get(op, 0) for op in CLASS_B) * PRICED_ITEMS
    return {"writes_per_item": round(w, 4), "reads_per_item": round(r, 4),
            "s3_prefix_items_per_s": round(s3), "series_requests_per_shard": round(series, 2),
            "all_requests_per_shard": round(every, 2), "latency_ms": args["latency_ms"],
            "workers_items_per_s_series": round(per_worker(series)) if series else None,
            "workers_items_per_s_all_in_series": round(per_worker(every)) if every else None,
            "class_a_per_priced_run": round(a), "class_b_per_priced_run": round(b),
            "usd_per_priced_run": {k: round(p.usd(a, b), 4) for k, p in TABLE.items()},
            "priced_items": PRICED_ITEMS, "prices": {k: p.to_json() for k, p in TABLE.items()}}


def derive(res: dict[str, Any]) -> None:
    """The ratios and projections of every size, into res (per size, and res['scale'])."""
    args, ceiling = res["args"], (res.get("moto_ceiling") or {}).get("requests_per_s")
    for size, e in res["sizes"].items():
        rate = {s: (e.get(s) or {}).get("median_items_per_s") for s in SIDES}
        if rate["folder"] and rate["postgres"]:
            e["ratio_folder_over_postgres"] = round(rate["folder"] / rate["postgres"], 4)
        if rate["moto"] and rate["postgres"]:
            e["ratio_moto_over_postgres"] = round(rate["moto"] / rate["postgres"], 4)
        m = e.get("moto") or {}
        rpi = m.get("median_requests_per_item")
        if rpi and rpi.get("total"):
            if ceiling:  # items/s over what moto's plain PUT/GET rate would allow at these requests per item
                e["moto_ceiling_fraction"] = round(rate["moto"] * rpi["total"] / ceiling, 4)
            e["projection"] = projection(rpi, m.get("median_requests_per_item_by_operation") or {}, args)
    sizes = sorted(int(s) for s in res["sizes"])
    big, ref = max(sizes), 20_000
    sc: dict[str, Any] = {"big": big, "ref": ref, "goal": 0.8}
    if ref in sizes and big > ref:
        for s in SIDES:
            b = (res["sizes"][str(big)].get(s) or {}).get("median_items_per_s")
            r = (res["sizes"][str(ref)].get(s) or {}).get("median_items_per_s")
            if b and r:
                sc[f"{s}_ratio"] = round(b / r, 4)
    res["scale"] = sc


def _sum_refused(runs: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in runs:
        for k, v in ((r.get("requests") or {}).get("refused") or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def _f(x: Any, fmt: str = ",.0f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _goal(ok: bool | None) -> str:
    return "" if ok is None else (" met" if ok else " NOT met")


def report(res: dict[str, Any], where: str) -> str:  # noqa: C901 - one table after another
    a, sizes = res["args"], res["sizes"]
    lease2 = 2 * a["lease_s"]
    d = res.get("durability") or {}
    L = ["", f"## fleet bench, {res['at']}", "",
         f"{a['workers']} workers over {a['procs']} processes, shards/batches of {a['shard_size']}, no-op items; "
         f"lease_s {a['lease_s']:g}, heartbeat_s {a['heartbeat_s']:g}; sides: {', '.join(a['sides'])}. "
         f"Medians of {a['repeat']} at the small sizes; one run from {a['kill_min_size']:,} items, with a kill -9 "
         f"of {a['kill_procs']} of the {a['procs']} worker processes at {a['kill_at']:.0%} and a restart under the "
         "same worker ids. Every bucketrun dataset verified row by row; every Postgres result checked.", "",
         f"Durability: **{d.get('summary', '?')}**. postgres: {d.get('postgres', '-')}; folder: "
         f"{d.get('folder', '-')}; moto: {d.get('moto', '-')}.", ""]
    if res.get("postgres_version"):
        L += [f"Postgres: {res['postgres_version']}, partial indexes: {'yes' if a['pg_index'] == 'partial' else 'no'}."
              , ""]
    L += ["| items | Postgres items/s | folder items/s | moto items/s | folder ÷ Postgres | moto req/item "
          "| moto ceiling fraction | 99%→succeeded folder / moto (s) |",
          "|---|---|---|---|---|---|---|---|"]
    for size, e in sizes.items():
        n = int(size)

        def cell(s: str) -> str:
            x = e.get(s)
            if not x:
                return "-"
            if not x.get("median_items_per_s"):
                return "FAILED"
            return _f(x["median_items_per_s"]) + (f" ({x['failed']} failed)" if x["failed"] else "")
        fp = e.get("ratio_folder_over_postgres")
        goal_fp = _goal(fp >= 1.0) if fp is not None and n >= 20_000 else ""
        rq = ((e.get("moto") or {}).get("median_requests_per_item") or {}).get("total")
        cf = e.get("moto_ceiling_fraction")
        tails = " / ".join(_f((e.get(s) or {}).get("max_tail_s"), ".1f") for s in ("folder", "moto"))
        worst = max([(e.get(s) or {}).get("max_tail_s") or 0 for s in ("folder", "moto")])
        kill = ", kill -9" if any(r.get("kill") for s in SIDES for r in (e.get(s) or {}).get("runs", [])) else ""
        L.append(f"| {n:,}{kill} | {cell('postgres')} | {cell('folder')} | {cell('moto')} | "
                 f"{_f(fp, '.3f')}{goal_fp} | {_f(rq, '.3f')} | {_f(cf, '.2f')}{_goal(cf >= 0.8) if cf else ''} | "
                 f"{tails}{_goal(worst <= lease2) if worst else ''} |")
    L += ["", f"Goals: folder ÷ Postgres ≥ 1.0 at 20,000 and 507,387; moto ceiling fraction (items/s ÷ (moto's "
               f"plain PUT+GET requests/s ÷ requests per item)) ≥ 0.8; 99%→`succeeded` ≤ 2 × lease_s = {lease2:g} s "
               "(worst run shown)."]
    sc = res.get("scale") or {}
    if any(k.endswith("_ratio") for k in sc):
        L += ["", f"Scale, items/s at {sc['big']:,} ÷ at {sc['ref']:,} (goal ≥ {sc['goal']}): " + "; ".join(
            f"{s} {sc[s + '_ratio']:.3f}{_goal(sc[s + '_ratio'] >= sc['goal']) if s != 'postgres' else ''}"
            for s in SIDES if s + "_ratio" in sc)]
    mc = res.get("moto_ceiling")
    if mc:
        L += ["", f"moto's ceiling in this run: {mc['requests_per_s']:,.0f} requests/s of small PUT+GET from "
                  f"{mc['tasks']} tasks over {mc['procs']} processes ({mc['seconds']:g} s)."]
    # requests per item, by operation
    moto_sizes = [(s, e["moto"]) for s, e in sizes.items() if (e.get("moto") or {}).get("median_requests_per_item")]
    if moto_sizes:
        hdr = " | ".join(f"{int(s):,}" for s, _ in moto_sizes)
        L += ["", "moto: S3 requests per item, by bucketrun operation (the bench's own reads not counted)", "",
              f"| operation | {hdr} |", "|---" * (len(moto_sizes) + 1) + "|"]
        areas = sorted({k for _, m in moto_sizes for k in m["median_requests_per_item_by_operation"]},
                       key=lambda k: -max(m["median_requests_per_item_by_operation"].get(k, 0) for _, m in moto_sizes))
        for k in areas:
            L.append(f"| {k} | " + " | ".join(_f(m["median_requests_per_item_by_operation"].get(k), ".4f", "0")
                                              for _, m in moto_sizes) + " |")
        L.append("| **total** | " + " | ".join(f"**{m['median_requests_per_item']['total']:.4f}**"
                                              for _, m in moto_sizes) + " |")
        refused = {s: sum(n for r in m["runs"] if "requests" in r for n in r["requests"]["refused"].values())
                   for s, m in moto_sizes}
        L += ["", "Refused answers (412 lost create/replace, 404 missing key), in all runs: " + "; ".join(
            f"{int(s):,}: {refused[s]:,}" + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(
                _sum_refused(m["runs"]).items(), key=lambda kv: -kv[1])[:6]) + ")" if refused[s] else "")
            for s, m in moto_sizes)]
        L += ["", "by HTTP op:", "", f"| HTTP op | {hdr} |", "|---" * (len(moto_sizes) + 1) + "|"]
        for op in HTTP_OPS:
            if any(m["median_requests_per_item"].get(op) for _, m in moto_sizes):
                L.append(f"| {op} | " + " | ".join(_f(m["median_requests_per_item"].get(op), ".4f", "0")
                                                   for _, m in moto_sizes) + " |")
    proj = [(s, e["projection"]) for s, e in sizes.items() if e.get("projection")]
    if proj:
        p0 = proj[0][1]
        L += ["", f"Projection to real stores from the measured requests per item (assumed {p0['latency_ms']:g} ms "
                  "per request, made one after another within a shard; S3: 3,500 PUT/COPY/POST/DELETE and 5,500 "
                  "GET/HEAD requests/s per partitioned prefix, every key of a job under one prefix (worst case, "
                  "LIST counted as a GET); R2's limits page publishes no per-prefix or per-bucket object request "
                  "rate, only at most 1 write/s to one key (a lease, a heartbeat, progress.json are each written "
                  "far less often), so this table's R2 cap is the workers' latency alone; "
                  f"dollars at list prices from events/pricing.py, for {p0['priced_items']:,} items):", "",
              "| at items | writes/item | reads/item | S3 prefix cap items/s | requests/shard in series (all) | "
              f"{a['workers']} workers' cap items/s, series (all) | class A / B per {p0['priced_items']:,} | "
              + " | ".join(f"$ {v['name']}" for v in p0["prices"].values()) + " |",
              "|---" * (7 + len(p0["prices"])) + "|"]
        for s, p in proj:
            L.append(f"| {int(s):,} | {p['writes_per_item']:.4f} | {p['reads_per_item']:.4f} | "
                     f"{_f(p['s3_prefix_items_per_s'])} | {p['series_requests_per_shard']:.1f} "
                     f"({p['all_requests_per_shard']:.1f}) | {_f(p['workers_items_per_s_series'])} "
                     f"({_f(p['workers_items_per_s_all_in_series'])}) | "
                     f"{p['class_a_per_priced_run']:,} / {p['class_b_per_priced_run']:,} | "
                     + " | ".join(f"{v:.2f}" for v in p["usd_per_priced_run"].values()) + " |")
    for size, e in sizes.items():
        for side in SIDES:
            for r in (e.get(side) or {}).get("runs", []):
                if r.get("kill"):
                    k = r["kill"]
                    L.append(f"- {side} {int(size):,}: kill -9 of {k['processes_killed']} of {k['processes']} "
                             f"processes ({k['workers_killed']} workers) at {k['at_fraction']:.0%}, {k['at_s']:.0f} s"
                             " in; restarted with the same worker ids" + ("" if "error" in r else "; finished, checked"))
                if r.get("tail") and r["tail"].get("takeovers_after_99"):
                    t = r["tail"]
                    L.append(f"- {side} {int(size):,}: {t['markers_after_99']} shards committed after 99%, "
                             f"{t['takeovers_after_99']} of them take-overs; last marker {t['last_marker_s']} s, "
                             f"dataset {t['dataset_s']} s after 99%")
                if "error" in r:
                    L.append(f"- {side} {int(size):,}: FAILED: {r['error'][:300]}")
                    dg = r.get("diagnosis") or {}
                    if dg.get("objects"):
                        L.append(f"  left in the bucket: {dg['objects']}; job {dg.get('job_state')}, "
                                 f"workers {dg.get('worker_states')}")
    L += [f"- note: {n}" for n in res.get("notes", [])]
    L += ["", f"runtime {res.get('runtime_s', 0):.0f} s on {res['machine']['cpus']} cores; results in {where}"]
    return "\n".join(L)
