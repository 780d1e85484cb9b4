"""One claimed offer, run by an agent in a child process: `run` is the attempt runtime (any kind), `preflight`
is a training window's host checks. A child of its own keeps SIGTERM draining and a crash contained."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from bucketrun.events import stages
from bucketrun.events.storage import open_bucket

from .attempt import install_drain_handler, run_attempt


def submit_next_stage(bucket_url: str, job_id: str) -> str | None:
    """A window's `then` stage goes in right after `succeeded` is written, with the verified checkpoint named; the
    sweep drops it instead if this process dies in between (events/stages.py)."""
    return stages.submit_next_stage(open_bucket(bucket_url), job_id).get("inbox")


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
        install_drain_handler()
        out = run_attempt(args.bucket, args.job, args.attempt, writer=f"agent:{args.label}")
        if out.get("status") == "succeeded":
            try:
                out["then"] = submit_next_stage(args.bucket, args.job)
            except Exception as exc:  # noqa: BLE001 - the window itself succeeded; the log says why no next stage
                logging.getLogger("bucketrun.agent").error("next stage not submitted: %s", exc)
    else:
        # late: psutil and huggingface_hub (heavy, the agent extra) only for a window's preflight
        from bucketrun.images.train_window.preflight import run_preflight

        out = run_preflight(open_bucket(args.bucket), args.job, args.attempt, args.label)
    print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
