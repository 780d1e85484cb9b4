"""A fake of Cloudflare Queues' HTTP pull-consumer API on loopback (stdlib http.server), written from the published
documentation, not from bucketrun's client: https://developers.cloudflare.com/queues/configuration/pull-consumers/
and the API reference for messages/pull, messages/ack and the queue list.

- POST /client/v4/accounts/{a}/queues/{id}/messages/pull {"batch_size", "visibility_timeout_ms"} (defaults 5 and
  30 s; batch_size at most 100) leases up to batch_size visible messages, each with a fresh lease_id, attempts + 1.
- POST .../messages/ack {"acks": [{"lease_id"}], "retries": [{"lease_id", "delay_seconds"}]}: an ack deletes the
  message (any lease it was ever given is accepted, as the guide says), a retry makes it visible again after
  delay_seconds. A lease not acknowledged within its visibility timeout expires: the message is delivered again.
  After max_retries (3) deliveries that ended in a retry or an expiry, a message is dropped (counted in `dead`).
- GET /client/v4/accounts/{a}/queues: the queues, paged like the API ({"result": [...], "result_info"}).
- Bearer tokens: each token has a set of permissions; pull and ack need "queues_write", the list "queues_read".
  A token without it gets 403 with {"success": false, "errors": [{"code": 10000, "message": "Authentication
  error"}]}; no Authorization header, 400 with code 6003.
- A pull's `result` is `{"message_backlog_count", "messages": [...]}` as the guide shows it, or (`result_as_list`)
  the bare array of messages an earlier API reference typed it as.
- Bodies are stored as a producer sends them and served as the guide says: `json` and `bytes` base64-encoded,
  `text` as is, with metadata {"CF-Content-Type": ..., "CF-sourceMessageSource": ...}.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_BATCH, MAX_BATCH = 5, 100
DEFAULT_VISIBILITY_MS, MAX_VISIBILITY_MS = 30_000, 12 * 3600 * 1000


@dataclass
class Message:
    id: str
    body: str  # as served: base64 for json and bytes
    content_type: str
    timestamp_ms: int
    attempts: int = 0
    visible_at: float = 0.0
    lease_id: str | None = None
    lease_expires: float = 0.0
    leases: set[str] = field(default_factory=set)


@dataclass
class Queue:
    id: str
    name: str
    messages: list[Message] = field(default_factory=list)
    dead: list[Message] = field(default_factory=list)


class FakeQueues:
    def __init__(self, account: str, tokens: dict[str, set[str]], max_retries: int = 3):
        self.account = account
        self.tokens = tokens
        self.max_retries = max_retries
        self.queues: dict[str, Queue] = {}
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # method, path, body, authorization
        self.served: list[tuple[str, int]] = []  # (message id, attempts) of every delivery
        self.fail_next: list[int] = []  # statuses to answer the next pulls/acks with (e.g. 503), one each
        self.drop_acks = False  # answer acks with 500 and forget them: the consumer never gets one through
        self.result_as_list = False  # serve a pull's `result` as the bare array an earlier API reference typed
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}/client/v4"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- the test's side ---------------------------------------------------------------------------------------

    def create_queue(self, name: str) -> str:
        qid = uuid.uuid4().hex
        self.queues[qid] = Queue(qid, name)
        return qid

    def send(self, queue_id: str, body: Any, content_type: str = "json") -> str:
        """What a producer (R2's notifications: json) puts in the queue."""
        if content_type == "json":
            served = base64.b64encode(json.dumps(body).encode()).decode()
        elif content_type == "bytes":
            served = base64.b64encode(body).decode()
        else:
            served = body
        msg = Message(uuid.uuid4().hex, served, content_type, int(time.time() * 1000))
        with self.lock:
            self.queues[queue_id].messages.append(msg)
        return msg.id

    def held(self, queue_id: str) -> list[Message]:
        """Messages still in the queue (visible, leased or waiting out a retry delay)."""
        with self.lock:
            self._expire(self.queues[queue_id], time.monotonic())
            return list(self.queues[queue_id].messages)

    def calls(self, action: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith(action)]

    # --- the API -------------------------------------------------------------------------------------------------

    def _expire(self, q: Queue, now: float) -> None:
        """Leases past their visibility timeout end: the message is visible again, or dropped after max_retries."""
        for msg in list(q.messages):
            if msg.lease_id is not None and now >= msg.lease_expires:
                msg.lease_id = None
                self._requeue(q, msg, now)

    def _requeue(self, q: Queue, msg: Message, visible_at: float) -> None:
        if msg.attempts >= self.max_retries:
            q.messages.remove(msg)
            q.dead.append(msg)
        else:
            msg.visible_at = visible_at

    def _pull(self, q: Queue, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        batch = body.get("batch_size", DEFAULT_BATCH)
        vt = body.get("visibility_timeout_ms", DEFAULT_VISIBILITY_MS)
        if not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH or not isinstance(vt, (int, float)) \
                or not 0 < vt <= MAX_VISIBILITY_MS:
            return 400, _error(10021, "Invalid batch_size or visibility_timeout_ms")
        now = time.monotonic()
        out = []
        self._expire(q, now)
        for msg in q.messages:
            if len(out) == batch:
                break
            if msg.lease_id is None and msg.visible_at <= now:
                msg.attempts += 1
                msg.lease_id = secrets.token_urlsafe(24)
                msg.leases.add(msg.lease_id)
                msg.lease_expires = now + vt / 1000
                self.served.append((msg.id, msg.attempts))
                out.append({"body": msg.body, "id": msg.id, "timestamp_ms": msg.timestamp_ms,
                            "attempts": msg.attempts, "lease_id": msg.lease_id,
                            "metadata": {"CF-sourceMessageSource": "r2", "CF-Content-Type": msg.content_type}})
        backlog = len(q.messages)
        result: Any = out if self.result_as_list else {"message_backlog_count": backlog, "messages": out}
        return 200, {"success": True, "errors": [], "messages": [], "result": result}

    def _ack(self, q: Queue, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        acks, retries = body.get("acks") or [], body.get("retries") or []
        if not isinstance(acks, list) or not isinstance(retries, list):
            return 400, _error(10021, "acks and retries must be arrays")
        now = time.monotonic()
        by_lease = {lease: m for m in q.messages for lease in m.leases}
        ack_count = retry_count = 0
        for a in acks:
            msg = by_lease.get(a.get("lease_id") if isinstance(a, dict) else None)
            if msg is not None and msg in q.messages:
                q.messages.remove(msg)
                ack_count += 1
        for r in retries:
            msg = by_lease.get(r.get("lease_id") if isinstance(r, dict) else None)
            if msg is not None and msg in q.messages and msg.lease_id is not None:
                msg.lease_id = None
                delay = r.get("delay_seconds") or 0
                self._requeue(q, msg, now + float(delay))
                retry_count += 1
        return 200, {"success": True, "errors": [], "messages": [],
                     "result": {"ackCount": ack_count, "retryCount": retry_count, "warnings": []}}

    def _list(self, query: str) -> tuple[int, dict[str, Any]]:
        page = int((re.search(r"page=(\d+)", query) or [None, "1"])[1])
        per_page = 2  # small, so a client that ignores result_info misses queues
        rows = [{"queue_id": q.id, "queue_name": q.name, "created_on": "2026-01-01T00:00:00Z",
                 "consumers": [{"type": "http_pull"}], "consumers_total_count": 1} for q in self.queues.values()]
        chunk = rows[(page - 1) * per_page: page * per_page]
        return 200, {"success": True, "errors": [], "messages": [], "result": chunk,
                     "result_info": {"page": page, "per_page": per_page, "count": len(chunk),
                                     "total_count": len(rows), "total_pages": max(1, -(-len(rows) // per_page))}}

    def answer(self, method: str, path: str, query: str, auth: str | None, raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return 400, _error(10026, "Invalid JSON body")
        self.requests.append({"method": method, "path": path, "body": body, "authorization": auth})
        if not auth or not auth.startswith("Bearer "):
            return 400, _error(6003, "Invalid request headers")
        perms = self.tokens.get(auth[len("Bearer "):])
        m = re.fullmatch(rf"/client/v4/accounts/{re.escape(self.account)}/queues(?:/([0-9a-f]{{32}})/messages/"
                         r"(pull|ack))?", path)
        if m is None:
            return 404, _error(7003, "Could not route to " + path + ", perhaps your object identifier is invalid?")
        need = "queues_read" if m[2] is None else "queues_write"
        if perms is None or need not in perms:
            return 403, _error(10000, "Authentication error")
        with self.lock:
            if m[2] is None:
                return self._list(query) if method == "GET" else (405, _error(10000, "Method not allowed"))
            if self.fail_next:
                return self.fail_next.pop(0), _error(10001, "Internal error")
            q = self.queues.get(m[1])
            if q is None:
                return 404, _error(11000, "Queue does not exist")
            if m[2] == "pull":
                return self._pull(q, body)
            if self.drop_acks:
                return 500, _error(10001, "Internal error")
            return self._ack(q, body)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.partition("?")
                status, payload = fake.answer(self.command, path, query, self.headers.get("Authorization"), raw)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args) -> None:
                pass

        return Handler


def _error(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}


def r2_notification(key: str, bucket: str = "local", action: str = "PutObject", size: int = 100,
                    etag: str = "0f343b0931126a20f133d67c2b018a3b", account: str = "acct") -> dict[str, Any]:
    """The body R2 sends for an event, as in https://developers.cloudflare.com/r2/buckets/event-notifications/."""
    obj: dict[str, Any] = {"key": key}
    if action != "DeleteObject":
        obj.update(size=size, eTag=etag)
    return {"account": account, "action": action, "bucket": bucket, "object": obj,
            "eventTime": "2026-12-07T21:00:00.000Z"}
