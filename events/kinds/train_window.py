"""The train_window kind: a bounded training run to a target step on hosts the user owns, reached through
host agents (`bucketrun agent`). It succeeds only on verified artifacts: the dataset and the model cache
verified on every named host, a checkpoint at the target step, and its mirror in the bucket listed back.

Everything decidable from the manifest is decided here; the host side is images/train_window/.
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..envelope import Strict, check_labels
from ..fingerprints import CacheFingerprint, DatasetFingerprint
from ..manifest import ManifestRejected, summarize
from . import KindSpec
from .validate import validate_manifest

PLACEHOLDERS = frozenset({"target_step", "window", "start_step", "run_dir", "workdir", "python"})
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def placeholders(text: str) -> set[str]:
    """The `{name}` fields of one argv string; `{{` and `}}` are literal braces."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise ValueError(f"bad braces in {text[:60]!r}: {exc}") from None


def _known_placeholders(values: list[str], allowed: frozenset[str]) -> list[str]:
    for v in values:
        unknown = placeholders(v) - allowed
        if unknown:
            raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; known: "
                             + ", ".join(f"{{{p}}}" for p in sorted(allowed)))
    return values


def _relative(path: str) -> str:
    if path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError("must be a relative path without empty, '.' or '..' segments")
    return path


class Window(Strict):
    target_step: int = Field(ge=1, le=10**9, description="the absolute step this window advances to")
    size: int = Field(ge=1, le=10**9, description="steps in this window")

    @model_validator(mode="after")
    def _fits(self) -> "Window":
        if self.size > self.target_step:
            raise ValueError(f"size {self.size} is larger than target_step {self.target_step}")
        return self

    @property
    def start_step(self) -> int:
        return self.target_step - self.size


class Checkpoint(Strict):
    """Where the run writes, and what proves a checkpoint: the progress file's step and real files."""

    run_dir: str = Field(min_length=1, max_length=1024, description="on the launching host; may use {target_step}")
    progress_file: str = Field("checkpoint.json", min_length=1, max_length=256)
    step_field: str = Field("step", min_length=1, max_length=128, description="dotted path in the progress file")
    required_files: list[str] = Field(min_length=1, max_length=64,
                                      description="relative to run_dir; may use {target_step}; each non-empty")

    _rel = field_validator("progress_file")(classmethod(lambda cls, v: _relative(v)))

    @field_validator("required_files")
    @classmethod
    def _files(cls, v: list[str]) -> list[str]:
        for f in v:
            _relative(f)
        return _known_placeholders(v, frozenset({"target_step"}))

    @field_validator("run_dir")
    @classmethod
    def _run_dir(cls, v: str) -> str:
        return _known_placeholders([v], frozenset({"target_step"}))[0]


class Dataset(Strict):
    """A dataset on each host at `path`, or synced there from a bucket `prefix`; verified against `fingerprint`."""

    path: str = Field(min_length=1, max_length=1024)
    prefix: str | None = Field(None, min_length=1, max_length=1024, description="sync from this bucket prefix first")
    fingerprint: DatasetFingerprint


class ModelCache(Strict):
    repo_id: str = Field(min_length=1, max_length=256)
    revision: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    cache_dir: str = Field(min_length=1, max_length=1024)
    fingerprint: CacheFingerprint
    mode: Literal["quick", "full"] = "full"

    @model_validator(mode="after")
    def _same_repo(self) -> "ModelCache":
        if self.fingerprint.repo_id != self.repo_id:
            raise ValueError(f"fingerprint is of {self.fingerprint.repo_id!r}, not {self.repo_id!r}")
        if self.revision and self.fingerprint.revision != self.revision:
            raise ValueError("fingerprint.revision differs from revision")
        return self


class Hosts(Strict):
    """Agents by label: every `preflight` host must pass before the `launch` host starts the run."""

    preflight: list[str] = Field(min_length=1, max_length=32)
    launch: str
    teardown: bool = Field(False, description="the older form of `teardown: {action: terminate, approve: auto}`")

    _labels = field_validator("preflight")(classmethod(lambda cls, v: check_labels(v)))

    @model_validator(mode="after")
    def _launch_checked(self) -> "Hosts":
        if self.launch not in self.preflight:
            raise ValueError(f"launch host {self.launch!r} must be one of the preflight hosts")
        return self


class Requirements(Strict):
    min_free_disk_gb: float | None = Field(None, ge=0, le=10**6)
    min_free_inodes: int | None = Field(None, ge=0, le=10**12)
    min_memory_gb: float | None = Field(None, ge=0, le=10**5)
    min_gpu_memory_gb: float | None = Field(None, ge=0, le=10**4)


class Timeouts(Strict):
    first_log_s: float = Field(600.0, ge=1, le=86400, description="no log line by then: cache/model materialization")
    stall_s: float = Field(900.0, ge=1, le=86400, description="logging, then silent this long: a stall")
    max_wall_s: float = Field(86400.0, ge=10, le=30 * 86400)
    preflight_s: float = Field(120.0, ge=1, le=86400,
                               description="how long the launching host waits for every preflight host's agent")


class Mirror(Strict):
    """Which of run_dir's files go back to the bucket (globs relative to run_dir)."""

    include: list[str] = Field(default_factory=lambda: ["**"], min_length=1, max_length=64)
    exclude: list[str] = Field(default_factory=list, max_length=64)


class Smoke(Strict):
    """A short run on the launching host that must pass before the real window starts (the CPU-smoke gate)."""

    command: list[str] = Field(min_length=1, max_length=256)
    run_dir: str = Field(min_length=1, max_length=1024, description="a scratch directory, emptied first")
    target_step: int = Field(1, ge=1, le=10**6)
    timeout_s: float = Field(600.0, ge=1, le=86400)

    _ph = field_validator("command")(classmethod(lambda cls, v: _known_placeholders(v, PLACEHOLDERS)))


class Teardown(Strict):
    """What becomes of the launching host (a rented instance) once the mirror is verified, and whether the user
    approves it first: `stop` is reversible but rarely stops the whole meter; `terminate` does, and destroys."""

    action: Literal["stop", "terminate"] = "stop"
    approve: Literal["auto", "required"] = "required"


class TrainWindowBody(Strict):
    command: list[str] = Field(min_length=1, max_length=256, description="argv; placeholders {target_step} ...")
    workdir: str | None = Field(None, min_length=1, max_length=1024)
    env: list[str] = Field(default_factory=list, max_length=64, description="variable NAMES passed through")
    window: Window
    checkpoint: Checkpoint
    dataset: Dataset | None = None
    model_cache: ModelCache | None = None
    hosts: Hosts
    requirements: Requirements = Field(default_factory=Requirements)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    mirror: Mirror = Field(default_factory=Mirror)
    smoke: Smoke | None = None
    teardown: Teardown | None = Field(None, description="stop or terminate the launching host after the verified "
                                                        "mirror, on approval or at once")
    resume_from: str | None = Field(None, min_length=1, max_length=1024, pattern=r"^jobs/.+/mirror/[^/]+\.json$",
                                    description="a verified mirror manifest (another window's) to start from")
    then: dict[str, Any] | None = Field(None, description="a manifest submitted after success; may use "
                                                          "{checkpoint_manifest}, {checkpoint_prefix}, "
                                                          "{checkpoint_step} and {parent_job}")

    _ph = field_validator("command")(classmethod(lambda cls, v: _known_placeholders(v, PLACEHOLDERS)))

    @property
    def teardown_plan(self) -> Teardown | None:
        """`teardown`, or the older `hosts.teardown: true`, which meant terminate without asking."""
        if self.teardown is not None:
            return self.teardown
        return Teardown(action="terminate", approve="auto") if self.hosts.teardown else None

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"env lists variable names, got {name[:40]!r}")
        return v

    @field_validator("then")
    @classmethod
    def _then_is_manifest(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        probe = substitute(v, next_stage_values("20260101T000000000Z-aaaaaa", {
            "prefix": "jobs/x/mirror/001-step000000001/", "manifest": "jobs/x/mirror/001-step000000001.json",
            "step": 1}))
        try:
            validate_manifest(probe)
        except ManifestRejected as exc:
            raise ValueError(f"the next stage is not a valid manifest: {exc.message if not exc.fields else summarize(exc.fields)}") from None
        return v


def next_stage_values(job_id: str, mirror: dict[str, Any]) -> dict[str, str]:
    """What a `then` manifest may refer to: the verified checkpoint this window left in the bucket."""
    return {"checkpoint_manifest": mirror["manifest"], "checkpoint_prefix": mirror["prefix"],
            "checkpoint_step": str(mirror["step"]), "parent_job": job_id}


def next_stage(job_id: str, body: "TrainWindowBody", mirror: dict[str, Any]) -> dict[str, Any] | None:
    """The `then` manifest filled in, with a request_id derived from this job so it is submitted once."""
    if body.then is None:
        return None
    out = substitute(body.then, next_stage_values(job_id, mirror))
    out.setdefault("request_id", f"{job_id}.then")
    return out


def substitute(obj: Any, values: dict[str, str]) -> Any:
    """Fill `{name}` in every string of a JSON value (only the names given; other braces stay as they are)."""
    if isinstance(obj, str):
        for name, value in values.items():
            obj = obj.replace("{" + name + "}", value)
        return obj
    if isinstance(obj, list):
        return [substitute(x, values) for x in obj]
    if isinstance(obj, dict):
        return {k: substitute(x, values) for k, x in obj.items()}
    return obj


def verify(manifest: Any, result: dict[str, Any]) -> list[str]:
    """Success needs the gate's reading of the checkpoint and a mirror verified by listing it back."""
    body: TrainWindowBody = manifest.body
    problems = []
    gate = result.get("gate") or {}
    if gate.get("step") != body.window.target_step:
        problems.append(f"checkpoint step is {gate.get('step')}, the target is {body.window.target_step}")
    mirror = result.get("mirror") or {}
    if not mirror.get("verified") or not mirror.get("files"):
        problems.append("the run directory's mirror is not verified")
    hosts = result.get("preflight") or {}
    missing = [h for h in body.hosts.preflight if (hosts.get(h) or {}).get("ok") is not True]
    if missing:
        problems.append(f"preflight did not pass on {', '.join(missing)}")
    return problems


SPEC = KindSpec(
    name="train_window",
    body=TrainWindowBody,
    work="bucketrun.images.train_window.run:attempt_work",
    verify=verify,
    default_resources={"heartbeat_s": 15.0, "stall_after_s": 1800.0},
    launcher="agent",
)
