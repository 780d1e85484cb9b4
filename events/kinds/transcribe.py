"""The transcription kind: a URL or a bucket object in, SRT, VTT, JSON and TXT out.

Everything decidable from the manifest is decided here, at intake: the URL's scheme and literal address, the
language code, the model name. The worker (images/transcribe) only checks what needs the network.

A manifest with `sources` (many) instead of `source` is not run as this kind: intake turns it into the equivalent
fleet manifest (`expand`), whose `transcribe` processor (images/fleet/processors/transcribe.py) writes each
source's transcripts and one parquet row per source.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_serializer, model_validator

from ..destinations import url_problem
from ..manifest import ENVELOPE_FIELDS, Strict
from . import KindSpec
from .fleet import MAX_INLINE_ITEMS, FleetRun

FORMATS = ("srt", "vtt", "json", "txt")
# Whisper's language codes (faster_whisper.tokenizer._LANGUAGE_CODES), kept here so intake needs no model stack.
LANGUAGES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu hy "
    "id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru "
    "sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue".split())
# faster-whisper's downloadable names; anything else must be a local CTranslate2 folder (an absolute path).
MODELS = frozenset({"tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium", "large-v1",
                    "large-v2", "large-v3", "large", "distil-large-v2", "distil-medium.en", "distil-small.en",
                    "distil-large-v3", "distil-large-v3.5", "large-v3-turbo", "turbo"})


class Source(Strict):
    url: str | None = Field(None, min_length=1, max_length=4096, description="http(s) media URL, fetched with yt-dlp")
    key: str | None = Field(None, min_length=1, max_length=1024, description="an object key in the same bucket")

    @field_validator("url")
    @classmethod
    def _fetchable(cls, v: str | None) -> str | None:
        problem = url_problem(v) if v is not None else None
        if problem:
            raise ValueError(f"URL {problem}")
        return v

    @field_validator("key")
    @classmethod
    def _relative_key(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("/") or any(p in ("", ".", "..") for p in v.split("/"))):
            raise ValueError("must be a bucket key without empty, '.' or '..' segments")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        if (self.url is None) == (self.key is None):
            raise ValueError("give exactly one of 'url' or 'key'")
        return self


class TranscribeOptions(Strict):
    model: str | None = Field(None, max_length=1024, description="None: large-v3 on CUDA, the offline base model on CPU")
    language: str | None = Field(None, min_length=2, max_length=8, description="None or 'auto' detects it")
    task: Literal["transcribe", "translate"] = "transcribe"
    beam_size: int | None = Field(None, ge=1, le=10, description="None: the device's measured default "
                                  "(images/transcribe/settings.py)")
    vad: bool | None = Field(None, description="None: on")
    word_timestamps: bool = True
    formats: list[Literal["srt", "vtt", "json", "txt"]] = Field(default_factory=lambda: list(FORMATS), min_length=1)
    cache: bool = Field(True, description="serve a result cached for the same media and options; false: run fresh")

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        if v is None or v.lower() == "auto":
            return None
        if v.lower() not in LANGUAGES:
            raise ValueError("is not a Whisper language code (e.g. 'en', 'de', 'ja') or 'auto'")
        return v.lower()

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and v not in MODELS and not v.startswith("/"):
            raise ValueError("must be a faster-whisper model name (e.g. 'large-v3', 'base') or an absolute path "
                             "to a CTranslate2 model folder on the worker")
        return v

    @field_validator("formats")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class BadItem(ValueError):
    """A fleet item that does not encode a transcription source."""


# -- a source as a fleet item ------------------------------------------------------------------------------------
# A transcribe item is the source as one plain string: the URL itself ("https://host/talk.mp3"), or the bucket key
# itself ("media/talk.ogg"). An item holding "://" is a URL, anything else a key: a key never holds "//" (no empty
# segments), so no key reads as a URL. Plain strings keep the dataset's `item` column readable, and an items file
# or a prefix listing of keys is already valid input for the processor.

def source_item(source: Source) -> str:
    return source.url if source.url is not None else str(source.key)


def parse_item(item: str) -> Source:
    """The source an item encodes, checked as intake checks a manifest's `source`; BadItem says why not."""
    try:
        return Source.model_validate({"url": item} if "://" in item else {"key": item})
    except ValidationError as exc:
        what = "URL" if "://" in item else "key"
        reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_input=False))
        raise BadItem(f"not a transcribe source ({what}): {reasons}") from None


def item_problem(item: str) -> str | None:
    try:
        parse_item(item)
    except BadItem as exc:
        return str(exc)
    return None


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
