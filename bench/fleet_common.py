"""What bench/fleet.py's sides share: logging, worker ids, process groups, the progress monitor, and the reading of
what a run left in its bucket (the tail, a stall's diagnosis) from a store view that sends no request."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def item_name(i: int) -> str:
    return f"media/clip-{i:07d}.ogg"


def worker_ids(n: int) -> list[str]:
    return [f"w{i:04d}" for i in range(1, n + 1)]


def split(ids: list[str], parts: int) -> list[list[str]]:
    """Contiguous groups, as even as possible."""
    k, r = divmod(len(ids), parts)
    out, at = [], 0
    for p in range(parts):
        n = k + (1 if p < r else 0)
        out.append(ids[at:at + n])
        at += n
    return [g for g in out if g]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def kill_group(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class Monitor:
    """Waits for a set of worker processes, printing progress, and kills/restarts some of them once at a given
    fraction of the work (same argv, so the same worker ids)."""

    def __init__(self, label: str, total_items: int, progress, logdir: Path, kill_at: float | None,
                 kill_procs: int, timeout_s: float, stall_s: float):
        self.label, self.total, self.progress, self.logdir = label, total_items, progress, logdir
        self.kill_at, self.kill_procs, self.timeout_s, self.stall_s = kill_at, kill_procs, timeout_s, stall_s
        self.kill: dict[str, Any] | None = None
        self.diagnose = None  # called on a stall or timeout, while the workers still run
        self.diagnosis: dict[str, Any] | None = None
        self.t99_wall: float | None = None  # wall clock when 99% of the work was first seen done
        self.exit_wall: list[float | None] = []  # wall clock at each process's exit (the last life's)
        self.tail_dump_s: float | None = None  # SIGUSR1 each process still up this long after 99% (bucketrun's
        # workers log where their tasks wait; None: never, as SIGUSR1 would end a process without a handler)

    def _diagnose(self) -> None:
        if self.diagnose is not None:
            try:
                self.diagnosis = self.diagnose()
            except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure
                self.diagnosis = {"diagnosis_failed": repr(exc)}

    def run(self, cmds: list[list[str]], env: dict[str, str] | None = None) -> tuple[float, float]:  # noqa: C901
        """Starts every command, returns (wall clock at start, wall clock when the last process exited)."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        logs = [self.logdir / f"proc{i}.log" for i in range(len(cmds))]
        t0_wall, t0 = time.time(), time.perf_counter()
        procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=open(lp, "ab"), stderr=subprocess.STDOUT)
                 for c, lp in zip(cmds, logs)]
        killed: set[int] = set()
        self.exit_wall = [None] * len(procs)
        dumped = False
        next_print = next_sample = t0 + 5
        last_what, last_change = None, t0
        try:
            while True:
                time.sleep(0.25)
                now = time.perf_counter()
                running = [p for p in procs if p.poll() is None]
                for i, p in enumerate(procs):
                    if p.poll() is not None and self.exit_wall[i] is None:
                        self.exit_wall[i] = time.time()
                if self.kill_at is not None and self.kill is None or now >= next_print or not running \
                        or now - last_change > self.stall_s or now >= next_sample:
                    frac, what = self.progress()
                    next_sample = now + 1
                else:
                    frac, what = None, ""
                if frac is not None and frac >= 0.99 and self.t99_wall is None:
                    self.t99_wall = time.time()
                if (self.t99_wall is not None and not dumped and self.tail_dump_s is not None
                        and time.time() - self.t99_wall > self.tail_dump_s):
                    dumped = True  # where is each process waiting, this long into the tail? (their logs)
                    for p in running:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p.pid, signal.SIGUSR1)
                if what and _count(what) != _count(last_what or ""):
                    last_what, last_change = what, now
                elif now - last_change > self.stall_s:
                    self._diagnose()
                    raise RuntimeError(f"{self.label}: stalled: no progress for {now - last_change:.0f} s "
                                       f"({last_what}, {len(running)}/{len(procs)} processes running)")
                if now >= next_print and running:
                    done = frac * self.total
                    log(f"  {self.label}: {what} ({frac:.1%}), {now - t0:6.1f} s, ~{done / (now - t0):,.0f} items/s, "
                        f"{len(running)}/{len(procs)} processes running")
                    next_print = now + 5
                if self.kill_at is not None and self.kill is None and frac is not None and frac >= self.kill_at:
                    victims = list(range(min(self.kill_procs, len(procs))))
                    t_kill = time.perf_counter()
                    for i in victims:
                        if procs[i].poll() is None:
                            os.kill(procs[i].pid, signal.SIGKILL)
                    for i in victims:
                        procs[i].wait()
                        killed.add(i)
                    log(f"  {self.label}: kill -9 of {len(victims)} of {len(procs)} worker processes at {frac:.0%} "
                        f"({t_kill - t0:.1f} s); restarting them with the same worker ids")
                    for i in victims:
                        self.exit_wall[i] = None
                        procs[i] = subprocess.Popen(cmds[i], cwd=ROOT, env=env, stdout=open(logs[i], "ab"),
                                                    stderr=subprocess.STDOUT)
                    self.kill = {"at_fraction": round(frac, 4), "at_s": round(t_kill - t0, 2),
                                 "processes_killed": len(victims), "processes": len(procs),
                                 "workers_killed": sum(len_workers(cmds[i]) for i in victims),
                                 "restarted_after_s": round(time.perf_counter() - t_kill, 3)}
                if not running and all(p.poll() is not None for p in procs):
                    break
                if now - t0 > self.timeout_s:
                    self._diagnose()
                    raise RuntimeError(f"{self.label}: workers still running after {self.timeout_s:.0f} s")
            t_end_wall = time.time()
        finally:
            kill_group(procs)
        bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
        if bad:
            i, rc = bad[0]
            raise RuntimeError(f"{self.label}: worker process {i} exited {rc}; its log ends:\n{tail(logs[i])}")
        return t0_wall, t_end_wall


class RunFailed(RuntimeError):
    """One run did not finish or did not check out; the bench records it and goes on."""

    def __init__(self, msg: str, diagnosis: dict[str, Any] | None = None):
        super().__init__(msg)
        self.diagnosis = diagnosis or {}


def len_workers(cmd: list[str]) -> int:
    return sum(1 for a in cmd if a == "--worker")


# ==============================================================================================================
# Postgres
# ==============================================================================================================


def _count(what: str) -> str:
    """The progress figure a status line leads with ("9,197/10,148 shards done, ..." -> "9,197/10,148"): the
    figure, not the text up to its first comma, which a thousands separator would cut short."""
    return what.split(" ", 1)[0]


# ==============================================================================================================
# what a run left in its bucket, read without the bucket API (a store view: keys(prefix), body(key), mtime(key))
# ==============================================================================================================
def _json(store, key: str) -> Any:
    try:
        return json.loads(store.body(key))
    except Exception:  # noqa: BLE001 - a diagnosis must not fail
        return None


def tail_timeline(store, job_id: str, t99_wall: float | None, t_succ_wall: float) -> dict[str, Any]:
    """Where the tail went: done markers written after 99% (how many, when the last came, how many were
    take-overs, whose lease), and the dataset manifest, in seconds after 99%."""
    if t99_wall is None:
        return {}
    prefix = f"jobs/{job_id}/fleet/done/"
    after, taken = [], []
    for k in store.keys(prefix):
        t = store.mtime(k)
        if t is None or t < t99_wall:
            continue
        gen = (_json(store, k) or {}).get("generation", 1)
        after.append((t - t99_wall, gen))
        if gen and gen > 1 and len(taken) < 8:  # a take-over in the tail: whose lease, since when
            lb = _json(store, k.replace("/fleet/done/", "/fleet/leases/")) or {}
            acq = lb.get("acquired_at")
            taken.append({"shard": k.rsplit("/", 1)[-1][:-5], "marker_s": round(t - t99_wall, 2),
                          "holder": lb.get("holder"), "taken_from": lb.get("taken_from"),
                          "deaths": lb.get("deaths"), "kills": lb.get("kills"),
                          "acquired_s": round(datetime.fromisoformat(acq.replace("Z", "+00:00")).timestamp()
                                              - t99_wall, 2) if acq else None})
    after.sort()
    data_t = [store.mtime(k) - t99_wall for k in store.keys(f"jobs/{job_id}/") if k.endswith("/dataset.json")]
    pick = lambda q: round(after[min(len(after) - 1, int(q * len(after)))][0], 2) if after else None  # noqa: E731
    return {"markers_after_99": len(after), "marker_s_p50": pick(0.5), "marker_s_p90": pick(0.9),
            "last_marker_s": round(after[-1][0], 2) if after else None,
            "takeovers_after_99": sum(1 for _, g in after if g and g > 1),
            "takeover_marker_s": [round(t, 2) for t, g in after if g and g > 1][:20], "takeovers": taken,
            "dataset_s": round(max(data_t), 2) if data_t else None, "succeeded_s": round(t_succ_wall - t99_wall, 2)}


def store_diagnosis(store, job_id: str) -> dict[str, Any]:
    """What a stuck fleet left: objects per folder of the job, the job's newest state, the role leases, and the
    workers' heartbeat states."""
    prefix = f"jobs/{job_id}/"
    keys_ = sorted(store.keys(prefix))
    folders = collections.Counter("/".join(k[len(prefix):].split("/")[:2]) if k.count("/") > 3
                                  else k[len(prefix):] for k in keys_)
    events = [k for k in keys_ if k.startswith(f"{prefix}events/")]
    latest = _json(store, events[-1]) if events else None
    roles = {k.rsplit("/", 1)[-1]: _json(store, k) for k in keys_ if k.startswith(f"{prefix}fleet/roles/")}
    beats = [_json(store, k) for k in keys_ if k.startswith(f"{prefix}fleet/heartbeats/")]
    holders = {(v or {}).get("holder") for v in roles.values()}
    notable = {hb["worker"]: {k: hb.get(k) for k in ("state", "at", "current_shard", "holding", "last_error",
                                                      "shards_written", "claims_lost", "takeovers")}
               for hb in beats if hb and (hb.get("worker") in holders or hb.get("last_error"))}
    return {"objects": dict(folders), "job_state": (latest or {}).get("state"), "role_holders_and_errors": notable,
            "progress": _json(store, f"{prefix}progress.json"),
            "roles": {k: {f: v.get(f) for f in ("holder", "state", "renewed_at", "ttl_s")} if v else None
                      for k, v in roles.items()},
            "worker_states": dict(collections.Counter((hb or {}).get("state") for hb in beats)),
            "leases_held_per_heartbeats": sum(len((hb or {}).get("holding") or []) for hb in beats),
            "dataset_written": any(k.endswith("/dataset.json") for k in keys_)}


def t99_from_markers(store, job_id: str, size: int) -> float | None:
    """Wall time the done markers first covered 99% of the items (their write times, from the store, no
    request): the monitor samples once a second, which at a few dozen shards is after the end."""
    marks = []
    for k in store.keys(f"jobs/{job_id}/fleet/done/"):
        lo_hi = k.rsplit("/", 1)[-1][:-len(".json")].split("-")
        t = store.mtime(k)
        if len(lo_hi) == 2 and all(x.isdigit() for x in lo_hi) and t is not None:
            marks.append((t, int(lo_hi[1]) - int(lo_hi[0])))
    covered = 0
    for t, n in sorted(marks):
        covered += n
        if covered >= 0.99 * size:
            return t
    return None
