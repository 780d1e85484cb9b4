"""The manifest envelope every kind shares (`kind`, `request_id`, `resources`, `launch`, `notify`), the strict
model every kind's fields build on, and the limits every manifest is held to. The bottom of the manifest's
layers: events/manifest.py (decoding, the typed `JobManifest`) and events/kinds/ (each kind's body, and
`validate_manifest` joining the two) build on it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .keys import LABEL_RE

MAX_MANIFEST_BYTES = 1 << 20
MAX_DEPTH = 32  # no manifest field nests deeper; a deeper document is an attack or a bug
MAX_FIELD_ERRORS = 20
MAX_LOC_CHARS = 200


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
