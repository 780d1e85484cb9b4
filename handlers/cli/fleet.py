"""`bucketrun fleet status JOB`: each worker and the totals, read from the bucket alone (--json for scripts)."""

from __future__ import annotations

import json
import sys

from bucketrun.events.fleet.status import fleet_status
from bucketrun.events.kinds.validate import load_job_manifest

from .common import CliError, bucket_of


def age_text(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def wall_text(s: float) -> str:
    """A wall time: 42.3s, 11m 30s, 2h 05m."""
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def rate_text(st) -> str:
    """The live rate while the fleet runs; once it has ended, its average over the wall time."""
    rate = st["items_per_s"] if st["items_per_s"] is not None else "-"
    if st.get("rate") != "average":
        return f"  {rate} items/s"
    if st.get("wall_s") is None:
        return "  never ran"
    return f"  {rate} items/s avg  wall {wall_text(st['wall_s'])}"


def cmd_fleet(args) -> int:
    bucket = bucket_of(args)
    if load_job_manifest(bucket, args.job).kind != "fleet":
        raise CliError(f"job {args.job} is not a fleet")
    st = fleet_status(bucket, args.job)
    if args.json:
        print(json.dumps(st, sort_keys=True))
        return 0
    total = st["items_total"]
    head = (f"{st['job_id']}  {st['state']}  {st['items_done']}/{total if total is not None else '?'} items"
            f"  failed {st['items_failed']}  dead-lettered {st['dead_lettered']}" + rate_text(st))
    if st["eta_s"]:
        head += f"  ETA {age_text(st['eta_s'])}"
    print(head)
    stopping = f" ({st['workers_stopping']} stopping)" if st.get("workers_stopping") else ""
    print(f"workers: {st['workers_alive']} alive of {len(st['workers'])}{stopping}; shards {st['shards_done']} done"
          f" of {st['shards_planned'] if st['shards_planned'] is not None else '?'} planned")
    for w in st["workers"]:
        rate = f"{w['items_per_s']:.1f}/s" if w["items_per_s"] is not None else "-"
        print(f"  {w['worker'] or '-':<14} {w['state']:<8} beat {age_text(w['heartbeat_age_s']):>5} ago  "
              f"shard {w['current_shard'] or '-':<19} {rate:>9}  done {w['items_done']}")
    if st["cost"]:
        print(f"cost: ${st['cost']['total_usd']:.2f} over {len(st['cost']['instances'])} instances")
    r = st.get("requests")
    if r and r["total"]:
        per = f", {r['per_item']:.3f}/item" if r["per_item"] is not None and st["state"] == "succeeded" else ""
        print(f"requests: {r['total']} recorded (A {r['a']}, B {r['b']}){per}"
              f"{'' if st['state'] == 'succeeded' else ' so far (the workers report theirs at the end)'}")
    if st["dataset"]:
        d = st["dataset"]
        print(f"dataset: {d['key']}  {d['rows']} rows in {d['shards']} parts, {d['bytes']} bytes")
    sys.stdout.flush()
    return 0


def register(add) -> None:
    p = add("fleet", cmd_fleet, "a fleet's workers, progress, ETA and cost")
    p.add_argument("action", choices=["status"])
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts and n8n")
