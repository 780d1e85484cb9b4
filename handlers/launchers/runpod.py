"""Runpod serverless as GPU capacity, over its HTTP API (stdlib and urllib3, which boto3 already
brings, so the dispatch function stays light).

The job input names the job (id, bucket URL, manifest key, attempt) and carries its manifest and log so far, so
the worker need not read them back: Runpod keeps inputs in its own logs, so credentials never go there (manifests
hold none: intake refuses them); the worker reads bucket credentials from its own environment.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from itertools import takewhile
from typing import Any

import urllib3
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from bucketrun.events import keys
from bucketrun.events.backoff import RUNPOD_HTTP, Backoff, parse_retry_after
from bucketrun.events.envelope import RunpodPolicy
from bucketrun.events.failures import FailureClass
from bucketrun.events.manifest import JobManifest

from .base import BackendStatus, LaunchError

log = logging.getLogger("bucketrun.runpod")
DEFAULT_API = "https://api.runpod.ai"


class RunpodLauncher:
    name = "runpod"
    takes_handoff = True  # the /run input carries the job's log so far and its manifest (handlers/launch.py)

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
        self._backoff = replace(RUNPOD_HTTP, base_s=backoff_base_s)  # the shared policy, this launcher's first wait
        self._http = urllib3.PoolManager()  # thread-safe; keeps connections alive across a warm container's calls

    def __repr__(self) -> str:  # never show the key
        return f"RunpodLauncher({self.endpoint_url!r})"

    # -- HTTP ----------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
        url = f"{self.endpoint_url}/{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"}
        while True:
            retry = _PolicyRetry.for_call(method, path, self.retries, self._backoff)
            try:
                resp = self._http.request(method, url, body=data, headers=headers, retries=retry,
                                          timeout=timeout or self.timeout_s)
            except MaxRetryError as exc:  # the connection kept failing until the tries ran out
                raise LaunchError(f"Runpod endpoint {self.endpoint_id} kept failing ({_reason(exc.reason)}) after "
                                  f"{self.retries + 1} tries", FailureClass.TRANSIENT) from exc
            except urllib3.exceptions.HTTPError as exc:  # the answer to /run was lost: not retried (_PolicyRetry)
                raise LaunchError(f"Runpod endpoint {self.endpoint_id}: {path} failed ({_reason(exc)}); not retried, "
                                  "since Runpod may have queued it", FailureClass.TRANSIENT) from exc
            code = resp.status
            if 200 <= code < 300:
                return json.loads(resp.data or b"{}")
            if code in (401, 403):
                raise LaunchError(f"Runpod refused the API key for endpoint {self.endpoint_id} ({code}); "
                                  "check the RUNPOD_API_KEY secret", FailureClass.CONFIG_ERROR)
            if code == 404:
                raise _NotFound(f"Runpod endpoint {self.endpoint_id} has no {path.split('/')[0]} at "
                                f"{self.endpoint_url} (404); check RUNPOD_ENDPOINT_ID_<KIND>")
            if code == 405 and method == "GET":
                method = "POST"  # the SDK's local test server serves /status as POST only
                continue
            if code == 429 or code >= 500:
                tries = len(resp.retries.history) + 1 if resp.retries is not None else 1
                if code in retry.status_forcelist or tries > 1:
                    raise LaunchError(f"Runpod endpoint {self.endpoint_id} kept failing ({code}) after {tries} tries",
                                      FailureClass.TRANSIENT)
                why = "; not retried, since Runpod may have queued it" if path == "run" else ""
                raise LaunchError(f"Runpod endpoint {self.endpoint_id} answered {code} to {path}{why}",
                                  FailureClass.TRANSIENT)
            raise LaunchError(f"Runpod endpoint {self.endpoint_id} answered {code} to {path}",
                              FailureClass.CODE_ERROR)

    # -- Launcher ------------------------------------------------------------------------------------
    def run_payload(self, bucket_url: str, job_id: str, attempt: int, policy: RunpodPolicy,
                    handoff: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "input": {"job_id": job_id, "bucket": bucket_url, "manifest_key": keys.manifest_key(job_id),
                      "attempt": attempt, **(handoff or {})},
            "policy": {"executionTimeout": int(policy.execution_timeout_s * 1000),
                       "ttl": int(policy.ttl_s * 1000)},
        }

    def launch(self, bucket_url: str, job_id: str, attempt: int, manifest: JobManifest | None = None,
               handoff: dict[str, Any] | None = None) -> str:
        policy = manifest.launch.runpod if manifest is not None else RunpodPolicy()
        try:
            answer = self._request("POST", "run", self.run_payload(bucket_url, job_id, attempt, policy, handoff))
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


# Throttling and server trouble: worth another try for the idempotent calls (GET /status, POST /cancel).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# POST /run is not idempotent: after a 500, 502 or 504, or a lost answer, Runpod may already have queued the job,
# and a second POST would start a second Runpod job for the same attempt. So /run is retried only when the
# request was refused (429, 503) or the connection never opened; anything else fails the attempt as transient,
# and the job-level retry (a new attempt, fenced against the old one, after JOB_RETRY backoff) takes over.
REFUSED_STATUSES = frozenset({429, 503})


class _PolicyRetry(Retry):
    """urllib3 decides whether to try again; the shared policy (events.backoff) decides how long to wait, so
    there is one formula. Each wait is logged with the call and the delay, never the headers (the API key)."""

    policy: Backoff = RUNPOD_HTTP
    call: str = ""

    @classmethod
    def for_call(cls, method: str, path: str, retries: int, policy: Backoff) -> "_PolicyRetry":
        run = path == "run"
        retry = cls(total=retries, read=False if run else None, allowed_methods=frozenset({"GET", "POST"}),
                    status_forcelist=REFUSED_STATUSES if run else RETRY_STATUSES, raise_on_status=False,
                    respect_retry_after_header=True,
                    retry_after_max=int(policy.retry_after_max_s or policy.cap_s))  # (redirects only; see sleep)
        retry.policy, retry.call = policy, f"{method} {path}"
        return retry

    def new(self, **kw: Any) -> "_PolicyRetry":
        retry = super().new(**kw)
        retry.policy, retry.call = self.policy, self.call
        return retry

    def _failures(self) -> int:
        return sum(1 for _ in takewhile(lambda h: h.redirect_location is None, reversed(self.history)))

    def get_backoff_time(self) -> float:
        return self.policy.delay(self._failures())

    def sleep(self, response: Any = None) -> None:
        header = response.headers.get("Retry-After") if response is not None and self.respect_retry_after_header \
            else None
        delay = self.policy.delay(self._failures(), retry_after=parse_retry_after(header))
        last = self.history[-1] if self.history else None
        reason = str(last.status) if last and last.status else _reason(last.error) if last and last.error else "?"
        log.warning("Runpod %s: %s; retrying in %.2f s", self.call, reason, delay)
        time.sleep(delay)


def _reason(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"
