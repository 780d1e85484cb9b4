"""Every key format bucketrun reads or writes, in one place. Job ids start with a UTC timestamp so keys sort in time order."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timezone

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


def job_time(job_id: str) -> datetime:
    """When a job was named (its id begins with the UTC millisecond): ages without reading anything."""
    return datetime.strptime(job_id[:18], "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc)


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
THEN_WATCH = f"{INDEX}then/"


def then_watch_key(job_id: str) -> str:
    """Present while a window's `then` stage may still be owed; the sweep submits it if its agent did not."""
    return f"{THEN_WATCH}{job_id}.json"


def then_inbox_key(job_id: str) -> str:
    """The next stage's inbox key, derived from the job: whoever drops it first (agent or sweep), it is one job."""
    return inbox_key(f"{job_id}-then.json")
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


# --- fleets: per-shard and per-worker keys only, so no single object takes every claim or commit (a hot key) ---

FLEET_INDEX = f"{INDEX}fleet/"
SHARD_RE = re.compile(r"^(?P<lo>\d{9})-(?P<hi>\d{9})$")


def shard_id(lo: int, hi: int) -> str:
    """Items [lo, hi) of the plan; zero-padded so shards list in item order, and a bisected or partially
    committed shard's children are new ids that never collide with their parent."""
    return f"{lo:09d}-{hi:09d}"


def parse_shard_id(shard: str) -> tuple[int, int] | None:
    m = SHARD_RE.match(shard)
    return (int(m["lo"]), int(m["hi"])) if m else None


def fleet_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/fleet/"


def fleet_plan_key(job_id: str) -> str:
    """Written once (create-if-absent): the item list's key and digest, and the shard size."""
    return f"{JOBS}{job_id}/fleet/plan.json"


def fleet_items_key(job_id: str, digest: str) -> str:
    """The planned item list, named by its sha256 so two planners' lists can never overwrite each other."""
    return f"{JOBS}{job_id}/fleet/items-{digest[:16]}.json.gz"


def fleet_leases_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/fleet/leases/"


def fleet_lease_key(job_id: str, shard: str) -> str:
    return f"{fleet_leases_prefix(job_id)}{shard}.json"


def fleet_done_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/fleet/done/"


def fleet_done_key(job_id: str, shard: str) -> str:
    """Create-if-absent commit marker of one shard: the part it names is the shard's one committed row set."""
    return f"{fleet_done_prefix(job_id)}{shard}.json"


def fleet_shard_of(key: str, prefix: str) -> str | None:
    """The shard id of a leases/ or done/ key."""
    if not (key.startswith(prefix) and key.endswith(".json")):
        return None
    shard = key[len(prefix):-len(".json")]
    return shard if SHARD_RE.match(shard) else None


def fleet_output_prefix(job_id: str, output_prefix: str | None) -> str:
    return output_prefix or fleet_prefix(job_id)


def fleet_part_key(output_prefix: str, shard: str, generation: int) -> str:
    """Write-once parquet of one shard by one lease generation: a zombie's file can never replace the winner's."""
    return f"{output_prefix}parts/{shard}-g{generation:04d}.parquet"


PART_RE = re.compile(r"^(?P<shard>\d{9}-\d{9})-g(?P<gen>\d+)\.parquet$")


def parse_fleet_part_key(output_prefix: str, key: str) -> tuple[str, int] | None:
    """(shard, generation) of a part key; None for anything else under parts/."""
    m = PART_RE.match(key[len(output_prefix) + len("parts/"):]) if key.startswith(output_prefix + "parts/") else None
    return (m["shard"], int(m["gen"])) if m else None


def fleet_item_artifact_key(output_prefix: str, item: str, sha256: str, fmt: str) -> str:
    """A processor's file for one item (a transcribe item's SRT, ...): <output>items/<sha256 of the item>/<sha256
    of the bytes>.<fmt>, both cut to 16 hex digits. Named by content, so a zombie re-processing the item writes
    the same bytes under the same key or different bytes under another, never over the file a committed row
    names; named by the item, not its index, since a processor is handed the item alone."""
    item_digest = hashlib.sha256(item.encode()).hexdigest()[:16]
    return f"{output_prefix}items/{item_digest}/{sha256[:16]}.{fmt}"


def fleet_dataset_key(output_prefix: str) -> str:
    return f"{output_prefix}dataset.json"


def fleet_worker_key(job_id: str, worker: str) -> str:
    """Registration: the worker's config (GPU, processor, version), written at start."""
    return f"{JOBS}{job_id}/fleet/workers/{worker}.json"


def fleet_heartbeats_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/fleet/heartbeats/"


def fleet_heartbeat_key(job_id: str, worker: str) -> str:
    return f"{fleet_heartbeats_prefix(job_id)}{worker}.json"


def fleet_ledgers_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/fleet/ledgers/"


def fleet_ledger_key(job_id: str, writer: str, seq: int) -> str:
    """A copy of the done markers one worker process won, written once when it falls idle, so the finalizer
    reads a few ledgers instead of one object per shard."""
    return f"{fleet_ledgers_prefix(job_id)}{writer}-{seq:04d}.json"


def fleet_singleton_lease_key(job_id: str, role: str) -> str:
    """Lease for a one-writer duty (progress, finalize), so the duty survives its holder's death."""
    return f"{JOBS}{job_id}/fleet/roles/{role}.json"


def fleet_instances_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/fleet/instances/"


def fleet_instance_key(job_id: str, instance: str) -> str:
    """One rented instance (or local process): provider, id, worker, $/h, and when it was torn down."""
    return f"{fleet_instances_prefix(job_id)}{instance}.json"


def fleet_index_key(job_id: str) -> str:
    """Present while a fleet may have instances to tear down; the sweep lists these."""
    return f"{FLEET_INDEX}{job_id}.json"


# -- host agents and training windows (bucketrun agent; the train_window kind) ---------------------------------
AGENT_QUEUE = f"{INDEX}agents/"  # index/agents/<label>/<job>-<attempt>-<role>.json: work offered to a label
HOSTS = f"{INDEX}hosts/"  # index/hosts/<agent>.json: each agent's heartbeat
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def agent_offer_prefix(label: str) -> str:
    return f"{AGENT_QUEUE}{label}/"


def agent_offer_key(label: str, job_id: str, attempt: int, role: str) -> str:
    """Job ids lead, so an agent takes the oldest offer first; `role` is "run" or "preflight"."""
    return f"{agent_offer_prefix(label)}{job_id}-{attempt:03d}-{role}.json"


def parse_agent_offer(key: str, label: str) -> tuple[str, int, str] | None:
    name = key[len(agent_offer_prefix(label)):] if key.startswith(agent_offer_prefix(label)) else ""
    m = re.fullmatch(r"(?P<job>\d{8}T\d{9}Z-[0-9a-hjkmnp-tv-z]{6})-(?P<attempt>\d{3})-(?P<role>run|preflight)\.json",
                     name)
    return (m["job"], int(m["attempt"]), m["role"]) if m else None


def agent_claim_key(job_id: str, attempt: int, label: str, role: str) -> str:
    """Created once by the agent that takes this attempt's role for a label: two agents never run it both."""
    return f"{JOBS}{job_id}/agents/{attempt:03d}-{label}-{role}.json"


def host_key(agent: str) -> str:
    return f"{HOSTS}{agent}.json"


def preflight_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/preflight/"


def preflight_key(job_id: str, attempt: int, host: str) -> str:
    """Each named host's preflight verdict, kept per attempt: a retry never hides what an earlier one found."""
    return f"{preflight_prefix(job_id)}{attempt:03d}/{host}.json"


def parse_preflight_key(job_id: str, key: str) -> tuple[int, str] | None:
    m = re.fullmatch(r"(?P<attempt>\d{3})/(?P<host>[^/]+)\.json", key[len(preflight_prefix(job_id)):])
    return (int(m["attempt"]), m["host"]) if key.startswith(preflight_prefix(job_id)) and m else None


def train_log_prefix(job_id: str, attempt: int) -> str:
    """The training command's log, in numbered chunks, so a reader follows it without rewriting one object."""
    return f"{JOBS}{job_id}/logs/{attempt:03d}-train/"


def train_log_key(job_id: str, attempt: int, chunk: int) -> str:
    return f"{train_log_prefix(job_id, attempt)}{chunk:06d}.log"


def mirror_prefix(job_id: str, attempt: int, step: int) -> str:
    """The run directory as mirrored after the gate, by attempt and checkpoint step."""
    return f"{JOBS}{job_id}/mirror/{attempt:03d}-step{step:09d}/"


def mirror_manifest_key(job_id: str, attempt: int, step: int) -> str:
    """Written last, after the mirror listed back verified: what a resume or the next stage trusts."""
    return f"{JOBS}{job_id}/mirror/{attempt:03d}-step{step:09d}.json"


def mirrors_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/mirror/"


def report_key(job_id: str) -> str:
    return f"{JOBS}{job_id}/report.md"


def report_json_key(job_id: str) -> str:
    return f"{JOBS}{job_id}/report.json"


TEARDOWN = f"{INDEX}teardown/"  # index/teardown/<agent>.json: a rented host to stop once its checkpoint is safe


def host_teardown_key(agent: str) -> str:
    return f"{TEARDOWN}{agent}.json"


def host_teardown_approval_key(job_id: str) -> str:
    """Written by `bucketrun approve JOB`: the user's yes to the pending teardown its record describes."""
    return f"{JOBS}{job_id}/teardown-approved.json"


def host_teardown_record_key(job_id: str) -> str:
    return f"{JOBS}{job_id}/host-teardown.json"


CACHE = "cache/"
TRANSCRIPT_CACHE = f"{CACHE}transcribe/"


def transcript_cache_entry_key(options_digest: str, media_sha256: str) -> str:
    """cache/transcribe/<options>/media/<sha256 of the fetched media>.json: one entry per result, created once and
    replaced only when found broken (the artifacts it points at deleted or changed)."""
    return f"{TRANSCRIPT_CACHE}{options_digest}/media/{media_sha256}.json"


def transcript_cache_files_prefix(options_digest: str, media_sha256: str, job_id: str, attempt: int) -> str:
    """The entry's own copies of the formats its producing attempt did not write as artifacts (the entry points at
    those it did), per attempt, so racing producers never overwrite each other and a loser removes exactly its own."""
    return f"{TRANSCRIPT_CACHE}{options_digest}/files/{media_sha256}/{job_id}-{attempt:03d}/"


def transcript_cache_alias_key(options_digest: str, media_id: str) -> str:
    """A site extractor's media id (e.g. "Youtube:dQw4w9WgXcQ") -> the media's sha256, so a re-submitted URL
    is answered before its media is downloaded. Hashed: ids may hold any characters."""
    digest = hashlib.sha256(media_id.encode()).hexdigest()[:40]
    return f"{TRANSCRIPT_CACHE}{options_digest}/ids/{digest}.json"
