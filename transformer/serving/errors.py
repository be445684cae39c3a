"""The exceptions of the serving engine (transformer.serving.Engine)."""


class QueueFull(RuntimeError):
    """submit / embed refused at once: the engine's waiting queue holds max_queue requests
    (an HTTP server answers 429 Too Many Requests)."""


class EngineClosed(RuntimeError):
    """submit / embed after Engine.shutdown() (or while it runs): the engine admits nothing
    more (an HTTP server answers 503 Service Unavailable)."""


class RequestCancelled(Exception):
    """What a cancelled request's handle raises from result() / aresult(): handle.cancel(),
    the consumer abandoning its iteration, or Engine.shutdown() cancelling it."""


class _Abort(BaseException):
    """Raised by the proxy decoding inside a request's thread when the request was cancelled,
    so that the unchanged search (transformer.generation.generate) unwinds at its next call
    into the model. A BaseException so that no `except Exception` of the search swallows it."""
