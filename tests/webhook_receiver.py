"""A webhook receiver on loopback: the user's side of a notice, real HTTP, scripted answers."""

from __future__ import annotations

import http.server
import threading


class Receiver:
    """An HTTP endpoint that records every POST and answers with scripted status codes (then 200); a script
    item may be (status, {header: value}) to send headers too."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[int | tuple[int, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                item = outer.script.pop(0) if outer.script else 200
                status, headers = item if isinstance(item, tuple) else (item, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/bucketrun?team=a"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
