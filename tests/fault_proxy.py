"""A fault-injecting HTTP proxy in front of the test S3 server: a given share of requests get 503 SlowDown
(never forwarded) or a dropped connection (forwarded, so the write may have landed, but no answer), as a
congested S3 or a flaky network would. Everything else is forwarded unchanged."""

from __future__ import annotations

import http.client
import http.server
import random
import threading
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, fault_rate: float = 0.05, seed: int = 7, even: bool = False):
        """even: exactly one fault in each run of 1/fault_rate requests, at a random place, the kinds taking
        turns, so a test's count of each kind follows from its request count instead of luck."""
        self.upstream = urlsplit(upstream)
        self.rate, self.rng, self.lock = fault_rate, random.Random(seed), threading.Lock()
        self.even, self.seen, self.period = even, 0, max(1, round(1 / fault_rate)) if fault_rate else 0
        self.slot = self.rng.randrange(self.period) if even and self.period else -1
        self.counts = {"forwarded": 0, "slow_down": 0, "dropped": 0}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = outer._fault()
                if fault == "slow_down":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(outer.upstream.hostname, outer.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "dropped":  # the upstream acted on it; the client never hears back
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                # A HEAD answer has no body but states the object's length: pass the upstream's on, never 0
                # (a HEAD read through this proxy once said every part was empty, and the finalizer believed it).
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length if length is not None else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _fault(self) -> str | None:
        with self.lock:
            if self.even:
                return self._even_fault()
            r = self.rng.random()
            kind = None if r >= self.rate else ("slow_down" if r < self.rate / 2 else "dropped")
            self.counts[kind or "forwarded"] += 1
            return kind

    def _even_fault(self) -> str | None:
        """Under the lock: request number `seen` within its block of `period` is faulted iff it is the slot."""
        block, at = divmod(self.seen, self.period) if self.period else (0, -1)
        self.seen += 1
        kind = ("slow_down" if block % 2 == 0 else "dropped") if at == self.slot else None
        if self.period and at == self.period - 1:
            self.slot = self.rng.randrange(self.period)
        self.counts[kind or "forwarded"] += 1
        return kind

    def __enter__(self) -> "FaultProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
