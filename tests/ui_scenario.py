"""A bucket for the dashboard's browser tests (tests/test_ui_browser.py), made by the real code paths only: the
simulation's intake, dispatch and sweep, the warm local worker running the real offline model, two host agents
running a real training window (test_train_window.py's harness), real fleet worker processes (the fleet harness of
test_fleet_chaos.py and test_fleet_status.py), and the client's submit. Nothing in it is a hand-written state.

What it holds, once `build` returns:
- a succeeded transcription (its artifacts mirrored with their sha256) whose request_id is a script;
- a training window whose preflight failed on host-b in attempt 1 (a blob of its model cache missing) and that
  succeeded in attempt 2 (the blob put back, the job retried);
- a manifest rejected at intake (an ftp:// source);
- a fleet in progress, kept still: its first worker process died on a poison item (exit 70, never restarted),
  so its heartbeat goes stale; the poison item was dead-lettered by another process's quarantine; that
  two other processes' workers stay alive, one of them inside a shard whose last item sleeps for an hour, so the fleet
  never ends and has a live rate (and an ETA) while the tests run;
- a job waiting in the inbox (no dispatcher runs any more), its request_id and webhook URL carrying scripts.

`close` kills the fleet's workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bucketrun.events import codec, keys
from bucketrun.events.fleet.status import fleet_status
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit
from bucketrun.handlers.control import retry
from bucketrun.handlers.launchers import Routes
from bucketrun.handlers.launchers.agent import AgentLauncher
from bucketrun.handlers.launchers.local import LocalProcessLauncher
from bucketrun.images.train_window.fingerprint import hf_repo_folder
from bucketrun.local_sim import fleet_harness as harness

from conftest import jobs_by_inbox_key, wait_for
from test_train_window import COMMIT, REPO, Fleet, make_hosts, manifest

TESTS = Path(__file__).resolve().parent
# Each one sets a flag a test can read (window.__xss) and opens a dialog: if any runs, the test sees it.
XSS_REQUEST = '<img src=x onerror="window.__xss=\'request_id\';alert(1)"><script>window.__xss="request_id";alert("xss")</script>'
XSS_WAITING = '<img src=x onerror="window.__xss=\'waiting\';alert(2)"><script>window.__xss="waiting"</script>'
XSS_WEBHOOK = 'https://hooks.example/<script>window.__xss="webhook";alert(3)</script>'
SPEECH = "Hello from the dashboard test."
BAD_SCHEME = "ftp://media.example/talk.ogg"

FLEET_ITEMS, SHARD_SIZE = 160, 20
POISON = 10  # in shard 0, where w0000 starts: its process dies on it
SLOW = FLEET_ITEMS - 1  # the last item of the last shard sleeps an hour: the fleet never ends
# One worker per process, starting at shards 0, 8//3 and 2*8//3 of the 8. Not two in one process: a process's
# workers share what they have picked ahead, and a worker stuck on the hour-long item keeps its pick from its sibling.
FLEET_IDS = {"a": ["w0000"], "b": ["w0001"], "c": ["w0002"]}


@dataclass
class Scenario:
    url: str
    root: Path  # the folder bucket's directory
    transcription: str = ""
    window: str = ""
    rejected: str = ""
    fleet: str = ""
    waiting: str = ""
    stale_worker: str = "w0000"
    alive_workers: list[str] = field(default_factory=lambda: FLEET_IDS["b"] + FLEET_IDS["c"])
    dead_letter: str = f"item-{POISON:06d}"
    failed_host: str = "host-b"
    procs: list[subprocess.Popen] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _hosts(root: Path) -> tuple[dict[str, Path], dict]:
    """test_train_window.py's `hosts` fixture, once: two host roots with one dataset and one model cache."""
    return make_hosts(root)


def _spawn_fleet_worker(url: str, job: str, ids: list[str], probe: Path, log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "PYTHONPATH": str(TESTS), "FLEET_PROBE_DIR": str(probe)}
    return subprocess.Popen(harness.worker_cmd(url, job, ids, grace_s=20), env=env, stdout=out, stderr=out)


def _sim_phase(s: Scenario, bucket, work: Path) -> None:
    """The simulation (intake, dispatch, sweep) with the warm local worker for transcription and two host agents
    for the training window, as `bucketrun sim` routes them; stopped before the fleet and the waiting job."""
    wav = work / "hello.wav"
    subprocess.run(["espeak-ng", "-s", "170", "-w", str(wav), SPEECH], check=True)
    bucket.put("media/hello.wav", wav.read_bytes())
    roots, fps = _hosts(work / "hosts")
    cache = hf_repo_folder(roots["host-b"] / "hf" / "hub", REPO, "model")
    link = cache / "snapshots" / COMMIT / "tokenizer.json"
    blob = link.parent / os.readlink(link)
    saved = blob.read_bytes()
    blob.unlink()  # host-b's cache is partial: attempt 1's preflight fails there
    local = LocalProcessLauncher(preload=None, log_path=work / "local-worker.log")
    routes = Routes(default=local, by_kind={"train_window": AgentLauncher()})
    try:
        with Fleet(s.url, roots, routes) as f:
            s.transcription, _ = submit(bucket, codec.dumps({
                "kind": "transcribe", "source": {"key": "media/hello.wav"}, "request_id": XSS_REQUEST,
                "options": {"language": "en"}}))
            bad = keys.inbox_key("bad-scheme.json")  # as a plain client drops it: submit would refuse it
            bucket.put(bad, codec.dumps({"kind": "transcribe", "source": {"url": BAD_SCHEME}}), "application/json")
            s.window, out = f.run(manifest(fps), timeout=180)
            assert out["state"] == "failed" and out["detail"]["error"]["where"] == "preflight/host-b", out
            blob.write_bytes(saved)
            retry(f.bucket, s.window, writer="test")
            out = f.wait(s.window, timeout=180)
            assert out["state"] == "succeeded" and out["attempt"] == 2, out
            s.rejected = wait_for(lambda: jobs_by_inbox_key(bucket).get(bad), timeout=60)
            out = f.wait(s.transcription, timeout=240)
            assert out["state"] == "succeeded", out
            assert f.wait(s.rejected, timeout=30)["state"] == "rejected"
    finally:
        local.close()


def _fleet_phase(s: Scenario, bucket, work: Path) -> None:
    """The fleet harness (no dispatcher: the test starts the workers), frozen in progress."""
    items = [f"item-{i:06d}" for i in range(FLEET_ITEMS)]
    bucket.put("items.jsonl", "\n".join(codec.dumps(i).decode() for i in items).encode())
    probe = work / "probe"
    probe.mkdir()
    s.fleet = harness.start_job(s.url, {
        "kind": "fleet", "items": {"file": "items.jsonl"}, "shard_size": SHARD_SIZE, "heartbeat_s": 1,
        "lease_s": 3, "max_item_attempts": 1, "workers": {"count": 3},
        "resources": {"heartbeat_s": 2, "stall_after_s": 600},
        "processor": {"entry_point": "fleet_probe:make", "options": {
            "sleep_s": 0.01, "crash_items": [items[POISON]], "slow_items": {items[SLOW]: 3600}}}})
    a = _spawn_fleet_worker(s.url, s.fleet, FLEET_IDS["a"], probe, work / "fleet-a.log")
    s.procs.append(a)
    assert a.wait(timeout=120) == 70, "the first fleet worker did not die on its poison item"
    for p in "bc":
        s.procs.append(_spawn_fleet_worker(s.url, s.fleet, FLEET_IDS[p], probe, work / f"fleet-{p}.log"))

    def frozen():
        st = fleet_status(bucket, s.fleet)
        states = {w["worker"]: w["state"] for w in st["workers"]}
        done = (st["items_done"] == FLEET_ITEMS - SHARD_SIZE and st["dead_lettered"] == 1
                and states == {s.stale_worker: "stale", **{w: "alive" for w in s.alive_workers}}
                and st["eta_s"] and st["state"] == "running")
        return st if done else None

    try:
        wait_for(frozen, timeout=120, every=0.3)
    except AssertionError:
        st = fleet_status(bucket, s.fleet)
        log = "".join((work / f"fleet-{p}.log").read_text()[-2000:] for p in "bc")
        raise AssertionError(f"the fleet did not reach its frozen state: {st}\n{log}") from None


def build(work: Path) -> Scenario:
    """The whole scenario in a new folder bucket under `work`. On failure, whatever it started is stopped."""
    root = work / "bucket"
    url = open_bucket(str(root)).url
    s = Scenario(url=url, root=root)
    bucket = open_bucket(url)
    try:
        t = time.monotonic()
        _sim_phase(s, bucket, work)
        s.timings["sim"] = time.monotonic() - t
        t = time.monotonic()
        _fleet_phase(s, bucket, work)
        s.timings["fleet"] = time.monotonic() - t
        s.waiting, _ = submit(bucket, codec.dumps({
            "kind": "transcribe", "source": {"key": "media/hello.wav"}, "request_id": XSS_WAITING,
            "notify": {"webhook": XSS_WEBHOOK}}))
    except BaseException:
        s.close()
        raise
    return s


if __name__ == "__main__":  # build one by hand to look at: python tests/ui_scenario.py DIR; then bucketrun ui
    import sys

    scenario = build(Path(sys.argv[1]))
    print(scenario)
    print("the fleet's workers run until you press Ctrl-C")
    try:
        signal.pause()
    finally:
        scenario.close()
