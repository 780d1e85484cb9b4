"""The GPU image's entry point: runpod.serverless.start around the same run_job the local launcher runs.

Run locally with `python -m bucketrun.images.transcribe.handler --rp_serve_api --rp_api_port N` (the SDK's own
/run and /status server) or once with `--test_input '{"input": {...}}'`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bucketrun.events.errors import BucketrunError

from .worker import run_job

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Input names only the job; bucket credentials come from this worker's environment."""
    data = job.get("input") or {}
    missing = [k for k in ("job_id", "bucket", "attempt") if k not in data]
    if missing:
        return {"error": f"job input lacks {', '.join(missing)}"}
    try:
        return run_job(str(data["bucket"]), str(data["job_id"]), int(data["attempt"]))
    except BucketrunError as exc:  # the bucket itself failed: the sweep will see silence and retry
        return {"error": f"{type(exc).__name__}: {exc}"}


def preload() -> None:
    """Load the image's model at start-up, so the first job is warm too."""
    from . import model

    if os.environ.get("BUCKETRUN_PRELOAD", "1") != "0":
        try:
            model.load(model.choose(os.environ.get("BUCKETRUN_MODEL") or None))
        except Exception as exc:  # noqa: BLE001 - reported per job instead
            logging.warning("preload failed: %s", exc)


if __name__ == "__main__":
    import runpod

    preload()
    runpod.serverless.start({"handler": handler})
