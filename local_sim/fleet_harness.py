"""Drive a fleet by hand, for tests and bench/fleet.py: submit and launch the job without starting anything,
start worker processes yourself (to kill -9 and restart them), and wait for the verified dataset."""

from __future__ import annotations

import sys
import time
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.fleet.dataset import verify_dataset
from bucketrun.events.lifecycle import read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit
from bucketrun.handlers.intake import intake
from bucketrun.handlers.launchers.base import BackendStatus


class ManualLauncher:
    """A launcher that starts nothing: the caller runs the workers (worker_cmd)."""

    name = "manual"

    def launch(self, bucket_url: str, job_id: str, attempt: int, manifest=None) -> str:
        return f"manual-{job_id}-{attempt}"

    def status(self, backend_id: str):
        return BackendStatus.IN_PROGRESS

    def cancel(self, backend_id: str) -> None:
        pass


def start_job(bucket_url: str, manifest: dict[str, Any]) -> str:
    """Submit and take the job through intake to `launched`, as the dispatcher would; returns the job id."""
    bucket = open_bucket(bucket_url)
    job_id, _ = submit(bucket, codec.dumps(manifest))
    out = intake(bucket, keys.inbox_key(f"{job_id}.json"), ManualLauncher(), "harness")
    if out.state != "launched":
        raise RuntimeError(f"job {out.job_id} is {out.state} after intake, not launched")
    return out.job_id


def worker_cmd(bucket_url: str, job_id: str, worker_ids: list[str], grace_s: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "bucketrun.images.fleet.run", "--bucket", bucket_url, "--job", job_id]
    for w in worker_ids:
        cmd += ["--worker", w]
    if grace_s is not None:
        cmd += ["--grace", str(grace_s)]
    return cmd


def wait_finished(bucket_url: str, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> dict[str, Any]:
    bucket = open_bucket(bucket_url)
    deadline = time.monotonic() + timeout_s
    view = read_view(bucket, job_id)
    while not (view.state and view.state.terminal) and time.monotonic() < deadline:
        time.sleep(poll_s)
        view = read_view(bucket, job_id, known=view)
    dataset = None
    if view.state and view.state.value == "succeeded":
        key = view.latest.detail["dataset"]["key"]
        dataset = codec.loads(bucket.get(key).data)
    return {"state": view.state.value if view.state else None, "detail": view.latest.detail if view.latest else {},
            "dataset": dataset}


def verify(bucket_url: str, dataset: dict[str, Any]) -> dict[str, Any]:
    return verify_dataset(open_bucket(bucket_url), dataset)
