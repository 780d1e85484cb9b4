"""The dashboard's Starlette app and its server: read-only routes over the cache, a token check when it listens
beyond loopback, and artifacts streamed through the server from the caller's own credentials."""

from __future__ import annotations

import hmac
import json
import posixpath
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bucketrun.events import codec, keys
from bucketrun.events.errors import CorruptObject, NotFound
from bucketrun.events.lifecycle import JobState
from bucketrun.events.status import WAITING, waiting_in_inbox

from .. import client
from ..cli.logs import summary
from . import pages
from .data import Cache, CountingBucket, percent

COOKIE = "bucketrun_ui_token"
CHUNK = 1 << 20


class TokenGate:
    """ASGI middleware: without the token (?token=, a Bearer header, or the cookie set by the first ?token=) a
    request is 401. The token is compared in constant time."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token

    def _ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        query = request.query_params.get("token")
        if self._ok(bearer) or self._ok(request.cookies.get(COOKIE)):
            return await self.app(scope, receive, send)
        if not self._ok(query):
            return await PlainTextResponse("401: this dashboard needs its token (?token= or "
                                           "Authorization: Bearer)\n", status_code=401)(scope, receive, send)

        async def remember(message) -> None:  # the browser keeps the token, so links need not carry it
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, receive, remember)


def build_app(bucket, refresh: float = 2.0, token: str | None = None):
    """The ASGI app over `bucket` (read with the caller's credentials; the wrapper refuses writes)."""
    counted = CountingBucket(bucket)
    cache = Cache(counted, refresh)

    def page(name: str, status_code: int = 200, **context) -> HTMLResponse:
        html = pages.render(name, bucket_url=counted.url, bucket_calls=counted.calls, **context)
        return HTMLResponse(html, status_code=status_code)

    def not_found(what: str) -> HTMLResponse:
        return page("not_found", 404, what=what)

    def jobs(request: Request) -> Response:
        q = request.query_params.get("q", "").strip()
        state, kind = request.query_params.get("state") or None, request.query_params.get("kind") or None
        rows = cache.rows()
        states = sorted({s.value for s in JobState} | {WAITING})
        kinds = sorted({r["kind"] for r in rows if r["kind"] != "-"})
        shown = [r for r in rows if (state is None or r["state"] == state) and (kind is None or r["kind"] == kind)
                 and (not q or (r["job_id"] or "").startswith(q))]

        def link(**change: Any) -> str:
            params = {"q": q, "state": state, "kind": kind, **change}
            return "/?" + urlencode({k: v for k, v in params.items() if v})

        return page("jobs", rows=shown, q=q, state=state, kind=kind, states=states, kinds=kinds, link=link)

    def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not keys.is_job_id(job_id):  # never a read of a key made from an arbitrary path
            return not_found("not a job id")
        entry = cache.job(job_id)
        if entry is None:
            inbox = waiting_in_inbox(counted, job_id)
            if inbox is None:
                return not_found(f"no job {job_id} in this bucket")
            status = {"state": WAITING, "attempt": 0, "progress": None, "artifacts": [], "error": None,
                      "note": f"waiting in the inbox ({inbox}); no dispatcher has taken it in yet"}
            manifest = _manifest(counted, inbox)
            kind = str((json.loads(manifest) if manifest else {}).get("kind") or "-")
            return page("job", job_id=job_id, kind=kind, source=inbox, status=status, percent=None, timeline=[],
                        summary=summary, manifest=manifest)
        if entry.get("corrupt"):
            return page("job", job_id=job_id, kind="-", source="-", status={**entry["status"],
                        "note": entry["corrupt"]}, percent=None, timeline=[], summary=summary, manifest=None)
        if "manifest" not in entry:  # a job's manifest never changes: read once
            entry["manifest"] = _manifest(counted, keys.manifest_key(job_id))
        history = list(entry["view"].history)
        return page("job", job_id=job_id, kind=entry["kind"], source=entry["source"], status=entry["status"],
                    percent=percent(entry["status"]), timeline=list(zip(history, client.state_durations(history))),
                    summary=summary, manifest=entry["manifest"])

    def artifact(request: Request) -> Response:
        job_id, n = request.path_params["job_id"], request.path_params["n"]
        if not keys.is_job_id(job_id):
            return not_found("not a job id")
        entry = cache.job(job_id)
        arts = entry["status"]["artifacts"] if entry else []
        if not 0 <= n < len(arts):
            return not_found(f"job {job_id} has no artifact {n}")
        key = arts[n]["key"]
        try:
            data = counted.get(key).data
        except NotFound:
            return not_found(f"artifact {key} is gone from the bucket")
        name = posixpath.basename(key).replace('"', "").replace("\\", "") or "artifact"

        def chunks():
            for i in range(0, len(data), CHUNK):
                yield data[i:i + CHUNK]

        return StreamingResponse(chunks(), media_type="application/octet-stream",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"',
                                          "Content-Length": str(len(data))})

    def hosts(request: Request) -> Response:
        return page("hosts", hosts=cache.hosts())

    async def no_route(request: Request, exc: Exception) -> Response:  # Starlette's own 404: the page, no read
        return not_found(f"nothing at {request.url.path}")

    app = Starlette(routes=[Route("/", jobs), Route("/jobs/{job_id}", job),
                            Route("/jobs/{job_id}/artifacts/{n:int}", artifact), Route("/hosts", hosts)],
                    exception_handlers={404: no_route})
    app.state.bucket = counted
    return TokenGate(app, token) if token else app


def _manifest(bucket, key: str) -> str | None:
    """The manifest as indented JSON (escaped by the template like every other value), or None if unreadable."""
    try:
        manifest = codec.loads(bucket.get(key).data)
    except (NotFound, CorruptObject, ValueError):
        return None
    return json.dumps(manifest, indent=2, sort_keys=True) if isinstance(manifest, dict) else None


def serve(bucket, host: str, port: int, refresh: float, token: str | None) -> None:
    uvicorn.run(build_app(bucket, refresh, token), host=host, port=port, log_level="warning")
