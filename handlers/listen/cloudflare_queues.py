"""Cloudflare Queues' HTTP pull-consumer API, the three calls `bucketrun listen r2-queue` makes: pull a batch
under a visibility timeout, acknowledge and retry by lease id, and find a queue's id from its name.

A small urllib3 client rather than the `cloudflare` SDK. The SDK (5.x) fits the pins (its httpx, anyio and
pydantic are in constraints.txt, for the dev extra), but not the core install: urllib3 is already a core
dependency (the Runpod launcher's), while the SDK would add a 39 MB package and httpx, anyio, distro and sniffio
to every install, the Lambda's included, for two POSTs and one GET. Its generated types also follow each turn of
the API reference: the pull's timeout was `visibility_timeout` in one SDK release and `visibility_timeout_ms` in
another, and an earlier reference typed a pull's `result` as the bare array of messages. These few lines send
both names and take both shapes. Wire format as documented at
https://developers.cloudflare.com/queues/configuration/pull-consumers/ and the API reference
(https://developers.cloudflare.com/api/resources/queues/subresources/messages/methods/pull/ and .../ack/).
The API token is sent only in the Authorization header: it is never logged, shown in a repr or put in an error.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3

from bucketrun.events.backoff import parse_retry_after

TOKEN_ENV = "CLOUDFLARE_API_TOKEN"
#: The API's base URL; a test (or an egress proxy) points it elsewhere. Not a secret.
BASE_URL_ENV = "CLOUDFLARE_API_BASE_URL"
DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"

#: Documented limits of a pull: batch_size defaults to 5, at most 100; the visibility timeout defaults to 30 s,
#: at most 12 hours.
MAX_BATCH = 100
MAX_VISIBILITY_S = 12 * 3600.0
#: The permission a pull consumer's token needs (pull and ack accept "Queues Write"; the pull-consumer guide asks
#: for queues_read and queues_write, which the dashboard calls Account > Queues > Edit).
PERMISSION = ("the Queues Write permission (dashboard: Account > Queues > Edit, i.e. "
              "com.cloudflare.api.account.queues_read and queues_write)")
# Cloudflare's codes for a token it refused (10000 "Authentication error", 9109 "Unauthorized to access requested
# resource", 6003/6111 a malformed Authorization header): whatever the HTTP status, the token is at fault.
_AUTH_CODES = {10000, 9109, 6003, 6111}
_QUEUE_ID = re.compile(r"[0-9a-f]{32}")


class CloudflareError(Exception):
    """Cloudflare answered with an error that trying again will not cure (a 4xx other than 429)."""


class CloudflareAuthError(CloudflareError):
    """The token was refused: missing, invalid, or without the permission the call needs."""


class CloudflareUnavailable(Exception):
    """A failure worth trying again: 5xx, 429 or no answer at all. `retry_after`: what the server asked for."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _errors_of(payload: Any) -> list[dict[str, Any]]:
    errors = payload.get("errors") if isinstance(payload, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def describe_errors(payload: Any) -> str:
    """Cloudflare's `errors[]` as one short phrase: "10000 Authentication error"."""
    parts = [f"{e.get('code', '?')} {str(e.get('message', '')).strip()}".strip() for e in _errors_of(payload)]
    return "; ".join(parts)[:300] or "no error detail"


def classify(status: int, payload: Any) -> str:
    """"ok", "auth", "retry" or "fatal" for one answer: a pure function of its status and body."""
    codes = {e.get("code") for e in _errors_of(payload)}
    if status in (401, 403) or codes & _AUTH_CODES:
        return "auth"
    if status == 429 or status >= 500:
        return "retry"
    if 200 <= status < 300 and isinstance(payload, dict) and payload.get("success") is not False:
        return "ok"
    return "fatal"


def decode_body(message: dict[str, Any]) -> Any:
    """A pulled message's body as the producer sent it. The guide: `json` and `bytes` bodies arrive base64-encoded
    (RFC 4648), `text` as a plain string; R2 sends its notifications as JSON. A body that is already an object, or
    JSON text that is not base64, is taken as it is. Returns None when nothing readable is there."""
    body = message.get("body")
    if isinstance(body, dict):
        return body
    if not isinstance(body, str):
        return None
    metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
    content_type = str(metadata.get("CF-Content-Type", "")).lower()
    candidates = [body]
    if content_type in ("json", "bytes", ""):
        try:
            candidates.insert(0, base64.b64decode(body, validate=True).decode("utf-8"))
        except (binascii.Error, ValueError):
            pass
    for text in candidates:
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class Acks:
    """One ack request: lease ids to acknowledge, and (lease id, delay in seconds) to retry."""

    acks: tuple[str, ...] = ()
    retries: tuple[tuple[str, int], ...] = ()

    def body(self) -> dict[str, Any]:
        return {"acks": [{"lease_id": lease} for lease in self.acks],
                "retries": [{"lease_id": lease, "delay_seconds": delay} for lease, delay in self.retries]}


class QueuesClient:
    """The pull-consumer calls for one account. Each call makes one request; the caller decides about retrying
    (`CloudflareUnavailable`) and stopping (`CloudflareError`, `CloudflareAuthError`)."""

    def __init__(self, account: str, token: str, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 30.0):
        self.account = account
        self._token = token
        self.base_url = base_url.rstrip("/")
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10.0, read=timeout_s))

    def __repr__(self) -> str:  # the token stays out of every repr
        return f"QueuesClient(account={self.account!r}, base_url={self.base_url!r})"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request; the whole envelope (`success`, `errors`, `result`...) of a successful answer."""
        url = f"{self.base_url}/accounts/{quote(self.account, safe='')}{path}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            resp = self._http.request(method, url, body=data, headers=headers)
        except urllib3.exceptions.HTTPError as exc:  # no answer: the text names the host, never the token
            raise CloudflareUnavailable(f"{method} {path}: {type(exc).__name__}") from None
        try:
            payload = json.loads(resp.data or b"null")
        except ValueError:
            payload = None
        verdict = classify(resp.status, payload)
        if verdict == "ok":
            return payload
        what = f"{method} {path}: HTTP {resp.status}: {describe_errors(payload)}"
        if verdict == "auth":
            raise CloudflareAuthError(what)
        if verdict == "retry":
            raise CloudflareUnavailable(what, parse_retry_after(resp.headers.get("Retry-After")))
        raise CloudflareError(what)

    def pull(self, queue_id: str, batch_size: int, visibility_timeout_ms: int) -> list[dict[str, Any]]:
        """POST .../queues/{id}/messages/pull: up to `batch_size` messages, each leased for the timeout. The API
        reference names the timeout `visibility_timeout_ms`; the pull-consumer guide's examples (and Cloudflare's
        changelog) send `visibility_timeout`, in milliseconds too: both are sent, with the same value."""
        body = {"batch_size": batch_size, "visibility_timeout_ms": visibility_timeout_ms,
                "visibility_timeout": visibility_timeout_ms}
        result = self._call("POST", f"/queues/{quote(queue_id, safe='')}/messages/pull", body).get("result")
        # The guide's example and the current reference: `result: {message_backlog_count, messages: [...]}`. An
        # earlier reference (and the SDKs generated from it) typed `result` as the array of messages itself: a
        # batch in that shape is taken too, not left to expire unacknowledged.
        messages = result.get("messages") if isinstance(result, dict) else result
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    def ack(self, queue_id: str, acks: Acks) -> Any:
        """POST .../queues/{id}/messages/ack with every lease of a batch, acknowledged or marked for retry."""
        return self._call("POST", f"/queues/{quote(queue_id, safe='')}/messages/ack", acks.body()).get("result")

    def queue_id(self, name_or_id: str) -> str:
        """The API addresses a queue by its id (32 hex digits); a name is looked up in GET .../queues."""
        if _QUEUE_ID.fullmatch(name_or_id):
            return name_or_id
        page = 1
        while True:
            payload = self._call("GET", "/queues" + (f"?page={page}" if page > 1 else ""))
            queues = payload.get("result") if isinstance(payload.get("result"), list) else []
            for q in queues:
                if isinstance(q, dict) and q.get("queue_name") == name_or_id and q.get("queue_id"):
                    return str(q["queue_id"])
            info = payload.get("result_info") if isinstance(payload.get("result_info"), dict) else {}
            if not queues or page >= int(info.get("total_pages") or 1):
                raise CloudflareError(f"no queue named {name_or_id!r} in account {self.account}")
            page += 1
