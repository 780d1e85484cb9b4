"""Benchmark the sweep's cost: S3 requests and wall time of one sweep pass against the number of ended jobs.

Why: the sweep's cost must follow live jobs, not the bucket's size. The state writer (events/lifecycle.py,
`append_transition`) keeps `index/live/<job_id>.json` present exactly while a job is not terminal, and a sweep
pass lists only `index/live/` and `index/notify/`, then reads each live job. The design before it listed every
object under jobs/ (artifacts included) on every pass; that listing is the BASELINE measured here, a lower
bound of the old pass (it also GET each job's newest event, one GET per ended job, which is not counted).

What, in one run, on moto's S3 server on 127.0.0.1 (every request counted at the server, from werkzeug's
access log, as bench/cloud_path.py does):
  - 10 live jobs (`--live`) written with the real `append_transition` (so the index is real): intake.json, a
    valid transcribe manifest, submitted -> queued -> launched -> running, a launch claim, a fresh progress.json;
  - ended jobs, each shaped like a finished transcription: intake.json, manifest.json, events 000001..000005
    (submitted, queued, launched, running, succeeded), 4 transcripts (srt/vtt/json/txt), the worker log and
    progress.json: 13 objects, and no index/live marker;
  - after the first 1,000 ended jobs (`--first`) and again after all of them (`--ended`, default 10,000):
    one `sweep()` pass, `--repeats` times (median requests by operation, median wall time), with a launcher
    that raises if called (the sweep must leave every job alone; a pass that does anything fails the run), and
    the baseline `list(bucket.list("jobs/"))`;
  - the folder backend (`open_bucket(tmpdir)`) with the same shapes: the sweep pass, and a full listing of
    jobs/ that reads every ETag (what the old eager-hashing folder backend did on every listing) against one
    that never touches .etag (the lazy listing it does now).

Seeding, measured and chosen to keep the whole run under ~6 minutes on a 2-core machine: the first
`--http-jobs` ended jobs (default 1,000, i.e. 13,000 objects) go through the real S3 API, `bucket.put` from a
16-thread pool; moto serves 170-200 PUT/s here (server and client share one process and its GIL), so all
130,000 objects that way would take 11-13 minutes, and even the lean shape (intake, manifest, 5 events, 1
artifact: 80,000 objects) 7-8 minutes. The rest are put straight into moto's in-process store
(`S3Backend.put_object`, the call its PUT handler ends in): the same keys, bodies and ETags, no HTTP, so the
full 13-object shape is kept. The folder's ended jobs are written as plain files at `LocalBucket.path_of(key)`
(what `put` produces, without its per-file fsync and lock). Both are checked after seeding: an ended job reads
back as succeeded, has no live marker, and the index holds exactly the live jobs.

Caveats: moto lists by filtering and sorting every key in the bucket on each LIST page, so in moto the wall
time of any LIST (the sweep's included) grows with the bucket even though the request count does not; the
report prints moto's time for a LIST of an empty prefix at each size to show it. The baseline listing at
10,000 jobs takes over a minute in moto, so it is repeated only while it fits `--baseline-budget` seconds
(at least once); its request count is deterministic (one LIST per 1,000 keys).

Run:  .venv/bin/python bench/sweep_cost.py                                   # full run, ~5 minutes
      .venv/bin/python bench/sweep_cost.py --ended 500 --out /tmp/smoke.json   # smoke run, ~1 minute
Writes the numbers as JSON to bench/results/sweep_cost.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cloud_path import S3Counter, start_counted_moto  # the same counted server as the cloud-path benchmark

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "sweep_cost.json"
BUCKET_NAME = "bench-bucket"
WRITER = "bench@sweep-cost"
SEED_THREADS = 16

class MustNotLaunch:
    """Every live job here is running with a fresh heartbeat: a sweep that calls its launcher is a bug."""

    name = "must-not-launch"

    def launch(self, bucket_url, job_id, attempt, manifest):
        raise RuntimeError(f"the sweep tried to launch {job_id} (attempt {attempt})")

    def status(self, backend_id):
        raise RuntimeError(f"the sweep asked the backend about {backend_id}: it judged a fresh job stalled")

    def cancel(self, backend_id):
        raise RuntimeError(f"the sweep tried to cancel {backend_id}")


# -- job shapes ----------------------------------------------------------------------------------------------
_SRT = b"".join(b"%d\n00:00:%02d,000 --> 00:00:%02d,900\nA line of the transcript, about this long.\n\n"
                % (i + 1, i % 60, i % 60) for i in range(45))
_VTT = b"WEBVTT\n\n" + _SRT.replace(b",", b".")
_TXT = b"A line of the transcript, about this long.\n" * 45
_JSON = b'{"language": "en", "segments": [' + b",".join(
    b'{"id": %d, "start": %d.0, "end": %d.9, "text": "A line of the transcript.", "words": []}' % (i, i, i)
    for i in range(140)) + b"]}\n"
_LOG = b"2026-01-01 00:00:00,000 INFO bucketrun.worker: a line of the worker's log, about this long\n" * 30
TRANSCRIPTS = {"srt": (_SRT, "application/x-subrip"), "vtt": (_VTT, "text/vtt"),
               "json": (_JSON, "application/json"), "txt": (_TXT, "text/plain; charset=utf-8")}


def manifest_body() -> dict[str, Any]:
    from bucketrun.events import codec
    from bucketrun.events.kinds.validate import parse_manifest

    raw = codec.dumps({"kind": "transcribe", "source": {"key": "media/talk.ogg"},
                       "options": {"language": "en", "formats": list(TRANSCRIPTS)}})
    return parse_manifest(raw).to_json()


def ended_job(job_id: str, at: datetime, manifest: bytes) -> list[tuple[str, bytes, str]]:
    """Every object of one succeeded transcription job, as (key, body, content type); no index/live marker."""
    from bucketrun.events import codec, keys
    from bucketrun.events.lifecycle import JobState, Transition

    def token() -> str:
        return uuid.uuid4().hex

    J = "application/json"
    inbox = f"inbox/{job_id}.json"
    objects = [(keys.intake_key(job_id), codec.dumps({"token": keys.request_token(job_id), "inbox_key": inbox,
                                                      "at": codec.iso(at), "write_token": token()}), J),
               (keys.manifest_key(job_id), manifest, J)]
    artifacts = []
    for fmt, (body, ctype) in TRANSCRIPTS.items():
        key = keys.artifact_key(job_id, 1, f"transcript.{fmt}")
        objects.append((key, body, ctype))
        artifacts.append({"key": key, "format": fmt, "bytes": len(body), "sha256": "0" * 64})
    steps = [(JobState.SUBMITTED, 0.0, {"inbox": {"key": inbox, "etag": '"0"'}}),
             (JobState.QUEUED, 0.2, {}),
             (JobState.LAUNCHED, 0.9, {"backend": "runpod", "backend_id": f"rp-{job_id[-6:]}"}),
             (JobState.RUNNING, 4.0, {}),
             (JobState.SUCCEEDED, 95.0, {"artifacts": artifacts, "elapsed_s": 91.0,
                                         "summary": {"language": "en", "duration": 300.0, "segments": 45}})]
    for seq, (state, dt, detail) in enumerate(steps, 1):
        t = Transition(seq, state, codec.iso(at + timedelta(seconds=dt)), 1, WRITER, detail)
        objects.append((keys.event_key(job_id, seq), codec.dumps({**t.to_json(), "write_token": token()}), J))
    objects.append((keys.log_key(job_id, 1), _LOG, "text/plain; charset=utf-8"))
    objects.append((keys.progress_key(job_id), codec.dumps(
        {"attempt": 1, "stage": "done", "percent": 100.0, "elapsed_s": 91.0, "eta_s": 0.0,
         "updated_at": codec.iso(at + timedelta(seconds=95)), "processed_s": 300.0, "total_s": 300.0}), J))
    return objects


def ended_ids(n: int) -> list[tuple[str, datetime]]:
    """Job ids in time order, one every 5 minutes ending an hour ago: older than every live job."""
    from bucketrun.events import codec, keys

    start = codec.now() - timedelta(hours=1) - timedelta(minutes=5 * n)
    return [(keys.new_job_id(start + timedelta(minutes=5 * i)), start + timedelta(minutes=5 * i)) for i in range(n)]


def make_live(bucket, n: int, manifest: bytes) -> list[str]:
    """Live jobs through the real write path: claims, manifest, four transitions, a launch claim, progress."""
    from bucketrun.events import codec, keys
    from bucketrun.events.conditional import create_json, create_once
    from bucketrun.events.lifecycle import JobState, append_transition

    out = []
    for i in range(n):
        job_id = keys.new_job_id()
        inbox = f"inbox/{job_id}.json"
        create_json(bucket, keys.intake_key(job_id), {"token": keys.request_token(job_id), "inbox_key": inbox,
                                                      "at": codec.iso(codec.now())})
        create_once(bucket, keys.manifest_key(job_id), manifest)
        _, view = append_transition(bucket, job_id, JobState.SUBMITTED, writer=WRITER,
                                    detail={"inbox": {"key": inbox, "etag": '"0"'}})
        _, view = append_transition(bucket, job_id, JobState.QUEUED, writer=WRITER, expect=JobState.SUBMITTED,
                                    view=view)
        create_json(bucket, keys.launch_claim_key(job_id, 1), {"writer": WRITER, "at": codec.iso(codec.now())})
        _, view = append_transition(bucket, job_id, JobState.LAUNCHED, writer=WRITER, attempt=1,
                                    expect=JobState.QUEUED, view=view,
                                    detail={"backend": "must-not-launch", "backend_id": f"live-{i}"})
        append_transition(bucket, job_id, JobState.RUNNING, writer=WRITER, attempt=1, expect=JobState.LAUNCHED,
                          view=view)
        out.append(job_id)
    heartbeat(bucket, out)
    return out


def heartbeat(bucket, job_ids: list[str]) -> None:
    """What each live job's worker does every heartbeat_s: rewrite progress.json (before each measurement, so
    the sweep finds every live job fresh however long seeding took; never inside a counted window)."""
    from bucketrun.events import codec
    from bucketrun.events.progress import Progress, write_progress

    for job_id in job_ids:
        write_progress(bucket, job_id, Progress(attempt=1, stage="transcribe", percent=42.0, elapsed_s=30.0,
                                                eta_s=41.0, updated_at=codec.iso(codec.now()),
                                                processed_s=126.0, total_s=300.0))


class Seeder:
    """Writes ended jobs in batches, printing a line every 10% of a batch."""

    def __init__(self, manifest: bytes, ids: list[tuple[str, datetime]]):
        self.manifest, self.ids, self.done = manifest, ids, 0

    def seed(self, upto: int, write_job: Callable[[list[tuple[str, bytes, str]]], None], label: str,
             threads: int = 1) -> dict[str, Any]:
        batch = self.ids[self.done:upto]
        if not batch:
            return {"jobs": 0, "objects": 0, "seconds": 0.0}
        t0 = time.perf_counter()
        objects = 0
        step = max(1, len(batch) // 10)
        finished = 0

        def one(item: tuple[str, datetime]) -> int:
            objs = ended_job(item[0], item[1], self.manifest)
            write_job(objs)
            return len(objs)

        def tick() -> None:
            if finished % step == 0 or finished == len(batch):
                dt = time.perf_counter() - t0
                print(f"  {label}: {self.done + finished:>7,} / {upto:,} ended jobs "
                      f"({finished / len(batch):4.0%} of this batch, {dt:6.1f} s, {objects / dt:7.0f} objects/s)",
                      flush=True)

        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                for fut in as_completed([pool.submit(one, item) for item in batch]):
                    objects += fut.result()
                    finished += 1
                    tick()
        else:
            for item in batch:
                objects += one(item)
                finished += 1
                tick()
        self.done = upto
        seconds = time.perf_counter() - t0
        return {"jobs": len(batch), "objects": objects, "seconds": round(seconds, 2),
                "objects_per_s": round(objects / seconds, 1)}


# -- measuring -----------------------------------------------------------------------------------------------
def measure(fn: Callable[[], Any], repeats: int, counter: S3Counter | None = None,
            budget_s: float | None = None) -> dict[str, Any]:
    """Median wall time (and, with a counter, median requests per operation) of `fn` over `repeats` runs; with
    a budget, stops early once another run would exceed it (always at least one run)."""
    times: list[float] = []
    counts: list[dict[str, int]] = []
    for _ in range(repeats):
        if counter is not None:
            counter.take()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if counter is not None:
            counts.append(counter.take())
        if budget_s is not None and sum(times) + times[-1] > budget_s:
            break
    out: dict[str, Any] = {"runs": len(times), "median_s": round(statistics.median(times), 4),
                           "times_s": [round(t, 4) for t in times]}
    if counter is not None:
        ops = sorted({op for c in counts for op in c if op != "total"})
        out["requests"] = statistics.median(c["total"] for c in counts)
        out["by_op"] = {op: statistics.median(c.get(op, 0) for c in counts) for op in ops}
        out["requests_each_run"] = [c["total"] for c in counts]
    return out


def sweep_pass(bucket) -> Callable[[], None]:
    from bucketrun.handlers.notify import Notifier
    from bucketrun.handlers.sweep import sweep

    def run() -> None:
        outcomes = sweep(bucket, MustNotLaunch(), WRITER, notifier=Notifier(None))
        if outcomes:
            raise SystemExit(f"the sweep acted on fresh jobs; the setup is wrong: {outcomes}")
    return run


def check_seeded(bucket, live: list[str], ended_id: str) -> None:
    from bucketrun.events import keys
    from bucketrun.events.lifecycle import JobState, live_jobs, read_view

    indexed = sorted(job_id for job_id, _ in live_jobs(bucket))
    if indexed != sorted(live):
        raise SystemExit(f"index/live/ holds {len(indexed)} jobs, expected exactly the {len(live)} live ones")
    state = read_view(bucket, ended_id).state
    if state is not JobState.SUCCEEDED or bucket.exists(keys.live_key(ended_id)):
        raise SystemExit(f"ended job {ended_id} reads back as {state} (live marker: "
                         f"{bucket.exists(keys.live_key(ended_id))})")


def fmt_ops(ops: dict[str, float]) -> str:
    order = ["LIST", "GET", "HEAD", "PUT", "DELETE", "POST"]
    keys_ = [op for op in order if op in ops] + sorted(op for op in ops if op not in order)
    return ", ".join(f"{op} {ops[op]:g}" for op in keys_) or "-"


def secs(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


# -- the two backends ----------------------------------------------------------------------------------------
def run_s3(args: argparse.Namespace, checkpoints: list[int], manifest: bytes) -> dict[str, Any]:
    moto, counter = start_counted_moto()
    try:
        return _run_s3(args, checkpoints, manifest, counter)
    finally:
        moto.stop()
        logging.getLogger("werkzeug").removeHandler(counter)


def _run_s3(args, checkpoints, manifest, counter) -> dict[str, Any]:
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from bucketrun.events.storage import open_bucket

    boto3.client("s3").create_bucket(Bucket=BUCKET_NAME)
    bucket = open_bucket(f"s3://{BUCKET_NAME}")
    store = s3_backends[DEFAULT_ACCOUNT_ID]["global"]  # the store the server's handlers write to

    counter.take()
    live = make_live(bucket, args.live, manifest)
    live_cost = counter.take()
    print(f"S3: {args.live} live jobs written with append_transition ({live_cost['total']} requests: "
          f"{fmt_ops({k: v for k, v in live_cost.items() if k != 'total'})})", flush=True)

    def http_put(objs):
        for key, body, ctype in objs:
            bucket.put(key, body, ctype)

    def direct_put(objs):
        for key, body, _ctype in objs:
            store.put_object(BUCKET_NAME, bucket.full_key(key), body)

    seeder = Seeder(manifest, ended_ids(args.ended))
    seeding: list[dict[str, Any]] = []
    sizes: dict[str, Any] = {}
    for n in checkpoints:
        http_upto = min(n, max(args.http_jobs, seeder.done))
        if http_upto > seeder.done:
            s = seeder.seed(http_upto, http_put, f"S3 PUT x{SEED_THREADS} threads", threads=SEED_THREADS)
            seeding.append({"how": f"bucket.put over HTTP, {SEED_THREADS} threads", **s})
        if n > seeder.done:
            s = seeder.seed(n, direct_put, "S3 direct into moto's store")
            seeding.append({"how": "S3Backend.put_object in process (no HTTP)", **s})
        check_seeded(bucket, live, seeder.ids[n - 1][0])
        heartbeat(bucket, live)
        print(f"S3 with {n:,} ended jobs: measuring ...", flush=True)
        sweep = measure(sweep_pass(bucket), args.repeats, counter)
        empty = measure(lambda: list(bucket.list("index/nothing-here/")), args.repeats, counter)
        listed: list[int] = []
        baseline = measure(lambda: listed.append(len(list(bucket.list("jobs/")))), args.repeats, counter,
                           budget_s=args.baseline_budget)
        objects = listed[0]
        sizes[str(n)] = {"ended_jobs": n, "live_jobs": args.live, "objects_under_jobs": objects,
                         "sweep": sweep, "baseline_list_jobs": baseline,
                         "ratio_requests_sweep_over_baseline": round(sweep["requests"] / baseline["requests"], 4),
                         "ratio_time_sweep_over_baseline": round(sweep["median_s"] / baseline["median_s"], 4),
                         "moto_empty_prefix_list_s": empty["median_s"]}
        print(f"  {objects:,} objects under jobs/; sweep {sweep['requests']:g} requests "
              f"({fmt_ops(sweep['by_op'])}), {secs(sweep['median_s'])}; "
              f"baseline {baseline['requests']:g} requests, {secs(baseline['median_s'])} "
              f"({baseline['runs']} run{'s' if baseline['runs'] > 1 else ''})", flush=True)
    return {"live_job_write_requests": live_cost, "seeding": seeding, "sizes": sizes}


def run_folder(args: argparse.Namespace, checkpoints: list[int], manifest: bytes) -> dict[str, Any]:
    from bucketrun.events.storage import open_bucket

    with tempfile.TemporaryDirectory(prefix="bucketrun-sweep-cost-") as tmp:
        bucket = open_bucket(tmp)
        live = make_live(bucket, args.live, manifest)

        def write_files(objs):
            for key, body, _ctype in objs:
                path = bucket.path_of(key)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)

        seeder = Seeder(manifest, ended_ids(args.ended))
        seeding, sizes = [], {}
        for n in checkpoints:
            seeding.append({"how": "files written at LocalBucket.path_of(key)",
                            **seeder.seed(n, write_files, "folder files")})
            check_seeded(bucket, live, seeder.ids[n - 1][0])
            heartbeat(bucket, live)
            print(f"folder with {n:,} ended jobs: measuring ...", flush=True)
            objects = len(list(bucket.list("jobs/")))  # also warms the cache before the first timed listing
            sweep = measure(sweep_pass(bucket), args.repeats)
            lazy_t, eager_t = [], []
            for _ in range(args.repeats):  # interleaved, so neither gets a warmer cache than the other
                lazy_t.append(measure(lambda: list(bucket.list("jobs/")), 1)["median_s"])
                eager_t.append(measure(lambda: [i.etag for i in bucket.list("jobs/")], 1)["median_s"])
            lazy = {"runs": len(lazy_t), "median_s": round(statistics.median(lazy_t), 4), "times_s": lazy_t}
            eager = {"runs": len(eager_t), "median_s": round(statistics.median(eager_t), 4), "times_s": eager_t}
            sizes[str(n)] = {"ended_jobs": n, "live_jobs": args.live, "files_under_jobs": objects, "sweep": sweep,
                             "list_jobs_reading_every_etag": eager, "list_jobs_lazy": lazy,
                             "ratio_eager_over_lazy": round(eager["median_s"] / lazy["median_s"], 2),
                             "ratio_sweep_over_lazy_list": round(sweep["median_s"] / lazy["median_s"], 4)}
            print(f"  {objects:,} files under jobs/; sweep {secs(sweep['median_s'])}; "
                  f"list jobs/ lazy {secs(lazy['median_s'])}, reading every ETag {secs(eager['median_s'])}", flush=True)
    return {"seeding": seeding, "sizes": sizes}


# -- report --------------------------------------------------------------------------------------------------
def report(res: dict[str, Any], out: Path) -> str:
    s3, folder, a = res["s3"]["sizes"], res["folder"]["sizes"], res["args"]
    cols = list(s3)
    w = 22
    lines = ["", "=" * 100,
             f"sweep_cost: one sweep pass vs. a full listing of jobs/ ({a['live']} live jobs, running with a "
             "fresh heartbeat,", "so the sweep must leave them alone; it did, or the run would have failed).",
             "S3 = moto's server on 127.0.0.1, in this process; every request counted at the server.",
             "ended job = 13 objects: intake, manifest, events 1-5, 4 transcripts, worker log, progress; "
             "no live marker.",
             *(f"S3 seeding: {s['jobs']:,} ended jobs by {s['how']}: {s['objects']:,} objects in "
               f"{s['seconds']:.1f} s, {s['objects_per_s']:.0f}/s" for s in res["s3"]["seeding"]),
             "", f"{'S3':<34}" + "".join(f"{int(c):>{w},} ended" for c in cols)]

    def row(label: str, f) -> None:
        lines.append(f"{label:<34}" + "".join(f"{f(s3[c]):>{w + 6}}" for c in cols))

    row("objects under jobs/", lambda r: f"{r['objects_under_jobs']:,}")
    row("sweep pass: requests (median)", lambda r: f"{r['sweep']['requests']:g}")
    for op in sorted({op for c in cols for op in s3[c]["sweep"]["by_op"]},
                     key=lambda o: ["LIST", "GET", "HEAD", "PUT", "DELETE"].index(o)
                     if o in ["LIST", "GET", "HEAD", "PUT", "DELETE"] else 9):
        row(f"  {op}", lambda r, op=op: f"{r['sweep']['by_op'].get(op, 0):g}")
    row("  requests in each run", lambda r: "/".join(f"{x}" for x in r["sweep"]["requests_each_run"]))
    row("sweep pass: wall (median)", lambda r: f"{secs(r['sweep']['median_s'])} ({r['sweep']['runs']} runs)")
    row("baseline list jobs/: requests", lambda r: f"{r['baseline_list_jobs']['requests']:g} "
                                                   f"({fmt_ops(r['baseline_list_jobs']['by_op'])})")
    row("baseline list jobs/: wall", lambda r: f"{secs(r['baseline_list_jobs']['median_s'])} "
                                               f"({r['baseline_list_jobs']['runs']} run"
                                               f"{'s' if r['baseline_list_jobs']['runs'] > 1 else ''})")
    row("ratio sweep/baseline: requests", lambda r: f"{r['ratio_requests_sweep_over_baseline']:.3f}")
    row("ratio sweep/baseline: wall", lambda r: f"{r['ratio_time_sweep_over_baseline']:.3f}")
    row("moto: one LIST of an empty prefix", lambda r: secs(r["moto_empty_prefix_list_s"]))

    fcols = list(folder)
    lines += ["", f"{'folder backend':<34}" + "".join(f"{int(c):>{w},} ended" for c in fcols)]

    def frow(label: str, f) -> None:
        lines.append(f"{label:<34}" + "".join(f"{f(folder[c]):>{w + 6}}" for c in fcols))

    frow("files under jobs/", lambda r: f"{r['files_under_jobs']:,}")
    frow("sweep pass: wall (median)", lambda r: secs(r["sweep"]["median_s"]))
    frow("list jobs/, lazy ETags (now)", lambda r: secs(r["list_jobs_lazy"]["median_s"]))
    frow("list jobs/, every ETag read (old)", lambda r: secs(r["list_jobs_reading_every_etag"]["median_s"]))
    frow("ratio old/new listing", lambda r: f"{r['ratio_eager_over_lazy']:.2f}x")
    frow("ratio sweep/lazy listing", lambda r: f"{r['ratio_sweep_over_lazy_list']:.4f}")

    first, last = s3[cols[0]], s3[cols[-1]]
    grew = {op: (first["sweep"]["by_op"].get(op, 0), last["sweep"]["by_op"].get(op, 0))
            for op in set(first["sweep"]["by_op"]) | set(last["sweep"]["by_op"])}
    grew = {op: v for op, v in grew.items() if v[0] != v[1]}
    lines.append("")
    if len(cols) > 1:
        if grew:
            lines.append("NOT CONSTANT: the sweep's requests changed with the number of ended jobs: " +
                         ", ".join(f"{op} {a_:g} -> {b_:g}" for op, (a_, b_) in sorted(grew.items())))
        else:
            lines.append(f"The sweep's requests are the same at {int(cols[0]):,} and {int(cols[-1]):,} ended jobs "
                         f"({last['sweep']['requests']:g}: 2 index LISTs, then per live job")
            lines.append("1 LIST of its events and GETs of its events, manifest and progress); the baseline listing "
                         f"grows with the bucket ({first['baseline_list_jobs']['requests']:g} -> "
                         f"{last['baseline_list_jobs']['requests']:g} LISTs).")
    lines += [
        "The baseline is a lower bound of the old pass, which also GET each job's newest event and then read the",
        "live jobs as the sweep does now: at least " + ", ".join(
            f"{s3[c]['baseline_list_jobs']['requests'] + s3[c]['ended_jobs'] + a['live']:,.0f} requests at "
            f"{int(c):,} ended" for c in cols) + " per pass",
        "(listing + one GET per job; computed, not measured).",
        "Wall times in moto grow with the bucket even at a constant request count: moto filters and sorts every",
        "key on each LIST (see 'one LIST of an empty prefix'); S3 serves a prefix from its index.",
        f"runtime {res['runtime_s']:.0f} s; results in {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}",
        "=" * 100]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ended", type=int, default=10_000, help="ended jobs in the end (default 10,000)")
    ap.add_argument("--first", type=int, default=1_000, help="ended jobs at the first measurement (default 1,000)")
    ap.add_argument("--live", type=int, default=10, help="live (running) jobs (default 10)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement; medians are reported")
    ap.add_argument("--http-jobs", type=int, default=1_000,
                    help="ended jobs seeded through S3 PUTs; the rest go straight into moto's store (default 1,000)")
    ap.add_argument("--baseline-budget", type=float, default=90.0,
                    help="seconds the repeated S3 baseline listing may take per size (at least one run)")
    ap.add_argument("--out", default=str(RESULTS), help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args()
    if args.ended < 1 or args.live < 1 or args.repeats < 1:
        ap.error("--ended, --live and --repeats must be at least 1")
    checkpoints = sorted({min(args.first, args.ended), args.ended})

    started = time.perf_counter()
    logging.getLogger("bucketrun").setLevel(logging.WARNING)
    manifest = manifest_body()
    from bucketrun.events import codec

    manifest_bytes = codec.dumps(manifest)
    results: dict[str, Any] = {
        "benchmark": "sweep_cost", "at": codec.iso(codec.now()), "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "ended_job_objects": len(ended_job("20260101T000000000Z-aaaaaa", codec.now(), manifest_bytes)),
    }
    # The folder first: afterwards moto's store holds every S3 object in this process, and the garbage
    # collector walking that heap would slow the folder's listings.
    results["folder"] = run_folder(args, checkpoints, manifest_bytes)
    results["s3"] = run_s3(args, checkpoints, manifest_bytes)
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results, out))


if __name__ == "__main__":
    main()
