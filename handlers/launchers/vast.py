"""Vast.ai GPU instances as fleet capacity: search the cheapest matching offers, rent one per worker.

Over Vast's documented REST API with urllib3 (a core dependency), sending what the official `vastai` SDK sends
(vastai 1.9.1: POST /api/v0/bundles/, PUT /api/v0/asks/<offer>/, GET and DELETE /api/v0/instances/<id>/), not
through the SDK itself: every vastai release from 1.6 to 1.9.1 hard-pins cryptography==49.0.0, pycares==4.11.0
and pillow==12.2.0, which conflicts with this project's pins (cryptography 50, and pycares 5 for aiodns 4).

Credentials: Vast has no per-instance secret references. A Vast worker gets its bucket credentials from the
Vast account's own environment variables (console: Account > Environment Variables), which the user sets once
and Vast injects into every instance; no value passes through bucketrun. `spec.secrets` names the variables the
worker expects there, and is only logged as a reminder. The API key: VAST_API_KEY, else the key file the SDK and
CLI use ($XDG_CONFIG_HOME/vastai/vast_api_key, ~/.vast_api_key). VAST_URL (the SDK's setting) or `server_url=`
points it at another server.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import urllib3
from urllib3.util.retry import Retry

from bucketrun.events.failures import FailureClass

from .base import LaunchError
from .fleet_base import FleetWorkers, Instance, worker_command, worker_env

log = logging.getLogger("bucketrun.fleet.vast")
DEFAULT_SERVER = "https://console.vast.ai"
SEARCH_LIMIT = 64  # Vast answers at most this many offers per search
MAX_SEARCHES = 20  # a fresh search after each page of offers is used up or taken
_TAKEN = ("no_such_ask", "not available", "already rented", "no longer available")
_ALIVE = {"running", "loading", "created", "scheduling"}


def api_key_from_environment() -> str:
    """VAST_API_KEY, else the key file the vastai SDK and CLI read."""
    key = os.environ.get("VAST_API_KEY", "").strip()
    if key:
        return key
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for path in (config / "vastai" / "vast_api_key", Path.home() / ".vast_api_key"):
        if path.is_file():
            return path.read_text().strip()
    return ""


class _Answer(Exception):
    """A non-2xx answer, with its decoded body, for the caller to classify."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(status)
        self.status, self.body = status, body

    @property
    def text(self) -> str:
        return " ".join(str(self.body.get(k, "")) for k in ("error", "msg", "message", "detail")).strip()


class VastBackend:
    name = "vast"

    def __init__(self, api_key: str | None = None, *, server_url: str | None = None, retries: int = 3,
                 backoff_s: float = 0.5, timeout_s: float = 60.0):
        self._api_key = api_key if api_key is not None else api_key_from_environment()
        self.server_url = (server_url or os.environ.get("VAST_URL") or DEFAULT_SERVER).rstrip("/")
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self._http = urllib3.PoolManager()

    def __repr__(self) -> str:  # never show the key
        return f"VastBackend({self.server_url!r})"

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *, what: str,
                 idempotent: bool = True) -> dict[str, Any]:
        if not self._api_key:
            raise LaunchError("no Vast API key: set VAST_API_KEY", FailureClass.CONFIG_ERROR)
        # A rent (PUT /asks/) is retried only when refused outright (429, 503): after a lost answer or another
        # 5xx it may have happened, and a second rent of the same offer would only answer no_such_ask.
        retry = Retry(total=self.retries, backoff_factor=self.backoff_s, raise_on_status=False,
                      read=None if idempotent else False, respect_retry_after_header=True,
                      allowed_methods=frozenset({"GET", "POST", "PUT", "DELETE"}),
                      status_forcelist=(429, 500, 502, 503, 504) if idempotent else (429, 503))
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        try:
            resp = self._http.request(method, f"{self.server_url}/api/v0{path}", headers=headers, retries=retry,
                                      body=json.dumps(body).encode() if body is not None else None,
                                      timeout=self.timeout_s)
        except urllib3.exceptions.HTTPError as exc:
            raise LaunchError(f"Vast {what} failed ({type(exc).__name__})", FailureClass.TRANSIENT) from exc
        try:
            data = json.loads(resp.data or b"{}")
        except ValueError:
            data = {"msg": resp.data[:200].decode(errors="replace")}
        data = data if isinstance(data, dict) else {"result": data}
        if resp.status in (401, 403):
            raise LaunchError(f"Vast refused the API key ({what}, {resp.status}); check VAST_API_KEY",
                              FailureClass.CONFIG_ERROR)
        if resp.status == 429 or resp.status >= 500:
            raise LaunchError(f"Vast {what} answered {resp.status}", FailureClass.TRANSIENT)
        if not 200 <= resp.status < 300 or data.get("success") is False:
            raise _Answer(resp.status, data)
        return data

    # -- FleetBackend ----------------------------------------------------------------------------------------
    def offer_query(self, spec: FleetWorkers, limit: int = SEARCH_LIMIT) -> dict[str, Any]:
        """The search the SDK's search_offers sends, cheapest first (its defaults, plus our filters)."""
        q: dict[str, Any] = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True},
                             "rented": {"eq": False}, "num_gpus": {"eq": 1},
                             "gpu_name": {"eq": str(spec.gpu_type).replace("_", " ")},
                             "disk_space": {"gte": spec.disk_gb}}
        if spec.min_inet_down_mbps:
            q["inet_down"] = {"gte": spec.min_inet_down_mbps}
        if spec.max_price_per_hour:
            q["dph_total"] = {"lte": spec.max_price_per_hour}
        q.update(order=[["dph_total", "asc"]], type="on-demand", limit=limit, allocated_storage=spec.disk_gb)
        return q

    def _offers(self, spec: FleetWorkers) -> list[dict[str, Any]]:
        try:
            answer = self._request("POST", "/bundles/", self.offer_query(spec), what="offer search")
        except _Answer as exc:
            raise LaunchError(f"Vast offer search refused ({exc.status}): {exc.text}", FailureClass.BAD_INPUT) from exc
        return sorted(answer.get("offers") or [], key=lambda o: float(o.get("dph_total") or 0))

    def start(self, bucket_url: str, job_id: str, workers: list[str], spec: FleetWorkers) -> list[Instance]:
        if not spec.image or not spec.gpu_type:
            raise LaunchError("Vast instances need workers.image and workers.gpu_type", FailureClass.BAD_INPUT)
        if spec.secrets:
            log.info("Vast passes no secrets: instances read %s from the Vast account's environment variables",
                     ", ".join(spec.secrets))
        started: list[Instance] = []
        pending, tried = list(workers), set()
        failure: LaunchError | None = None
        for _ in range(MAX_SEARCHES):
            if not pending or failure is not None:
                break
            try:
                offers = [o for o in self._offers(spec) if o.get("id") not in tried]
            except LaunchError as exc:
                failure = exc
                break
            if not offers:
                break
            for offer in offers:
                if not pending:
                    break
                tried.add(offer.get("id"))
                try:
                    started.append(self._rent(offer, bucket_url, job_id, pending[0], spec))
                    pending.pop(0)
                except _Taken as exc:  # another renter was faster: the next offer
                    log.info("Vast offer %s was taken (%s); trying the next", offer.get("id"), exc)
                except LaunchError as exc:
                    failure = exc
                    break
        if pending and not started:
            if failure is not None:
                raise failure
            raise LaunchError(f"Vast has no offer for {spec.gpu_type} (disk >= {spec.disk_gb} GB"
                              + (f", <= ${spec.max_price_per_hour}/h" if spec.max_price_per_hour else "")
                              + (f", >= {spec.min_inet_down_mbps} Mbps" if spec.min_inet_down_mbps else "")
                              + ") right now", FailureClass.TRANSIENT)
        if pending:
            log.warning("Vast started %d of %d instances for job %s (%s)", len(started), len(workers), job_id,
                        failure or "no more offers")
        return started

    def create_body(self, bucket_url: str, job_id: str, worker: str, spec: FleetWorkers) -> dict[str, Any]:
        """The SDK's create_instance payload: the image's entry point runs with the worker command as args."""
        return {"client_id": "me", "image": spec.image, "env": worker_env(bucket_url, job_id, worker),
                "price": None, "disk": spec.disk_gb, "label": f"bucketrun-{job_id}-{worker}"[:128],
                "extra": None, "onstart": None, "image_login": None, "python_utf8": False, "lang_utf8": False,
                "use_jupyter_lab": False, "jupyter_dir": None, "force": False, "cancel_unavail": True,
                "template_hash_id": None, "user": None, "runtype": "args",
                "args": worker_command(bucket_url, job_id, worker)}

    def _rent(self, offer: dict[str, Any], bucket_url: str, job_id: str, worker: str,
              spec: FleetWorkers) -> Instance:
        offer_id = offer.get("id")
        try:
            answer = self._request("PUT", f"/asks/{offer_id}/", self.create_body(bucket_url, job_id, worker, spec),
                                   what=f"rent of offer {offer_id}", idempotent=False)
        except _Answer as exc:
            text = exc.text.lower()
            if exc.status in (404, 410) or any(t in text for t in _TAKEN):
                raise _Taken(exc.text or str(exc.status)) from exc
            cls = FailureClass.CONFIG_ERROR if "credit" in text or "balance" in text else FailureClass.BAD_INPUT
            raise LaunchError(f"Vast refused the rent of offer {offer_id} ({exc.status}): {exc.text}", cls) from exc
        contract = answer.get("new_contract")
        if not contract:
            raise LaunchError(f"Vast rented offer {offer_id} but named no instance", FailureClass.TRANSIENT)
        price = offer.get("dph_total")
        return Instance(instance_id=str(contract), worker=worker, provider=self.name,
                        price_per_hour=float(price) if price is not None else None,
                        detail={"gpu": offer.get("gpu_name") or spec.gpu_type, "offer_id": offer_id,
                                "machine_id": offer.get("machine_id"), "inet_down": offer.get("inet_down"),
                                "image": spec.image, "account_env": sorted(spec.secrets)})

    def terminate(self, instance_id: str) -> None:
        try:
            self._request("DELETE", f"/instances/{instance_id}/", {}, what=f"destroy of instance {instance_id}")
        except _Answer as exc:
            if exc.status == 404 or "no_such_instance" in exc.text or "not found" in exc.text.lower():
                return  # already gone
            raise LaunchError(f"Vast destroy of instance {instance_id} refused ({exc.status}): {exc.text}",
                              FailureClass.CODE_ERROR) from exc

    def stop(self, instance_id: str) -> None:
        """PUT /instances/{id}/ {"state": "stopped"}: GPU charges end, the disk (and its charges) stay."""
        try:
            self._request("PUT", f"/instances/{instance_id}/", {"state": "stopped"}, what=f"stop of {instance_id}")
        except _Answer as exc:
            if exc.status == 404 or "no_such_instance" in exc.text or "not found" in exc.text.lower():
                return  # already gone: nothing left running
            raise LaunchError(f"Vast stop of instance {instance_id} refused ({exc.status}): {exc.text}",
                              FailureClass.CODE_ERROR) from exc

    def price(self, instance_id: str) -> float | None:
        try:
            answer = self._request("GET", f"/instances/{instance_id}/?owner=me", what=f"read of {instance_id}")
        except (_Answer, LaunchError):
            return None
        cost = (answer.get("instances") or {}).get("dph_total")
        return float(cost) if cost is not None else None

    def alive(self, instance_id: str) -> bool | None:
        try:
            answer = self._request("GET", f"/instances/{instance_id}/?owner=me", what=f"read of {instance_id}")
        except _Answer as exc:
            return False if exc.status == 404 else None
        except LaunchError as exc:
            log.info("Vast instance %s: state unknown (%s)", instance_id, exc)
            return None
        row = answer.get("instances")
        if not row:
            return False
        if row.get("intended_status") == "stopped" or row.get("actual_status") == "exited":
            return False
        return True if row.get("actual_status") in _ALIVE else None


class _Taken(Exception):
    """The offer was rented by someone else between the search and the rent."""
