"""The transcription kind: a URL or a bucket object in, SRT, VTT, JSON and TXT out.

Everything decidable from the manifest is decided here, at intake: the URL's scheme and literal address, the
language code, the model name (the source and options themselves: events/kinds/transcription.py). The worker
(images/transcribe) only checks what needs the network.

A manifest with `sources` (many) instead of `source` is not run as this kind: intake turns it into the equivalent
fleet manifest (`expand`), whose `transcribe` processor (images/fleet/processors/transcribe.py) writes each
source's transcripts and one parquet row per source.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_serializer, model_validator

from ..envelope import ENVELOPE_FIELDS, Strict
from . import KindSpec
from .fleet import MAX_INLINE_ITEMS, FleetRun
from .transcription import Source, TranscribeOptions, source_item


class TranscribeFleet(FleetRun):
    """The `fleet` section of a many-sources manifest: the fleet kind's own settings (workers, leases, output),
    with one source per shard by default since each is minutes of audio."""

    shard_size: int = Field(1, ge=1, le=1000)


class TranscribeBody(Strict):
    source: Source | None = None
    sources: list[Source] | None = Field(None, min_length=1, max_length=MAX_INLINE_ITEMS,
                                         description="many sources: run as a fleet (see `expand`)")
    options: TranscribeOptions = Field(default_factory=TranscribeOptions)
    fleet: TranscribeFleet | None = Field(None, description="how the fleet runs; only with `sources`")

    @field_validator("sources")
    @classmethod
    def _not_both(cls, v: list[Source] | None, info: ValidationInfo) -> list[Source] | None:
        if v is not None and info.data.get("source") is not None:  # named here, so the error names the field
            raise ValueError("give either 'source' (one) or 'sources' (many), not both")
        return v

    @field_validator("fleet")
    @classmethod
    def _many_only(cls, v: TranscribeFleet | None, info: ValidationInfo) -> TranscribeFleet | None:
        if v is not None and info.data.get("source") is not None:
            raise ValueError("goes with 'sources'; a single 'source' runs as one job")
        return v

    @model_validator(mode="after")
    def _one_or_many(self) -> "TranscribeBody":
        if self.source is None and self.sources is None:
            raise ValueError("give 'source' (one) or 'sources' (many)")
        return self

    @model_serializer(mode="wrap")
    def _single_as_before(self, handler) -> dict[str, Any]:
        """A single-source job's stored manifest stays what it always was: no `sources` or `fleet` fields."""
        data = handler(self)
        if self.sources is None:
            data.pop("sources", None)
            data.pop("fleet", None)
        return data


def expand(body: TranscribeBody, obj: dict[str, Any]) -> dict[str, Any] | None:
    """A many-sources manifest as the fleet manifest that runs it: the sources inline as items, the options as the
    `transcribe` processor's, the `fleet` section's settings, the user's own envelope (so the fleet kind's
    defaults for liveness apply), and `expanded_from` to say where it came from. None: a single source."""
    if body.sources is None:
        return None
    envelope = {k: v for k, v in obj.items() if k in ENVELOPE_FIELDS and k != "kind"}
    return {**envelope, "kind": "fleet", "expanded_from": "transcribe",
            **(body.fleet or TranscribeFleet()).model_dump(mode="json"),
            "items": {"inline": [source_item(s) for s in body.sources]},
            "processor": {"name": "transcribe", "options": body.options.model_dump(mode="json")}}


def verify(manifest: Any, result: dict[str, Any]) -> list[str]:
    """Success means one artifact per requested format, each with its bytes and sha256 (silence legitimately
    gives an empty SRT; the JSON result never is)."""
    by_format = {a.get("format"): a for a in result.get("artifacts", [])}
    problems = []
    for fmt in manifest.body.options.formats:
        a = by_format.get(fmt)
        if a is None:
            problems.append(f"no {fmt} artifact")
        elif not isinstance(a.get("bytes"), int) or len(str(a.get("sha256", ""))) != 64:
            problems.append(f"{fmt} artifact {a.get('key')} has no bytes or sha256 recorded")
        elif fmt == "json" and a["bytes"] == 0:
            problems.append(f"json artifact {a.get('key')} is empty")
    return problems


SPEC = KindSpec(
    name="transcribe",
    body=TranscribeBody,
    work="bucketrun.images.transcribe.work:transcribe",
    verify=verify,
    default_resources={"heartbeat_s": 10.0, "stall_after_s": 120.0},
    launcher="runpod",
    preload="bucketrun.images.transcribe.model:preload",
    expand=expand,
)
