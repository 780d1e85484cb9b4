"""Joining a manifest's envelope (events/envelope.py) and its kind's body (the kind registry) into one typed
`JobManifest`: from bytes (`parse_manifest`), from a decoded object (`validate_manifest`), or as intake wrote it
(`load_job_manifest`)."""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .. import codec, keys
from ..envelope import ENVELOPE_FIELDS, MAX_FIELD_ERRORS, Envelope
from ..manifest import JobManifest, ManifestRejected, decode_manifest, field_errors, summarize
from . import get_kind, kind_names


def parse_manifest(raw: bytes) -> JobManifest:
    """Bytes to a typed manifest, or ManifestRejected naming every bad field; never echoes input values."""
    return validate_manifest(decode_manifest(raw))


def validate_manifest(obj: dict[str, Any], _expanded_from: str | None = None) -> JobManifest:
    """The typed manifest. A kind may hand a manifest to another kind (`KindSpec.expand`: a transcribe manifest
    with many sources becomes a fleet's); the result is the other kind's manifest, validated as that kind."""
    kind = obj.get("kind")
    spec = get_kind(kind) if isinstance(kind, str) else None
    if spec is None:
        if kind is None:
            what = "missing 'kind'"
        elif isinstance(kind, str) and SHOWN_RE.match(kind):  # a plain word: safe to echo back
            what = f"unknown kind {kind!r}" + _did_you_mean(kind, kind_names())
        else:
            what = "unknown kind"
        raise ManifestRejected(what, [{"loc": "kind", "msg": f"must be one of: {', '.join(kind_names())}"}])
    head = {k: v for k, v in obj.items() if k in ENVELOPE_FIELDS}
    if isinstance(head.get("resources", {}), dict):
        head["resources"] = {**spec.default_resources, **head.get("resources", {})}
    rest = {k: v for k, v in obj.items() if k not in ENVELOPE_FIELDS}
    errors: list[dict[str, Any]] = []
    envelope = body = None
    try:
        envelope = Envelope.model_validate(head)
    except ValidationError as exc:
        errors += field_errors(exc)
    try:
        body = spec.body.model_validate(rest)
    except ValidationError as exc:
        errors += field_errors(exc)
    if errors or envelope is None or body is None:
        errors = [_hint(e, spec.body) for e in errors[:MAX_FIELD_ERRORS]]
        raise ManifestRejected(f"invalid {spec.name} manifest: {summarize(errors)}", errors)
    expanded = spec.expand(body, obj) if spec.expand is not None and _expanded_from is None else None
    if expanded is not None:
        try:
            return validate_manifest(expanded, _expanded_from=spec.name)
        except ManifestRejected as exc:  # the checks above should have caught it; say which form failed
            raise ManifestRejected(f"{spec.name} manifest as a {expanded.get('kind')}: {exc.message}",
                                   exc.fields) from exc
    return JobManifest(envelope, body)


SHOWN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names a nested model takes at `path` (through Optional and list of a model), or []."""
    for name in path:
        field = model.model_fields.get(name)
        if field is None:
            return []
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        nested += [b for a in typing.get_args(field.annotation) for b in typing.get_args(a)
                   if isinstance(b, type) and issubclass(b, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _hint(error: dict[str, Any], body: type[BaseModel]) -> dict[str, Any]:
    """An unknown field gets the nearest known one: `option: Extra inputs are not permitted (did you mean
    'options'?)`. The field's name is the manifest's own key, never a value."""
    if error.get("type") != "extra_forbidden":
        return error
    *parent, name = error["loc"].split(".")
    parent = [p for p in parent if not p.isdigit()]
    known = _fields_at(body, parent) or (_fields_at(Envelope, parent) if parent else [])
    if not parent:
        known = [*ENVELOPE_FIELDS, *body.model_fields]
    hint = _did_you_mean(name, known)
    return {**error, "msg": error["msg"] + hint} if hint else error


def load_job_manifest(bucket, job_id: str) -> JobManifest:
    """The job's validated manifest as written at intake (jobs/<id>/manifest.json)."""
    return validate_manifest(codec.loads(bucket.get(keys.manifest_key(job_id)).data))
