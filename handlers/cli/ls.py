"""`bucketrun ls`: every job with its kind, state and where it came from, jobs still waiting in the inbox
included; filtered by state, kind and age (ids begin with their UTC time, so `--since` costs no read)."""

from __future__ import annotations

import json
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import CorruptObject
from bucketrun.events.lifecycle import JobState, list_job_ids, read_view
from bucketrun.events.status import WAITING

from ..board import kind_of, source_of, waiting_rows
from .common import bucket_of, number
from .maintenance import age


def cmd_ls(args) -> int:
    bucket = bucket_of(args)
    since = codec.now() - args.since if args.since else None
    ids = list_job_ids(bucket)
    untaken: set[str] = set()
    rows: list[dict[str, Any]] = []
    for job_id in ids:
        if since is not None and keys.job_time(job_id) < since:
            continue
        try:
            view = read_view(bucket, job_id)
        except CorruptObject as exc:  # one bad object must not hide every other job
            rows.append({"job_id": job_id, "state": "corrupt", "kind": "-", "attempt": 0, "updated_at": "-",
                         "source": "-", "error": str(exc)})
            continue
        if view.state is None:  # named (a request_id's claim writes intake.json) but not yet taken in
            untaken.add(job_id)
            continue
        rows.append({"job_id": job_id, "state": view.state.value, "kind": kind_of(bucket, view),
                     "attempt": view.attempt, "updated_at": view.latest.at, "source": source_of(view)})
    if args.state in (None, WAITING):
        rows += [r for r in waiting_rows(bucket, set(ids) - untaken)
                 if since is None or r["updated_at"] == "-" or codec.parse_iso(r["updated_at"]) >= since]
    rows = [r for r in rows if (args.state is None or r["state"] == args.state)
            and (args.kind is None or r["kind"] == args.kind)]
    rows.sort(key=lambda r: keys.job_time(r["job_id"]) if r["job_id"] else codec.parse_iso(r["updated_at"]))
    if args.limit is not None:
        rows = rows[-args.limit:] if args.limit > 0 else []
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    for r in rows:
        extra = f"  {r['error']}" if r.get("error") else ""
        print(f"{r['job_id'] or '(not yet named)':<26}  {r['state']:<10} {r['kind']:<12} attempt {r['attempt']}  "
              f"{r['updated_at']}  {r['source']}{extra}", flush=True)
    return 0


def register(add) -> None:
    p = add("ls", cmd_ls, "list jobs, oldest first: kind, state, attempt, where each came from (and the waiting)")
    p.add_argument("--state", choices=[s.value for s in JobState] + [WAITING])
    p.add_argument("--kind", help="only jobs of this kind (transcribe, fleet, train_window)")
    p.add_argument("--limit", type=number(int, 1, 10**9, "a number of jobs"), default=None, metavar="N", help="only the newest N")
    p.add_argument("--since", type=age, default=None, metavar="AGE", help="only jobs submitted within AGE: 2h, 7d")
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")
