"""Joining a manifest's envelope (events/envelope.py) and its kind's body (the kind registry) into one typed
`JobManifest`: from bytes (`parse_manifest`), from a decoded object (`validate_manifest`), or as intake wrote it
(`load_job_manifest`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

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
        what = "missing 'kind'" if kind is None else "unknown kind"
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
        errors = errors[:MAX_FIELD_ERRORS]
        raise ManifestRejected(f"invalid {spec.name} manifest: {summarize(errors)}", errors)
    expanded = spec.expand(body, obj) if spec.expand is not None and _expanded_from is None else None
    if expanded is not None:
        try:
            return validate_manifest(expanded, _expanded_from=spec.name)
        except ManifestRejected as exc:  # the checks above should have caught it; say which form failed
            raise ManifestRejected(f"{spec.name} manifest as a {expanded.get('kind')}: {exc.message}",
                                   exc.fields) from exc
    return JobManifest(envelope, body)


def load_job_manifest(bucket, job_id: str) -> JobManifest:
    """The job's validated manifest as written at intake (jobs/<id>/manifest.json)."""
    return validate_manifest(codec.loads(bucket.get(keys.manifest_key(job_id)).data))
