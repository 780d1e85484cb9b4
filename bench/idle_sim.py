"""Benchmark what an idle `bucketrun sim` costs on S3, and what old inbox objects add to each poll.

Why: every request to S3 is billed, and an idle simulation polled the inbox every second and swept every 5 s.
It now backs both off while nothing happens (`local_sim/sim.py`, `Pacing`), and `bucketrun gc` removes inbox
objects whose jobs ended long ago, so a listing of the inbox stops growing with every manifest ever dropped.

What, in one run, on moto's S3 server on 127.0.0.1, every request counted at the server (werkzeug's access log,
as bench/cloud_path.py does):
  1. an idle simulation (empty inbox, no jobs) with the old fixed intervals (`--poll 1 --poll-max 1 --sweep 5
     --sweep-max 5`: the flags keep the old behaviour reachable; idle, the sweep's probe makes exactly the two
     listings the old sweep pass made) for `--seconds`, then one with the new defaults for two windows of
     `--seconds` each: the first includes the ramp from 1 s up to the cap, the second is the steady state;
  2. the cost of one steady-state poll (a simulation that has seen every object: one full listing of inbox/)
     with an empty inbox, then with `--old-inbox` (5,000) old objects: each a manifest dropped 30 days ago whose
     job (claim, intake.json, manifest, five events: submitted .. succeeded) ended then. They are put straight
     into moto's in-process store (`S3Backend.put_object`, the call its PUT handler ends in; no HTTP) with
     LastModified set 30 days back. Also what a restarted simulation pays to re-see one of them (intake is
     idempotent, but reading its way to "already taken in" costs requests), over `--resee` of them;
  3. `bucketrun gc`'s pass (`handlers/gc.py`, default cutoff 7 days) over that inbox: requests and time; then
     the steady-state poll again.

Caveat: moto filters every key in the bucket on each LIST, so its wall times grow with the bucket; the request
counts do not depend on that.

Run:  .venv/bin/python bench/idle_sim.py                                     # ~4-5 minutes
      .venv/bin/python bench/idle_sim.py --seconds 20 --old-inbox 500        # smoke run, ~1-2 minutes
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from datetime import timedelta

from cloud_path import S3Counter, start_counted_moto  # the same counted server as the cloud-path benchmark

OLD = {"poll_s": 1.0, "poll_max_s": 1.0, "sweep_s": 5.0, "sweep_max_s": 5.0}
MANIFEST = {"kind": "transcribe", "source": {"key": "media/talk.ogg"}, "options": {"language": "en"}}


def per_minute(ops: dict[str, int], seconds: float) -> dict[str, float]:
    return {k: round(v * 60 / seconds, 1) for k, v in sorted(ops.items())}


def fmt(ops: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:g}" for k, v in ops.items() if k != "total")
    return f"{ops.get('total', 0):g} ({parts})" if parts else f"{ops.get('total', 0):g}"


def idle_windows(bucket, counter: S3Counter, settings: dict[str, float], windows: int, seconds: float) -> list:
    """Start a simulation on an empty bucket and count requests per window of `seconds` from its start."""
    from bucketrun.handlers.launchers.local import LocalProcessLauncher
    from bucketrun.local_sim.sim import Simulation

    sim = Simulation(bucket, LocalProcessLauncher(preload=None), **settings)  # never launches: nothing arrives
    counter.take()
    sim.start_thread()
    out = []
    try:
        for _ in range(windows):
            time.sleep(seconds)
            out.append(per_minute(counter.take(), seconds))
    finally:
        sim.stop()
    return out


def seed_old_inbox(bucket, store, bucket_name: str, n: int) -> None:
    """`n` manifests dropped 30 days ago under unordered names, each with the objects its ended job left."""
    from bucketrun.events import codec, keys
    from bucketrun.events.lifecycle import JobState, Transition
    from bucketrun.events.kinds.validate import parse_manifest

    then = codec.now() - timedelta(days=30)
    raw = codec.dumps(MANIFEST)
    manifest = codec.dumps(parse_manifest(raw).to_json())

    def put(key: str, body: bytes, modified=None):
        fake = store.put_object(bucket_name, bucket.full_key(key), body)
        if modified is not None:
            fake.last_modified = modified.replace(tzinfo=None)  # moto keeps naive UTC
        return fake

    for i in range(n):
        key = keys.inbox_key(f"{secrets.token_hex(6)}-{i}.json")
        etag = put(key, raw, then).etag
        job_id = keys.new_job_id(then)
        token = keys.object_token(key, etag)
        at = codec.iso(then)
        put(keys.idempotency_key(token), codec.dumps({"job_id": job_id, "token": token, "inbox_key": key, "at": at}))
        put(keys.intake_key(job_id), codec.dumps({"token": token, "inbox_key": key, "at": at}))
        put(keys.manifest_key(job_id), manifest)
        for seq, state in enumerate((JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING,
                                     JobState.SUCCEEDED), start=1):
            detail = {"inbox": {"key": key, "etag": etag}} if seq == 1 else {}
            put(keys.event_key(job_id, seq), codec.dumps(Transition(seq, state, at, 1, "bench", detail).to_json()))


def steady_poll(bucket, counter: S3Counter) -> dict[str, int]:
    """One poll of a simulation that has already seen every object in the inbox."""
    from bucketrun.events import keys
    from bucketrun.handlers.launchers.local import LocalProcessLauncher
    from bucketrun.local_sim.sim import Simulation

    sim = Simulation(bucket, LocalProcessLauncher(preload=None), sweep_s=None)
    sim.seen = {info.key: info.etag for info in bucket.list(keys.INBOX)}  # what its first pass left behind
    counter.take()
    new = sim.reconcile()
    assert new == 0, new
    return counter.take()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each idle window (default 60)")
    ap.add_argument("--old-inbox", type=int, default=5000, help="old inbox objects for the listing cost")
    ap.add_argument("--resee", type=int, default=100, help="old objects a restarted sim re-sees for its cost")
    args = ap.parse_args()
    logging.getLogger("bucketrun").setLevel(logging.WARNING)

    moto, counter = start_counted_moto()
    try:
        run(args, counter)
    finally:
        moto.stop()


def run(args: argparse.Namespace, counter: S3Counter) -> None:
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from bucketrun.events import codec, keys
    from bucketrun.events.storage import open_bucket
    from bucketrun.handlers import gc
    from bucketrun.handlers.launchers.local import LocalProcessLauncher
    from bucketrun.local_sim.sim import Simulation

    s3 = boto3.client("s3")
    for name in ("idle-old", "idle-new", "idle-inbox"):
        s3.create_bucket(Bucket=name)
    secs = args.seconds

    print(f"1. idle simulation, empty bucket, requests per minute (windows of {secs:g} s)", flush=True)
    old = idle_windows(open_bucket("s3://idle-old"), counter, OLD, 1, secs)[0]
    print(f"   old fixed intervals (--poll 1 --poll-max 1 --sweep 5 --sweep-max 5): {fmt(old)}", flush=True)
    first, steady = idle_windows(open_bucket("s3://idle-new"), counter, {}, 2, secs)
    print(f"   new defaults (--poll 1 --poll-max 10 --sweep 5 --sweep-max 30), first window: {fmt(first)}")
    print(f"   new defaults, second window (steady state): {fmt(steady)}")
    print(f"   ratio new steady / old: {steady['total'] / old['total']:.3f}", flush=True)

    bucket = open_bucket("s3://idle-inbox")
    print("2. one steady-state poll (a full listing of inbox/)", flush=True)
    print(f"   empty inbox: {fmt(steady_poll(bucket, counter))}", flush=True)
    t0 = time.perf_counter()
    seed_old_inbox(bucket, s3_backends[DEFAULT_ACCOUNT_ID]["global"], "idle-inbox", args.old_inbox)
    print(f"   (seeded {args.old_inbox:,} old inbox objects and their ended jobs in {time.perf_counter() - t0:.0f} s)")
    print(f"   {args.old_inbox:,} old inbox objects: {fmt(steady_poll(bucket, counter))}", flush=True)

    fresh = Simulation(bucket, LocalProcessLauncher(preload=None), sweep_s=None)  # a restart: nothing seen yet
    sample = [info for _, info in zip(range(args.resee), bucket.list(keys.INBOX))]
    counter.take()
    for info in sample:
        fresh.handle(info)
    resee = counter.take()
    assert fresh.dispatched == len(sample), "re-seeing an old object failed"
    print(f"   a restarted sim re-seeing {len(sample)} of them: {fmt(resee)}, "
          f"{resee['total'] / len(sample):.1f} per object", flush=True)

    print("3. bucketrun gc (older than 7 days)", flush=True)
    counter.take()
    t0 = time.perf_counter()
    verdicts = [v for _, v in gc.collect(bucket, codec.now() - timedelta(days=7))]
    took = time.perf_counter() - t0
    cost = counter.take()
    removed = sum(v is gc.Verdict.REMOVE for v in verdicts)
    print(f"   removed {removed:,} of {len(verdicts):,}: {fmt(cost)} requests, "
          f"{cost['total'] / max(len(verdicts), 1):.1f} per object, {took:.0f} s on moto", flush=True)
    print(f"   after gc: {fmt(steady_poll(bucket, counter))}", flush=True)


if __name__ == "__main__":
    main()
