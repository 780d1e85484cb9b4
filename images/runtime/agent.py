"""`bucketrun agent --labels mac4,gpu`: a machine you run, taking work from the bucket. It polls the offers for
its labels (index/agents/<label>/), claims each with a create-if-absent object so two agents never run the same
attempt, and runs it in a child process: the attempt runtime for a "run" offer, the host checks for a
"preflight" one. It heartbeats to index/hosts/<agent>.json, needs only bucket credentials, and never listens.

It runs only the kinds whose modules import here (capabilities.py), says which in its heartbeat, and leaves any
other offer to an agent that can; when no live agent on the label can, it fails the job as `config_error` with the
pip line that installs what is missing, so the job never waits on nobody.

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
from bucketrun.events.errors import BucketrunError, CorruptObject, IllegalTransition, NotFound, StaleAttempt
from bucketrun.events.failures import FailureClass, error_detail
from bucketrun.events.hosts import read_hosts, runners
from bucketrun.events.kinds import kind_names
from bucketrun.events.lifecycle import JobState, JobView, read_view
from bucketrun.events.retry import record_failure
from bucketrun.events.storage import Bucket, open_bucket

from ..fleet.host import version
from . import capabilities

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
        self.declined: set[str] = set()  # offers of a kind it cannot run, left to another live agent
        self.cannot: dict[str, dict[str, Any]] | None = None  # kind -> why not (capabilities.probe), once probed
        self.stopping = threading.Event()
        self.last_beat = 0.0

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self, once: bool = False) -> None:
        """`once`: look at the offers one time, run what was claimed to its end, and return."""
        self.probe()
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
            seen = seen or any(k not in self.done and k not in self.declined for k in offers)
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
            self.declined.discard(key)
            self.bucket.delete(key)
            return
        kind = self.kind_of(key, job_id)
        if kind is not None and kind in self.probe():
            self.decline(key, label, job_id, attempt, role, kind, view)
            return
        claim = {"agent": self.id, "host": socket.gethostname(), "pid": os.getpid(), "label": label,
                 "role": role, "attempt": attempt, "claimed_at": codec.iso(codec.now())}
        out = create_json(self.bucket, keys.agent_claim_key(job_id, attempt, label, role), claim)
        if not out.won:
            self.done.add(key)  # another agent with this label took it
            return
        log.info("%s: claimed %s attempt %d (%s on %s)", self.id, job_id, attempt, role, label)
        self.tasks[key] = Task(job_id, attempt, label, role, key, self.spawn(job_id, attempt, label, role))
        self.beat("online", force=True)  # what it runs now is in the heartbeat at once (`bucketrun agents`)

    def probe(self) -> dict[str, dict[str, Any]]:
        """The kinds this host cannot run, and why; probed once (an agent restarted after an install sees it)."""
        if self.cannot is None:
            found = capabilities.probe(bucket_url=self.bucket.url)
            self.cannot = {kind: why for kind, why in found.items() if why is not None}
            for kind, why in self.cannot.items():
                log.warning("%s: cannot run %s: %s", self.id, kind, capabilities.missing_line(why))
        return self.cannot

    def kind_of(self, key: str, job_id: str) -> str | None:
        """The offer names its kind (the launcher writes it); an older offer's kind is in the job's manifest."""
        try:
            kind = codec.loads(self.bucket.get(key).data).get("kind")
            return kind or codec.loads(self.bucket.get(keys.manifest_key(job_id)).data).get("kind")
        except (NotFound, CorruptObject, AttributeError):
            return None  # unknown here: claim it, and the attempt runtime records whatever it finds

    def decline(self, key: str, label: str, job_id: str, attempt: int, role: str, kind: str, view: JobView) -> None:
        """Leave an offer this host cannot run to a live agent on the label that can; with none, fail the job as
        `config_error`, naming what is missing and the pip line that installs it."""
        if self.bucket.exists(keys.agent_claim_key(job_id, attempt, label, role)):
            self.done.add(key)  # an agent that can run it took it: its fate is that agent's (and the sweep's)
            self.declined.discard(key)
            return
        others = runners(read_hosts(self.bucket), label, kind, besides=self.id)
        why = capabilities.missing_line(self.cannot[kind])
        if others:
            if key not in self.declined:
                log.info("%s: left %s to %s: this host cannot run %s: %s", self.id, key, ", ".join(others), kind, why)
            self.declined.add(key)
            return
        error = error_detail(FailureClass.CONFIG_ERROR, f"no live agent on label {label} can run {kind}: on "
                             f"{self.id} (host {socket.gethostname()}) {why}", where=f"agent/{label}")["error"]
        try:
            record_failure(self.bucket, job_id, error, writer=f"agent:{self.id}", attempt=attempt, max_attempts=1,
                           view=view)
            log.error("%s: failed %s: %s", self.id, job_id, error["message"])
        except (IllegalTransition, StaleAttempt) as exc:
            log.info("%s: %s moved on before it could be failed: %s", self.id, job_id, exc)
        self.done.add(key)
        self.declined.discard(key)
        self.bucket.delete(key)

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
            self.beat("online", force=True)
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
        cannot = self.probe()
        body = {"agent": self.id, "host": socket.gethostname(), "labels": self.labels, "state": state,
                "pid": os.getpid(), "root": str(self.root), "at": codec.iso(codec.now()), "instance": instance(),
                "version": version(), "kinds": sorted(set(kind_names()) - set(cannot)),
                "cannot_run": {kind: capabilities.missing_line(why) for kind, why in sorted(cannot.items())},
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

