"""The ASGI application (Starlette): the routes of every API on one served model, /health,
/info, /metrics, the page at /, and the request latency of every answer."""
import importlib.resources
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import openai_api, tei_api, translate_api
from .metrics import Metrics

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8")}


def create_app(served, api_key=None, max_body_bytes=8 << 20):
    """The Starlette application serving `served` (transformer.server.served.Served).

    api_key: required on every API route when not None (Authorization: Bearer KEY;
    LibreTranslate's api_key field); /health, /metrics and the page stay open. max_body_bytes:
    larger bodies get 413. app.state.draining (set on SIGTERM by transformer.server.run) makes
    /health answer 503, so a load balancer stops sending requests."""
    metrics = Metrics(served.engine)

    async def prometheus(request):
        body, kind = metrics.render()
        return Response(body, media_type=kind)

    routes = openai_api.routes() + tei_api.routes() + translate_api.routes() + [
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ] + [Route(path, page, methods=["GET"]) for path in STATIC]
    app = Starlette(routes=routes)
    app.state.served, app.state.api_key = served, api_key
    app.state.max_body_bytes, app.state.draining = max_body_bytes, False
    known = {r.path for r in routes}
    return LatencyMiddleware(app, metrics, known)


async def health(request):
    if request.app.state.draining or request.app.state.served.engine.closed:
        return JSONResponse({"status": "draining"}, 503)
    return JSONResponse({"status": "ok"})


async def info(request):
    """What the page needs (TEI's /info, in part): the model's id, kind, input limit,
    whether it has a chat template, its languages."""
    s = request.app.state.served
    return JSONResponse({"model_id": s.name, "model_type": s.kind,
                         "max_input_length": s.max_input_tokens,
                         "chat_template": s.chat_template is not None,
                         "source_lang": s.source_lang, "target_lang": s.target_lang,
                         "api_key_required": request.app.state.api_key is not None})


async def page(request):
    name, kind = STATIC[request.url.path]
    text = importlib.resources.files(__package__).joinpath("static", name).read_bytes()
    return Response(text, media_type=kind)


class LatencyMiddleware:
    """Pure ASGI middleware: observes each HTTP request's duration (first byte in to the last
    byte out) in the request latency histogram, labelled by route (unknown paths as "other")
    and status. Also forwards attribute access to the app (app.state)."""

    def __init__(self, app, metrics, known):
        self.app, self.metrics, self.known = app, metrics, known

    @property
    def state(self):
        return self.app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"] if scope["path"] in self.known else "other"
            self.metrics.latency.labels(path, str(status[0])).observe(
                time.perf_counter() - start)
