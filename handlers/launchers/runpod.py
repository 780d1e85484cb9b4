"""Runpod serverless as GPU capacity, over its HTTP API (stdlib only, so the dispatch function stays light).

The job input names only the job (id, bucket URL, manifest key, attempt): Runpod keeps inputs in its own
logs, so credentials never go there; the worker reads bucket credentials from its own environment.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from typing import Any

from bucketrun.events import keys
from bucketrun.events.failures import FailureClass
from bucketrun.events.manifest import Resources

from .base import BackendStatus, LaunchError

log = logging.getLogger("bucketrun.runpod")
DEFAULT_API = "https://api.runpod.ai"


class RunpodLauncher:
    name = "runpod"

    def __init__(self, endpoint_id: str, api_key: str | None = None, *, api_base: str | None = None,
                 endpoint_url: str | None = None, retries: int = 4, backoff_base_s: float = 0.5,
                 timeout_s: float = 30.0):
        if not endpoint_id:
            raise LaunchError("no Runpod endpoint id configured (RUNPOD_ENDPOINT_ID)", FailureClass.CONFIG_ERROR)
        self.endpoint_id = endpoint_id
        self._api_key = api_key if api_key is not None else os.environ.get("RUNPOD_API_KEY", "")
        base = (api_base or os.environ.get("RUNPOD_API_BASE") or DEFAULT_API).rstrip("/")
        self.endpoint_url = (endpoint_url or os.environ.get("RUNPOD_ENDPOINT_URL") or f"{base}/v2/{endpoint_id}").rstrip("/")
        self.retries, self.backoff_base_s, self.timeout_s = retries, backoff_base_s, timeout_s

    def __repr__(self) -> str:  # never show the key
        return f"RunpodLauncher({self.endpoint_url!r})"

    # -- HTTP ----------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
        url = f"{self.endpoint_url}/{path}"
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=data, method=method, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"})
            try:
                with urllib.request.urlopen(req, timeout=timeout or self.timeout_s) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as exc:
                code = exc.code
                if code in (401, 403):
                    raise LaunchError(f"Runpod refused the API key for endpoint {self.endpoint_id} ({code}); "
                                      "check the RUNPOD_API_KEY secret", FailureClass.CONFIG_ERROR) from exc
                if code == 404:
                    raise _NotFound(f"Runpod endpoint {self.endpoint_id} has no {path.split('/')[0]} at "
                                    f"{self.endpoint_url} (404); check RUNPOD_ENDPOINT_ID") from exc
                if code == 405 and method == "GET":
                    method = "POST"  # the SDK's local test server serves /status as POST only
                    continue
                if code != 429 and code < 500:
                    raise LaunchError(f"Runpod endpoint {self.endpoint_id} answered {code} to {path}",
                                      FailureClass.CODE_ERROR) from exc
                retry_after = _retry_after(exc.headers.get("Retry-After"))
                reason = f"{code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                retry_after, reason = None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt == self.retries:
                raise LaunchError(f"Runpod endpoint {self.endpoint_id} kept failing ({reason}) after "
                                  f"{self.retries + 1} tries", FailureClass.TRANSIENT)
            delay = retry_after if retry_after is not None else random.uniform(0, self.backoff_base_s * 2 ** attempt)
            log.warning("Runpod %s %s: %s; retrying in %.2f s", method, path, reason, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    # -- Launcher ------------------------------------------------------------------------------------
    def run_payload(self, bucket_url: str, job_id: str, attempt: int, resources: Resources) -> dict[str, Any]:
        return {
            "input": {"job_id": job_id, "bucket": bucket_url, "manifest_key": keys.manifest_key(job_id),
                      "attempt": attempt},
            "policy": {"executionTimeout": int(resources.execution_timeout_s * 1000),
                       "ttl": int(resources.ttl_s * 1000)},
        }

    def launch(self, bucket_url: str, job_id: str, attempt: int, resources: Resources | None = None) -> str:
        try:
            answer = self._request("POST", "run", self.run_payload(bucket_url, job_id, attempt,
                                                                   resources or Resources()))
        except _NotFound as exc:
            raise LaunchError(str(exc), FailureClass.CONFIG_ERROR) from exc
        if not answer.get("id"):
            raise LaunchError(f"Runpod endpoint {self.endpoint_id} accepted /run but returned no job id",
                              FailureClass.TRANSIENT)
        return str(answer["id"])

    def status(self, backend_id: str, timeout: float | None = None) -> BackendStatus:
        try:
            answer = self._request("GET", f"status/{backend_id}", timeout=timeout)
        except _NotFound:
            return BackendStatus.UNKNOWN
        if answer.get("status") == "FAILED" and "not found" in str(answer.get("error", "")).lower():
            return BackendStatus.UNKNOWN
        try:
            return BackendStatus(answer.get("status", "UNKNOWN"))
        except ValueError:
            return BackendStatus.UNKNOWN

    def cancel(self, backend_id: str) -> None:
        try:
            self._request("POST", f"cancel/{backend_id}")
        except _NotFound:
            pass  # already gone


class _NotFound(Exception):
    pass


def _retry_after(value: str | None) -> float | None:
    try:
        return min(float(value), 30.0) if value else None
    except ValueError:
        return None
