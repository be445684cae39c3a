"""Errors of the HTTP routes, rendered in the shape of the API each route copies:

- OpenAI (/v1/...): {"error": {"message", "type", "param", "code"}} (the OpenAI API's error
  object; openai-python raises BadRequestError / AuthenticationError / NotFoundError /
  RateLimitError from the status);
- text-embeddings-inference (/embed, ...): {"error", "error_type"} with TEI's statuses
  (router/src/http/server.rs: validation 413, tokenizer 422, overloaded 429, backend 424,
  unhealthy 503, empty 400);
- LibreTranslate (/translate, /languages): {"error"} (400 bad input, 403 bad key, 429)."""
import json

OPENAI, TEI, LIBRETRANSLATE = "openai", "tei", "libretranslate"
_TEI_KIND = {400: "empty", 401: "unauthorized", 404: "validation", 413: "validation",
             415: "validation", 422: "tokenizer", 429: "overloaded", 503: "unhealthy"}
_OPENAI_TYPE = {401: ("invalid_request_error", "invalid_api_key"),
                404: ("invalid_request_error", "model_not_found"),
                429: ("requests", "rate_limit_exceeded"),
                500: ("server_error", None), 503: ("server_error", "service_unavailable")}


class ApiError(Exception):
    """An HTTP error answer: status (int), message (str), param (the request field it names,
    "a.b" for nested ones, or None), kind (TEI's error_type; default by status), code
    (OpenAI's code; default by status)."""

    def __init__(self, status, message, param=None, kind=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind, self.code = kind, code


def error_body(error, api):
    """(status, JSON bytes) of ApiError `error` in the shape of `api` (OPENAI, TEI or
    LIBRETRANSLATE). LibreTranslate's bad api_key is 403 (its status), 401 elsewhere."""
    status = error.status
    if api == OPENAI:
        kind, code = _OPENAI_TYPE.get(status, ("invalid_request_error", None))
        body = {"error": {"message": error.message, "type": kind, "param": error.param,
                          "code": error.code or code}}
    elif api == TEI:
        body = {"error": error.message, "error_type": error.kind or _TEI_KIND.get(status,
                                                                                "validation")}
    else:
        status = 403 if status == 401 else status
        body = {"error": error.message}
    return status, json.dumps(body).encode()
