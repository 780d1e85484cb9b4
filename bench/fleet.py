"""Benchmark the fleet kind (many workers claiming shards of items through leases in the bucket) against the seed
design's queue, Postgres with a `FOR UPDATE SKIP LOCKED` claim and a worker table with heartbeats: three sides,
side by side in one run, at equal durability.

Every side runs the same work on the same machine: N no-op items, shards (claim batches) of 50, `--workers`
workers (default 100) as asyncio tasks spread over `--procs` OS processes (default 4). Within each repetition the
sides are interleaved (postgres, folder, moto), so drift on the machine hits all three.

postgres (the baseline, bench/fleet_pg.py): Debian's postgresql 15 binaries, a throwaway cluster in a temp dir
on 127.0.0.1; items claimed 50 at a time with UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
RETURNING, marked done and their results inserted in one transaction fenced on worker and status, heartbeats
every 5 s, dead workers' claims re-queued after lease_s. items/s = items / (max(done_at) - workers start).
Checked afterwards: every item done, exactly one result row per item, with the right length.

folder (bench/fleet_folder.py): bucketrun's embedded default, a local folder as the bucket (`harness.start_job`
with the folder's path as the bucket URL), one fresh folder per run in a temp dir on the same file system as
the Postgres cluster. Progress is counted by listing the run's `jobs/<id>/fleet/done/` folder on disk, not
through the bucket API. No request counts (there is no server to count at).

moto (bench/fleet_moto.py): moto's S3 server on 127.0.0.1 in this process, one fresh bucket per run; every
request is classified at the server by bucketrun operation (a WSGI layer in front of moto's app: method, key
and the conditional headers tell a lease claim from a renew, a part from a done marker, ...) and by HTTP op.
Requests per item = requests served from workers start until every worker process exited; the setup (submit,
plan) and the bench's own wait/verify reads are recorded apart. Progress is counted in moto's in-process store
(no HTTP). moto's ceiling (requests/s of plain small PUT+GET from the same layout, `--calibrate-s`) is measured
at the start of the run, and each size reports items/s ÷ (ceiling ÷ requests per item): how close bucketrun
comes to what the emulator alone allows (goal >= 0.8). Two moto changes that do not alter what it serves: its
conditional PUT is made atomic (as S3's is, as tests/conftest.py does) and its module list is cached.

For folder and moto: the items as a JSONL file in the bucket, processor `noop`, `harness.start_job` takes the job
to `launched`, the worker processes (`harness.worker_cmd`) start; items/s = items / (the job's `succeeded`
transition - workers start); 99% -> `succeeded` seconds (goal <= 2 x lease_s; 99% is when the done markers'
write times first cover 99% of the items, read after the run from the store without a request; the monitor's
once-a-second sighting is kept as tail_s_monitor) and where the tail went; every dataset checked row by row
with `harness.verify`.

Durability, equal by default: the folder backend fsyncs every object it writes, so Postgres runs with
synchronous_commit=on (fsync on: each commit waits for its WAL flush). `--pg-nondurable` runs it with
synchronous_commit=off; the report then says the sides are not equally durable (the folder side has no such
switch). moto keeps everything in memory: its figures are about requests, not durability.

From `--kill-min-size` (507,387 by default) a size runs once, on all three sides, and kills (`kill -9`)
`--kill-procs` of the worker processes once `--kill-at` of the work is done, restarting them with the same worker
ids; its items/s is compared with the 20,000 figure (goal >= 0.8). Smaller sizes run `--repeat` times (medians).
A run that makes no progress for `--stall-s` is given up with a diagnosis of what its bucket holds; that side's
remaining runs are skipped and the rest reported.

The report (bench/fleet_report.py) adds the projection to real stores: the items/s S3's per-prefix rates and the
workers' own latency-bound ceiling (`--latency-ms` per request, an assumption) would allow at the measured
requests per item, and the list-price dollars per 507,387 items at R2 and S3 Standard (events/pricing.py).

Run:  .venv/bin/python bench/fleet.py --quick                 # 2,000 and 20,000 items
      .venv/bin/python bench/fleet.py                         # + 507,387 with a kill -9
      .venv/bin/python bench/fleet.py --sizes 20000 --sides folder,postgres
Writes every figure as JSON to bench/results/fleet.json (or --out), after each size and at the end, and prints
the report as markdown.
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
import time
from pathlib import Path
from typing import Any

from fleet_common import Monitor, RunFailed, item_name, log, split, t99_from_markers, tail_timeline, worker_ids
from fleet_folder import Folder
from fleet_moto import HTTP_OPS, Moto, moto_ceiling
from fleet_pg import APT_CMD, PgCluster, pg_binaries, pg_run, pg_worker_main
from fleet_report import SIDES, derive, report, summarize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fleet.json"
DEFAULT_SIZES = (2_000, 20_000, 507_387)
QUICK_SIZES = (2_000, 20_000)
# Rough rates (items/s) and fixed costs per run (s: process start, registration, finalizing) on the 2-core dev
# machine, for the up-front estimate only.
EST_RATE = {"moto": 700.0, "folder": 1_500.0, "postgres": 5_000.0}
EST_FIXED_S = {"moto": 40.0, "folder": 20.0, "postgres": 3.0}
HARNESS_MODULES = (("local_sim/fleet_harness.py", "bucketrun.local_sim.fleet_harness"),)


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


def bucketrun_run(backend, args: argparse.Namespace, size: int, rep: int, kill: bool) -> dict[str, Any]:
    """One fleet run on the folder or moto side: a fresh bucket, the job launched, the workers run (and killed
    and restarted, if asked), the `succeeded` time read, the dataset verified row by row."""
    from bucketrun.events import codec, keys
    from bucketrun.events.lifecycle import JobState, read_view
    from bucketrun.events.storage import open_bucket

    harness_ = harness()
    side, counter = backend.side, backend.counter
    take = counter.take if counter else (lambda: None)
    label = f"{side} {size:,} #{rep + 1}"
    items_key = f"bench/items-{size}.jsonl"
    name, url = backend.new_bucket(f"{size}-{rep}", items_key, items_jsonl(size))
    store = backend.store(name)
    take()
    job_id = harness_.start_job(url, fleet_manifest(args, size, items_key))
    setup = take()

    cmds = [list(harness_.worker_cmd(url, job_id, group)) for group in split(worker_ids(args.workers), args.procs)]
    done_prefix = keys.fleet_done_prefix(job_id)
    n_shards = math.ceil(size / args.shard_size)
    seen = {"t": time.perf_counter(), "n": 0}

    def progress() -> tuple[float, str]:
        n = store.count(done_prefix) if hasattr(store, "count") else len(store.keys(done_prefix))
        extra = ""
        if counter is not None:
            now, served = time.perf_counter(), sum(counter.ops.values())  # since the last take(): this run's
            extra = f", moto serving {(served - seen['n']) / max(1e-3, now - seen['t']):,.0f} req/s"
            if now - seen["t"] >= 2:
                seen.update(t=now, n=served)
        return min(1.0, n / n_shards), f"{n:,}/{n_shards:,} shards done{extra}"

    logdir = Path(tempfile.mkdtemp(prefix=f"bucketrun-fleet-{side}-logs-"))
    mon = Monitor(label, size, progress, logdir, args.kill_at if kill else None, args.kill_procs,
                  timeout_s=args.timeout_s or max(900.0, size / 20), stall_s=args.stall_s)
    mon.diagnose = lambda: backend.diagnose(name, job_id)
    mon.tail_dump_s = 2 * args.lease_s  # still in the tail after 2 x lease_s: the workers log where they wait
    try:
        t0_wall, t_exit_wall = mon.run(cmds, env=dict(os.environ))
        fleet = take()
        finished = harness_.wait_finished(url, job_id, timeout_s=args.stall_s)
        t_finished_wall = time.time()
        waited = take()
        if finished.get("state") != "succeeded":
            raise RuntimeError(f"{label}: every worker exited, and the job is {finished.get('state')}: "
                               f"{json.dumps(finished.get('detail'), default=str)[:500]}")
        view = read_view(open_bucket(url), job_id)
        succ = next((t for t in reversed(view.history) if t.state is JobState.SUCCEEDED), None)
        t_succ_wall = codec.parse_iso(succ.at).timestamp() if succ else t_finished_wall
        take()
        t_v = time.perf_counter()
        checked = harness_.verify(url, finished["dataset"])  # raises on any duplicate or gap
        verify_s = time.perf_counter() - t_v
        verify_req = take()
    except Exception as exc:  # noqa: BLE001 - recorded with a diagnosis; the bench goes on
        diag = mon.diagnosis or backend.diagnose(name, job_id, sample_s=0)
        backend.drop_bucket(name)
        log(f"{label}: FAILED: {exc}; worker logs in {logdir}")
        raise RunFailed(f"{type(exc).__name__}: {exc}", {"job_id": job_id, "worker_logs": str(logdir), **diag,
                                                         "kill": mon.kill}) from None
    if args.keep_logs:
        log(f"   worker logs kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    wall = t_succ_wall - t0_wall
    t99 = t99_from_markers(store, job_id, size) or mon.t99_wall
    res = {"items": size, "job_id": job_id, "wall_s": round(wall, 3), "items_per_s": round(size / wall, 1),
           "workers_exit_s": round(t_exit_wall - t0_wall, 3), "kill": mon.kill,
           "tail_s": round(t_succ_wall - t99, 2) if t99 else None,  # 99% of items in done markers -> succeeded
           "tail_s_monitor": round(t_succ_wall - mon.t99_wall, 2) if mon.t99_wall else None,  # as first seen
           "exit_lag_s": [round(t - t_succ_wall, 2) for t in mon.exit_wall if t is not None],  # succeeded -> exit
           "tail": tail_timeline(store, job_id, t99, t_succ_wall),
           "verify_s": round(verify_s, 2), "verify": checked,
           "dataset": {k: v for k, v in (finished.get("dataset") or {}).items()
                       if k in ("key", "items_total", "items_covered", "rows", "parts")
                       and not isinstance(v, (list, dict))}}
    per = ""
    if counter is not None:
        res.update({"requests": fleet, "setup_requests": setup, "bench_wait_requests": waited,
                    "verify_requests": verify_req})
        per = (f"; {fleet['total'] / size:.3f} S3 requests/item ("
               + ", ".join(f"{op} {fleet[op] / size:.3f}" for op in HTTP_OPS if fleet.get(op)) + ")")
        cpu = fleet.get("server_cpu_s") or {}
        if cpu:  # what the emulator's one GIL was spent on, by HTTP op (its serving threads' CPU)
            per += ("; moto's CPU " + ", ".join(f"{op} {s:.1f} s" for op, s in
                                                 sorted(cpu.items(), key=lambda kv: -kv[1])))
    log(f"{label}: {res['items_per_s']:,.0f} items/s ({wall:.1f} s"
        f"{', kill -9 at %.0f%%' % (100 * mon.kill['at_fraction']) if mon.kill else ''}){per}; verified row by "
        f"row; 99% -> succeeded {res['tail_s']} s; workers exited "
        f"{max(res['exit_lag_s'], default=float('nan')):.2f} s after succeeded")
    backend.drop_bucket(name)
    return res


def estimate(sizes: list[int], args: argparse.Namespace, sides: list[str]) -> float:
    return sum((1 if n >= args.kill_min_size else args.repeat) * (n / EST_RATE[s] + EST_FIXED_S[s])
               for n in sizes for s in sides)


def durability(args: argparse.Namespace, folder_fs: str | None) -> dict[str, str]:
    """What each side keeps safe at the moment it says an item is done, as the report states it."""
    pg = ("synchronous_commit=on, fsync=on: a commit returns once its WAL is flushed" if args.pg_durable else
          "synchronous_commit=off: commits return before their WAL is flushed (up to ~3 x wal_writer_delay lost "
          "on a crash)")
    folder = (f"every object fsynced as written, its bytes and then its folder once linked or renamed into place "
              f"(events/storage/local.py): an acknowledged write survives a power cut; on {folder_fs or '?'}")
    return {"postgres": pg, "folder": folder, "moto": "in memory (an emulator: requests are its figure)",
            "summary": "equal: Postgres and the folder both fsync before an item counts as done" if args.pg_durable
            else "NOT equal: Postgres without synchronous commit, the folder side fsyncing every object"}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.replace(" ", ",").split(",") if x],
                    default=None, help="item counts, comma separated (default 2000,20000,507387)")
    ap.add_argument("--quick", action="store_true", help="2,000 and 20,000 items only")
    ap.add_argument("--repeat", type=int, default=3, help="runs per small size; medians are quoted (default 3)")
    ap.add_argument("--sides", type=lambda s: [x for x in s.replace(" ", ",").split(",") if x],
                    default=list(SIDES), help=f"comma separated, of {', '.join(SIDES)} (default all three)")
    ap.add_argument("--only", choices=("bucketrun", *SIDES), help="old spelling of --sides (bucketrun: folder,moto)")
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--procs", type=int, default=4, help="OS processes the workers are spread over")
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--lease-s", type=float, default=15.0)
    ap.add_argument("--heartbeat-s", type=float, default=5.0)
    ap.add_argument("--kill-at", type=float, default=0.3, help="fraction of the work done at the kill (big size)")
    ap.add_argument("--kill-procs", type=int, default=1, help="worker processes killed at the big size")
    ap.add_argument("--kill-min-size", type=int, default=100_000, help="sizes from this up run once, with the kill")
    ap.add_argument("--pg-nondurable", action="store_true",
                    help="Postgres with synchronous_commit=off (default on, as durable as the folder's fsync)")
    ap.add_argument("--pg-index", choices=("partial", "none"), default="partial",
                    help="partial indexes on items(id) WHERE status='pending' and items(worker) WHERE "
                         "status='claimed' (default), or none")
    ap.add_argument("--install", action="store_true", help=f"run `{APT_CMD}` if Postgres 15 is missing")
    ap.add_argument("--timeout-s", type=float, default=0, help="give a run up at this wall time (default: by size)")
    ap.add_argument("--stall-s", type=float, default=180, help="give a run up after this long without progress")
    ap.add_argument("--calibrate-s", type=float, default=10, help="seconds of moto's plain PUT/GET ceiling (0: skip)")
    ap.add_argument("--latency-ms", type=float, default=30.0,
                    help="assumed latency of one small request at a real store, for the projection (default 30)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the worker processes' logs (temp dirs)")
    ap.add_argument("--out", default=str(RESULTS), help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args()
    args.sizes = sorted(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    args.pg_durable = not args.pg_nondurable
    if args.only:
        args.sides = ["folder", "moto"] if args.only == "bucketrun" else [args.only]
    bad = [s for s in args.sides if s not in SIDES]
    if bad:
        ap.error(f"--sides: unknown {', '.join(bad)} (choose from {', '.join(SIDES)})")
    args.sides = [s for s in SIDES if s in args.sides]  # the fixed interleaving order
    if args.repeat < 1 or args.workers < 1 or args.procs < 1 or not args.sizes or min(args.sizes) < 1:
        ap.error("--repeat, --workers, --procs and every size must be at least 1")
    return args


def available_sides(args: argparse.Namespace, notes: list[str]) -> tuple[list[str], Path | None]:
    """The asked-for sides this checkout and machine can run; a skipped side is noted, not fatal."""
    import importlib.util

    sides = list(args.sides)
    bindir = None
    if "postgres" in sides:
        if importlib.util.find_spec("psycopg") is None:
            sides.remove("postgres")
            notes.append("Postgres baseline skipped: psycopg not installed (.venv/bin/pip install -e '.[bench]')")
        elif (bindir := pg_binaries(args.install)) is None:
            sides.remove("postgres")
            notes.append(f"Postgres baseline skipped: no Postgres 15 ({APT_CMD})")
    if harness_module() is None:
        for s in ("folder", "moto"):
            if s in sides:
                sides.remove(s)
                notes.append(f"{s} side skipped: no fleet harness (local_sim/fleet_harness.py) in this checkout")
    return sides, bindir


def compile_bucketrun(notes: list[str]) -> None:
    """Byte-compile bucketrun's own modules first, as `pip install` does for an installed package: a checkout
    under PYTHONDONTWRITEBYTECODE (this machine sets it) would otherwise compile every worker process's imports
    from source at its start, a cost no installed user pays and Postgres's workers do not."""
    import compileall

    dirs = [ROOT / d for d in ("events", "handlers", "images", "local_sim") if (ROOT / d).is_dir()]
    ok = all(compileall.compile_dir(str(d), quiet=1, force=False) for d in dirs)
    notes.append("bucketrun's modules were byte-compiled before the runs, as pip install does"
                 + ("" if ok else " (some failed to compile)"))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_pg_worker":
        pg_worker_main(sys.argv[2:])
        return
    args = parse_args()
    started = time.perf_counter()
    logging.getLogger("bucketrun").setLevel(logging.WARNING)
    notes: list[str] = []
    compile_bucketrun(notes)
    sides, bindir = available_sides(args, notes)
    if not sides:
        raise SystemExit("nothing to run")
    sizes = args.sizes
    log(f"sizes {', '.join(f'{n:,}' for n in sizes)}; sides {', '.join(sides)}; {args.workers} workers over "
        f"{args.procs} processes; estimated runtime ~{estimate(sizes, args, sides) / 60:.0f} min")
    results: dict[str, Any] = {"benchmark": "fleet", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "args": {**vars(args), "sides": sides},
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()},
                               "sizes": {}, "notes": notes}
    out = Path(args.out).resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops workers and Postgres
    backends: dict[str, Any] = {}
    pg_cm = None
    try:
        if "moto" in sides:
            backends["moto"] = Moto()
            if args.calibrate_s > 0:
                results["moto_ceiling"] = moto_ceiling(backends["moto"], args)
        if "folder" in sides:
            backends["folder"] = Folder()
        if "postgres" in sides:
            pg_cm = PgCluster(bindir, args.pg_durable, max_connections=args.workers + 50)
            backends["postgres"] = pg_cm.__enter__()
            ver = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
            results["postgres_version"] = ver.strip()
            log(f"Postgres cluster up on 127.0.0.1:{backends['postgres'].port} ({ver.strip()}), "
                f"synchronous_commit={'on' if args.pg_durable else 'off'}")
        results["durability"] = durability(args, getattr(backends.get("folder"), "fs", None))
        given_up: set[str] = set()
        for size in sizes:
            kill = size >= args.kill_min_size
            reps = 1 if kill else args.repeat
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
            log(f"== {size:,} items, {reps} run{'s' if reps > 1 else ''}{', kill -9 mid-run' if kill else ''}")
            for rep in range(reps):  # the sides interleaved, so drift on the machine hits all of them
                for side in sides:
                    if side in given_up:
                        continue
                    fn = pg_run if side == "postgres" else bucketrun_run
                    try:
                        runs[side].append(fn(backends[side], args, size, rep, kill))
                    except RunFailed as exc:
                        runs[side].append({"items": size, "error": str(exc), "diagnosis": exc.diagnosis})
                        given_up.add(side)  # the next runs of a failing side would only fail slower
                        notes.append(f"{side} gave up at {size:,} items: {str(exc)[:300]}")
            results["sizes"][str(size)] = {side: summarize(r) for side, r in runs.items() if r}
            derive(results)
            save(results, out, started)
    finally:
        if pg_cm:
            pg_cm.__exit__(None, None, None)
        for name in ("moto", "folder"):
            if name in backends:
                backends[name].stop()
    derive(results)
    save(results, out, started)
    print(report(results, str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)))


def save(results: dict[str, Any], out: Path, started: float) -> None:
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
