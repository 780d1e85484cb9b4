"""The one interface every launch backend meets; tests/test_launchers.py runs one contract over each."""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from bucketrun.events.errors import BucketrunError
from bucketrun.events.failures import FailureClass
from bucketrun.events.manifest import JobManifest


class LaunchError(BucketrunError):
    """The capacity provider refused or failed the launch; `cls` says whether a retry can help."""

    def __init__(self, message: str, cls: FailureClass = FailureClass.CODE_ERROR):
        super().__init__(message)
        self.cls = cls


class BackendStatus(str, Enum):
    """What a backend says of one launched attempt (Runpod's words, shared by every launcher)."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    UNKNOWN = "UNKNOWN"  # the backend has no such job (lost, expired, or never accepted)


class Launcher(Protocol):
    name: str

    def launch(self, bucket_url: str, job_id: str, attempt: int, manifest: JobManifest) -> str:
        """Start the worker for this attempt; returns the backend's id. The input names only the job; the
        manifest is there for the backend's own options (its `launch.<backend>` section)."""
        ...

    def status(self, backend_id: str) -> BackendStatus: ...

    def cancel(self, backend_id: str) -> None: ...
