"""Run the training command detached, in its own process group, and watch it: its log (streamed to the bucket
in chunks), the progress file, and the clock. What it saw is an `Outcome`; `triage` turns a bad one into a
failure class and a message that says what to do. Silence is never success."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bucketrun.events import codec
from bucketrun.events.failures import FailureClass

BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SYSTEMROOT")
TAIL_LINES = 40
# A training step in the log ("step 3/10", "step=3", "Step: 3"): training has begun, whatever the progress file says.
STEP_RE = re.compile(rb"\bstep\s*[:=]?\s*\d+", re.IGNORECASE)
PIDFILE = ".bucketrun-run.json"  # in the run directory: the process group of the run that writes there
DISK_FULL_RE = re.compile(r"No space left on device|Errno 28|ENOSPC|Disk quota exceeded|EDQUOT|Errno 122")
PATH_ERROR_RE = re.compile(r"Permission denied|Errno 13|Read-only file system|Errno 30|No such file or directory"
                           r"|Errno 2\b|PermissionError|FileNotFoundError|IsADirectoryError|NotADirectoryError")


@dataclass
class Outcome:
    reason: str  # exited | first_log_timeout | stall | wall
    rc: int | None
    first_log_s: float | None  # seconds from start to the first log line
    silent_s: float  # seconds since the last log line or progress-file change, at the end
    wall_s: float
    step: int | None  # the progress file's step when it ended
    tail: list[str] = field(default_factory=list)
    lines: int = 0


def child_env(names: list[str]) -> dict[str, str]:
    """Only the basics and the variables the manifest names: the agent's bucket credentials stay with it."""
    return {k: os.environ[k] for k in (*BASE_ENV, *names) if k in os.environ}


def read_step(path: Path, step_field: str) -> int | None:
    """The progress file's step, or None while it is absent or unreadable (a torn write reads as no step)."""
    try:
        value: Any = codec.loads(path.read_bytes())
        for part in step_field.split("."):
            value = value[part]
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def read_metrics(path: Path) -> dict[str, float]:
    """Every numeric field of the progress file (nested ones dotted: `eval.loss`), as it was last written: the
    report's metrics at the step the run ended on."""
    try:
        data: Any = codec.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    found: dict[str, float] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = value

    walk(data, "")
    return found


def stop_group(pgid: int, grace_s: float = 10.0, reap: Callable[[], Any] | None = None) -> None:
    """SIGTERM to the whole group, then SIGKILL after `grace_s`: a trainer's dataloader children go too.
    `reap` collects our own child, so its zombie does not keep the group looking alive."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_previous(run_dir: Path) -> int | None:
    """A run left behind by a killed agent still writing into this run directory is stopped first: two
    trainers never share a run directory. Returns the group it stopped."""
    pidfile = run_dir / PIDFILE
    try:
        pgid = int(codec.loads(pidfile.read_bytes())["pgid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        pidfile.unlink(missing_ok=True)
        return None
    stop_group(pgid)
    pidfile.unlink(missing_ok=True)
    return pgid


class Supervisor:
    def __init__(self, argv: list[str], cwd: Path | None, env: dict[str, str], progress_file: Path,
                 step_field: str, first_log_s: float, stall_s: float, max_wall_s: float,
                 ship: Callable[[bytes], None] | None = None, ship_every_s: float = 10.0,
                 on_step: Callable[[int], None] | None = None, check: Callable[[], None] | None = None,
                 pidfile: Path | None = None):
        self.argv, self.cwd, self.env = argv, cwd, env
        self.progress_file, self.step_field = progress_file, step_field
        self.first_log_s, self.stall_s, self.max_wall_s = first_log_s, stall_s, max_wall_s
        self.ship, self.ship_every_s = ship, ship_every_s
        self.on_step, self.check, self.pidfile = on_step, check, pidfile
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.pending = bytearray()
        self.lock = threading.Lock()
        self.lines = 0
        self.bytes = 0
        self.first_line_at: float | None = None  # the first output of any kind
        self.last_activity = time.monotonic()
        self.step_logged = False  # the log showed a training step
        self.drawing = b""  # the line being drawn: a `\r` progress bar has no newline to wait for

    def _read(self, stream) -> None:
        """Activity is output by the byte, not by the line: a trainer that prints a banner and then only a `\r`
        download bar (tqdm, huggingface_hub) is busy, not silent. Lines split on `\n` and `\r` for the tail."""
        fd = stream.fileno()
        while chunk := os.read(fd, 65536):
            now = time.monotonic()
            with self.lock:
                self.bytes += len(chunk)
                self.lines += chunk.count(b"\n")
                self.first_line_at = self.first_line_at or now
                self.last_activity = now
                self.pending += chunk
                *done, self.drawing = re.split(rb"[\r\n]", self.drawing + chunk)
                self.drawing = self.drawing[-4096:]
                for line in done:
                    if line.strip():
                        self.tail.append(line.decode("utf-8", "replace"))
                    self.step_logged = self.step_logged or bool(STEP_RE.search(line))

    def _tail(self) -> list[str]:
        drawing = self.drawing.decode("utf-8", "replace").strip()
        return list(self.tail) + ([drawing] if drawing else [])

    def _flush(self) -> None:
        with self.lock:
            chunk, self.pending = bytes(self.pending), bytearray()
        if chunk and self.ship is not None:
            self.ship(chunk)

    def run(self) -> Outcome:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return Outcome("exited", 127, None, 0.0, 0.0, None, [f"cannot start {self.argv[0]}: {exc}"])
        if self.pidfile is not None:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            self.pidfile.write_bytes(codec.dumps({"pgid": proc.pid, "argv": self.argv, "at": codec.iso(codec.now())}))
        reader = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        reader.start()
        step, mtime, shipped_at, reason = None, None, time.monotonic(), "exited"
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                try:
                    m = self.progress_file.stat().st_mtime_ns
                except OSError:
                    m = None
                if m != mtime:
                    mtime, new = m, read_step(self.progress_file, self.step_field)
                    if new is not None and new != step:
                        step = new
                        with self.lock:
                            self.last_activity = now
                        if self.on_step:
                            self.on_step(step)
                if now - shipped_at >= self.ship_every_s:
                    self._flush()
                    shipped_at = now
                if self.check:
                    self.check()  # Superseded or Drained: the finally below stops the run
                with self.lock:
                    last = self.last_activity
                    began = step is not None or self.step_logged or bool(STEP_RE.search(self.drawing))
                if not began and now - started > self.first_log_s:  # no training step yet: materialization
                    reason = "first_log_timeout"
                elif began and now - last > self.stall_s:  # silence once training began
                    reason = "stall"
                elif now - started > self.max_wall_s:
                    reason = "wall"
                if reason != "exited":
                    break
        finally:
            if proc.poll() is None:
                stop_group(proc.pid, reap=proc.poll)
                proc.wait()
            reader.join(timeout=5)
            self._flush()
            if self.pidfile is not None:
                self.pidfile.unlink(missing_ok=True)
        end = time.monotonic()
        final = read_step(self.progress_file, self.step_field)
        with self.lock:
            return Outcome(reason, proc.returncode if reason == "exited" else None,
                           None if self.first_line_at is None else round(self.first_line_at - started, 3),
                           round(end - self.last_activity, 3), round(end - started, 3),
                           final if final is not None else step, self._tail(), self.lines)


def triage(out: Outcome, target_step: int, first_log_s: float, stall_s: float,
           disk_problem: str | None = None, attempts_left: bool = False,
           cache_mode: str | None = None) -> tuple[FailureClass, str]:
    """A failed run's class and a message that says what to do, judged by when it failed. It promises only what
    will happen: a resume only if an attempt is left, a full cache check only if the manifest does not run one."""
    last = " | ".join(out.tail[-5:])[-600:] or "(no output)"
    if out.reason == "first_log_timeout":
        said = (f"its last output was {out.tail[-1][-300:]!r}" if out.tail else "it wrote no output at all")
        verify = ("model_cache.mode=full passed on this host, so the cache is complete as the manifest describes "
                  "it: check that the trainer reads that cache (HF_HOME, the model path), or add what it fetches"
                  if cache_mode == "full" else "verify it with model_cache.mode=full")
        return FailureClass.MODEL_ERROR, (
            f"no training step reported within first_log_s={first_log_s:g} s ({said}): the run is most likely "
            f"materializing the model or its cache (a cold download); warm the cache on this host, {verify}, "
            "and relaunch")
    if out.reason == "stall":
        then = ("the window will resume from the last verified checkpoint on its next attempt" if attempts_left
                else "no attempt is left: `bucketrun retry JOB` resumes it from the last verified checkpoint")
        return FailureClass.STALL, (
            f"training started and then went silent for {stall_s:g} s (no log line, no progress-file change) at "
            f"step {out.step}; it was stopped, and {then}")
    if out.reason == "wall":
        return FailureClass.TIMED_OUT, f"the window ran past max_wall_s ({out.wall_s:.0f} s) at step {out.step}"
    text = "\n".join(out.tail)
    if disk_problem or DISK_FULL_RE.search(text):
        return FailureClass.DISK_FULL, (
            f"the run ran out of disk or inodes ({disk_problem or 'No space left on device'}) at step {out.step}"
            f" (exit code {out.rc}); free space on the run directory's filesystem and relaunch. Last lines: {last}")
    if PATH_ERROR_RE.search(text):
        return FailureClass.PATH_ERROR, (
            f"a path or write error stopped the run at step {out.step} (exit code {out.rc}); check that "
            f"workdir, run_dir and the dataset paths exist and are writable. Last lines: {last}")
    if out.rc == 0:
        return FailureClass.CODE_ERROR, (
            f"the command exited 0, but the progress file reads step {out.step}, not {target_step}: it did not "
            f"train to the target (or wrote no checkpoint). Last lines: {last}")
    return FailureClass.RUNTIME_CRASH, (
        f"the run died before a checkpoint reached step {target_step} (exit code {out.rc}, last checkpoint "
        f"step {out.step}). Last lines: {last}")
