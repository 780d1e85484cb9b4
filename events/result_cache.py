"""The transcription result cache's contract: what identifies a result, and the write-once entry that holds it.

A result is identified by the media (sha256 of the fetched bytes; for a URL also the site extractor's id) and
every resolved option that changes the output, including the model, the device's compute type, the decoding
settings and the versions of faster-whisper and of our own output rules. Keys are in events/keys.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, Field

from . import codec

# Bump when subtitles.py, the JSON result layout or the windowing change what a given transcription renders to.
OUTPUT_VERSION = 3
# Extractors whose id names the media at a URL, not the media itself: their ids are never trusted as identity.
UNTRUSTED_EXTRACTORS = frozenset({"Generic", "Html5MediaEmbed", "Http"})


def options_digest(resolved: dict[str, Any]) -> str:
    """24 hex digits of the sha256 of the canonical JSON of the resolved, output-affecting options."""
    return hashlib.sha256(codec.dumps({**resolved, "output_version": OUTPUT_VERSION})).hexdigest()[:24]


def media_id(info: dict[str, Any]) -> str | None:
    """"Extractor:id" for media a site extractor names (YouTube, Vimeo, ...); None for a bare file URL, whose
    id is only its file name and whose bytes may change under it."""
    extractor, ident = info.get("extractor_key"), info.get("id")
    if not extractor or not ident or extractor in UNTRUSTED_EXTRACTORS:
        return None
    return f"{extractor}:{ident}"


class CachedFile(BaseModel):
    format: str
    key: str
    bytes: int = Field(ge=0)
    sha256: str = Field(min_length=64, max_length=64)
    content_type: str


class CacheEntry(BaseModel):
    """cache/transcribe/<options>/media/<sha256>.json, created once; the files it names are written first."""

    media_sha256: str
    media_id: str | None = None
    options: dict[str, Any]
    files: list[CachedFile]
    summary: dict[str, Any]
    job_id: str
    attempt: int
    at: str
