"""Runpod serverless around the attempt runtime: the job input names the job and carries its manifest and log
so far (never credentials); bucket credentials come from the worker's environment. Each image's handler module calls `main([its kinds])`.

Run locally with `python -m bucketrun.images.transcribe.handler --rp_serve_api --rp_api_port N` (the SDK's own
/run and /status server) or once with `--test_input '{"input": {...}}'`.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from bucketrun.events.errors import BucketrunError

from .attempt import draining, install_drain_handler, run_attempt, stop_after_drain
from .local_worker import preload


def handler(job: dict[str, Any]) -> dict[str, Any]:
    data = job.get("input") or {}
    missing = [k for k in ("job_id", "bucket", "attempt") if k not in data]
    if missing:
        return {"error": f"job input lacks {', '.join(missing)}"}
    try:
        handoff = {k: data[k] for k in ("events", "manifest") if k in data}  # spares reading them back
        return run_attempt(str(data["bucket"]), str(data["job_id"]), int(data["attempt"]), handoff=handoff)
    except BucketrunError as exc:  # the bucket itself failed: the sweep will see silence and retry
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if draining():  # the attempt ended as `lost` in the bucket; now let the platform stop us
            threading.Timer(1.0, stop_after_drain).start()


def main(kinds: list[str]) -> None:
    import runpod  # late: the runpod SDK (heavy) only in the serverless worker itself

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    install_drain_handler()
    if os.environ.get("BUCKETRUN_PRELOAD", "1") != "0":
        preload(kinds)
    runpod.serverless.start({"handler": handler})
