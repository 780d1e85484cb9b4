"""One claimed offer, run by an agent in a child process: `run` is the attempt runtime (any kind), `preflight`
is a training window's host checks. A child of its own keeps SIGTERM draining and a crash contained."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def submit_next_stage(bucket_url: str, job_id: str) -> str | None:
    """A window's `then` stage goes in only after `succeeded` is written, with the verified checkpoint named. Its
    inbox key is derived from this job and created once, so a repeat (a retried agent) drops nothing new."""
    from bucketrun.events import codec, keys
    from bucketrun.events.errors import PreconditionFailed
    from bucketrun.events.kinds.train_window import next_stage
    from bucketrun.events.lifecycle import read_view
    from bucketrun.events.manifest import load_job_manifest, parse_manifest
    from bucketrun.events.storage import open_bucket

    bucket = open_bucket(bucket_url)
    manifest = load_job_manifest(bucket, job_id)
    if manifest.kind != "train_window" or manifest.body.then is None:
        return None
    mirror = read_view(bucket, job_id).history[-1].detail.get("mirror") or {}
    raw = codec.dumps(next_stage(job_id, manifest.body, mirror))
    parse_manifest(raw)  # intake would reject it the same way; say so here, in this attempt's log
    key = keys.inbox_key(f"{job_id}-then.json")
    try:
        bucket.create(key, raw, "application/json")
    except PreconditionFailed:
        pass
    return key


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bucketrun.images.runtime.agent_task")
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--attempt", type=int, required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--role", choices=("run", "preflight"), required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.role == "run":
        from .attempt import install_drain_handler, run_attempt

        install_drain_handler()
        out = run_attempt(args.bucket, args.job, args.attempt, writer=f"agent:{args.label}")
        if out.get("status") == "succeeded":
            try:
                out["then"] = submit_next_stage(args.bucket, args.job)
            except Exception as exc:  # noqa: BLE001 - the window itself succeeded; the log says why no next stage
                logging.getLogger("bucketrun.agent").error("next stage not submitted: %s", exc)
    else:
        from bucketrun.events.storage import open_bucket
        from bucketrun.images.train_window.preflight import run_preflight

        out = run_preflight(open_bucket(args.bucket), args.job, args.attempt, args.label)
    print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
