"""What each kind needs installed where its work runs, and the exact pip line that installs it.

A worker that dies of an ImportError leaves a job `launched` and a traceback in a log nobody reads; whoever is
about to run a kind on this machine (the local launchers, a fleet worker, a host agent) asks here first and
refuses with `config_error` and the line to run. Only module names are looked up (importlib's find_spec), so
asking costs no import of the heavy stack.
"""

from __future__ import annotations

import importlib.util
from typing import Any

# module -> the extra of pyproject.toml that provides it
_TRANSCRIBE = {"faster_whisper": "transcribe", "yt_dlp": "transcribe"}
_FLEET = {"pyarrow": "fleet"}
NEEDS: dict[str, dict[str, str]] = {
    "transcribe": _TRANSCRIBE,
    "fleet": _FLEET,
    "train_window": {"psutil": "agent", "huggingface_hub": "agent"},
}
# a fleet's built-in processors need their own stack on top of the fleet worker's
PROCESSOR_NEEDS: dict[str, dict[str, str]] = {
    "noop": {},
    "transcribe": _TRANSCRIBE,
    "transcript_check": {**_TRANSCRIBE, "jiwer": "fleet"},
}
S3_NEEDS = {"aioboto3": "fleet"}  # fleet workers reach an S3-protocol bucket asynchronously


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a broken __spec__
        return False


def needs(kind: str, body: Any = None, bucket_url: str | None = None) -> dict[str, str]:
    """Modules (and their extras) an attempt of this kind imports where it runs."""
    wanted = dict(NEEDS.get(kind, {}))
    if kind == "fleet":
        processor = getattr(getattr(body, "processor", None), "name", None)
        wanted.update(PROCESSOR_NEEDS.get(processor or "noop", {}))
        if bucket_url and bucket_url.startswith("s3://"):
            wanted.update(S3_NEEDS)
    return wanted


def missing(kind: str, body: Any = None, bucket_url: str | None = None) -> dict[str, str]:
    return {m: extra for m, extra in needs(kind, body, bucket_url).items() if not installed(m)}


def pip_line(extras: list[str] | set[str]) -> str:
    return f"pip install 'bucketrun[{','.join(sorted(set(extras)))}]'"


def refusal(kind: str, gone: dict[str, str]) -> str:
    """One sentence for a job's failure: what is missing, and the exact line that installs it."""
    return (f"kind {kind!r} cannot run here: {', '.join(sorted(gone))} not installed; install it with "
            f"`{pip_line(set(gone.values()))}` (or `./dev.sh demo`, which installs every kind) and retry the job")


def extra_of(module: str | None) -> str | None:
    """The extra that provides a module (its top-level package), from any kind's or processor's table."""
    top = (module or "").split(".")[0]
    for table in (*NEEDS.values(), *PROCESSOR_NEEDS.values(), S3_NEEDS):
        if top in table:
            return table[top]
    return None


def import_advice(exc: ImportError) -> str:
    """For an ImportError met at run time: the pip line, when the module is one of an extra's."""
    extra = extra_of(exc.name)
    return f"; install it with `{pip_line([extra])}` and retry the job" if extra else ""
