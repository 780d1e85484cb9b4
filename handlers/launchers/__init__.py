"""Launch backends, one module each behind one interface (base.Launcher), and the routing of kinds to them.

`runpod` (serverless endpoints over HTTP) and `local` (a warm local process) today; rented pods and host agents
join as modules here. tests/test_launchers.py runs one contract over every backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from bucketrun.events.failures import FailureClass
from bucketrun.events.kinds import get_kind

from .agent import AgentLauncher
from .base import BackendStatus, Launcher, LaunchError
from .fleet import FleetLauncher, cloud_backend
from .routes import Routes, as_routes
from .runpod import RunpodLauncher

__all__ = ["BackendStatus", "Launcher", "LaunchError", "Routes", "as_routes", "routes_from_env"]


def endpoint_env(kind_suffix: str) -> str:
    return f"RUNPOD_ENDPOINT_ID_{kind_suffix}"


def routes_from_env(runpod_api_key: Callable[[], str], vast_api_key: Callable[[], str | None] | None = None) -> Routes:
    """The cloud's routing: each kind goes to BUCKETRUN_LAUNCHER_<KIND> (else its spec's backend); a Runpod
    kind to its own endpoint, RUNPOD_ENDPOINT_ID_<KIND> (RUNPOD_ENDPOINT_ID serves kinds without their own)."""
    def make(kind: str) -> Launcher:
        spec = get_kind(kind)
        if spec is None:
            raise LaunchError(f"unknown kind {kind!r}", FailureClass.CONFIG_ERROR)
        backend = os.environ.get(f"BUCKETRUN_LAUNCHER_{spec.env_suffix}") or spec.launcher
        if backend == "runpod":
            endpoint = os.environ.get(endpoint_env(spec.env_suffix)) or os.environ.get("RUNPOD_ENDPOINT_ID", "")
            if not endpoint:
                raise LaunchError(f"no Runpod endpoint for kind {kind!r}: set {endpoint_env(spec.env_suffix)}",
                                  FailureClass.CONFIG_ERROR)
            return RunpodLauncher(endpoint, api_key=runpod_api_key())
        if backend == "fleet":
            # each fleet's manifest names its cloud (runpod, vast, skypilot); keys are read when first needed
            return FleetLauncher(factory=lambda name: cloud_backend(name, runpod_api_key, vast_api_key))
        if backend == "agent":
            return AgentLauncher()  # host agents claim the offers it writes; no provider key is involved
        raise LaunchError(f"launch backend {backend!r} (kind {kind!r}) is not available in this deployment",
                          FailureClass.CONFIG_ERROR)

    return Routes(factory=make)
