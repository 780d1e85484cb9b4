"""The registry of job kinds: each kind is a light spec, importable anywhere (the Lambda, the CLI) because it
names its worker by entry point instead of importing it.

Adding a kind: write its body model and spec in events/kinds/<kind>.py, add it to `_BUILTIN` below, and put its
work callable in images/<kind>/ (see README, "Adding a job kind").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

# (module, attribute) of every built-in kind's spec; imported on first use.
_BUILTIN = {"transcribe": ("bucketrun.events.kinds.transcribe", "SPEC"),
            "fleet": ("bucketrun.events.kinds.fleet", "SPEC"),
            "train_window": ("bucketrun.events.kinds.train_window", "SPEC")}
_loaded: dict[str, "KindSpec"] = {}

Verify = Callable[[Any, dict[str, Any]], list[str]]
# (the validated body, the raw manifest) -> the manifest of another kind that runs it instead, or None to keep it
Expand = Callable[[BaseModel, dict[str, Any]], "dict[str, Any] | None"]


@dataclass(frozen=True)
class KindSpec:
    """What the shared layers need to know of a kind; nothing here imports the kind's heavy stack."""

    name: str
    body: type[BaseModel]  # the kind's own manifest fields (everything but the envelope)
    work: str  # "module:function": the callable the attempt runtime runs (images/<kind>/...)
    verify: Verify  # completion check: (manifest, the work's result) -> problems; empty means verified
    default_resources: dict[str, Any] = field(default_factory=dict)  # liveness: heartbeat_s, stall_after_s
    launcher: str = "runpod"  # the cloud backend that runs it, unless BUCKETRUN_LAUNCHER_<KIND> says otherwise
    preload: str | None = None  # "module:function" that warms a worker (loads a model) before its first job
    expand: Expand | None = None  # intake hands some manifests to another kind (many sources -> a fleet)

    @property
    def env_suffix(self) -> str:
        return self.name.upper().replace("-", "_")

    def load_work(self) -> Callable[..., dict[str, Any]]:
        return load_entry_point(self.work)


def load_entry_point(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(spec: KindSpec) -> KindSpec:
    """For kinds outside this package (and tests): the name must be new."""
    if spec.name in _loaded or spec.name in _BUILTIN:
        raise ValueError(f"kind {spec.name!r} is already registered")
    _loaded[spec.name] = spec
    return spec


def get_kind(name: str) -> KindSpec | None:
    if name not in _loaded and name in _BUILTIN:
        module, attr = _BUILTIN[name]
        _loaded[name] = getattr(importlib.import_module(module), attr)
    return _loaded.get(name)


def kind_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_loaded))
