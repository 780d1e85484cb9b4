"""The public manifest contract: one pydantic model per job kind, plus the intake checks that come first.

Later kinds add models and fields; the fields here never change meaning.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import codec
from .codec import DecodeError

MAX_MANIFEST_BYTES = 1 << 20
FORMATS = ("srt", "vtt", "json", "txt")

# Field names that look like credentials; values are never echoed back.
_SECRET_NAME = re.compile(
    r"(secret|passw(or)?d|api[_-]?key|access[_-]?key|private[_-]?key|session[_-]?token|auth[_-]?token|"
    r"bearer|credential|authorization|^token$|_token$)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(r"^(AKIA|ASIA)[0-9A-Z]{16}$|^rpa_[0-9A-Za-z]{20,}$|^-----BEGIN [A-Z ]*PRIVATE KEY")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Source(Strict):
    url: str | None = Field(None, min_length=1, max_length=4096, description="http(s) media URL, fetched with yt-dlp")
    key: str | None = Field(None, min_length=1, max_length=1024, description="an object key in the same bucket")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        if (self.url is None) == (self.key is None):
            raise ValueError("give exactly one of 'url' or 'key'")
        return self


class TranscribeOptions(Strict):
    model: str | None = Field(None, description="None: large-v3 on CUDA, the offline base model on CPU")
    language: str | None = Field(None, min_length=2, max_length=8, description="None or 'auto' detects it")
    task: Literal["transcribe", "translate"] = "transcribe"
    beam_size: int = Field(5, ge=1, le=10)
    vad: bool | None = Field(None, description="None: on for audio longer than 30 s")
    word_timestamps: bool = True
    formats: list[Literal["srt", "vtt", "json", "txt"]] = Field(default_factory=lambda: list(FORMATS), min_length=1)

    @field_validator("language")
    @classmethod
    def _auto(cls, v: str | None) -> str | None:
        return None if v is None or v.lower() == "auto" else v.lower()

    @field_validator("formats")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class Resources(Strict):
    """How long and how often: liveness, stall detection, retries and the backend's own limits."""

    heartbeat_s: float = Field(10.0, ge=1, le=600, description="progress is rewritten at least this often")
    stall_after_s: float = Field(120.0, ge=5, le=86400, description="silent this long = stalled")
    max_attempts: int = Field(3, ge=1, le=10)
    execution_timeout_s: int = Field(3600, ge=10, le=7 * 86400, description="Runpod policy.executionTimeout")
    ttl_s: int = Field(86400, ge=60, le=7 * 86400, description="Runpod policy.ttl")

    @model_validator(mode="after")
    def _stall_after_heartbeat(self) -> "Resources":
        if self.stall_after_s < 2 * self.heartbeat_s:
            raise ValueError("stall_after_s must be at least twice heartbeat_s")
        return self


class Notify(Strict):
    """Where to POST a signed notice on every terminal state (see events/webhook.py)."""

    webhook: str = Field(min_length=8, max_length=2048, description="an http(s) URL")

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; deliveries are signed with the deployment's secret")
        return v


class TranscribeManifest(Strict):
    kind: Literal["transcribe"]
    request_id: str | None = Field(None, min_length=1, max_length=256)
    source: Source
    options: TranscribeOptions = Field(default_factory=TranscribeOptions)
    resources: Resources = Field(default_factory=Resources)
    notify: Notify | None = None


Manifest = Union[TranscribeManifest]
KINDS: dict[str, type[BaseModel]] = {"transcribe": TranscribeManifest}


class ManifestRejected(Exception):
    """Why a dropped object cannot become a job: a message, and each bad field with its reason."""

    def __init__(self, message: str, fields: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or []


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def find_secrets(obj: Any, path: tuple[Any, ...] = ()) -> list[str]:
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and _SECRET_NAME.search(k):
                found.append(_loc(path + (k,)))
            found.extend(find_secrets(v, path + (k,)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.extend(find_secrets(v, path + (i,)))
    elif isinstance(obj, str) and _SECRET_VALUE.search(obj.strip()):
        found.append(_loc(path))
    return found


def parse_manifest(raw: bytes) -> Manifest:
    """Bytes to a typed manifest, or ManifestRejected naming every bad field; never echoes input values."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestRejected(f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        obj = codec.loads(raw)
    except DecodeError as exc:
        raise ManifestRejected(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ManifestRejected(f"manifest must be a JSON object, not {type(obj).__name__}")
    secrets = find_secrets(obj)
    if secrets:
        raise ManifestRejected(
            "manifest contains credential-like fields; credentials come from the environment, never a manifest",
            [{"loc": loc, "msg": "looks like a secret; remove it"} for loc in secrets],
        )
    kind = obj.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ManifestRejected(
            f"unknown kind {kind!r}" if kind is not None else "missing 'kind'",
            [{"loc": "kind", "msg": f"must be one of: {', '.join(sorted(KINDS))}"}],
        )
    try:
        return model.model_validate(obj)  # type: ignore[return-value]
    except ValidationError as exc:
        fields = [{"loc": _loc(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        summary = "; ".join(f"{f['loc']}: {f['msg']}" for f in fields)
        raise ManifestRejected(f"invalid {kind} manifest: {summary}", fields) from exc


def load_job_manifest(bucket, job_id: str) -> TranscribeManifest:
    """The job's validated manifest as written at intake (jobs/<id>/manifest.json)."""
    from . import keys

    obj = codec.loads(bucket.get(keys.manifest_key(job_id)).data)
    return KINDS[obj["kind"]].model_validate(obj)  # type: ignore[return-value]
