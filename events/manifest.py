"""The manifest envelope every kind shares (`kind`, `request_id`, `resources`, `launch`, `notify`) and the
checks that come before any kind sees the input: size, nesting, credentials. Each kind's own fields live in
events/kinds/; `parse_manifest` joins the two into one typed `JobManifest`.

Validation is strict (a JSON string is never a number, 1 is never true), and a rejection names each bad field
without ever echoing the input's values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import codec
from .codec import DecodeError

MAX_MANIFEST_BYTES = 1 << 20
MAX_DEPTH = 32  # no manifest field nests deeper; a deeper document is an attack or a bug
MAX_FIELD_ERRORS = 20
MAX_LOC_CHARS = 200

# Field names that look like credentials; values are never echoed back.
_SECRET_NAME = re.compile(
    r"(secret|passw(or)?d|api[_-]?key|access[_-]?key|private[_-]?key|session[_-]?token|auth[_-]?token|"
    r"bearer|credential|authorization|^token$|_token$)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(r"^(AKIA|ASIA)[0-9A-Z]{16}$|^rpa_[0-9A-Za-z]{20,}$|^-----BEGIN [A-Z ]*PRIVATE KEY")


class Strict(BaseModel):
    """Unknown fields are refused (a typo must not be silently ignored) and types are never coerced."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)


class Resources(Strict):
    """Liveness, stall detection and retries: what every kind and every backend share."""

    heartbeat_s: float = Field(10.0, ge=1, le=600, description="progress is rewritten at least this often")
    stall_after_s: float = Field(120.0, ge=5, le=86400, description="silent this long = stalled")
    max_attempts: int = Field(3, ge=1, le=10)

    @model_validator(mode="after")
    def _stall_after_heartbeat(self) -> "Resources":
        if self.stall_after_s < 2 * self.heartbeat_s:
            raise ValueError("stall_after_s must be at least twice heartbeat_s")
        return self


class RunpodPolicy(Strict):
    """Runpod's own job policy, sent with /run; only the Runpod launcher reads it."""

    execution_timeout_s: int = Field(3600, ge=10, le=7 * 86400, description="Runpod policy.executionTimeout")
    ttl_s: int = Field(86400, ge=60, le=7 * 86400, description="Runpod policy.ttl")


class AgentTarget(Strict):
    """Which host agents may run the job (`bucketrun agent --labels ...`): any agent with one of the labels."""

    labels: list[str] = Field(min_length=1, max_length=16)

    _labels = field_validator("labels")(classmethod(lambda cls, v: check_labels(v)))


def check_labels(labels: list[str]) -> list[str]:
    """Host labels name keys (index/agents/<label>/), so they are short, lowercase and never repeat."""
    from .keys import LABEL_RE

    for label in labels:
        if not LABEL_RE.match(label):
            raise ValueError(f"label {label[:40]!r}: lowercase letters, digits, '_', '.', '-'")
    if len(set(labels)) != len(labels):
        raise ValueError("labels repeat")
    return labels


class LaunchOptions(Strict):
    """Backend-specific settings, one section per launch backend; a backend ignores the others' sections."""

    runpod: RunpodPolicy = Field(default_factory=RunpodPolicy)
    agent: AgentTarget | None = None


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


class Envelope(Strict):
    kind: str = Field(min_length=1, max_length=64)
    request_id: str | None = Field(None, min_length=1, max_length=256)
    resources: Resources = Field(default_factory=Resources)
    launch: LaunchOptions = Field(default_factory=LaunchOptions)
    notify: Notify | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_runpod_policy(cls, data: Any) -> Any:
        """Manifests from before `launch` kept Runpod's policy in `resources`; move it where it belongs."""
        if isinstance(data, dict) and isinstance(data.get("resources"), dict):
            legacy = {k: data["resources"][k] for k in ("execution_timeout_s", "ttl_s") if k in data["resources"]}
            if legacy and isinstance(data.get("launch", {}), dict):
                launch = dict(data.get("launch") or {})
                runpod = launch.get("runpod") if isinstance(launch.get("runpod"), dict) else {}
                launch["runpod"] = {**legacy, **runpod}
                resources = {k: v for k, v in data["resources"].items() if k not in legacy}
                data = {**data, "resources": resources, "launch": launch}
        return data


ENVELOPE_FIELDS = frozenset(Envelope.model_fields)


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


def parse_manifest(raw: bytes) -> JobManifest:
    """Bytes to a typed manifest, or ManifestRejected naming every bad field; never echoes input values."""
    return validate_manifest(decode_manifest(raw))


def validate_manifest(obj: dict[str, Any], _expanded_from: str | None = None) -> JobManifest:
    """The typed manifest. A kind may hand a manifest to another kind (`KindSpec.expand`: a transcribe manifest
    with many sources becomes a fleet's); the result is the other kind's manifest, validated as that kind."""
    from .kinds import get_kind, kind_names

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
    from . import keys

    return validate_manifest(codec.loads(bucket.get(keys.manifest_key(job_id)).data))
