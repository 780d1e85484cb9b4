"""The one interface every fleet capacity backend meets (local processes, Runpod pods, Vast.ai, SkyPilot).

A backend starts one instance per worker id and can stop it. It passes each worker only the bucket URL, the job
id and its worker id (`worker_command`); credentials reach the worker as the provider's own secrets, referenced
by name (`FleetWorkers.secrets`), never as values in the bucket, the job input or a log.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from bucketrun.events.kinds.fleet import Workers as FleetWorkers

__all__ = ["EFFECTS", "FleetBackend", "FleetWorkers", "Instance", "worker_command", "worker_env"]


@dataclass
class Instance:
    """One started instance, as recorded at jobs/<id>/fleet/instances/<instance_id>.json."""

    instance_id: str  # the provider's id (pod id, Vast contract id, cluster name, local pid)
    worker: str  # the worker id it runs
    provider: str  # "local", "runpod", "vast", "skypilot"
    price_per_hour: float | None = None  # USD, as the provider quoted it at creation
    detail: dict[str, Any] = field(default_factory=dict)  # gpu, machine id, ... never credentials

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FleetBackend(Protocol):
    name: str

    def start(self, bucket_url: str, job_id: str, workers: list[str], spec: FleetWorkers) -> list[Instance]:
        """Start one instance per worker id. Raise handlers.launchers.base.LaunchError (with its failure class)
        when none could start; return the ones that did when only some could."""
        ...

    def terminate(self, instance_id: str) -> None:
        """Stop and release it (idempotent: an instance already gone is not an error)."""
        ...

    def alive(self, instance_id: str) -> bool | None:
        """True running, False gone, None when the provider cannot say."""
        ...

    def stop(self, instance_id: str) -> None:
        """Halt it but keep it (and its disk), to be started again: the reversible teardown."""
        ...

    def price(self, instance_id: str) -> float | None:
        """Its USD per hour as the provider bills it now, or None when it cannot say."""
        ...


# What each teardown action does to the bill and to the instance, by backend, as each provider documents it:
# shown before a user approves one, and in the README.
EFFECTS: dict[str, dict[str, dict[str, str]]] = {
    "vast": {
        "stop": {"stops_billing": "GPU charges", "still_billed": "disk storage, until the instance is destroyed",
                 "destroys": "nothing: the container and its disk are kept; `vastai start instance` resumes it "
                             "when the machine is free"},
        "terminate": {"stops_billing": "everything", "still_billed": "nothing",
                      "destroys": "the instance and its disk, with anything not in the bucket"}},
    "runpod": {
        "stop": {"stops_billing": "GPU and compute charges", "still_billed": "the pod's volume disk while stopped",
                 "destroys": "the container disk (anything outside the volume)"},
        "terminate": {"stops_billing": "everything for the pod (a network volume bills on its own)",
                      "still_billed": "network volumes only",
                      "destroys": "the pod, its container disk and its volume disk"}},
    "skypilot": {
        "stop": {"stops_billing": "the VMs' compute", "still_billed": "the cluster's disks",
                 "destroys": "nothing on disk; `sky start` resumes the cluster"},
        "terminate": {"stops_billing": "everything for the cluster", "still_billed": "nothing",
                      "destroys": "the cluster's VMs and their disks"}},
    "local": {
        "stop": {"stops_billing": "nothing is billed (a local process)", "still_billed": "nothing",
                 "destroys": "the process; its files stay on this machine"},
        "terminate": {"stops_billing": "nothing is billed (a local process)", "still_billed": "nothing",
                      "destroys": "the process; its files stay on this machine"}},
}


def worker_command(bucket_url: str, job_id: str, worker: str) -> list[str]:
    """What every instance runs: the fleet worker, told only where the bucket is and who it is."""
    return ["python", "-m", "bucketrun.images.fleet.run", "--bucket", bucket_url, "--job", job_id,
            "--worker", worker]


def worker_env(bucket_url: str, job_id: str, worker: str) -> dict[str, str]:
    """The same, as environment variables (for images whose entry point reads them)."""
    return {"BUCKETRUN_BUCKET": bucket_url, "BUCKETRUN_JOB_ID": job_id, "BUCKETRUN_WORKER_ID": worker}
