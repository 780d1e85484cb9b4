"""A local process as capacity: one warm worker (bucketrun.images.runtime.local_worker) that runs any kind's
attempt, restarted if it dies. The simulation uses it; so can a workstation with a GPU."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bucketrun.events import needs
from bucketrun.events.failures import FailureClass
from bucketrun.events.kinds import kind_names

from .base import BackendStatus, LaunchError

log = logging.getLogger("bucketrun.sim")


class LocalProcessLauncher:
    name = "local"

    def __init__(self, preload: str | list[str] | None = "default", log_path: Path | None = None):
        """`preload`: kinds to warm before the first job; "default" warms every registered kind."""
        if preload == "default":
            preload = kind_names()
        self.preload = [preload] if isinstance(preload, str) else list(preload or [])
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"bucketrun-local-worker-{os.getpid()}.log"
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._launched = 0
        self.results: list[dict] = []

    def start(self) -> None:
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._proc is not None:
            log.warning("local worker exited with %s; starting a new one", self._proc.returncode)
        cmd = [sys.executable, "-m", "bucketrun.images.runtime.local_worker"]
        for kind in self.preload:
            cmd += ["--preload", kind]
        logfile = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logfile,
                                          text=True, bufsize=1)
        except OSError as exc:
            raise LaunchError(f"cannot start the local worker: {exc}") from exc
        finally:
            logfile.close()
        self._ready.clear()
        threading.Thread(target=self._read, args=(self._proc,), daemon=True, name="local-worker-out").start()
        return self._proc

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ready"):
                self._ready.set()
                continue
            self.results.append(msg)
            log.info("worker: %s", msg)

    def wait_ready(self, timeout: float = 120) -> bool:
        return self._ready.wait(timeout)

    runs_here = True  # its worker is a child on this machine, with this Python: needs.py can answer for it

    def launch(self, bucket_url: str, job_id: str, attempt: int, manifest=None) -> str:
        if manifest is not None:
            gone = needs.missing(manifest.kind, manifest.body, bucket_url)
            if gone:  # refused now, with the line to run, instead of a worker dying of an ImportError
                raise LaunchError(needs.refusal(manifest.kind, gone), FailureClass.CONFIG_ERROR)
        with self._lock:
            proc = self._ensure()
            line = json.dumps({"bucket": bucket_url, "job_id": job_id, "attempt": attempt})
            try:
                assert proc.stdin is not None
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise LaunchError(f"the local worker did not accept the job: {exc}") from exc
            self._launched += 1
            return f"local-{proc.pid}-{self._launched}"

    def _pid_of(self, backend_id: str) -> int | None:
        parts = backend_id.split("-")
        return int(parts[1]) if len(parts) == 3 and parts[0] == "local" and parts[1].isdigit() else None

    def logs(self, backend_id: str) -> list[str]:
        return [str(self.log_path)]

    def status(self, backend_id: str) -> BackendStatus:
        """A live worker with that pid may still be on the job; a dead one has lost it."""
        proc = self._proc
        alive = proc is not None and proc.poll() is None and proc.pid == self._pid_of(backend_id)
        return BackendStatus.IN_PROGRESS if alive else BackendStatus.UNKNOWN

    def cancel(self, backend_id: str) -> None:
        """A silent worker process is killed (and restarted on the next launch); a healthy one stops by
        itself when its heartbeat sees the job left its attempt."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.pid == self._pid_of(backend_id) and proc.poll() is None:
                proc.kill()
                proc.wait()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def close(self, timeout: float = 10) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
