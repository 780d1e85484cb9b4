"""A training window on its launching host: preflight here, wait for every named host's preflight, the smoke
gate, resume from the newest verified checkpoint, run and watch, then the success gate and the verified mirror.
The attempt runtime writes `succeeded` only after `verify` accepts what this returns."""

from __future__ import annotations

import logging
import os
import sys
import shlex
import time
from pathlib import Path
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.failures import FailureClass, JobFailure
from bucketrun.events.kinds.train_window import Smoke, TrainWindowBody

from ..runtime.agent import host_path, instance
from .audit import audit
from .gate import clear_dir, gate, local_checkpoint, mirror_run_dir, newest_mirror, prepare_resume
from .preflight import check_host, findings_of, read_preflight, write_verdict
from .report import write_report
from .supervise import Outcome, Supervisor, child_env, read_metrics, stop_previous, triage

log = logging.getLogger("bucketrun.train_window")


def render(argv: list[str], values: dict[str, Any]) -> list[str]:
    return [a.format(**values) for a in argv]


class Window:
    def __init__(self, attempt):
        self.a = attempt
        self.body: TrainWindowBody = attempt.manifest.body
        self.label = os.environ.get("BUCKETRUN_AGENT_LABEL") or self.body.hosts.launch
        root = os.environ.get("BUCKETRUN_AGENT_ROOT")
        self.root = Path(root) if root else None
        w = self.body.window
        self.run_dir = host_path(self.body.checkpoint.run_dir.format(target_step=w.target_step), self.root)
        self.workdir = host_path(self.body.workdir, self.root) if self.body.workdir else None
        self.report: dict[str, Any] = {"job_id": attempt.job_id, "attempt": attempt.attempt, "launch_host": self.label,
                                       "run_dir": str(self.run_dir), "target_step": w.target_step}
        self.chunk = 0

    def values(self, run_dir: Path, target_step: int, size: int) -> dict[str, Any]:
        return {"target_step": target_step, "window": size, "start_step": target_step - size,
                "run_dir": str(run_dir), "workdir": str(self.workdir or ""),
                "python": sys.executable}  # the agent's own interpreter: a venv's packages, whatever is on PATH

    # -- preflight ---------------------------------------------------------------------------------------
    def preflight(self) -> dict[str, Any]:
        a, body = self.a, self.body
        a.progress(f"preflight on {self.label}", 0.02)
        own = check_host(body, a.bucket, self.root)
        write_verdict(a.bucket, a.job_id, a.attempt, self.label, own)
        verdicts = {self.label: {"attempt": a.attempt, **own}}
        wait_s = body.timeouts.preflight_s
        deadline = time.monotonic() + wait_s
        while True:
            for host in body.hosts.preflight:
                if host not in verdicts:
                    record = read_preflight(a.bucket, a.job_id, host, a.attempt)
                    if record is not None:
                        verdicts[host] = record
            waiting = [h for h in body.hosts.preflight if h not in verdicts]
            a.progress(f"preflight: {len(verdicts)}/{len(body.hosts.preflight)} hosts reported", 0.05)
            if not waiting:
                break
            if time.monotonic() > deadline:
                self.report["preflight"] = verdicts
                start = "; ".join(f"on {h}: `bucketrun --bucket {a.bucket.url} agent --labels {h}`" for h in waiting)
                self.fail(FailureClass.PREFLIGHT, f"host{'s' if len(waiting) > 1 else ''} {', '.join(waiting)} did not "
                          f"report a preflight within timeouts.preflight_s={wait_s:g} s: no agent of "
                          f"{'theirs' if len(waiting) > 1 else 'its'} claimed the offer; start one ({start}) and "
                          f"retry the job", where=f"preflight/{waiting[0]}")
            a.check()
            time.sleep(1.0)
        self.report["preflight"] = verdicts
        bad = [h for h in body.hosts.preflight if not verdicts[h].get("ok")]
        if bad:
            first = findings_of(verdicts[bad[0]])
            said = "; ".join(f.get("message", f.get("problem", "")) for f in first[:3]) or "see its preflight object"
            self.fail(FailureClass.PREFLIGHT, f"preflight failed on {', '.join(bad)}: {bad[0]}: {said}",
                      where=f"preflight/{bad[0]}")
        return {h: {"ok": v.get("ok")} for h, v in verdicts.items()}

    # -- running -----------------------------------------------------------------------------------------
    def supervise(self, argv: list[str], run_dir: Path, target_step: int, max_wall_s: float,
                  ship: bool) -> Outcome:
        a, body, t = self.a, self.body, self.body.timeouts

        def ship_chunk(data: bytes) -> None:
            a.bucket.put(keys.train_log_key(a.job_id, a.attempt, self.chunk), data, "text/plain; charset=utf-8")
            self.chunk += 1

        def on_step(step: int) -> None:
            a.progress(f"training: step {step}/{target_step}", min(0.9, 0.1 + 0.8 * step / max(1, target_step)))

        return Supervisor(argv, self.workdir, child_env(body.env), run_dir / body.checkpoint.progress_file,
                          body.checkpoint.step_field, t.first_log_s, t.stall_s, max_wall_s,
                          ship=ship_chunk if ship else None, on_step=on_step, check=a.check,
                          pidfile=run_dir / ".bucketrun-run.json").run()

    def attempts_left(self) -> bool:
        return self.a.attempt < self.a.manifest.resources.max_attempts

    def smoke(self, smoke: Smoke) -> dict[str, Any]:
        self.a.progress("smoke run", 0.08)
        run_dir = host_path(smoke.run_dir, self.root)
        clear_dir(run_dir)
        argv = render(smoke.command, self.values(run_dir, smoke.target_step, smoke.target_step))
        out = self.supervise(argv, run_dir, smoke.target_step, smoke.timeout_s, ship=False)
        g = gate(run_dir, self.body.checkpoint, smoke.target_step)
        record = {"command": argv, "passed": g["passed"], "step": g["step"], "rc": out.rc, "reason": out.reason,
                  "seconds": out.wall_s}
        self.report["smoke"] = record
        if not g["passed"]:
            cls, why = triage(out, smoke.target_step, self.body.timeouts.first_log_s, self.body.timeouts.stall_s,
                              attempts_left=self.attempts_left(),
                              cache_mode=self.body.model_cache.mode if self.body.model_cache else None)
            self.fail(cls, f"the smoke run failed, so the window did not start: {why}; gate: "
                      + "; ".join(g["problems"]), where="smoke")
        return record

    def run(self) -> dict[str, Any]:
        body, a = self.body, self.a
        w = body.window
        self.report["command"] = argv = render(body.command, self.values(self.run_dir, w.target_step, w.size))
        self.report["reproduce"] = {"command": shlex.join(argv), "cwd": str(self.workdir or ""),
                                    "host": self.label, "bucket": a.bucket.url,
                                    "manifest_key": keys.manifest_key(a.job_id)}
        preflight = self.preflight()
        if body.smoke is not None:
            self.smoke(body.smoke)
        stopped = stop_previous(self.run_dir)
        try:
            resume = prepare_resume(a.bucket, a.job_id, self.run_dir, body.checkpoint, body.resume_from)
        except (FileNotFoundError, RuntimeError) as exc:
            self.fail(FailureClass.BAD_INPUT, f"cannot resume: {exc}", where="resume")
        resume["stopped_previous_group"] = stopped
        self.report["resume"] = resume
        warnings = []
        if resume.get("step") is not None and resume["step"] >= w.target_step:
            out = Outcome("exited", 0, None, 0.0, 0.0, resume["step"], ["(already at the target: not relaunched)"])
            warnings.append(f"the checkpoint was already at step {resume['step']}; the command was not run")
        else:
            a.progress("training: starting", 0.1)
            out = self.supervise(argv, self.run_dir, w.target_step, body.timeouts.max_wall_s, ship=True)
        self.report["run"] = {"reason": out.reason, "rc": out.rc, "first_log_s": out.first_log_s,
                              "wall_s": out.wall_s, "step": out.step, "lines": out.lines, "tail": out.tail[-10:]}
        g = gate(self.run_dir, body.checkpoint, w.target_step)
        self.report["gate"] = g
        self.report["metrics"] = read_metrics(self.run_dir / body.checkpoint.progress_file)
        if not g["passed"]:
            cls, why = triage(out, w.target_step, body.timeouts.first_log_s, body.timeouts.stall_s,
                              disk_problem=self.disk_problem(), attempts_left=self.attempts_left(),
                              cache_mode=body.model_cache.mode if body.model_cache else None)
            self.fail(cls, why + "; gate: " + "; ".join(g["problems"]) + self.save_checkpoint(), where="run")
        if out.rc not in (0, None):
            warnings.append(f"the command exited {out.rc} after the checkpoint reached step {w.target_step} "
                            "(teardown noise); the gate passed, so the window succeeded")
        a.progress("mirroring the run directory", 0.92)
        mirror = mirror_run_dir(a.bucket, self.run_dir, body.mirror, a.job_id, a.attempt, w.target_step,
                                progress=lambda i, n: a.progress(f"mirroring {i}/{n} files", 0.92 + 0.07 * i / n))
        self.report["mirror"] = {k: mirror[k] for k in ("prefix", "manifest", "verified", "problems", "bytes")}
        self.report["mirror"]["files"] = len(mirror["files"])
        if not mirror["verified"]:
            self.fail(FailureClass.TRANSIENT, "the mirror did not verify: " + "; ".join(mirror["problems"][:5]),
                      where="mirror")
        if body.teardown_plan is not None:
            warnings += self.request_teardown(mirror)
        self.report["warnings"] = warnings
        write_report(a.bucket, self.report, body, state="succeeded")
        return {"gate": {"step": g["step"], "required": g["required"]}, "preflight": preflight,
                "mirror": {"prefix": mirror["prefix"], "manifest": mirror["manifest"], "verified": True,
                           "step": w.target_step, "files": len(mirror["files"]), "bytes": mirror["bytes"]},
                "command": argv, "resume": resume, "warnings": warnings}

    def save_checkpoint(self) -> str:
        """After a failed run, the newest complete checkpoint goes to the bucket (mirror/<attempt>-step<N>/, verified
        as a success mirror is), so a retry on any host resumes from it, not from scratch. Returns what to add to
        the failure message."""
        a, ck = self.a, self.body.checkpoint
        step = local_checkpoint(self.run_dir, ck)
        if step is None:
            return ""
        known = newest_mirror(a.bucket, a.job_id)
        if known is not None and known["step"] >= step:  # resumed from it and failed before a newer one
            self.report["crash_mirror"] = {**{k: known.get(k) for k in ("prefix", "step", "bytes")},
                                           "manifest": keys.mirror_manifest_key(a.job_id, known["attempt"],
                                                                                known["step"]),
                                           "verified": True, "files": len(known["files"]), "earlier": True}
            return f"; the checkpoint at step {known['step']} is already in the bucket ({known['prefix']})"
        a.progress(f"saving the checkpoint at step {step} after the failure", 0.92)
        try:
            m = mirror_run_dir(a.bucket, self.run_dir, self.body.mirror, a.job_id, a.attempt, step)
        except Exception as exc:  # noqa: BLE001 - the run's own failure is what must be reported
            self.report["crash_mirror"] = {"step": step, "verified": False, "problems": [repr(exc)[:300]]}
            return f"; the checkpoint at step {step} could not be saved to the bucket: {exc!r}"[:400]
        self.report["crash_mirror"] = {"prefix": m["prefix"], "manifest": m["manifest"], "step": step,
                                       "verified": m["verified"], "files": len(m["files"]), "bytes": m["bytes"],
                                       "problems": m["problems"][:5]}
        if not m["verified"]:
            return f"; the checkpoint at step {step} did not verify in the bucket: {'; '.join(m['problems'][:2])}"
        return f"; the checkpoint at step {step} is saved, verified, at {m['prefix']}: a retry resumes from it"

    def request_teardown(self, mirror: dict[str, Any]) -> list[str]:
        """Ask the sweep (which holds the provider keys) to stop this host; it does so only once the mirror this
        names is verified in the bucket and the host runs nothing else."""
        plan = self.body.teardown_plan
        inst = instance()
        if inst is None:
            return ["teardown asked, but this host's agent has no BUCKETRUN_INSTANCE: it was left running"]
        agent = os.environ.get("BUCKETRUN_AGENT_ID", "")
        self.a.bucket.put(keys.host_teardown_key(agent), codec.dumps(
            {"agent": agent, "instance": inst, "job_id": self.a.job_id, "attempt": self.a.attempt,
             "action": plan.action, "approve": plan.approve, "mirror_manifest": mirror["manifest"],
             "requested_at": codec.iso(codec.now())}), "application/json")
        self.report["teardown"] = {"action": plan.action, "approve": plan.approve, "instance": inst,
                                   "state": "waiting for `bucketrun approve " + self.a.job_id + "`"
                                   if plan.approve == "required" else "requested: the sweep does it now"}
        return []

    def disk_problem(self) -> str | None:
        env = audit(self.run_dir, {"min_free_disk_gb": 0.01, "min_free_inodes": 100})
        return "; ".join(f["message"] for f in env.findings) or None

    def fail(self, cls: FailureClass, message: str, where: str) -> None:
        self.report["failure"] = {"class": cls.value, "message": message, "where": where}
        try:
            write_report(self.a.bucket, self.report, self.body, state="failed")
        except Exception as exc:  # noqa: BLE001 - the report is advice; the failure itself must be recorded
            log.warning("report not written: %s", exc)
        raise JobFailure(cls, message, where=where)


def attempt_work(attempt) -> dict[str, Any]:
    return Window(attempt).run()
