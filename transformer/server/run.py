"""`transformer serve`: load the model, start its engine, serve the app with uvicorn; SIGTERM or
SIGINT stops admitting (the listening socket closes, /health answers 503), lets running
requests finish within --shutdown-timeout, then shuts the engine down and returns 0."""
import contextlib
import os
import signal
import socket
import sys
import threading

import uvicorn

import transformer
from ..serving import Engine
from .app import create_app
from .served import Served


def serve(args):
    """Serve the parsed `transformer serve` arguments; returns 0 after a drain. SystemExit
    for a model that cannot be loaded or an address that cannot be bound."""
    try:
        model = transformer.load(args.model, device=args.device, dtype=args.dtype,
                                 threads=args.threads,
                                 **({"tokenizer": args.tokenizer} if args.tokenizer else {}))
    except RuntimeError as e:
        raise SystemExit(f"error: {e}")
    engine = Engine(model, max_queue=args.max_queue, kv_budget_tokens=args.kv_budget_tokens,
                    max_batch_tokens=args.max_batch_tokens,
                    max_prefill_tokens=args.max_prefill_tokens)
    served = Served(model, engine, args.model, args.served_model_name, args.max_input_tokens,
                    args.max_batch_inputs, args.source_lang, args.target_lang, args.num_beams)
    api_key = args.api_key or os.environ.get("TRANSFORMER_API_KEY") or None
    app = create_app(served, api_key=api_key, max_body_bytes=args.max_body_bytes)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # no Nagle on the connections accepted from it (Linux: they inherit it): an answer's
    # headers and body, written apart, would otherwise wait for a keep-alive client's delayed
    # ACK (40 ms a request)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        engine.shutdown()
        raise SystemExit(f"error: cannot listen on {args.host}:{args.port}: {e}")
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=args.shutdown_timeout)
    server = _Server(config, app.state)
    print(f"transformer serve: {served.name} ({served.kind}) on http://{args.host}:{port}",
          file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        engine.shutdown(timeout=0)  # what the graceful shutdown left running is cancelled
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handling: SIGTERM / SIGINT mark the app draining and
    start uvicorn's graceful shutdown (a second SIGINT forces it), and the process then exits
    0 (uvicorn's own handler re-raises the signal after shutting down, which would end the
    process with the signal's status)."""

    def __init__(self, config, state):
        super().__init__(config)
        self.app_state = state

    def handle_exit(self, sig, frame):
        self.app_state.draining = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit)
                     for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)
