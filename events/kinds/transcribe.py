"""The transcription kind: a URL or a bucket object in, SRT, VTT, JSON and TXT out.

Everything decidable from the manifest is decided here, at intake: the URL's scheme and literal address, the
language code, the model name. The worker (images/transcribe) only checks what needs the network.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..destinations import url_problem
from ..manifest import Strict
from . import KindSpec

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


class TranscribeBody(Strict):
    source: Source
    options: TranscribeOptions = Field(default_factory=TranscribeOptions)


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
)
