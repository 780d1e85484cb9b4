"""What this host can run: a kind is runnable when the modules it needs (events/needs.py) and its work module
really import here; a module that is found but breaks on import counts as missing. Probed once per agent, each
kind in a child interpreter of its own, so the agent neither carries every kind's stack nor dies of a broken one."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bucketrun.events import needs
from bucketrun.events.kinds import get_kind, kind_names

PROBE_TIMEOUT_S = 120.0
_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # ImportError, or whatever a broken package raises while importing
        print(json.dumps({"module": getattr(exc, "name", None) or name, "error": f"{type(exc).__name__}: {exc}"[:300]}))
        sys.exit(0)
print("null")
"""


def modules_of(kind: str, bucket_url: str | None = None) -> list[str]:
    """What a host imports to run `kind` on this bucket: the needs table's modules first (so the one missing is
    named), then the kind's work module."""
    spec = get_kind(kind)
    return [*needs.needs(kind, bucket_url=bucket_url), *([spec.work.partition(":")[0]] if spec is not None else [])]


def probe(kinds: list[str] | None = None, bucket_url: str | None = None) -> dict[str, dict[str, Any] | None]:
    """{kind: None when it runs here, else {module, error, install}}; the kinds' probes run side by side."""
    kinds = kinds if kinds is not None else kind_names()
    procs = {k: subprocess.Popen([sys.executable, "-c", _PROBE, *modules_of(k, bucket_url)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k in kinds}
    return {kind: _verdict(kind, proc) for kind, proc in procs.items()}


def _verdict(kind: str, proc: subprocess.Popen) -> dict[str, Any] | None:
    try:
        stdout, stderr = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        stdout, stderr = "", f"importing did not finish within {PROBE_TIMEOUT_S:.0f} s"
    lines = stdout.strip().splitlines()
    if proc.returncode == 0 and lines and lines[-1] == "null":
        return None
    try:
        found = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    except ValueError:
        found = None
    if not isinstance(found, dict):  # the interpreter itself died importing (a segfault, a hang)
        last = (stderr.strip().splitlines() or [""])[-1]
        found = {"module": None, "error": f"the import check exited {proc.returncode}: {last}"[:300]}
    extra = needs.extra_of(found["module"]) or next(iter(needs.NEEDS.get(kind, {}).values()), None)
    return {**found, "install": needs.pip_line([extra]) if extra else "pip install bucketrun"}


def missing_line(missing: dict[str, Any]) -> str:
    """`psutil does not import (ImportError: ...); install it with `pip install 'bucketrun[agent]'``"""
    what = f"{missing['module']} does not import" if missing.get("module") else "its modules do not import"
    return f"{what} ({missing['error']}); install it with `{missing['install']}`"
