"""`bucketrun agent --labels mac4,gpu`: a machine you run, taking work from the bucket. It polls the offers for
its labels (index/agents/<label>/), claims each with a create-if-absent object so two agents never run the same
attempt, and runs it in a child process: the attempt runtime for a "run" offer, the host checks for a
"preflight" one. It heartbeats to index/hosts/<agent>.json, needs only bucket credentials, and never listens.

SIGTERM: stop claiming, pass the signal to the children (each drains its attempt as `lost`, to be retried),
wait for them, go offline.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.conditional import create_json
from bucketrun.events.errors import BucketrunError
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.storage import Bucket, open_bucket

log = logging.getLogger("bucketrun.agent")
HEARTBEAT_S = 15.0
CHILD_GRACE_S = 30.0


@dataclass
class Task:
    job_id: str
    attempt: int
    label: str
    role: str
    offer_key: str
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)


def default_agent_id(labels: list[str]) -> str:
    return f"{socket.gethostname().split('.')[0].lower()}-{labels[0]}-{os.getpid()}"


class Agent:
    def __init__(self, bucket: Bucket, labels: list[str], root: Path | None = None, agent_id: str | None = None,
                 poll_s: float = 2.0, max_tasks: int = 4, poll_max_s: float = 30.0):
        bad = [label for label in labels if not keys.LABEL_RE.match(label)]
        if not labels or bad:
            raise ValueError(f"labels must be lowercase letters, digits, '_', '.', '-': {bad or labels}")
        self.bucket, self.labels = bucket, labels
        self.root = (root or Path.cwd()).resolve()
        self.id = agent_id or default_agent_id(labels)
        self.poll_s, self.max_tasks, self.poll_max_s = poll_s, max_tasks, max(poll_s, poll_max_s)
        self.wait_s = poll_s  # doubles while nothing is offered, back to poll_s when something is
        self.tasks: dict[str, Task] = {}
        self.done: set[str] = set()  # offers this agent finished or found stale: not looked at again
        self.stopping = threading.Event()
        self.last_beat = 0.0

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self, once: bool = False) -> None:
        """`once`: look at the offers one time, run what was claimed to its end, and return."""
        self.beat("online", force=True)
        looked = False
        try:
            while not self.stopping.is_set():
                self.reap()
                offered = False
                if len(self.tasks) < self.max_tasks and not (once and looked):
                    offered = self.poll()
                    looked = True
                self.beat("online")
                if once and not self.tasks:
                    break
                self.wait_s = self.poll_s if offered or self.tasks else min(self.poll_max_s, self.wait_s * 2)
                self.stopping.wait(self.wait_s)
        finally:
            self.drain()
            self.beat("offline", force=True)

    def stop(self, *_: Any) -> None:
        self.stopping.set()

    def poll(self) -> bool:
        """One LIST per label; the oldest offer first (job ids sort in time order). True if anything is offered:
        an idle agent backs off to `poll_max_s` between looks, so it costs a few requests a minute."""
        seen = False
        for label in self.labels:
            try:
                offers = [i.key for i in self.bucket.list(keys.agent_offer_prefix(label))]
            except BucketrunError as exc:
                log.warning("listing offers for %s failed: %s", label, exc)
                continue
            seen = seen or any(k not in self.done for k in offers)
            for key in offers:
                if key in self.done or key in self.tasks or len(self.tasks) >= self.max_tasks:
                    continue
                parsed = keys.parse_agent_offer(key, label)
                if parsed is None:
                    self.done.add(key)
                    continue
                try:
                    self.consider(key, label, *parsed)
                except BucketrunError as exc:
                    log.warning("offer %s: %s", key, exc)
        return seen

    def consider(self, key: str, label: str, job_id: str, attempt: int, role: str) -> None:
        view = read_view(self.bucket, job_id)
        if view.attempt == attempt and view.state is JobState.QUEUED:
            return  # the launcher puts its offers before it writes `launched`: look again at the next poll
        if view.attempt != attempt or view.state not in (JobState.LAUNCHED, JobState.RUNNING):
            self.done.add(key)  # the job moved on: the offer is stale, and whoever launched it cleans up
            self.bucket.delete(key)
            return
        claim = {"agent": self.id, "host": socket.gethostname(), "pid": os.getpid(), "label": label,
                 "role": role, "attempt": attempt, "claimed_at": codec.iso(codec.now())}
        out = create_json(self.bucket, keys.agent_claim_key(job_id, attempt, label, role), claim)
        if not out.won:
            self.done.add(key)  # another agent with this label took it
            return
        log.info("%s: claimed %s attempt %d (%s on %s)", self.id, job_id, attempt, role, label)
        self.tasks[key] = Task(job_id, attempt, label, role, key, self.spawn(job_id, attempt, label, role))

    def spawn(self, job_id: str, attempt: int, label: str, role: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "bucketrun.images.runtime.agent_task", "--bucket", self.bucket.url,
               "--job", job_id, "--attempt", str(attempt), "--label", label, "--role", role]
        env = {**os.environ, "BUCKETRUN_AGENT_ID": self.id, "BUCKETRUN_AGENT_LABEL": label,
               "BUCKETRUN_AGENT_ROOT": str(self.root)}
        return subprocess.Popen(cmd, env=env, cwd=self.root)

    def reap(self) -> None:
        for key, task in list(self.tasks.items()):
            rc = task.proc.poll()
            if rc is None:
                continue
            log.info("%s: %s attempt %d (%s) ended with exit code %s", self.id, task.job_id, task.attempt,
                     task.role, rc)
            del self.tasks[key]
            self.done.add(key)
            try:
                self.bucket.delete(key)
            except BucketrunError as exc:
                log.warning("offer %s not removed: %s", key, exc)

    def drain(self) -> None:
        """Children get SIGTERM and CHILD_GRACE_S to write `lost` (their attempts are retried), then SIGKILL."""
        for task in self.tasks.values():
            if task.proc.poll() is None:
                task.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_GRACE_S
        for task in self.tasks.values():
            try:
                task.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                task.proc.kill()
                task.proc.wait()
        self.tasks.clear()

    def beat(self, state: str, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_beat < HEARTBEAT_S:
            return
        body = {"agent": self.id, "host": socket.gethostname(), "labels": self.labels, "state": state,
                "pid": os.getpid(), "root": str(self.root), "at": codec.iso(codec.now()), "instance": instance(),
                "tasks": [{"job_id": t.job_id, "attempt": t.attempt, "role": t.role, "label": t.label}
                          for t in self.tasks.values()]}
        try:
            self.bucket.put(keys.host_key(self.id), codec.dumps(body), "application/json")
            self.last_beat = time.monotonic()
        except BucketrunError as exc:
            log.warning("heartbeat not written: %s", exc)


def instance() -> dict[str, str] | None:
    """The rented instance this agent runs on, as whoever started it set BUCKETRUN_INSTANCE ("runpod:<pod id>",
    "vast:<instance id>"): what a window's `hosts.teardown` may stop."""
    raw = os.environ.get("BUCKETRUN_INSTANCE", "")
    backend, _, ident = raw.partition(":")
    return {"backend": backend, "id": ident} if backend in ("runpod", "vast", "skypilot") and ident else None


def host_path(path: str, root: Path | None = None) -> Path:
    """A manifest's host path: `~` expanded, and a relative one under the agent's root (so two agents on one
    machine stand in for two hosts)."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        return p
    base = root or Path(os.environ.get("BUCKETRUN_AGENT_ROOT") or Path.cwd())
    return base / p


def main(bucket_url: str, labels: list[str], root: str | None, agent_id: str | None, poll_s: float,
         once: bool = False, poll_max_s: float = 30.0) -> int:
    agent = Agent(open_bucket(bucket_url), labels, Path(root) if root else None, agent_id, poll_s,
                  poll_max_s=poll_max_s)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    print(f"agent {agent.id} on {', '.join(labels)}: watching {bucket_url}", file=sys.stderr)
    agent.run(once=once)
    return 0

