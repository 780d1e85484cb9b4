"""Local processes as a fleet's instances: the simulation's capacity, one worker process per worker id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .base import LaunchError
from .fleet_base import FleetWorkers, Instance, worker_command


class LocalFleetBackend:
    name = "local"
    runs_here = True  # workers are children with this Python: needs.py answers for them

    def __init__(self, log_dir: Path | None = None, extra_env: dict[str, str] | None = None):
        self.log_dir = log_dir or Path(tempfile.gettempdir())
        self.extra_env = dict(extra_env or {})
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, bucket_url: str, job_id: str, workers: list[str], spec: FleetWorkers) -> list[Instance]:
        started = []
        for worker in workers:
            cmd = [sys.executable, *worker_command(bucket_url, job_id, worker)[1:]]
            log_path = self.log_dir / f"bucketrun-fleet-{job_id}-{worker}.log"
            log = open(log_path, "ab")  # noqa: SIM115
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, **self.extra_env},
                                        start_new_session=True)
            except OSError as exc:
                if not started:
                    raise LaunchError(f"cannot start a local fleet worker: {exc}") from exc
                break
            finally:
                log.close()
            self.procs[str(proc.pid)] = proc
            started.append(Instance(f"local-{proc.pid}", worker, "local", 0.0, {"pid": proc.pid, "log": str(log_path)}))
        return started

    @staticmethod
    def _pid(instance_id: str) -> int | None:
        tail = instance_id.removeprefix("local-")
        return int(tail) if tail.isdigit() else None

    def alive(self, instance_id: str) -> bool | None:
        pid = self._pid(instance_id)
        if pid is None:
            return False
        proc = self.procs.get(str(pid))
        if proc is not None:
            return proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return None
        return True

    def stop(self, instance_id: str) -> None:
        """A local process cannot be kept halted for later: stopping it is ending it."""
        self.terminate(instance_id)

    def price(self, instance_id: str) -> float | None:
        return 0.0

    def terminate(self, instance_id: str) -> None:
        """SIGTERM first (the worker commits what it finished), SIGKILL if it outlives its grace period."""
        pid = self._pid(instance_id)
        if pid is None or not self.alive(instance_id):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        proc = self.procs.get(str(pid))
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
