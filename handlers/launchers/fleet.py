"""The fleet launcher: one job, many instances. It starts one worker per instance on the manifest's backend
(local processes, Runpod pods, Vast.ai, SkyPilot), records each instance with its $/h under the job, and
indexes the fleet so the sweep tears it down (handlers/fleet_teardown.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bucketrun.events import codec, keys, needs
from bucketrun.events.conditional import create_once
from bucketrun.events.errors import BucketrunError
from bucketrun.events.failures import FailureClass
from bucketrun.events.fleet import instances as records
from bucketrun.events.fleet.instances import read_instances
from bucketrun.events.storage import open_bucket

from .base import BackendStatus, LaunchError
from .fleet_base import FleetBackend, Instance
from .runpod_pods import RunpodPodsBackend
from .skypilot import SkyPilotBackend
from .vast import VastBackend

log = logging.getLogger("bucketrun.fleet")
SEP = "|"


def worker_ids(count: int) -> list[str]:
    """Stable across attempts: a relaunched worker under the same id hands back its previous life's leases."""
    return [f"w{i:04d}" for i in range(count)]


def cloud_backend(name: str, runpod_api_key: Callable[[], str] | None = None,
                  vast_api_key: Callable[[], str | None] | None = None) -> FleetBackend:
    """The deployment's backends, built on first use; keys from the callables (the cloud's secret stores),
    else from the standard provider environments."""
    if name == "runpod":
        return RunpodPodsBackend(api_key=runpod_api_key() if runpod_api_key else None)
    if name == "vast":
        return VastBackend(api_key=(vast_api_key() if vast_api_key else None) or None)
    if name == "skypilot":
        return SkyPilotBackend()
    raise LaunchError(f"fleet backend {name!r} is not available here", FailureClass.CONFIG_ERROR)


class FleetLauncher:
    name = "fleet"

    def __init__(self, backends: dict[str, FleetBackend] | None = None,
                 factory: Callable[[str], FleetBackend] = cloud_backend):
        self.backends = dict(backends or {})
        self.factory = factory

    def backend(self, name: str) -> FleetBackend:
        if name not in self.backends:
            self.backends[name] = self.factory(name)
        return self.backends[name]

    def launch(self, bucket_url: str, job_id: str, attempt: int, manifest) -> str:
        spec = manifest.body.workers
        backend = self.backend(spec.backend)
        if getattr(backend, "runs_here", False):  # workers on this machine: refuse now what they could not run
            gone = needs.missing("fleet", manifest.body, bucket_url)
            if gone:
                raise LaunchError(needs.refusal("fleet", gone), FailureClass.CONFIG_ERROR)
        bucket = open_bucket(bucket_url)
        # Indexed before anything starts, so a launcher dying mid-way still leaves the fleet to the sweep.
        create_once(bucket, keys.fleet_index_key(job_id), codec.dumps({"job_id": job_id, "backend": spec.backend}))
        instances = backend.start(bucket_url, job_id, worker_ids(spec.count), spec)
        if not instances:
            raise LaunchError(f"{spec.backend}: no instance could be started", FailureClass.TRANSIENT)
        for inst in instances:
            record_instance(bucket, job_id, inst, attempt)
        if len(instances) < spec.count:
            log.warning("fleet %s: %d of %d instances started", job_id, len(instances), spec.count)
        return SEP.join(["fleet", spec.backend, bucket_url, job_id, str(attempt)])

    def _parse(self, backend_id: str) -> tuple[str, str, str]:
        parts = backend_id.split(SEP)
        if len(parts) != 5 or parts[0] != "fleet":
            raise LaunchError(f"not a fleet backend id: {backend_id!r}", FailureClass.CODE_ERROR)
        return parts[1], parts[2], parts[3]

    def status(self, backend_id: str) -> BackendStatus:
        """In progress while any of its instances runs; unknown (lost) when none does."""
        name, bucket_url, job_id = self._parse(backend_id)
        backend = self.backend(name)
        for inst in read_instances(open_bucket(bucket_url), job_id):
            if inst.get("terminated_at"):
                continue
            if backend.alive(inst["instance_id"]) is not False:
                return BackendStatus.IN_PROGRESS
        return BackendStatus.UNKNOWN

    def logs(self, backend_id: str) -> list[str]:
        """Where the instances' own output is, for a failure the sweep writes (local workers log to a file)."""
        _, bucket_url, job_id = self._parse(backend_id)
        return [inst["detail"]["log"] for inst in read_instances(open_bucket(bucket_url), job_id)
                if (inst.get("detail") or {}).get("log")]

    def cancel(self, backend_id: str) -> None:
        name, bucket_url, job_id = self._parse(backend_id)
        bucket = open_bucket(bucket_url)
        for inst in read_instances(bucket, job_id):
            if not inst.get("terminated_at"):
                terminate(bucket, job_id, inst, self.backend(name), "cancelled")

    def close(self) -> None:
        for backend in self.backends.values():
            close = getattr(backend, "close", None)
            if close:
                close()


def record_instance(bucket, job_id: str, inst: Instance, attempt: int) -> None:
    try:
        records.record_instance(bucket, job_id, inst.to_json(), attempt)
    except BucketrunError as exc:  # the instance runs regardless; the sweep's listing would miss it
        log.error("instance %s of %s not recorded: %s", inst.instance_id, job_id, exc)
        raise


def terminate(bucket, job_id: str, inst: dict[str, Any], backend: FleetBackend, reason: str) -> dict[str, Any]:
    """Stop one instance and record it stopped, with its cost; a provider's failure leaves it to the next sweep."""
    try:
        backend.terminate(inst["instance_id"])
    except BucketrunError as exc:
        log.error("fleet %s: terminating %s failed (the next sweep tries again): %s", job_id, inst["instance_id"], exc)
        return inst
    body = records.record_stopped(bucket, job_id, inst, reason)
    log.info("fleet %s: stopped %s (%s)", job_id, inst["instance_id"], reason)
    return body
