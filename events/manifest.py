"""A manifest as the bucket holds it: the checks that come before any kind sees the input (size, nesting,
credentials), the typed `JobManifest` (the envelope of events/envelope.py plus a kind's body), and the rejection
that names each bad field. events/kinds/validate.py joins the envelope and a kind's body (`parse_manifest`).

Validation is strict (a JSON string is never a number, 1 is never true), and a rejection names each bad field
without ever echoing the input's values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from . import codec
from .codec import DecodeError
from .envelope import (MAX_DEPTH, MAX_FIELD_ERRORS, MAX_LOC_CHARS, MAX_MANIFEST_BYTES, Envelope, LaunchOptions, Notify,
                       Resources)

# Field names that look like credentials; values are never echoed back.
_SECRET_NAME = re.compile(
    r"(secret|passw(or)?d|api[_-]?key|access[_-]?key|private[_-]?key|session[_-]?token|auth[_-]?token|"
    r"bearer|credential|authorization|^token$|_token$)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(r"^(AKIA|ASIA)[0-9A-Z]{16}$|^rpa_[0-9A-Za-z]{20,}$|^-----BEGIN [A-Z ]*PRIVATE KEY")


@dataclass(frozen=True)
class JobManifest:
    """A validated manifest: the shared envelope plus the kind's typed body (its source, options, ...)."""

    envelope: Envelope
    body: BaseModel

    @property
    def kind(self) -> str:
        return self.envelope.kind

    @property
    def request_id(self) -> str | None:
        return self.envelope.request_id

    @property
    def resources(self) -> Resources:
        return self.envelope.resources

    @property
    def launch(self) -> LaunchOptions:
        return self.envelope.launch

    @property
    def notify(self) -> Notify | None:
        return self.envelope.notify

    def to_json(self) -> dict[str, Any]:
        """The normalised manifest (defaults filled in), as intake writes it to jobs/<id>/manifest.json."""
        return {**self.envelope.model_dump(mode="json"), **self.body.model_dump(mode="json")}


class ManifestRejected(Exception):
    """Why a dropped object cannot become a job: a message, and each bad field with its reason."""

    def __init__(self, message: str, fields: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or []


def loc_text(parts: tuple[Any, ...] | list[Any]) -> str:
    """`source.url`, `options.formats[1]`: bounded, since a key name is itself input."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    out = out or "(root)"
    return out if len(out) <= MAX_LOC_CHARS else out[:MAX_LOC_CHARS] + "…"


def _walk(obj: Any):
    """Every node with its path, iteratively (a deep document must not exhaust Python's stack)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(obj, ())]
    while stack:
        node, path = stack.pop()
        yield node, path
        if isinstance(node, dict):
            stack.extend((v, path + (k,)) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((v, path + (i,)) for i, v in reversed(list(enumerate(node))))


def check_depth(obj: Any, limit: int = MAX_DEPTH) -> None:
    for _node, path in _walk(obj):
        if len(path) > limit:
            raise ManifestRejected(f"manifest nests deeper than {limit} levels",
                                   [{"loc": loc_text(path[:limit]), "msg": f"nested deeper than {limit} levels"}])


def find_secrets(obj: Any) -> list[str]:
    found: list[str] = []
    for node, path in _walk(obj):
        if path and isinstance(path[-1], str) and _SECRET_NAME.search(path[-1]):
            found.append(loc_text(path))
        elif isinstance(node, str) and _SECRET_VALUE.search(node.strip()):
            found.append(loc_text(path))
    return found


def field_errors(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """pydantic's errors as {loc, msg, type}, capped in number; messages never carry the input value."""
    out = [{"loc": loc_text(prefix + tuple(e["loc"])), "msg": e["msg"].removeprefix("Value error, ")[:300],
            "type": e["type"]}
           for e in exc.errors(include_url=False, include_input=False)]
    return out[:MAX_FIELD_ERRORS]


def summarize(fields: list[dict[str, Any]]) -> str:
    return "; ".join(f"{f['loc']}: {f['msg']}" for f in fields)


def decode_manifest(raw: bytes) -> dict[str, Any]:
    """Bytes to a JSON object within the size, depth and no-credentials rules."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestRejected(f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        obj = codec.loads(raw)
    except DecodeError as exc:
        raise ManifestRejected(f"manifest is not valid JSON: {str(exc)[:200]}") from exc
    except RecursionError as exc:  # orjson refuses past its own depth limit; belt and braces
        raise ManifestRejected(f"manifest nests deeper than {MAX_DEPTH} levels") from exc
    if not isinstance(obj, dict):
        raise ManifestRejected(f"manifest must be a JSON object, not {type(obj).__name__}")
    check_depth(obj)
    secrets = find_secrets(obj)
    if secrets:
        raise ManifestRejected(
            "manifest contains credential-like fields; credentials come from the environment, never a manifest",
            [{"loc": loc, "msg": "looks like a secret; remove it"} for loc in secrets[:MAX_FIELD_ERRORS]],
        )
    return obj
