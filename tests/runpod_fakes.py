"""A scripted stand-in for Runpod's HTTP API, used only where the SDK's local server cannot answer:
throttling and server errors, refused keys, and /cancel. It records every request it receives."""

from __future__ import annotations

import http.server
import json
import threading


class ScriptedRunpod:
    def __init__(self, script: list[tuple[int, dict]] | None = None):
        self.script = list(script or [])
        self.requests: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                outer.requests.append((method, self.path, body))
                code, payload = outer.script.pop(0) if outer.script else (200, {"id": "rp-default", "status": "IN_QUEUE"})
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                self._answer("POST")

            def do_GET(self):
                self._answer("GET")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/ep123"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.requests if method is None or m == method]
