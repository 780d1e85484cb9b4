"""The fleet kind: one processor over many items (every object under a prefix, an items file, or a list given
inline), run by many workers that coordinate through the bucket alone. Everything decidable from the manifest is
decided here.

The protocol objects (plan, leases, done markers, dataset manifest) are in events/fleet/; the worker is
images/fleet/.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator

from ..envelope import Strict
from . import KindSpec
from .transcription import TranscribeOptions, item_problem

MAX_INLINE_ITEMS = 10_000
MAX_ITEM_CHARS = 4096  # events/fleet/plan.py holds items files to the same bound
ENTRY_POINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _relative_key(v: str | None) -> str | None:
    if v is not None and (v.startswith("/") or any(p in (".", "..") for p in v.split("/")) or "//" in v):
        raise ValueError("must be a bucket key without empty, '.' or '..' segments")
    return v


class Items(Strict):
    """Every object under `prefix` (optionally ending in `suffix`), in this bucket or `bucket`; or an items
    `file` in this bucket: JSONL (a string, or an object with "item", per line) or parquet with an `item` column;
    or the items themselves, `inline` (what a transcribe manifest with `sources` becomes)."""

    prefix: str | None = Field(None, max_length=1024)
    suffix: str | None = Field(None, min_length=1, max_length=64)
    bucket: str | None = Field(None, max_length=1024, description="another bucket's URL (s3://name/prefix)")
    file: str | None = Field(None, min_length=1, max_length=1024)
    inline: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_ITEM_CHARS)]] | None = Field(
        None, min_length=1, max_length=MAX_INLINE_ITEMS, description="the items, in order")

    _prefix = field_validator("prefix", "file")(classmethod(lambda cls, v: _relative_key(v)))

    @field_validator("bucket")
    @classmethod
    def _bucket_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,62}(/.*)?$", v):
            raise ValueError("must be an s3://bucket[/prefix] URL")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "Items":
        if sum(x is not None for x in (self.prefix, self.file, self.inline)) != 1:
            raise ValueError("give exactly one of 'prefix', 'file' or 'inline'")
        if self.prefix is None and (self.suffix is not None or self.bucket is not None):
            raise ValueError("'suffix' and 'bucket' go with 'prefix', not with 'file' or 'inline'")
        if self.file is not None and not self.file.endswith((".jsonl", ".parquet")):
            raise ValueError("'file' must be a .jsonl or .parquet object")
        return self


class NoopOptions(Strict):
    """For benchmarks and chaos tests: sleep per item; fail some items (an error row); crash the worker on some
    (a hard exit, as a segfaulting decoder would) to exercise poison-item isolation."""

    sleep_s: float = Field(0.0, ge=0, le=60)
    fail_items: list[str] = Field(default_factory=list, max_length=1000)
    crash_items: list[str] = Field(default_factory=list, max_length=1000)


class TranscriptCheckOptions(Strict):
    model: str | None = Field(None, max_length=1024, description="None: large-v3 on CUDA, the offline base on CPU")
    language: str | None = Field("en", min_length=2, max_length=8)
    beam_size: int = Field(1, ge=1, le=10)
    silence_db: float = Field(-40.0, ge=-90, le=0, description="frames quieter than this count as silence")


@dataclass(frozen=True)
class BuiltinProcessor:
    """What intake knows of a built-in processor: its options, checked with each field named, and, when its items
    are read a known way, why an inline item cannot be one; the worker image's factory runs it."""

    factory: str  # "module:function" of the factory in the worker image
    options: type[Strict]
    item_problem: Callable[[str], str | None] | None = None


# Built-in processors, by name.
PROCESSORS: dict[str, BuiltinProcessor] = {
    "noop": BuiltinProcessor("bucketrun.images.fleet.processors.noop:make", NoopOptions),
    "transcript_check": BuiltinProcessor("bucketrun.images.fleet.processors.transcript_check:make",
                                         TranscriptCheckOptions),
    "transcribe": BuiltinProcessor("bucketrun.images.fleet.processors.transcribe:make", TranscribeOptions,
                                   item_problem),
}


def options_model(name: str) -> type[Strict] | None:
    found = PROCESSORS.get(name)
    return found.options if found is not None else None


class Processor(Strict):
    """A built-in processor by `name`, or a user's own `entry_point` ("module:function") baked into the worker image."""

    name: str | None = Field(None, min_length=1, max_length=64)
    entry_point: str | None = Field(None, min_length=3, max_length=256)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> "Processor":
        if (self.name is None) == (self.entry_point is None):
            raise ValueError("give exactly one of 'name' or 'entry_point'")
        if self.name is not None and self.name not in PROCESSORS:
            raise ValueError(f"unknown processor {self.name!r}; built in: {', '.join(sorted(PROCESSORS))}")
        if self.entry_point is not None and not ENTRY_POINT_RE.match(self.entry_point):
            raise ValueError("entry_point must look like 'package.module:function'")
        model = options_model(self.name) if self.name else None
        if model is not None:  # a built-in's options are checked here, at intake, with each field named
            try:
                self.options = model.model_validate(self.options).model_dump(mode="json")
            except ValidationError as exc:
                raise ValueError("; ".join(f"options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                           for e in exc.errors(include_input=False))) from None
        return self

    @property
    def factory(self) -> str:
        return PROCESSORS[self.name].factory if self.name else str(self.entry_point)


class Workers(Strict):
    """How many workers and where. Credentials never appear here: a backend passes its provider's secrets by
    reference (`secrets` names them), so no key reaches the bucket or the job input."""

    count: int = Field(1, ge=1, le=1000)
    backend: Literal["local", "runpod", "vast", "skypilot"] = "local"
    image: str | None = Field(None, min_length=1, max_length=512, description="the worker image (cloud backends)")
    gpu_type: str | None = Field(None, min_length=1, max_length=128, description="e.g. 'NVIDIA GeForce RTX 4090'")
    cloud_type: Literal["SECURE", "COMMUNITY", "ALL"] = "SECURE"
    disk_gb: int = Field(40, ge=5, le=2000)
    max_price_per_hour: float | None = Field(None, gt=0, le=100, description="USD per GPU instance hour (vast)")
    min_inet_down_mbps: float | None = Field(None, gt=0, le=100000)
    secrets: list[str] = Field(default_factory=list, max_length=32,
                               description="names of provider secrets passed to workers as env references")
    stall_s: float = Field(300.0, ge=10, le=86400, description="a worker silent this long is terminated")

    @field_validator("secrets")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not SECRET_NAME_RE.match(name):
                raise ValueError(f"secret names are environment variable names, got {name[:40]!r}")
        return v

    @model_validator(mode="after")
    def _cloud_needs_image(self) -> "Workers":
        if self.backend in ("runpod", "vast", "skypilot") and not self.image:
            raise ValueError(f"backend {self.backend!r} needs 'image' (the worker image to run)")
        if self.backend in ("runpod", "vast") and not self.gpu_type:
            raise ValueError(f"backend {self.backend!r} needs 'gpu_type'")
        return self


class Output(Strict):
    prefix: str | None = Field(None, min_length=1, max_length=512,
                               description="where parts and the dataset manifest go; default jobs/<id>/fleet/")

    @field_validator("prefix")
    @classmethod
    def _slash(cls, v: str | None) -> str | None:
        _relative_key(v.rstrip("/") if v else v)
        if v is not None and v.split("/", 1)[0] in ("inbox", "control", "index", "jobs"):
            raise ValueError("must not be under inbox/, control/, index/ or jobs/ (bucketrun's own prefixes)")
        return v if v is None or v.endswith("/") else v + "/"


class FleetRun(Strict):
    """How a fleet runs, whatever it processes; a transcribe manifest with `sources` gives these as `fleet`."""

    shard_size: int = Field(50, ge=1, le=100_000)
    lease_s: float = Field(120.0, ge=2, le=86400, description="a claim not renewed this long may be taken over")
    heartbeat_s: float = Field(30.0, ge=0.5, le=3600, description="each worker's heartbeat, ± jitter")
    max_item_attempts: int = Field(3, ge=1, le=20, description="times an item, alone in its shard and in "
                                   "quarantine, may kill its worker process before it is dead-lettered")
    workers: Workers = Field(default_factory=Workers)
    output: Output = Field(default_factory=Output)

    @model_validator(mode="after")
    def _renewable(self) -> "FleetRun":
        if self.lease_s < 2 * self.heartbeat_s and self.lease_s < 10:
            raise ValueError("lease_s must be at least twice heartbeat_s (or 10 s)")
        return self


class FleetBody(FleetRun):
    items: Items
    processor: Processor
    expanded_from: Literal["transcribe"] | None = Field(
        None, description="the kind of the manifest intake turned into this fleet (a transcribe manifest with "
                          "`sources`); None: submitted as a fleet")

    @model_validator(mode="after")
    def _items_fit_the_processor(self) -> "FleetBody":
        """Inline items are known at intake, so a processor that reads its items a known way has them checked
        here (a transcribe item is a source: events/kinds/transcription.py `parse_item`)."""
        builtin = PROCESSORS.get(self.processor.name) if self.processor.name else None
        check = builtin.item_problem if builtin is not None else None
        if check is not None and self.items.inline:
            for i, item in enumerate(self.items.inline):
                problem = check(item)
                if problem:
                    raise ValueError(f"items.inline[{i}]: {problem}")
        return self


def verify(manifest: Any, result: dict[str, Any]) -> list[str]:
    """Success means a committed dataset manifest whose totals cover every planned item exactly once."""
    dataset = result.get("dataset") or {}
    problems = []
    if not dataset.get("key"):
        problems.append("no dataset manifest")
    elif dataset.get("items_covered") != dataset.get("items_total"):
        problems.append(f"dataset covers {dataset.get('items_covered')} of {dataset.get('items_total')} items")
    return problems


SPEC = KindSpec(
    name="fleet",
    body=FleetBody,
    work="bucketrun.images.fleet.run:attempt_work",
    verify=verify,
    default_resources={"heartbeat_s": 30.0, "stall_after_s": 600.0},
    launcher="fleet",
)
