"""The launchers a dispatcher on this machine routes to, for `bucketrun sim` and `bucketrun listen` alike: one
process launcher for every kind, fleets on local worker processes, training windows to host agents."""

from __future__ import annotations

from ..launchers.agent import AgentLauncher
from ..launchers.base import Launcher
from ..launchers.fleet import FleetLauncher
from ..launchers.fleet_local import LocalFleetBackend
from ..launchers.routes import Routes


def local_routes(launcher: Launcher) -> tuple[Routes, FleetLauncher]:
    """The routes, and the fleet launcher the daemon must close on exit (its workers are drained, then stopped)."""
    fleets = FleetLauncher({"local": LocalFleetBackend()})
    return Routes(default=launcher, by_kind={"fleet": fleets, "train_window": AgentLauncher()}), fleets
