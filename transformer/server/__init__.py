"""`transformer serve`: an HTTP server on the serving engine (transformer.serving.Engine) that
speaks the APIs existing clients use: OpenAI's (/v1/embeddings, /v1/completions,
/v1/chat/completions, /v1/models), Hugging Face text-embeddings-inference's (/embed,
/embed_all, /tokenize, /decode), LibreTranslate's (/translate, /languages), plus /health,
/metrics (Prometheus) and / (a page to try the model). docs/SERVER.md has the routes.

    transformer serve --model DIR --port 8000

The engine knows nothing of HTTP; this package only translates each API's fields into engine
requests and back, with that API's errors (served.py: the loaded model and its text helpers;
the *_api.py modules: one API each; app.py: the ASGI application; run.py: uvicorn and signals).
Its third-party packages (Starlette, uvicorn, prometheus_client, jinja2, pydantic) come with the
`server` extra (`pip install "transformer[server]"`) and are imported only when serving, so that
this package itself (and the CLI's parser, which reads options.py) imports without them."""
from .options import MISSING_HINT, add_arguments, missing_packages

__all__ = ["add_arguments", "missing_packages", "MISSING_HINT", "serve", "create_app"]


def serve(args):
    """Run the server of the parsed `transformer serve` arguments until SIGTERM / SIGINT;
    returns the exit status (0 after a drain). Raises SystemExit naming the `server` extra when
    its packages are missing."""
    missing = missing_packages()
    if missing:
        raise SystemExit(f"error: `transformer serve` needs the server extra ({MISSING_HINT}); "
                         f"missing: {', '.join(missing)}")
    from .run import serve as _serve
    return _serve(args)


def create_app(served, **kwargs):
    """The ASGI application serving `served` (a transformer.server.served.Served); see
    transformer.server.app.create_app."""
    from .app import create_app as _create
    return _create(served, **kwargs)
