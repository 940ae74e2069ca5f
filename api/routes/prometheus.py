"""GET /metrics: the API's own counters and the Redis backlog, in Prometheus' text format.

`install(app, settings)` adds the route and a plain ASGI middleware counting requests by
route template and status class (cheaper than BaseHTTPMiddleware on the POST path).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from downloader.config.settings import Settings
from downloader.observability import metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: API counters and the backlog per aggregation",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def prometheus_metrics(request: Request) -> Response:
    await metrics.BACKLOG.refresh_async(request.app.state.store)
    await metrics.HOSTS.refresh_async(request.app.state.store)
    body, content_type = metrics.exposition()
    return Response(content=body, media_type=content_type)


class RequestMetrics:
    """Counts every HTTP request once it is answered (or failed: then as a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            # The router leaves the matched route in the scope: its template keeps the label
            # bounded (never the path itself, which holds job ids).
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.request_done(route, scope["method"], status, time.perf_counter() - started)


def install(app: FastAPI, settings: Settings) -> None:
    metrics.configure(settings)
    app.include_router(router)
    app.add_middleware(RequestMetrics)
