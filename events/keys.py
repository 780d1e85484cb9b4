"""Every key format bucketrun reads or writes, in one place. Job ids start with a UTC timestamp so keys sort in time order."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from .codec import now

INBOX = "inbox/"
JOBS = "jobs/"
INDEX = "index/"
CANCEL_PREFIX = "control/cancel/"

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
JOB_ID_RE = re.compile(r"^\d{8}T\d{9}Z-[0-9a-hjkmnp-tv-z]{6}$")
EVENT_RE = re.compile(r"^jobs/(?P<job>[^/]+)/events/(?P<seq>\d{6})\.json$")


def new_job_id(at: datetime | None = None) -> str:
    """e.g. 20261122T184512123Z-k3f9qz: millisecond UTC time, then 30 random bits."""
    ts = at or now()
    stamp = ts.strftime("%Y%m%dT%H%M%S") + f"{ts.microsecond // 1000:03d}Z"
    return stamp + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(6))


def is_job_id(text: str) -> bool:
    return bool(JOB_ID_RE.match(text))


def is_inbox_manifest(key: str) -> bool:
    return key.startswith(INBOX) and key.endswith(".json") and len(key) > len(INBOX) + 5


def cancel_request_key(job_id: str) -> str:
    """Dropping this object asks the cloud dispatch function to cancel the job (and its backend job)."""
    return f"{CANCEL_PREFIX}{job_id}.json"


def job_id_from_cancel_request(key: str) -> str | None:
    if not (key.startswith(CANCEL_PREFIX) and key.endswith(".json")):
        return None
    job_id = key[len(CANCEL_PREFIX):-len(".json")]
    return job_id if job_id and "/" not in job_id else None


def notify_key(job_id: str, seq: int) -> str:
    """The delivery record (every attempt and its outcome) of the webhook for the terminal transition `seq`."""
    return f"{JOBS}{job_id}/notify/{seq:06d}.json"


NOTIFY_WATCH = f"{INDEX}notify/"
LIVE = f"{INDEX}live/"


def notify_watch_key(job_id: str) -> str:
    """Present while a job with a webhook may still owe a notification; the sweep finds these by listing."""
    return f"{NOTIFY_WATCH}{job_id}.json"


def live_key(job_id: str) -> str:
    """Present while a job is not terminal: the sweep lists these, so its cost follows live jobs, not the
    bucket's size. The state writer keeps it (events/lifecycle.py); the sweep repairs a stale one."""
    return f"{LIVE}{job_id}.json"


def job_id_from_index(key: str, prefix: str) -> str | None:
    """The job id of an index/live/ or index/notify/ key."""
    if not (key.startswith(prefix) and key.endswith(".json")):
        return None
    job_id = key[len(prefix):-len(".json")]
    return job_id if job_id and "/" not in job_id else None


def inbox_key(name: str) -> str:
    return f"{INBOX}{name}"


def job_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/"


def manifest_key(job_id: str) -> str:
    return f"{JOBS}{job_id}/manifest.json"


def intake_key(job_id: str) -> str:
    return f"{JOBS}{job_id}/intake.json"


def events_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/events/"


def event_key(job_id: str, seq: int) -> str:
    """Zero-padded so lexicographic listing is sequence order; the state lives in the body (see README)."""
    return f"{JOBS}{job_id}/events/{seq:06d}.json"


def progress_key(job_id: str) -> str:
    return f"{JOBS}{job_id}/progress.json"


def launch_claim_key(job_id: str, attempt: int) -> str:
    """Create-if-absent gate: only the dispatcher that creates it launches this attempt."""
    return f"{JOBS}{job_id}/launch/{attempt:03d}.json"


def artifacts_prefix(job_id: str, attempt: int) -> str:
    """Per attempt, so a late writer from an old attempt can never overwrite a newer attempt's outputs."""
    return f"{JOBS}{job_id}/artifacts/{attempt:03d}/"


def artifact_key(job_id: str, attempt: int, name: str) -> str:
    return artifacts_prefix(job_id, attempt) + name


def log_key(job_id: str, attempt: int, name: str = "worker.log") -> str:
    return f"{JOBS}{job_id}/logs/{attempt:03d}-{name}"


def request_token(request_id: str) -> str:
    """The intake identity of a manifest with a request_id: one job per request id (client and intake)."""
    return f"request:{request_id}"


def object_token(inbox_key: str, etag: str) -> str:
    """The intake identity of a dropped object without a request_id: this key with these bytes."""
    return f"object:{inbox_key}:{etag}"


def idempotency_key(token: str) -> str:
    """Claim object for one intake identity (a request_id, or an inbox object's key and ETag)."""
    digest = hashlib.sha256(token.encode()).hexdigest()[:40]
    return f"{INDEX}intake/{digest}.json"


def job_id_from_key(key: str) -> str | None:
    if not key.startswith(JOBS):
        return None
    part = key[len(JOBS):].split("/", 1)[0]
    return part or None


def parse_event_key(key: str) -> tuple[str, int] | None:
    m = EVENT_RE.match(key)
    return (m["job"], int(m["seq"])) if m else None
