"""The window's report, in the runbook's deliverable format: jobs/<id>/report.md for people and report.json for
scripts (`bucketrun report JOB`). Written at the end of every attempt, passed or failed."""

from __future__ import annotations

import shlex
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.cost import cost_line, cost_of
from bucketrun.events.errors import ConfigError, NotFound
from bucketrun.events.lifecycle import JobView, read_view
from bucketrun.events.status import attempt_outcome
from bucketrun.events.storage import Bucket

PART_NAMES = {"dataset": "dataset", "model_cache": "model cache", "environment": "environment"}


def _part(verdict: dict[str, Any], name: str) -> str:
    part = verdict.get(name)
    if not part:
        return "not checked (the manifest names none)"
    if part.get("ok"):
        figures = f"{part.get('files', 0)} files, {part.get('bytes', 0):,} bytes"
        if name == "dataset":
            figures += f", {part.get('lines', 0):,} lines"
        hashed = " (sha256 of every file)" if part.get("hashed_bytes") else " (sizes only: quick mode)"
        return f"verified at {part.get('path')}: {figures}{hashed if name == 'model_cache' else ''}"
    msgs = "; ".join(f.get("message", f.get("problem", "")) for f in part.get("findings", [])[:5])
    partial = " The cache is PARTIAL." if part.get("partial") else ""
    return f"FAILED at {part.get('path')}: {msgs}.{partial}"


def host_finding(verdict: dict[str, Any]) -> str:
    """One host's preflight in a phrase: what it found, the first findings of each failed check."""
    if verdict.get("ok"):
        return "passed"
    out = []
    for name, label in PART_NAMES.items():
        part = verdict.get(name) or {}
        if part and not part.get("ok"):
            said = "; ".join(f.get("message", f.get("problem", "")) for f in part.get("findings", [])[:2])
            out.append(f"{label}{' PARTIAL' if part.get('partial') else ''}: {said[:400]}")
    return "; ".join(out) or "failed"


def attempt_history(bucket: Bucket, job_id: str, attempt: int, state: str,
                    failure: dict[str, Any] | None, view: JobView | None = None) -> list[dict[str, Any]]:
    """Every attempt so far, from the per-attempt preflight records and the transition log (never from an earlier
    report, which an attempt that died never wrote): host, finding and outcome each."""
    verdicts: dict[int, dict[str, dict[str, Any]]] = {}
    for info in bucket.list(keys.preflight_prefix(job_id)):
        parsed = keys.parse_preflight_key(job_id, info.key)
        if parsed is None:
            continue
        try:
            verdicts.setdefault(parsed[0], {})[parsed[1]] = codec.loads(bucket.get(info.key).data)
        except NotFound:
            continue
    history = list((view or read_view(bucket, job_id)).history)
    out = []
    for n in range(1, attempt + 1):
        entry = {"attempt": n, "hosts": {h: host_finding(v) for h, v in sorted(verdicts.get(n, {}).items())}}
        if n == attempt:
            entry.update(outcome=state, failure=failure)
        else:
            entry.update(attempt_outcome(history, n))
        out.append(entry)
    return out


def history_line(entry: dict[str, Any]) -> str:
    hosts = "; ".join(f"{h} {said}" for h, said in entry["hosts"].items()) or "no preflight reported"
    fail = entry.get("failure")
    at = f" at {fail['where']}" if fail and fail.get("where") else ""
    why = f" ({fail['class']}{at}: {(fail.get('message') or '')[:300]})" if fail else ""
    return f"attempt {entry['attempt']}: {hosts} -> {entry['outcome']}{why}"


def blockers(report: dict[str, Any]) -> list[str]:
    """What stands between this run and the next window."""
    out = []
    for host, v in (report.get("preflight") or {}).items():
        if not v.get("ok"):
            out.append(f"host {host} fails preflight: fix it and resubmit")
    fail = report.get("failure")
    if fail:
        out.append(f"{fail['class']} at {fail['where']}: {fail['message']}")
    elif not (report.get("mirror") or {}).get("verified"):
        out.append("no verified mirror of the checkpoint in the bucket")
    return out


def reproduce(report: dict[str, Any], state: str) -> list[str]:
    """The exact lines to run this again: the trainer command as run, and the bucketrun line (a retry of a
    failed window, a new submission of this one's manifest otherwise)."""
    r = report.get("reproduce")
    if not r:
        return []
    out = [f"# on {r['host']}, in {r['cwd'] or 'the agent root'}:", r["command"]]
    if state == "failed":
        out.append(f"bucketrun --bucket {r['bucket']} retry {report['job_id']}")
    else:
        out.append(f"bucketrun --bucket {r['bucket']} submit window.json  # window.json: a copy of {r['manifest_key']}")
    return out


def render(report: dict[str, Any], state: str) -> str:
    gate = report.get("gate") or {}
    mirror = report.get("mirror") or {}
    lines = [f"# Training window {report['job_id']} (attempt {report['attempt']}): {state}", ""]
    lines += ["## Dataset verification", ""]
    for host, v in (report.get("preflight") or {}).items():
        lines.append(f"- **{host}**: {_part(v, 'dataset')}")
    lines += ["", "## Model cache verification", ""]
    for host, v in (report.get("preflight") or {}).items():
        lines.append(f"- **{host}**: {_part(v, 'model_cache')}")
    lines += ["", "## Command", "", f"On **{report['launch_host']}**:", "",
              "    " + shlex.join(report.get("command") or []), ""]
    reached = gate.get("passed")
    lines += ["## Checkpoint", "",
              f"- target step {report['target_step']}; the progress file reads step {gate.get('step')}: "
              + ("**reached**" if reached else "**not reached**")]
    for rel, size in (gate.get("required") or {}).items():
        lines.append(f"- `{rel}`: {'missing' if size is None else f'{size:,} bytes'}")
    resume = report.get("resume") or {}
    if resume:
        lines.append(f"- resumed from: {resume.get('from')} (step {resume.get('step')})")
    lines += ["", "## Where things are", "", f"- run directory: `{report['run_dir']}` on {report['launch_host']}",
              f"- mirror: `{mirror.get('prefix')}` ({mirror.get('files', 0)} files, {mirror.get('bytes', 0):,} bytes, "
              f"{'verified by listing back and re-hashing' if mirror.get('verified') else 'NOT verified'})"
              if mirror else "- mirror: none"]
    saved = report.get("crash_mirror")
    if saved:
        lines.append(f"- checkpoint saved after the failure: `{saved.get('prefix')}` (step {saved['step']}, "
                     + ("verified by listing back and re-hashing: a retry on any host resumes from it)"
                        if saved.get("verified") else "NOT verified: " + "; ".join(saved.get("problems") or []) + ")"))
    for w in report.get("warnings") or []:
        lines.append(f"- warning: {w}")
    down = report.get("teardown")
    if down:
        inst = down.get("instance") or {}
        lines.append(f"- teardown: {down['action']} of {inst.get('backend')}:{inst.get('id')} after the verified "
                     f"mirror, {down['state']} (pull the mirror home and verify it by load before you approve)" if down.get("approve") == "required" else
                     f"- teardown: {down['action']} of {inst.get('backend')}:{inst.get('id')}, {down['state']}")
    metrics = report.get("metrics") or {}
    if metrics:
        lines += ["", f"## Metrics at step {gate.get('step')}", ""]
        lines += [f"- {name}: {value:g}" for name, value in metrics.items()]
    rerun = reproduce(report, state)
    if rerun:
        lines += ["", "## Reproduce", ""] + [f"    {line}" for line in rerun]
    history = report.get("history") or []
    if history:
        lines += ["", "## History", ""] + [f"- {history_line(e)}" for e in history]
    cost = report.get("cost")
    if cost:
        lines += ["", "## Cost so far", "", f"- {cost['error'] if 'error' in cost else cost_line(cost)}"]
    lines += ["", "## What blocks the next window", ""]
    lines += [f"- {b}" for b in blockers(report)] or ["- nothing: the checkpoint is verified in the bucket"]
    return "\n".join(lines) + "\n"


def window_cost(view: JobView) -> dict[str, Any]:
    """The window's cost so far, from the history the report reads anyway: requests recorded up to this attempt's
    last transition (the report's own writes and the terminal transition's come after), and GPU "not recorded"
    (a host agent's host has no price in the bucket)."""
    try:
        return cost_of(view)
    except ConfigError as exc:  # a bad BUCKETRUN_PRICING on the host must not cost the window its report
        return {"error": str(exc)}


def write_report(bucket: Bucket, report: dict[str, Any], body: Any, state: str) -> None:
    view = read_view(bucket, report["job_id"])
    report["history"] = attempt_history(bucket, report["job_id"], report["attempt"], state, report.get("failure"),
                                        view)
    report["cost"] = window_cost(view)
    data = {**report, "state": state, "blockers": blockers(report), "at": codec.iso(codec.now()),
            "reproduce_lines": reproduce(report, state), "history_lines": [history_line(e) for e in report["history"]]}
    bucket.put(keys.report_json_key(report["job_id"]), codec.dumps(data), "application/json")
    bucket.put(keys.report_key(report["job_id"]), render(report, state).encode(), "text/markdown; charset=utf-8")
