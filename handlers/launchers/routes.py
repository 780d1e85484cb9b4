"""Which launcher runs which kind, and a job that names host agents routed to them."""

from __future__ import annotations

from collections.abc import Callable

from bucketrun.events.failures import FailureClass

from .agent import AgentLauncher
from .base import Launcher, LaunchError


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
