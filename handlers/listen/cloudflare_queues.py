"""Cloudflare Queues' HTTP pull-consumer API, the three calls `bucketrun listen r2-queue` makes: pull a batch
under a visibility timeout, acknowledge and retry by lease id, and find a queue's id from its name.

Made through the official `cloudflare` SDK, as issue 22 asks of a client when the SDK fits the pins, which 5.x
does (its httpx, anyio, pydantic and typing-extensions are the ones in constraints.txt; distro and sniffio are
pinned there too). It comes in an extra of its own, `pip install 'bucketrun[r2]'` (and with `dev`), so neither
the core install nor the Lambda package carries its 39 MB and its httpx stack for one daemon's three calls; the
module is imported inside QueuesClient only, and `bucketrun listen r2-queue` without it says which line to run.

Around the SDK, this module keeps what the consumer relies on: one request per call (`max_retries=0`: the
consumer loop backs off itself, honouring Retry-After), the SDK's errors mapped onto three of ours (classify),
and the shapes the API reference has had over time. Pull sends the timeout under both names it has been
documented with (`visibility_timeout_ms` in the API reference and the SDK, `visibility_timeout` in the
pull-consumer guide's examples), with one value, and its answer is read from the raw JSON envelope, so a
`result` that is the bare array of messages (the shape an earlier reference typed) is taken, not left to expire
unacknowledged. Wire format as documented at https://developers.cloudflare.com/queues/configuration/pull-consumers/
and the API reference (https://developers.cloudflare.com/api/resources/queues/subresources/messages/methods/pull/
and .../ack/). The API token is sent only in the Authorization header: it is never logged (the SDK logs request
options, never its auth headers; httpx logs URLs), shown in a repr or put in an error.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
#: What `listen r2-queue` says, in one line, when the SDK is not installed.
NEEDS_EXTRA = "listen r2-queue needs the r2 extra (the cloudflare SDK): pip install 'bucketrun[r2]'"
# The SDK and the modules it brings that the core install lacks: any of them missing means the extra is.
_SDK_MODULES = {"cloudflare", "httpx", "httpcore", "h11", "anyio", "sniffio", "distro"}


class CloudflareError(Exception):
    """Cloudflare answered with an error that trying again will not cure (a 4xx other than 429)."""


class CloudflareAuthError(CloudflareError):
    """The token was refused: missing, invalid, or without the permission the call needs."""


class SdkMissing(ImportError):
    """The `cloudflare` SDK (the r2 extra) is not installed; the text is the one line to show."""


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
    """The pull-consumer calls for one account, through the `cloudflare` SDK. Each call makes one request; the
    caller decides about retrying (`CloudflareUnavailable`) and stopping (`CloudflareError`,
    `CloudflareAuthError`). Raises SdkMissing when the r2 extra is not installed."""

    def __init__(self, account: str, token: str, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 30.0):
        cloudflare = self.load_sdk()
        self.account = account
        self.base_url = base_url.rstrip("/")
        self._status_error = cloudflare.APIStatusError
        self._no_answer = cloudflare.APIConnectionError  # APITimeoutError is one too
        # max_retries=0: one request per call, the consumer loop does its own backoff on CloudflareUnavailable.
        self._cf = cloudflare.Cloudflare(api_token=token, base_url=self.base_url, max_retries=0,
                                         timeout=cloudflare.Timeout(timeout_s, connect=10.0))
        # The SDK also reads CLOUDFLARE_API_KEY / CLOUDFLARE_EMAIL / CLOUDFLARE_API_USER_SERVICE_KEY from the
        # environment and prefers them to the token: an account's global key exported for another tool would be
        # sent instead. This daemon authenticates with its API token only.
        self._cf.api_key = self._cf.api_email = self._cf.user_service_key = None

    @staticmethod
    def load_sdk() -> Any:
        """The `cloudflare` module, or SdkMissing naming the pip line."""
        try:
            # function-local: keeps the SDK (and its httpx stack) out of the CLI's dispatch path and the Lambda's,
            # and lets a missing r2 extra be reported as one line instead of an ImportError at module load
            import cloudflare
        except ImportError as exc:
            if (exc.name or "").split(".")[0] in _SDK_MODULES:
                raise SdkMissing(NEEDS_EXTRA, name=exc.name) from None
            raise
        return cloudflare

    def __repr__(self) -> str:  # the token stays out of every repr
        return f"QueuesClient(account={self.account!r}, base_url={self.base_url!r})"

    def _call(self, what: str, send: Callable[[], Any]) -> tuple[Any, Any]:
        """One SDK call made `with_raw_response`: (the raw response, its JSON envelope `{success, errors, result
        ...}`) of a successful answer, checked as `classify` says (the typed return would drop the envelope)."""
        try:
            raw = send()
        except self._status_error as exc:  # 4xx/5xx: the text names the call and Cloudflare's codes, no token
            status, payload, headers = exc.status_code, exc.body, exc.response.headers
        except self._no_answer as exc:
            raise CloudflareUnavailable(f"{what}: {type(exc).__name__}") from None
        else:
            status, headers = raw.status_code, raw.headers
            try:
                payload = raw.json()
            except ValueError:
                payload = None
        verdict = classify(status, payload)
        if verdict == "ok":
            return raw, payload
        text = f"{what}: HTTP {status}: {describe_errors(payload)}"
        if verdict == "auth":
            raise CloudflareAuthError(text)
        if verdict == "retry":
            raise CloudflareUnavailable(text, parse_retry_after(headers.get("Retry-After")))
        raise CloudflareError(text)

    def pull(self, queue_id: str, batch_size: int, visibility_timeout_ms: int) -> list[dict[str, Any]]:
        """POST .../queues/{id}/messages/pull: up to `batch_size` messages, each leased for the timeout. The API
        reference (and the SDK) name the timeout `visibility_timeout_ms`; the pull-consumer guide's examples (and
        Cloudflare's changelog) send `visibility_timeout`, in milliseconds too: both are sent, with one value."""
        messages = self._cf.queues.messages.with_raw_response
        _, payload = self._call(f"POST /queues/{queue_id}/messages/pull", lambda: messages.pull(
            queue_id, account_id=self.account, batch_size=batch_size, visibility_timeout_ms=visibility_timeout_ms,
            extra_body={"visibility_timeout": visibility_timeout_ms}))
        result = payload.get("result")
        # The guide's example and the current reference: `result: {message_backlog_count, messages: [...]}`. An
        # earlier reference (and the SDKs generated from it) typed `result` as the array of messages itself, which
        # the SDK's current model cannot hold: read from the envelope, a batch in that shape is taken too. Each
        # message stays the dict of the wire format (id, body, metadata, lease_id, attempts...) decode_body reads.
        messages = result.get("messages") if isinstance(result, dict) else result
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    def ack(self, queue_id: str, acks: Acks) -> Any:
        """POST .../queues/{id}/messages/ack with every lease of a batch, acknowledged or marked for retry."""
        body = acks.body()
        messages = self._cf.queues.messages.with_raw_response
        raw, _ = self._call(f"POST /queues/{queue_id}/messages/ack", lambda: messages.ack(
            queue_id, account_id=self.account, acks=body["acks"], retries=body["retries"]))
        return raw.parse()  # the SDK's MessageAckResponse (ackCount, retryCount, warnings), or None

    def queue_id(self, name_or_id: str) -> str:
        """The API addresses a queue by its id (32 hex digits); a name is looked up in GET .../queues. The SDK
        types that list as a single page, but the API pages it: `result_info.total_pages` (kept among the page
        model's extra fields) is followed, asking for `?page=N`."""
        if _QUEUE_ID.fullmatch(name_or_id):
            return name_or_id
        page = 1
        while True:
            listed = self._list_page(page)
            queues = list(listed.result or [])
            for q in queues:
                if q.queue_name == name_or_id and q.queue_id:
                    return str(q.queue_id)
            info = (listed.model_extra or {}).get("result_info")
            info = info if isinstance(info, dict) else {}
            if not queues or page >= int(info.get("total_pages") or 1):
                raise CloudflareError(f"no queue named {name_or_id!r} in account {self.account}")
            page += 1

    def _list_page(self, page: int) -> Any:
        """One page of GET .../queues, as the SDK's SyncSinglePage[Queue]."""
        query = {"page": page} if page > 1 else None
        raw, _ = self._call("GET /queues" + (f"?page={page}" if query else ""),
                            lambda: self._cf.queues.with_raw_response.list(account_id=self.account, extra_query=query))
        return raw.parse()
