"""The one interface every launch backend meets; tests/test_launchers.py runs one contract over each."""

from __future__ import annotations

from enum import Enum
from collections.abc import Callable
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




class Routes:
    """Which launcher runs which kind. A deployment routes each kind to its own backend and endpoint; the
    simulation sends every kind to its one local launcher."""

    def __init__(self, default: Launcher | None = None, by_kind: dict[str, Launcher] | None = None,
                 factory: "Callable[[str], Launcher] | None" = None):
        self.default, self.by_kind, self.factory = default, dict(by_kind or {}), factory

    def for_kind(self, kind: str) -> Launcher:
        if kind not in self.by_kind and self.factory is not None:
            self.by_kind[kind] = self.factory(kind)  # LaunchError (config_error) when the kind has no backend
        launcher = self.by_kind.get(kind) or self.default
        if launcher is None:
            raise LaunchError(f"no launcher is configured for kind {kind!r}", FailureClass.CONFIG_ERROR)
        return launcher

    def for_job(self, manifest) -> Launcher:
        """A manifest that names host agents (launch.agent.labels) runs on them, whatever its kind's route."""
        if manifest.launch.agent is not None and manifest.kind != "fleet":
            if "_agent" not in self.by_kind:
                from .agent import AgentLauncher

                self.by_kind["_agent"] = AgentLauncher()
            return self.by_kind["_agent"]
        return self.for_kind(manifest.kind)

    def close(self) -> None:
        for launcher in {id(x): x for x in [self.default, *self.by_kind.values()] if x is not None}.values():
            close = getattr(launcher, "close", None)
            if close:
                close()


def as_routes(launchers: "Routes | Launcher") -> Routes:
    """Callers may pass one launcher for every kind."""
    return launchers if isinstance(launchers, Routes) else Routes(default=launchers)
