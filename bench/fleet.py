"""Benchmark the fleet kind (many workers claiming shards of items through S3 leases) against the seed design's
queue: Postgres with a `FOR UPDATE SKIP LOCKED` claim query and a worker table with heartbeats.

Both sides run the same work on the same machine in the same run: N no-op items, shards (claim batches) of 50,
`--workers` workers (default 100) as asyncio tasks spread over `--procs` OS processes (default 4).

bucketrun: moto's S3 server on 127.0.0.1 in this process, every request counted at the server (bench/cloud_path.py's
counter); one fresh bucket per run; the items as a JSONL file in the bucket (`items: {file: bench/items-N.jsonl}`),
processor `noop` (sleep_s 0); `harness.start_job` takes the job to `launched`, then the worker processes
(`harness.worker_cmd`) start. items/s = items / (the job's `succeeded` transition time - workers start). Requests
per item = requests the server served from workers start until every worker process exited, by operation; the
setup (submit, plan) and the bench's own wait/verify reads are reported apart. Progress is judged by counting
`jobs/<id>/fleet/done/` keys in moto's in-process store (no HTTP, so nothing the bench does is counted).
Every run's dataset is then checked row by row with `harness.verify`.

Postgres (the baseline): Debian's postgresql 15 binaries, a throwaway cluster (initdb in a temp dir, 127.0.0.1 on a
free port, the socket in the temp dir), tables
    items(id bigserial primary key, item text, status text default 'pending', worker text, claimed_at timestamptz,
          done_at timestamptz, attempts int default 0)
          + partial indexes: on id WHERE status = 'pending' (the claim), on worker WHERE status = 'claimed'
    workers(id text primary key, heartbeat_at timestamptz, items_done bigint)
    results(item_id bigint, length bigint)
and the same worker count over the same number of processes (psycopg 3, one connection per worker), each looping:
claim 50 with UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING; no-op; in one transaction
mark them done (fenced on worker and status, so a reaped zombie's commit rolls back) and insert the results as
one multi-row insert; heartbeat its workers row every 5 s. With nothing pending, a worker re-queues the claims of
workers whose heartbeat is older than lease_s and leaves once nothing is claimed; a restarted worker re-queues
its own earlier claims. items/s = items / (max(done_at) - workers start). Checked afterwards: every item done,
exactly one result row per item, with the right length.

The largest size (507,387 by default) also kills (`kill -9`) `--kill-procs` of the worker processes once
`--kill-at` of the work is done and restarts them with the same worker ids, on both sides; its items/s is
compared with the 20,000 figure (goal >= 0.8). Small sizes are repeated (`--repeat`, medians), bucketrun and
Postgres interleaved.

Caveats: moto is an in-memory emulator sharing this machine's 2 cores (and this process's GIL) with the workers:
on this 2-core machine it serves 100-200 requests/s of small PUT/GET (measured at the start of each run, `moto
ceiling`, `--calibrate-s`), far below one S3 prefix, and it filters every key of the bucket and renders every
listed key on each LIST (its generic serializer: ~200 ms of its one core for a LIST returning 400 keys, against
~5-10 ms for a HEAD), so its rate falls as the run's leases and done markers pile up, which S3's does not.
bucketrun's items/s here is therefore a floor set by the emulator; the requests per item are the portable
figure. Two moto changes that do not alter what it serves: its conditional PUT is made atomic (as S3's is and
as tests/conftest.py does), or two racers could both win a create-if-absent lease; and the list of its own
modules, which it re-reads from disk under a lock on every request to route by Host, is cached. Postgres runs
with synchronous_commit=off by default (moto keeps nothing on disk either; `--pg-durable` for the default),
which makes the baseline faster, not slower.

A run that makes no progress for `--stall-s` (default 180 s: several lease periods) is given up: the bench
records what the bucket holds (objects per folder, the job's state, role leases, heartbeats, the request rate
while stalled), stops the workers, skips that side's remaining runs and reports the rest.

Run:  .venv/bin/python bench/fleet.py --quick                 # 2,000 and 20,000 items
      .venv/bin/python bench/fleet.py                         # + 507,387 with a kill -9; prints its estimate
      .venv/bin/python bench/fleet.py --sizes 20000 --only postgres
Writes every figure as JSON to bench/results/fleet.json (or --out), after each size and at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from cloud_path import S3Counter, start_counted_moto  # the same counted server as the other benches

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fleet.json"
DEFAULT_SIZES = (2_000, 20_000, 507_387)
QUICK_SIZES = (2_000, 20_000)
OPS = ("GET", "PUT", "LIST", "HEAD", "DELETE", "POST")
# Rough rates (items/s) and fixed costs per run (s: process start, registration, finalizing) measured on the
# 2-core dev machine, for the up-front estimate only.
EST_RATE = {"bucketrun": 150.0, "postgres": 8_000.0}
EST_FIXED_S = {"bucketrun": 40.0, "postgres": 3.0}


from fleet_common import Monitor, RunFailed, item_name, kill_group, log, median, split, worker_ids  # noqa: E402
from fleet_pg import APT_CMD, PgCluster, pg_binaries, pg_run, pg_worker_main  # noqa: E402


def make_atomic_conditional_puts() -> None:
    """moto checks If-None-Match/If-Match and then writes, unlocked; S3 does both in one step. Serialise moto's
    PUT handler (it runs in this process), as tests/conftest.py does, so racing leases behave as on S3."""
    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "_bench_atomic", False):
        return
    lock, put_object = threading.Lock(), S3Response.put_object

    def atomic_put_object(self, *a, **kw):
        with lock:
            return put_object(self, *a, **kw)

    atomic_put_object._bench_atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = atomic_put_object


def cache_moto_module_list() -> None:
    """moto's server lists and stats its own package directory twice per request, under its dispatch lock, to
    route by Host; the list never changes while it runs. Cached, the same requests are served the same way,
    with less of the server's one GIL spent on it."""
    import moto.backends as mb

    if not getattr(mb.list_of_moto_modules, "_bench_cached", False):
        modules = tuple(mb.list_of_moto_modules())
        cached = lambda: modules  # noqa: E731
        cached._bench_cached = True  # type: ignore[attr-defined]
        mb.list_of_moto_modules = cached


class Moto:
    def __init__(self):
        cache_moto_module_list()
        self.server, counter = start_counted_moto()
        self.counter: S3Counter = counter
        make_atomic_conditional_puts()
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        self.store = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        import boto3

        self.s3 = boto3.client("s3")

    def count_prefix(self, bucket: str, prefix: str) -> int:
        """Keys under a prefix, read from moto's store in this process: no request, nothing counted."""
        keys_ = list(dict.keys(self.store.buckets[bucket].keys))  # one C-level copy, safe while threads write
        return sum(1 for k in keys_ if k.startswith(prefix))

    def tail_timeline(self, bucket: str, job_id: str, t99_wall: float | None, t_succ_wall: float) -> dict[str, Any]:
        """Where the tail went, read from moto's store (no request): done markers written after 99% (how many,
        when the last came, how many were take-overs), and the dataset manifest, in seconds after 99%."""
        if t99_wall is None:
            return {}
        b = self.store.buckets[bucket]
        prefix = f"jobs/{job_id}/fleet/done/"
        after, taken = [], []
        for k in [k for k in dict.keys(b.keys) if k.startswith(prefix)]:
            fk = b.keys[k]
            t = fk.last_modified.timestamp()
            if t >= t99_wall:
                try:
                    gen = json.loads(fk.value).get("generation", 1)
                except Exception:  # noqa: BLE001 - a diagnosis must not fail
                    gen = None
                after.append((t - t99_wall, gen))
                if gen and gen > 1 and len(taken) < 8:  # a take-over in the tail: whose lease, since when
                    lease = b.keys.get(k.replace("/fleet/done/", "/fleet/leases/"))
                    try:
                        lb = json.loads(lease.value) if lease is not None else {}
                    except Exception:  # noqa: BLE001
                        lb = {}
                    acq = lb.get("acquired_at")
                    taken.append({"shard": k.rsplit("/", 1)[-1][:-5], "marker_s": round(t - t99_wall, 2),
                                  "holder": lb.get("holder"), "taken_from": lb.get("taken_from"),
                                  "deaths": lb.get("deaths"), "kills": lb.get("kills"),
                                  "acquired_s": round(datetime.fromisoformat(acq.replace("Z", "+00:00"))
                                                      .timestamp() - t99_wall, 2) if acq else None})
        after.sort()
        data = [k for k in dict.keys(b.keys) if k.endswith("/dataset.json")]  # one run per bucket
        data_t = [b.keys[k].last_modified.timestamp() - t99_wall for k in data]
        pick = lambda q: round(after[min(len(after) - 1, int(q * len(after)))][0], 2) if after else None  # noqa: E731
        return {"markers_after_99": len(after), "marker_s_p50": pick(0.5), "marker_s_p90": pick(0.9),
                "last_marker_s": round(after[-1][0], 2) if after else None,
                "takeovers_after_99": sum(1 for _, g in after if g and g > 1),
                "takeover_marker_s": [round(t, 2) for t, g in after if g and g > 1][:20], "takeovers": taken,
                "dataset_s": round(max(data_t), 2) if data_t else None,
                "succeeded_s": round(t_succ_wall - t99_wall, 2)}

    def diagnose(self, bucket: str, job_id: str, sample_s: float = 5.0) -> dict[str, Any]:
        """What a stuck fleet left in the bucket, read from moto's store (no request): objects per folder of the
        job, the job's newest state, the role leases, and the workers' heartbeat states."""
        import collections

        b = self.store.buckets[bucket]
        keys_ = sorted(dict.keys(b.keys))
        prefix = f"jobs/{job_id}/"
        folders = collections.Counter("/".join(k[len(prefix):].split("/")[:2]) if k.count("/") > 3
                                      else k[len(prefix):] for k in keys_ if k.startswith(prefix))

        def body(key: str) -> Any:
            try:
                return json.loads(b.keys[key].value)
            except Exception:  # noqa: BLE001 - a diagnosis must not fail
                return None

        events = [k for k in keys_ if k.startswith(f"{prefix}events/")]
        latest = body(events[-1]) if events else None
        roles = {k.rsplit("/", 1)[-1]: body(k) for k in keys_ if k.startswith(f"{prefix}fleet/roles/")}
        beats = [body(k) for k in keys_ if k.startswith(f"{prefix}fleet/heartbeats/")]
        states = collections.Counter((hb or {}).get("state") for hb in beats)
        holding = sum(len((hb or {}).get("holding") or []) for hb in beats)
        holders = {(v or {}).get("holder") for v in roles.values()}
        notable = {hb["worker"]: {k: hb.get(k) for k in ("state", "at", "current_shard", "holding", "last_error",
                                                          "shards_written", "claims_lost", "takeovers")}
                   for hb in beats if hb and (hb.get("worker") in holders or hb.get("last_error"))}
        stalled_rate, served = None, self.counter.take()  # the run's requests up to here
        if sample_s:  # the workers still run: what are they asking the store for?
            time.sleep(sample_s)
            stalled_rate = {op: round(n / sample_s, 1) for op, n in self.counter.take().items()}
        return {"objects": dict(folders), "job_state": (latest or {}).get("state"), "requests_until_now": served,
                "requests_per_s_while_stalled": stalled_rate, "role_holders_and_errors": notable,
                "progress": body(f"{prefix}progress.json"),
                "roles": {k: {f: v.get(f) for f in ("holder", "state", "renewed_at", "ttl_s")} if v else None
                          for k, v in roles.items()},
                "worker_states": dict(states), "leases_held_per_heartbeats": holding,
                "dataset_written": any(k.endswith("/dataset.json") for k in keys_ if k.startswith(prefix))}

    def drop_bucket(self, bucket: str) -> None:
        """Frees a finished run's objects (moto's heap only; no request)."""
        try:
            b = self.store.buckets.pop(bucket)
            b.keys.clear()
        except KeyError:
            pass

    def stop(self) -> None:
        self.server.stop()
        logging.getLogger("werkzeug").removeHandler(self.counter)


HARNESS_MODULES = (("local_sim/fleet_harness.py", "bucketrun.local_sim.fleet_harness"),)


MOTO_LOAD = r"""
import asyncio, sys, time
import aioboto3

async def main(bucket, prefix, tasks, seconds):
    done = 0
    async with aioboto3.Session().client("s3") as s3:
        deadline = time.monotonic() + seconds
        async def one(i):
            nonlocal done
            key = f"{prefix}/{i}"
            while time.monotonic() < deadline:
                await s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 300)
                await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
                done += 2
        await asyncio.gather(*(one(i) for i in range(tasks)))
    print(done)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


def moto_ceiling(moto: Moto, args: argparse.Namespace) -> dict[str, Any]:
    """Requests/s moto serves to the same layout (workers as tasks over procs) doing nothing but PUT+GET: the
    emulator's ceiling on this machine, against which the fleet's items/s x requests/item can be read."""
    name = f"bench-ceiling-{uuid.uuid4().hex[:6]}"
    moto.s3.create_bucket(Bucket=name)
    groups = split(worker_ids(args.workers), args.procs)
    log(f"moto ceiling: {args.workers} tasks over {len(groups)} processes, PUT+GET for {args.calibrate_s:g} s ...")
    moto.counter.take()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", MOTO_LOAD, name, f"p{i}", str(len(g)), str(args.calibrate_s)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) for i, g in enumerate(groups)]
    try:
        outs = [p.communicate(timeout=args.calibrate_s + 120)[0] for p in procs]
    finally:
        kill_group(procs)
    counted = moto.counter.take()
    served = sum(int(o.strip() or 0) for o in outs)
    res = {"tasks": args.workers, "procs": len(groups), "seconds": round(args.calibrate_s, 1),
           "wall_s": round(time.perf_counter() - t0, 2), "requests": counted,
           "requests_per_s": round(served / args.calibrate_s, 1)}
    log(f"moto ceiling: {res['requests_per_s']:,.0f} requests/s ({counted['total']:,} counted at the server)")
    moto.drop_bucket(name)
    return res


def harness_module() -> str | None:
    """The fleet harness (start_job, worker_cmd, wait_finished, verify), wherever this checkout keeps it."""
    return next((mod for path, mod in HARNESS_MODULES if (ROOT / path).exists()), None)


def harness():
    import importlib

    return importlib.import_module(harness_module())


def items_jsonl(size: int) -> bytes:
    return "".join(json.dumps(item_name(i)) + "\n" for i in range(size)).encode()


def fleet_manifest(args: argparse.Namespace, size: int, items_key: str) -> dict[str, Any]:
    return {"kind": "fleet", "items": {"file": items_key},
            "processor": {"name": "noop", "options": {"sleep_s": 0}},
            "shard_size": args.shard_size, "lease_s": args.lease_s, "heartbeat_s": args.heartbeat_s,
            "max_item_attempts": 3, "workers": {"count": args.workers, "backend": "local"}}


def ops_of(counts: dict[str, int]) -> dict[str, int]:
    return {op: n for op, n in counts.items() if op != "total"}


def bucketrun_run(moto: Moto, args: argparse.Namespace, size: int, rep: int, kill: bool) -> dict[str, Any]:
    from bucketrun.events import codec, keys
    from bucketrun.events.lifecycle import JobState, read_view
    from bucketrun.events.storage import open_bucket

    harness_ = harness()

    label = f"bucketrun {size:,} #{rep + 1}"
    name = f"bench-fleet-{size}-{rep}-{uuid.uuid4().hex[:6]}"
    url = f"s3://{name}"
    items_key = f"bench/items-{size}.jsonl"
    moto.s3.create_bucket(Bucket=name)
    moto.s3.put_object(Bucket=name, Key=items_key, Body=items_jsonl(size), ContentType="application/x-ndjson")
    moto.counter.take()
    job_id = harness_.start_job(url, fleet_manifest(args, size, items_key))
    setup = moto.counter.take()

    ids = worker_ids(args.workers)
    cmds = [list(harness_.worker_cmd(url, job_id, group)) for group in split(ids, args.procs)]
    done_prefix = keys.fleet_done_prefix(job_id)
    n_shards = math.ceil(size / args.shard_size)

    seen = {"t": time.perf_counter(), "n": 0}

    def progress() -> tuple[float, str]:
        n = moto.count_prefix(name, done_prefix)
        now, served = time.perf_counter(), sum(moto.counter.ops.values())  # since the last take(): this run's
        rate = (served - seen["n"]) / max(1e-3, now - seen["t"])
        if now - seen["t"] >= 2:
            seen.update(t=now, n=served)
        return min(1.0, n / n_shards), (f"{n:,}/{n_shards:,} shards done, moto serving {rate:,.0f} req/s "
                                        f"({threading.active_count()} threads)")

    logdir = Path(tempfile.mkdtemp(prefix="bucketrun-fleet-logs-"))
    mon = Monitor(label, size, progress, logdir, args.kill_at if kill else None, args.kill_procs,
                  timeout_s=args.timeout_s or max(900.0, size / 20), stall_s=args.stall_s)
    mon.diagnose = lambda: moto.diagnose(name, job_id)
    mon.tail_dump_s = 2 * args.lease_s  # still in the tail after 2 x lease_s: the workers log where they wait
    try:
        t0_wall, t_exit_wall = mon.run(cmds, env=dict(os.environ))
        fleet = moto.counter.take()
        finished = harness_.wait_finished(url, job_id, timeout_s=args.stall_s)
        t_finished_wall = time.time()
        waited = moto.counter.take()
        if finished.get("state") != "succeeded":
            raise RuntimeError(f"{label}: every worker exited, and the job is {finished.get('state')}: "
                               f"{json.dumps(finished.get('detail'), default=str)[:500]}")
        view = read_view(open_bucket(url), job_id)
        succ = next((t for t in reversed(view.history) if t.state is JobState.SUCCEEDED), None)
        t_succ_wall = codec.parse_iso(succ.at).timestamp() if succ else t_finished_wall
        moto.counter.take()
        t_v = time.perf_counter()
        checked = harness_.verify(url, finished["dataset"])  # raises on any duplicate or gap
        verify_s = time.perf_counter() - t_v
        verify_req = moto.counter.take()
    except Exception as exc:  # noqa: BLE001 - recorded with a diagnosis; the bench goes on
        diag = mon.diagnosis or moto.diagnose(name, job_id, sample_s=0)
        moto.drop_bucket(name)
        log(f"{label}: FAILED: {exc}; worker logs in {logdir}")
        raise RunFailed(f"{type(exc).__name__}: {exc}", {"job_id": job_id, "worker_logs": str(logdir), **diag,
                                                         "kill": mon.kill}) from None
    if args.keep_logs:
        log(f"   worker logs kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    wall = t_succ_wall - t0_wall
    res = {"items": size, "job_id": job_id, "wall_s": round(wall, 3), "items_per_s": round(size / wall, 1),
           "workers_exit_s": round(t_exit_wall - t0_wall, 3), "kill": mon.kill,
           "tail_s": round(t_succ_wall - mon.t99_wall, 2) if mon.t99_wall else None,  # 99% done -> succeeded
           "exit_lag_s": [round(t - t_succ_wall, 2) for t in mon.exit_wall if t is not None],  # succeeded -> exit
           "tail": moto.tail_timeline(name, job_id, mon.t99_wall, t_succ_wall),
           "requests": fleet, "requests_per_item": {op: round(n / size, 4) for op, n in fleet.items()},
           "setup_requests": setup, "bench_wait_requests": waited, "verify_requests": verify_req,
           "verify_s": round(verify_s, 2), "verify": checked,
           "dataset": {k: v for k, v in (finished.get("dataset") or {}).items()
                       if k in ("key", "items_total", "items_covered", "rows", "parts")
                       and not isinstance(v, (list, dict))}}
    per = ", ".join(f"{op} {n / size:.3f}" for op, n in sorted(ops_of(fleet).items()))
    log(f"{label}: {res['items_per_s']:,.0f} items/s ({wall:.1f} s"
        f"{', kill -9 at %.0f%%' % (100 * mon.kill['at_fraction']) if mon.kill else ''}); "
        f"{fleet['total'] / size:.3f} S3 requests/item ({per}); verified row by row; 99% -> succeeded "
        f"{res['tail_s']} s; workers exited {max(res['exit_lag_s'], default=float('nan')):.2f} s after succeeded")
    moto.drop_bucket(name)
    return res


# ==============================================================================================================
# summary and report
# ==============================================================================================================
def summarize(runs: list[dict[str, Any]], with_requests: bool) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": runs, "n": len(ok), "failed": len(runs) - len(ok)}
    if not ok:
        return out
    out["median_items_per_s"] = round(median([r["items_per_s"] for r in ok]), 1)
    out["median_wall_s"] = round(median([r["wall_s"] for r in ok]), 3)
    if with_requests:
        ops = sorted({op for r in ok for op in r["requests"]})
        out["median_requests_per_item"] = {op: round(median([r["requests"].get(op, 0) / r["items"] for r in ok]), 4)
                                           for op in ops}
    return out


def report(res: dict[str, Any], out: Path) -> str:
    a = res["args"]
    lines = ["", "=" * 118,
             f"fleet: {a['workers']} workers over {a['procs']} processes, shards/batches of {a['shard_size']}, "
             f"no-op items; lease_s {a['lease_s']:g}, heartbeat_s {a['heartbeat_s']:g}",
             "bucketrun = the fleet kind on moto's S3 server (loopback, in the bench process), requests counted at "
             "the server;",
             f"postgres  = SKIP LOCKED claim + worker table with heartbeats, {res.get('postgres_version', 'Postgres')}, "
             f"synchronous_commit={'on' if a['pg_durable'] else 'off'}, partial indexes: {'yes' if a['pg_index'] == 'partial' else 'no'}",
             "items/s = items / (workers start -> job succeeded | last item committed); median over the runs", ""]

    def cell(e: dict[str, Any] | None) -> str:
        if not e:
            return "-"
        if not e.get("median_items_per_s"):
            return "FAILED"
        return f"{e['median_items_per_s']:,.0f} ({e['n']}{', %d failed' % e['failed'] if e['failed'] else ''})"

    hdr = (f"{'items':>9} | {'bucketrun items/s (runs)':>24} | {'postgres items/s (runs)':>23} | {'b/p':>6} | "
           f"{'S3 req/item':>11} | by operation, per item")
    lines += [hdr, "-" * len(hdr)]
    for size, e in res["sizes"].items():
        b, p = e.get("bucketrun"), e.get("postgres")
        ratio = f"{e['ratio_bucketrun_over_postgres']:.3f}" if e.get("ratio_bucketrun_over_postgres") else "-"
        rq = (b or {}).get("median_requests_per_item") or {}
        tot = f"{rq['total']:.3f}" if rq else "-"
        by = ", ".join(f"{op} {rq[op]:.3f}" for op in OPS if rq.get(op)) or "-"
        kill = " [kill -9]" if any(r.get("kill") for x in (b, p) if x for r in x["runs"]) else ""
        lines.append(f"{int(size):>9,} | {cell(b):>24} | {cell(p):>23} | {ratio:>6} | {tot:>11} | {by}{kill}")
    for size, e in res["sizes"].items():
        tails = [r for r in (e.get("bucketrun") or {}).get("runs", []) if r.get("tail_s") is not None]
        if tails:
            goal = 2 * a["lease_s"]
            worst = max(r["tail_s"] for r in tails)
            lag = max((max(r["exit_lag_s"], default=0.0) for r in tails), default=0.0)
            lines.append(f"bucketrun {int(size):,}: 99% done -> succeeded {', '.join(str(r['tail_s']) for r in tails)}"
                         f" s (goal <= 2 x lease_s = {goal:g} s: {'met' if worst <= goal else 'NOT met'}); "
                         f"last worker process exited {lag:.2f} s after succeeded (goal <= 5 s: "
                         f"{'met' if lag <= 5 else 'NOT met'})")
    for size, e in res["sizes"].items():
        for side in ("bucketrun", "postgres"):
            for r in (e.get(side) or {}).get("runs", []):
                if r.get("kill"):
                    k = r["kill"]
                    lines.append(f"{side} {int(size):,}: kill -9 of {k['processes_killed']} of {k['processes']} "
                                 f"processes ({k['workers_killed']} workers) at {k['at_fraction']:.0%}, "
                                 f"{k['at_s']:.0f} s in; restarted with the same worker ids"
                                 + ("" if "error" in r else "; finished and checked row by row"))
                if "error" in r:
                    lines.append(f"{side} {int(size):,}: FAILED: {r['error'][:300]}")
                    d = r.get("diagnosis") or {}
                    if d.get("objects"):
                        lines.append(f"    left in the bucket: {d['objects']}; job {d.get('job_state')}, "
                                     f"roles {d.get('roles')}, workers {d.get('worker_states')}")
    sc = res.get("scale")
    if sc and "bucketrun_ratio" in sc:
        lines += ["", f"scale: bucketrun items/s at {sc['big']:,} / at {sc['ref']:,} = {sc['bucketrun_ratio']:.3f} "
                      f"(goal >= {sc['goal']}: {'met' if sc['met'] else 'NOT met'})"
                  + (f"; postgres {sc['postgres_ratio']:.3f}" if sc.get("postgres_ratio") else "")]
    mc = res.get("moto_ceiling")
    if mc:
        lines += ["", f"moto ceiling: {mc['requests_per_s']:,.0f} requests/s served to {mc['tasks']} tasks over "
                      f"{mc['procs']} processes doing nothing but PUT+GET of small objects ({mc['seconds']:.0f} s)."]
        for size, e in res["sizes"].items():
            rq = ((e.get("bucketrun") or {}).get("median_requests_per_item") or {}).get("total")
            if rq:
                lines.append(f"  at {int(size):,} items, {rq:.3f} requests/item: moto alone caps bucketrun at "
                             f"~{mc['requests_per_s'] / rq:,.0f} items/s")
    if res.get("notes"):
        lines += [""] + [f"note: {n}" for n in res["notes"]]
    lines += [f"runtime {res['runtime_s']:.0f} s; results in "
              f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", "=" * 118]
    return "\n".join(lines)


def estimate(sizes: list[int], args: argparse.Namespace, sides: list[str]) -> float:
    total = 0.0
    for n in sizes:
        reps = 1 if n == max(sizes) and n > 100_000 else args.repeat
        for side in sides:
            total += reps * (n / EST_RATE[side] + EST_FIXED_S[side])
    return total


# ==============================================================================================================
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_pg_worker":
        pg_worker_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.replace(" ", ",").split(",") if x],
                    default=None, help="item counts, comma separated (default 2000,20000,507387)")
    ap.add_argument("--quick", action="store_true", help="2,000 and 20,000 items only")
    ap.add_argument("--repeat", type=int, default=3, help="runs per small size; medians are quoted (default 3)")
    ap.add_argument("--only", choices=("bucketrun", "postgres"), help="run one side only")
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--procs", type=int, default=4, help="OS processes the workers are spread over")
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--lease-s", type=float, default=15.0)
    ap.add_argument("--heartbeat-s", type=float, default=5.0)
    ap.add_argument("--kill-at", type=float, default=0.3, help="fraction of the work done at the kill (big size)")
    ap.add_argument("--kill-procs", type=int, default=1, help="worker processes killed at the big size")
    ap.add_argument("--kill-min-size", type=int, default=100_000, help="sizes from this up get the kill -9")
    ap.add_argument("--pg-durable", action="store_true", help="Postgres with synchronous_commit=on")
    ap.add_argument("--pg-index", choices=("partial", "none"), default="partial",
                    help="partial indexes on items(id) WHERE status='pending' and items(worker) WHERE "
                         "status='claimed' (default), or none")
    ap.add_argument("--install", action="store_true", help=f"run `{APT_CMD}` if Postgres 15 is missing")
    ap.add_argument("--timeout-s", type=float, default=0, help="give a run up at this wall time (default: by size)")
    ap.add_argument("--stall-s", type=float, default=180, help="give a run up after this long without progress")
    ap.add_argument("--calibrate-s", type=float, default=10, help="seconds of moto's plain PUT/GET ceiling (0: skip)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the worker processes' logs (temp dirs)")
    ap.add_argument("--out", default=str(RESULTS), help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args()
    sizes = sorted(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    if args.repeat < 1 or args.workers < 1 or args.procs < 1 or not sizes or min(sizes) < 1:
        ap.error("--repeat, --workers, --procs and every size must be at least 1")

    started = time.perf_counter()
    logging.getLogger("bucketrun").setLevel(logging.WARNING)
    notes: list[str] = []
    sides = [s for s in ("bucketrun", "postgres") if args.only in (None, s)]
    if "postgres" in sides:
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            log("psycopg is not installed: .venv/bin/pip install -e '.[bench]' -c constraints.txt; "
                "skipping the baseline")
            sides.remove("postgres")
            notes.append("Postgres baseline skipped: psycopg not installed")
    bindir = pg_binaries(args.install) if "postgres" in sides else None
    if "postgres" in sides and bindir is None:
        sides.remove("postgres")
        notes.append(f"Postgres baseline skipped: no Postgres 15 ({APT_CMD})")
    if "bucketrun" in sides and harness_module() is None:
        log("the fleet harness (local_sim/fleet_harness.py) does not exist: skipping bucketrun")
        sides.remove("bucketrun")
        notes.append("bucketrun side skipped: no fleet harness in this checkout")
    if not sides:
        raise SystemExit("nothing to run")
    est = estimate(sizes, args, sides)
    log(f"sizes {', '.join(f'{n:,}' for n in sizes)}; sides {', '.join(sides)}; {args.workers} workers over "
        f"{args.procs} processes; estimated runtime ~{est / 60:.0f} min")

    results: dict[str, Any] = {"benchmark": "fleet", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "args": {**vars(args), "sizes": sizes},
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()},
                               "sizes": {}, "notes": notes}
    out = Path(args.out).resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops workers and Postgres
    moto = pg_cm = None
    try:
        moto = Moto() if "bucketrun" in sides else None
        if moto and args.calibrate_s > 0:
            results["moto_ceiling"] = moto_ceiling(moto, args)
        pg_cm = PgCluster(bindir, args.pg_durable, max_connections=args.workers + 50) if "postgres" in sides else None
        pg = pg_cm.__enter__() if pg_cm else None
        if pg:
            ver = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
            results["postgres_version"] = ver.strip()
            log(f"Postgres cluster up on 127.0.0.1:{pg.port} ({ver.strip()})")
        big = max(sizes)
        given_up: set[str] = set()
        for size in sizes:
            kill = size >= args.kill_min_size
            reps = 1 if kill else args.repeat
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
            log(f"== {size:,} items, {reps} run{'s' if reps > 1 else ''}{', kill -9 mid-run' if kill else ''}")
            for rep in range(reps):  # the two sides interleaved, so drift on the machine hits both
                for side, fn, backend in (("bucketrun", bucketrun_run, moto), ("postgres", pg_run, pg)):
                    if backend is None or side in given_up:
                        continue
                    try:
                        runs[side].append(fn(backend, args, size, rep, kill))
                    except RunFailed as exc:
                        runs[side].append({"items": size, "error": str(exc), "diagnosis": exc.diagnosis})
                        given_up.add(side)  # the next runs of a failing side would only fail slower
                        notes.append(f"{side} gave up at {size:,} items: {str(exc)[:300]}")
            entry = {side: summarize(r, with_requests=side == "bucketrun") for side, r in runs.items() if r}
            if all(entry.get(s, {}).get("median_items_per_s") for s in ("bucketrun", "postgres")):
                entry["ratio_bucketrun_over_postgres"] = round(
                    entry["bucketrun"]["median_items_per_s"] / entry["postgres"]["median_items_per_s"], 4)
            results["sizes"][str(size)] = entry
            save(results, out, started)
            rates = [e["median_items_per_s"] for e in entry.values() if isinstance(e, dict) and
                     e.get("median_items_per_s")]
            if size != big and size >= 10_000 and big >= args.kill_min_size and rates:
                eta = sum(big / r for r in rates)
                log(f"   the {big:,} run will take about {eta / 60:.0f} min at these rates")
        results["scale"] = scale(results, sizes)
    finally:
        if pg_cm:
            pg_cm.__exit__(None, None, None)
        if moto:
            moto.stop()
    save(results, out, started)
    print(report(results, out))


def save(results: dict[str, Any], out: Path, started: float) -> None:
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")


def scale(results: dict[str, Any], sizes: list[int]) -> dict[str, Any] | None:
    """items/s at the largest size over items/s at 20,000 (the goal: at least 0.8)."""
    big, ref = max(sizes), 20_000
    if ref not in sizes or big <= ref:
        return None
    b, r = results["sizes"][str(big)], results["sizes"][str(ref)]
    out: dict[str, Any] = {"big": big, "ref": ref, "goal": 0.8}
    for side in ("bucketrun", "postgres"):
        if b.get(side, {}).get("median_items_per_s") and r.get(side, {}).get("median_items_per_s"):
            out[f"{side}_ratio"] = round(b[side]["median_items_per_s"] / r[side]["median_items_per_s"], 4)
    if "bucketrun_ratio" in out:
        out["met"] = out["bucketrun_ratio"] >= 0.8
    return out

if __name__ == "__main__":
    main()
