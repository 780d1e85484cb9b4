"""The dashboard's Starlette app and its server: read-only routes over the cache, server-sent events that push each
open page's changes, a token check when it listens beyond loopback, and artifacts streamed through the server
from the caller's own credentials."""

from __future__ import annotations

import hmac
import json
import posixpath
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bucketrun.events.errors import NotFound

from . import assets, pages, views
from ..jobcache import Cache, CountingBucket

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


def build_app(bucket, refresh: float = 2.0, token: str | None = None, budget: float = 60.0):
    """The ASGI app over `bucket` (read with the caller's credentials; the wrapper refuses writes)."""
    counted = CountingBucket(bucket)
    cache = Cache(counted, refresh, budget)
    links = views.Links()

    def footer() -> dict:
        return {"bucket_url": counted.url, "bucket_calls": counted.calls, "per_minute": counted.per_minute()}

    def respond(page: views.Page, request: Request) -> HTMLResponse:
        live = "/live?" + urlencode({"path": request.url.path + (f"?{request.url.query}" if request.url.query
                                                                 else "")})
        html = pages.frame(page.title, page.main, links, live, **footer())
        return HTMLResponse(html, status_code=page.status)

    def jobs(request: Request) -> Response:
        return respond(views.jobs_page(cache, dict(request.query_params), links), request)

    def job(request: Request) -> Response:
        return respond(views.job_page(cache, request.path_params["job_id"], links), request)

    def hosts(request: Request) -> Response:
        return respond(views.hosts_page(cache, links), request)

    def artifact(request: Request) -> Response:
        job_id, n = request.path_params["job_id"], request.path_params["n"]
        key = views.artifact_key(cache, job_id, n)
        if key is None:
            return respond(views.not_found(f"job {job_id} has no artifact {n}"), request)
        try:
            data = counted.get(key).data
        except NotFound:
            return respond(views.not_found(f"artifact {key} is gone from the bucket"), request)

        def chunks():
            for i in range(0, len(data), CHUNK):
                yield data[i:i + CHUNK]

        return StreamingResponse(chunks(), media_type="application/octet-stream",
                                 headers={"Content-Disposition": f'attachment; filename="{views.download_name(key)}"',
                                          "Content-Length": str(len(data))})

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            data = assets.read(name)
        except KeyError:
            return respond(views.not_found(f"nothing at {request.url.path}"), request)
        return Response(data, media_type=assets.TYPES.get(posixpath.splitext(name)[1], "application/octet-stream"),
                        headers={"Cache-Control": "public, max-age=86400"})

    async def live(request: Request) -> Response:
        """Server-sent events for one open page: every `refresh` its <main> is rendered again from the cache (which
        decides what to read) and sent only when it changed; the footer's counts ride along."""
        target = urlsplit(request.query_params.get("path", "/"))
        query = dict(parse_qsl(target.query))

        async def stream():
            last, seq = None, 0
            while not await request.is_disconnected():
                page = await anyio.to_thread.run_sync(views.resolve, cache, target.path, query, links)
                payload: dict = {"calls": counted.calls, "per_minute": counted.per_minute(), "seq": seq}
                main = str(page.main)
                if main != last:
                    payload["main"], last, seq = main, main, seq + 1
                    payload["seq"] = seq
                yield f"event: page\ndata: {json.dumps(payload)}\n\n"
                await anyio.sleep(refresh)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def no_route(request: Request, exc: Exception) -> Response:  # Starlette's own 404: the page, no read
        return respond(views.not_found(f"nothing at {request.url.path}"), request)

    app = Starlette(routes=[Route("/", jobs), Route("/jobs/{job_id}", job),
                            Route("/jobs/{job_id}/artifacts/{n:int}", artifact), Route("/hosts", hosts),
                            Route("/static/{name:path}", static), Route("/live", live)],
                    exception_handlers={404: no_route})
    app.state.bucket, app.state.cache = counted, cache
    return TokenGate(app, token) if token else app


def serve(bucket, host: str, port: int, refresh: float, token: str | None, budget: float = 60.0) -> None:
    # open event streams end within a refresh of a disconnect; shutdown does not wait on them longer than this
    uvicorn.run(build_app(bucket, refresh, token, budget), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=2)
