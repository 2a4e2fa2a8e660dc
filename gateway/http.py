"""The aiohttp application: adapter routes plus /healthz, /readyz and /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from adapters.base import Handler

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
MetricsRender = Callable[[], Awaitable[tuple[bytes, str]]]


def build_app(
    routes: list[tuple[str, str, Handler]],
    *,
    readiness: ReadinessCheck,
    render_metrics: MetricsRender,
    max_body_bytes: int,
) -> web.Application:
    """Mount ops endpoints and every route adapters registered."""
    app = web.Application(client_max_size=max_body_bytes)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        body, content_type = await render_metrics()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return app
