"""SkyPilot as fleet capacity (optional: `pip install 'bucketrun[skypilot]'`, in an environment of its own, since
skypilot pins click<8.2 and the transcribe extra's huggingface_hub needs click>=8.4).

The fleet is one SkyPilot task: `num_nodes` = the workers, each node picking its worker id by $SKYPILOT_NODE_RANK.
A SkyPilot cluster starts and is released as a whole, so every worker's Instance names the same cluster,
terminating any of them downs the cluster, and start() never starts only some. Secrets are SkyPilot secrets:
null in the task (a reference), given their values at launch from this process's environment, as
`sky launch --secret NAME` does; SkyPilot redacts them, and only their names reach an Instance or a log.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import shlex
from typing import Any

from bucketrun.events.failures import FailureClass

from .base import LaunchError
from .fleet_base import FleetWorkers, Instance, worker_command, worker_env

log = logging.getLogger("bucketrun.fleet.skypilot")
_WORKER = "__bucketrun_worker__"  # stands for the worker id in worker_command while the run script is built

# SkyPilot's exceptions (sky.exceptions), by name so that a release without one of them still imports.
_CLASSES: list[tuple[tuple[str, ...], FailureClass]] = [
    (("ResourcesUnavailableError",), FailureClass.TRANSIENT),  # no capacity anywhere that fits: retry later
    (("ApiServerConnectionError", "ServerTemporarilyUnavailableError", "NetworkError"), FailureClass.TRANSIENT),
    (("ApiServerAuthenticationError", "InvalidCloudCredentials", "NoCloudAccessError", "CloudUserIdentityError",
      "PermissionDeniedError", "InvalidSkyPilotConfigError", "InvalidCloudConfigs"), FailureClass.CONFIG_ERROR),
]


def cluster_name(job_id: str, workers: list[str]) -> str:
    """A valid, short SkyPilot cluster name (no '.'), distinct for each start of the same job."""
    slug = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-")[:20] or "job"
    digest = hashlib.sha256("\n".join([job_id, *workers]).encode()).hexdigest()[:6]
    return f"br-{slug}-{digest}"


def fleet_task_config(bucket_url: str, job_id: str, workers: list[str], spec: FleetWorkers) -> dict[str, Any]:
    """The SkyPilot task YAML (as a dict) that runs these workers, one per node."""
    if not workers:
        raise LaunchError("no workers to start", FailureClass.CODE_ERROR)
    if not spec.image:
        raise LaunchError("SkyPilot needs workers.image (run as docker:<image>)", FailureClass.BAD_INPUT)
    command = worker_command(bucket_url, job_id, _WORKER)
    if command[-1] != _WORKER:
        raise LaunchError("worker_command no longer ends with the worker id", FailureClass.CODE_ERROR)
    run = "\n".join([
        "set -e",
        f"WORKERS=({' '.join(shlex.quote(w) for w in workers)})",
        'export BUCKETRUN_WORKER_ID="${WORKERS[$SKYPILOT_NODE_RANK]}"',
        f'exec {shlex.join(command[:-1])} "$BUCKETRUN_WORKER_ID"',
    ])
    resources: dict[str, Any] = {"image_id": f"docker:{spec.image}", "disk_size": spec.disk_gb}
    if spec.gpu_type:
        resources["accelerators"] = {spec.gpu_type: 1}  # SkyPilot's name for it, e.g. RTX4090, A100-80GB
    envs = {k: v for k, v in worker_env(bucket_url, job_id, _WORKER).items() if k != "BUCKETRUN_WORKER_ID"}
    config: dict[str, Any] = {"name": cluster_name(job_id, workers), "num_nodes": len(workers),
                              "resources": resources, "envs": envs, "run": run}
    if spec.secrets:
        config["secrets"] = {name: None for name in spec.secrets}
    return config


class SkyPilotBackend:
    name = "skypilot"

    def __init__(self, sky_module: Any = None):
        self._sky_module = sky_module  # tests hand in a stand-in; otherwise `sky`, imported on first use
        self._downed: set[str] = set()

    def _sky(self) -> Any:
        if self._sky_module is None:
            try:
                import sky  # late: SkyPilot (heavy, an environment of its own) only when a fleet uses it
            except ImportError as exc:
                raise LaunchError("SkyPilot is not installed (pip install 'bucketrun[skypilot]')",
                                  FailureClass.CONFIG_ERROR) from exc
            self._sky_module = sky
        return self._sky_module

    def _error(self, sky: Any, exc: Exception, what: str) -> LaunchError:
        errors = getattr(sky, "exceptions", None)
        for names, cls in _CLASSES:
            types = tuple(t for t in (getattr(errors, n, None) for n in names) if isinstance(t, type))
            if types and isinstance(exc, types):
                return LaunchError(f"SkyPilot {what}: {type(exc).__name__}: {str(exc)[:300]}", cls)
        if isinstance(exc, RuntimeError) and "secret" in str(exc).lower():
            cls = FailureClass.CONFIG_ERROR  # a secret with no value here and no managed secrets provider
        elif isinstance(exc, ValueError):
            cls = FailureClass.BAD_INPUT  # the task did not validate (e.g. an unknown accelerator name)
        else:
            cls = FailureClass.CODE_ERROR
        return LaunchError(f"SkyPilot {what}: {type(exc).__name__}: {str(exc)[:300]}", cls)

    def start(self, bucket_url: str, job_id: str, workers: list[str], spec: FleetWorkers) -> list[Instance]:
        config = fleet_task_config(bucket_url, job_id, workers, spec)
        cluster = config["name"]
        sky = self._sky()
        # Values only for the names set here; any other stays a reference for SkyPilot's secrets provider.
        overrides = [(n, os.environ[n]) for n in spec.secrets if n in os.environ]
        try:
            task = sky.Task.from_yaml_config(copy.deepcopy(config), secrets_overrides=overrides or None)
            _job, handle = sky.get(sky.launch(task, cluster_name=cluster, down=True))
        except Exception as exc:  # noqa: BLE001 - classified, then raised with the cause
            raise self._error(sky, exc, f"launch of {cluster}") from exc
        price = _price(handle)
        self._downed.discard(cluster)
        return [Instance(instance_id=f"{cluster}.{rank}", worker=worker, provider=self.name, price_per_hour=price,
                         detail={"cluster": cluster, "node_rank": rank, "gpu": spec.gpu_type, "image": spec.image,
                                 "secret_names": sorted(spec.secrets)})
                for rank, worker in enumerate(workers)]

    def _cluster_op(self, verb: str, cluster: str) -> None:
        """`sky down` or `sky stop` of one cluster; a cluster already gone is not an error."""
        sky = self._sky()
        try:
            sky.get(getattr(sky, verb)(cluster))
        except Exception as exc:  # noqa: BLE001
            gone = getattr(getattr(sky, "exceptions", None), "ClusterDoesNotExist", None)
            if not (isinstance(gone, type) and isinstance(exc, gone)):
                raise self._error(sky, exc, f"{verb} of {cluster}") from exc

    def terminate(self, instance_id: str) -> None:
        cluster = instance_id.split(".", 1)[0]
        if cluster in self._downed:
            return
        self._cluster_op("down", cluster)
        self._downed.add(cluster)

    def stop(self, instance_id: str) -> None:
        """`sky stop`: the VMs stop (and their compute billing); the disks stay, billed, for `sky start`."""
        self._cluster_op("stop", instance_id.split(".", 1)[0])

    def price(self, instance_id: str) -> float | None:
        return None  # SkyPilot quotes a price at launch (recorded on the instance), not for a running cluster

    def alive(self, instance_id: str) -> bool | None:
        cluster = instance_id.split(".", 1)[0]
        if cluster in self._downed:
            return False
        sky = self._sky()
        try:
            records = sky.get(sky.status(cluster_names=[cluster]))
        except Exception as exc:  # noqa: BLE001 - the provider cannot say
            log.info("SkyPilot cluster %s: state unknown (%s)", cluster, type(exc).__name__)
            return None
        if not records:
            return False
        status = records[0]["status"]
        status = str(getattr(status, "value", status))
        return True if status == "UP" else False if status == "STOPPED" else None


def _price(handle: Any) -> float | None:
    """One node's hourly price, as SkyPilot's catalog quotes the launched resources."""
    try:
        return float(handle.launched_resources.get_cost(3600))
    except Exception:  # noqa: BLE001 - a price is a nicety; the cluster is up
        return None
