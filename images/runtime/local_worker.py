"""A warm local worker process for any kind: reads one job per stdin line, runs its attempt, answers one line.

The local launcher keeps one of these alive, as a serverless platform keeps a warm worker, so a kind's model
is loaded once (`--preload KIND`) and reused across jobs. SIGTERM drains the current attempt, then exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from bucketrun.events.errors import BucketrunError
from bucketrun.events.kinds import get_kind, load_entry_point

from .attempt import draining, install_drain_handler, run_attempt


def preload(kinds: list[str]) -> None:
    """Run each kind's warm-up (its `preload` entry point); a failure is reported per job instead."""
    for name in kinds:
        spec = get_kind(name)
        if spec is None or not spec.preload:
            continue
        try:
            load_entry_point(spec.preload)()
        except Exception as exc:  # noqa: BLE001
            logging.warning("preload of %s failed: %s", name, exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bucketrun-local-worker")
    parser.add_argument("--preload", action="append", default=[], metavar="KIND",
                        help="warm this kind before the first job (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker %(message)s")

    install_drain_handler()
    preload(args.preload)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            result = run_attempt(job["bucket"], job["job_id"], int(job["attempt"]))
        except (BucketrunError, KeyError, ValueError) as exc:
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
        if draining():
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
