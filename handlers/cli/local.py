"""Commands that run the cloud on this machine: the simulation and the demo."""

from __future__ import annotations

import logging
import sys

from bucketrun.events import keys
from bucketrun.events.storage import resolve_bucket_url
from bucketrun.handlers.launchers.local import LocalProcessLauncher
from bucketrun.local_sim.demo import run_demo
from bucketrun.local_sim.sim import Simulation

from .common import bucket_of, finish, number, progress_printer


def cmd_sim(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):  # "Found credentials in ..." on every start
        logging.getLogger(noisy).setLevel(logging.WARNING)
    bucket = bucket_of(args, create=True)
    launcher = LocalProcessLauncher(preload=None if args.no_preload else "default")
    launcher.start()
    sim = Simulation(bucket, launcher, poll_s=args.poll, sweep_s=args.sweep, poll_max_s=args.poll_max,
                     sweep_max_s=args.sweep_max, snapshot_s=args.snapshot_every)
    print(f"bucketrun sim: watching {bucket.url} (Ctrl-C to stop)", file=sys.stderr)
    try:
        sim.run()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        launcher.close()
    return 0


def cmd_demo(args) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url = resolve_bucket_url(args.bucket)
    print(f"bucket: {url}", file=sys.stderr)
    progress, update = progress_printer()
    with progress:
        result = run_demo(url, on_job=lambda job_id: progress.console.print(f"job: {job_id}"), on_update=update)
    if result.status["state"] != "succeeded":
        return finish(result.status)
    print("\n--- transcript.srt ---")
    print(result.srt)
    print("\n--- keys written ---")
    for key, size in result.keys:
        print(f"{key}  ({size} B)")
    print(f"{keys.inbox_key(result.job_id + '.json')}  (the dropped manifest, kept untouched)")
    return 0


# zero would make the simulation list the bucket in a busy loop
_seconds = number(float, 0.001, 86400.0, "a number of seconds")


def register(add) -> None:
    p = add("sim", cmd_sim, "the local simulation: watch (folder) or poll (s3) the inbox and run jobs")
    p.add_argument("--poll", type=_seconds, default=1.0,
                   help="seconds between listings of an s3:// inbox while manifests arrive")
    p.add_argument("--poll-max", type=_seconds, default=10.0,
                   help="while none arrive, the wait doubles up to this (= --poll: no backoff)")
    p.add_argument("--sweep", type=_seconds, default=5.0, help="seconds between sweeps while jobs are live")
    p.add_argument("--sweep-max", type=_seconds, default=30.0,
                   help="while none are live, the wait doubles up to this (= --sweep: no backoff)")
    p.add_argument("--snapshot-every", type=number(float, 0, 86400.0, "a number of seconds"), default=None,
                   metavar="S", help="refresh the bucket's dashboard snapshot (once `bucketrun ui --snapshot` wrote "
                                     "one) at most every S seconds, only when something changed (default: what "
                                     "that command recorded, 60; 0: never)")
    p.add_argument("--no-preload", action="store_true", help="load the model on the first job, not at start")
    add("demo", cmd_demo, "transcribe the bundled speech clip end to end on a local bucket")
