"""A warm local worker process: reads one job per stdin line, runs it, answers one line per job.

The local launcher keeps one of these alive, as a serverless platform keeps a warm worker, so the
model is loaded once and reused across jobs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from bucketrun.events.errors import BucketrunError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bucketrun-local-worker")
    parser.add_argument("--preload", default=None, help="load this model before the first job ('default' = auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker %(message)s")
    from . import model
    from .worker import run_job

    if args.preload:
        try:
            model.load(model.choose(None if args.preload == "default" else args.preload))
        except Exception as exc:  # noqa: BLE001 - a failed preload is reported per job instead
            logging.warning("preload failed: %s", exc)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            result = run_job(job["bucket"], job["job_id"], int(job["attempt"]))
        except (BucketrunError, KeyError, ValueError) as exc:
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
