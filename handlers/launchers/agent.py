"""Host agents as capacity: launching writes an offer under index/agents/<label>/ for each host the attempt
needs, and an agent on that host claims it (create-if-absent) and runs it. Nothing listens on the host: the
bucket is the queue, as for every other backend."""

from __future__ import annotations

from datetime import datetime

from bucketrun.events import codec, keys
from bucketrun.events.errors import NotFound
from bucketrun.events.failures import FailureClass
from bucketrun.events.hosts import HOST_SILENT_S
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.manifest import JobManifest
from bucketrun.events.storage import Bucket, open_bucket

from .base import BackendStatus, LaunchError


def offers_for(manifest: JobManifest) -> list[tuple[str, str]]:
    """(label, role) pairs: a training window wants every preflight host, one of them to run; any other kind
    is offered to each of its labels, and the first agent to claim runs it."""
    hosts = getattr(manifest.body, "hosts", None)
    if hosts is not None:
        return [(label, "run" if label == hosts.launch else "preflight") for label in hosts.preflight]
    if manifest.launch.agent is None:
        raise LaunchError(f"kind {manifest.kind!r} on host agents needs launch.agent.labels",
                          FailureClass.CONFIG_ERROR)
    return [(label, "run") for label in manifest.launch.agent.labels]


class AgentLauncher:
    name = "agent"

    def __init__(self, bucket: Bucket | None = None, now=codec.now):
        self._bucket, self._now = bucket, now

    def _open(self, bucket_url: str) -> Bucket:
        return self._bucket if self._bucket is not None and self._bucket.url == bucket_url else open_bucket(bucket_url)

    def launch(self, bucket_url: str, job_id: str, attempt: int, manifest: JobManifest) -> str:
        bucket = self._open(bucket_url)
        body = codec.dumps({"job_id": job_id, "attempt": attempt, "kind": manifest.kind,
                            "offered_at": codec.iso(self._now())})
        for label, role in offers_for(manifest):
            bucket.put(keys.agent_offer_key(label, job_id, attempt, role), body, "application/json")
        return f"agent|{bucket_url}|{job_id}|{attempt}"

    def _claims(self, bucket: Bucket, job_id: str, attempt: str) -> list[dict]:
        return [codec.loads(bucket.get(i.key).data) for i in bucket.list(f"{keys.job_prefix(job_id)}agents/")
                if i.key.rsplit("/", 1)[-1].startswith(f"{int(attempt):03d}-") and i.key.endswith("-run.json")]

    def logs(self, backend_id: str) -> list[str]:
        """Where to look when the agent running it went silent: its own output on its host, and the attempt's
        worker log in the bucket (`bucketrun logs JOB --worker`), which the run writes as it goes."""
        _, bucket_url, job_id, attempt = backend_id.split("|")
        found = [f"agent {c.get('agent')} on host {c.get('host')} (pid {c.get('pid')}): its own stderr there"
                 for c in self._claims(self._open(bucket_url), job_id, attempt)]
        return found + [keys.log_key(job_id, int(attempt)) + " in the bucket (bucketrun logs JOB --worker)"]

    def status(self, backend_id: str) -> BackendStatus:
        """IN_QUEUE until an agent claims the run; IN_PROGRESS while that agent heartbeats; UNKNOWN (lost) once
        it went silent."""
        _, bucket_url, job_id, attempt = backend_id.split("|")
        bucket = self._open(bucket_url)
        claims = self._claims(bucket, job_id, attempt)
        if not claims:
            return BackendStatus.IN_QUEUE
        try:
            beat = bucket.head(keys.host_key(claims[0]["agent"]))
        except NotFound:
            return BackendStatus.UNKNOWN
        age = (self._now() - beat.last_modified).total_seconds() if isinstance(beat.last_modified, datetime) else 0
        return BackendStatus.IN_PROGRESS if age < HOST_SILENT_S else BackendStatus.UNKNOWN

    def cancel(self, backend_id: str) -> None:
        """Agents follow the job's state and stop their attempt when it leaves it; only the offers go."""
        _, bucket_url, job_id, attempt = backend_id.split("|")
        bucket = self._open(bucket_url)
        for label, role in offers_for(load_job_manifest(bucket, job_id)):
            bucket.delete(keys.agent_offer_key(label, job_id, int(attempt), role))
