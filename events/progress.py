"""The progress object: overwritten in place while a worker runs, tagged with its attempt so readers can
ignore a stale attempt's late writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import codec, keys
from .errors import NotFound
from .storage import Bucket


@dataclass
class Progress:
    attempt: int
    stage: str
    percent: float
    elapsed_s: float
    eta_s: float | None
    updated_at: str
    processed_s: float | None = None
    total_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_progress(bucket: Bucket, job_id: str, progress: Progress) -> None:
    bucket.put(keys.progress_key(job_id), codec.dumps(progress.to_json()), "application/json")


def read_progress(bucket: Bucket, job_id: str) -> dict[str, Any] | None:
    try:
        return codec.loads(bucket.get(keys.progress_key(job_id)).data)
    except NotFound:
        return None
