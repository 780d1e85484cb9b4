"""Runpod GPU pods as fleet capacity, through the runpod SDK's pod API: one pod per worker.

Credentials reach a pod as Runpod secret references (`{{ RUNPOD_SECRET_<NAME> }}`), which Runpod resolves inside
the pod, so no value passes through bucketrun. The API key comes from RUNPOD_API_KEY only. The SDK keeps its key
(`runpod.api_key`) and GraphQL base URL (the RUNPOD_API_BASE_URL env var, read per call) process-wide, so each
call sets both under a lock and puts them back; RUNPOD_API_BASE_URL (not RUNPOD_API_BASE, which is the serverless
API of launchers/runpod.py) or `api_base=` points the backend at a fake server.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bucketrun.events.failures import FailureClass

from .base import LaunchError
from .fleet_base import FleetWorkers, Instance, worker_command, worker_env

log = logging.getLogger("bucketrun.fleet.runpod")

SDK_URL_ENV = "RUNPOD_API_BASE_URL"  # the SDK's own setting: GraphQL at <base>/graphql
DEFAULT_GRAPHQL_BASE = "https://api.runpod.io"
_SDK_LOCK = threading.Lock()  # the SDK's key and URL are process-wide

# Runpod's words when a GPU of that type cannot be placed now; another try later can succeed.
_NO_CAPACITY = re.compile(r"no longer any instances available|does not have the resources to deploy|"
                          r"no (gpu|instance|machine)s? (are )?available|not enough (free )?gpus|out of capacity",
                          re.I)
_REFUSED = re.compile(r"unauthori[sz]ed|forbidden|permission|api key|insufficient (funds|balance)|"
                      r"not enough (funds|balance|credit)", re.I)
_ALIVE = {"RUNNING", "CREATED", "RESTARTING", "STARTING"}
_GONE = {"EXITED", "TERMINATED", "DEAD"}


def secret_reference(name: str) -> str:
    """Runpod's syntax for a secret kept in the Runpod account; the pod sees the value, we never do."""
    return "{{ RUNPOD_SECRET_" + name + " }}"


def pod_env(bucket_url: str, job_id: str, worker: str, spec: FleetWorkers) -> dict[str, str]:
    """The worker's variables plus one secret reference per name in `spec.secrets`."""
    return {**worker_env(bucket_url, job_id, worker), **{n: secret_reference(n) for n in spec.secrets}}


def _gql(value: str) -> str:
    """Escape for a GraphQL string literal: the SDK pastes values between double quotes without escaping,
    and GraphQL's string escapes are JSON's."""
    return json.dumps(value)[1:-1]


class RunpodPodsBackend:
    name = "runpod"

    def __init__(self, api_key: str | None = None, *, api_base: str | None = None, name_prefix: str = "bucketrun"):
        self._api_key = api_key if api_key is not None else os.environ.get("RUNPOD_API_KEY", "")
        self.api_base = (api_base or os.environ.get(SDK_URL_ENV) or DEFAULT_GRAPHQL_BASE).rstrip("/")
        self.name_prefix = name_prefix

    def __repr__(self) -> str:  # never show the key
        return f"RunpodPodsBackend({self.api_base!r})"

    # -- the SDK, with this backend's key and URL --------------------------------------------------------
    @contextmanager
    def _sdk(self) -> Iterator[Any]:
        if not self._api_key:
            raise LaunchError("no Runpod API key: set RUNPOD_API_KEY", FailureClass.CONFIG_ERROR)
        try:
            import runpod  # late: the runpod SDK (heavy) stays out of the dispatch path
        except ImportError as exc:
            raise LaunchError("the runpod SDK is not installed (pip install 'bucketrun[runpod]')",
                              FailureClass.CONFIG_ERROR) from exc
        with _SDK_LOCK:
            saved_key, saved_url = runpod.api_key, os.environ.get(SDK_URL_ENV)
            runpod.api_key, os.environ[SDK_URL_ENV] = self._api_key, self.api_base
            try:
                yield runpod
            finally:
                runpod.api_key = saved_key
                if saved_url is None:
                    os.environ.pop(SDK_URL_ENV, None)
                else:
                    os.environ[SDK_URL_ENV] = saved_url

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Run fn(runpod) and turn the SDK's and HTTP's errors into LaunchError with a failure class."""
        import requests  # late: the runpod SDK's HTTP client, installed with it (the runpod extra)

        with self._sdk() as runpod:
            try:
                return fn(runpod)
            except runpod.error.AuthenticationError as exc:
                raise LaunchError(f"Runpod refused the API key ({what}); check RUNPOD_API_KEY",
                                  FailureClass.CONFIG_ERROR) from exc
            except runpod.error.QueryError as exc:
                message = str(exc.message or "")[:300]  # never exc.query: it is the whole mutation
                if _NO_CAPACITY.search(message):
                    cls = FailureClass.TRANSIENT  # no CAPACITY class: transient is the retryable one
                elif _REFUSED.search(message):
                    cls = FailureClass.CONFIG_ERROR
                else:
                    cls = FailureClass.CODE_ERROR
                raise LaunchError(f"Runpod {what}: {message}", cls) from exc
            except requests.RequestException as exc:  # connection, timeout, or a non-JSON answer (5xx page)
                raise LaunchError(f"Runpod {what} failed ({type(exc).__name__})", FailureClass.TRANSIENT) from exc
            except ValueError as exc:  # the SDK's own checks, e.g. "No GPU found with the specified ID"
                raise LaunchError(f"Runpod {what}: {exc}", FailureClass.BAD_INPUT) from exc
            except (KeyError, TypeError) as exc:  # an answer without `data` (server trouble)
                raise LaunchError(f"Runpod {what}: unexpected answer ({type(exc).__name__}: {exc})",
                                  FailureClass.TRANSIENT) from exc

    # -- FleetBackend --------------------------------------------------------------------------------------
    def start(self, bucket_url: str, job_id: str, workers: list[str], spec: FleetWorkers) -> list[Instance]:
        if not spec.image or not spec.gpu_type:
            raise LaunchError("Runpod pods need workers.image and workers.gpu_type", FailureClass.BAD_INPUT)
        started: list[Instance] = []
        for worker in workers:
            try:
                started.append(self._start_one(bucket_url, job_id, worker, spec))
            except LaunchError as exc:
                if not started:
                    raise
                # The next pod would most likely be refused the same way: stop, and report what did start.
                log.warning("Runpod started %d of %d pods for job %s; stopped at worker %s: %s",
                            len(started), len(workers), job_id, worker, exc)
                break
        return started

    def _start_one(self, bucket_url: str, job_id: str, worker: str, spec: FleetWorkers) -> Instance:
        env = {k: _gql(v) for k, v in pod_env(bucket_url, job_id, worker, spec).items()}
        kwargs: dict[str, Any] = dict(
            name=_gql(f"{self.name_prefix}-{job_id}-{worker}"[:128]), image_name=_gql(str(spec.image)),
            gpu_type_id=_gql(str(spec.gpu_type)), cloud_type=spec.cloud_type, gpu_count=1,
            container_disk_in_gb=spec.disk_gb, support_public_ip=False,
            docker_args=_gql(shlex.join(worker_command(bucket_url, job_id, worker))), env=env)
        if spec.min_inet_down_mbps:
            kwargs["min_download"] = int(spec.min_inet_down_mbps)
        pod = self._call(f"create pod for worker {worker}", lambda rp: rp.create_pod(**kwargs))
        if not pod or not pod.get("id"):
            raise LaunchError(f"Runpod created no pod for worker {worker}", FailureClass.TRANSIENT)
        pod_id = str(pod["id"])
        return Instance(instance_id=pod_id, worker=worker, provider=self.name,
                        price_per_hour=self._price(pod_id, pod),
                        detail={"gpu": spec.gpu_type, "cloud_type": spec.cloud_type,
                                "machine_id": pod.get("machineId"), "image": spec.image,
                                "secret_refs": sorted(spec.secrets)})

    def _price(self, pod_id: str, created: dict[str, Any]) -> float | None:
        """The pod's costPerHr: the SDK's create mutation does not ask for it, so read the pod back."""
        cost = created.get("costPerHr")
        if cost is None:
            try:
                pod = self._call(f"read pod {pod_id}", lambda rp: rp.get_pod(pod_id, api_key=self._api_key))
                cost = (pod or {}).get("costPerHr")
            except LaunchError as exc:  # the pod runs; a missing price is not worth losing it over
                log.warning("Runpod pod %s: price unknown (%s)", pod_id, exc)
        return float(cost) if cost is not None else None

    def terminate(self, instance_id: str) -> None:
        try:
            self._call(f"terminate pod {instance_id}", lambda rp: rp.terminate_pod(_gql(instance_id)))
        except LaunchError:
            if self.alive(instance_id) is False:
                return  # already gone
            raise

    def stop(self, instance_id: str) -> None:
        """podStop: compute billing ends, the volume disk is kept (and billed) until the pod is terminated."""
        try:
            self._call(f"stop pod {instance_id}", lambda rp: rp.stop_pod(_gql(instance_id)))
        except LaunchError:
            if self.alive(instance_id) is False:
                return
            raise

    def price(self, instance_id: str) -> float | None:
        try:
            pod = self._call(f"read pod {instance_id}", lambda rp: rp.get_pod(_gql(instance_id), api_key=self._api_key))
        except LaunchError:
            return None
        cost = (pod or {}).get("costPerHr")
        return float(cost) if cost is not None else None

    def alive(self, instance_id: str) -> bool | None:
        try:
            pod = self._call(f"read pod {instance_id}",
                             lambda rp: rp.get_pod(_gql(instance_id), api_key=self._api_key))
        except LaunchError as exc:
            log.info("Runpod pod %s: state unknown (%s)", instance_id, exc)
            return None
        if not pod:
            return False
        status = str(pod.get("desiredStatus") or "").upper()
        return True if status in _ALIVE else False if status in _GONE else None
