"""What a transcription takes, one job's or one fleet item's: its source (a URL or a bucket key, as a manifest's
`source` or as a fleet item's plain string) and its options. The transcribe kind (events/kinds/transcribe.py) and
the fleet kind's `transcribe` processor (events/kinds/fleet.py PROCESSORS) both check their input with these.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..destinations import url_problem
from ..envelope import Strict

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
