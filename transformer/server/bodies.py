"""What every route does around its own work: the API key, reading and validating the body
(size, JSON or a form, pydantic models), and turning every failure into that API's error shape
(transformer/server/errors.py), never a 500 for bad input."""
import functools
import hmac
import json
import logging
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from ..serving import EngineClosed, QueueFull
from .errors import OPENAI, TEI, ApiError, error_body

log = logging.getLogger("transformer.server")


def route(api):
    """Decorator of an `async def handler(request)`: its ApiError, the engine's QueueFull (429)
    and EngineClosed (503), and ValueError / TypeError / IndexError from the model's own checks
    (400; TEI 422) answered in the shape of `api`; anything else is logged and answered 500 in
    that shape (a bug, but the worker keeps serving)."""
    def wrap(handler):
        @functools.wraps(handler)
        async def run(request):
            try:
                return await handler(request)
            except ApiError as e:
                return error_response(e, api)
            except QueueFull as e:
                return error_response(ApiError(429, f"Model is overloaded: {e}"), api)
            except EngineClosed as e:
                return error_response(ApiError(503, f"the server is shutting down: {e}"), api)
            except (ValueError, TypeError, IndexError) as e:
                return error_response(ApiError(422 if api == TEI else 400, str(e),
                                               kind="validation"), api)
            except Exception as e:  # noqa: BLE001 - a bug: answered, logged, worker alive
                log.exception("error in %s", request.url.path)
                return error_response(ApiError(500, f"internal error: {type(e).__name__}"),
                                      api)
        return run
    return wrap


def error_response(error, api):
    """The HTTP response of ApiError `error` in the error shape of `api` (errors.error_body:
    OpenAI's {"error": {...}}, TEI's {"error", "error_type"}, LibreTranslate's {"error"}), with
    the error's status."""
    status, body = error_body(error, api)
    return Response(body, status, media_type="application/json")


def json_response(value, status=200):
    """A JSON response of `value` (plain dicts, lists, str and numbers; Starlette's
    JSONResponse) with HTTP `status`."""
    return JSONResponse(value, status)


def check_key(request, given=None):
    """ApiError 401 unless the server has no key or the request gives it: `Authorization:
    Bearer KEY` or `given` (LibreTranslate's api_key field)."""
    key = request.app.state.api_key
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else given
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), key.encode()):
        raise ApiError(401, "Incorrect API key provided" if token else
                       "You didn't provide an API key (Authorization: Bearer KEY)",
                       "api_key" if given is not None else None)


async def read_body(request, api, model, form=False):
    """The request's body validated by the pydantic `model`: JSON (an object), or with `form`
    also application/x-www-form-urlencoded (LibreTranslate's clients; values then coerced
    from strings). ApiError 413 beyond the server's max_body_bytes, 400 for malformed JSON
    or a body that is not an object, 400 (TEI 422) naming the first bad field."""
    limit = request.app.state.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body has {length} bytes, more than the server's "
                       f"limit of {limit} (--max-body-bytes)", kind="validation")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is larger than the server's limit of "
                           f"{limit} bytes (--max-body-bytes)", kind="validation")
        chunks.append(chunk)
    raw = b"".join(chunks)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    bad = 422 if api == TEI else 400
    if form and kind == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ApiError(400, "the form body is not UTF-8")
        data = {}
        for k, v in pairs:  # q repeated: a list, as LibreTranslate's form
            data[k] = [*data[k], v] if isinstance(data.get(k), list) else \
                [data[k], v] if k in data else v
        return _validate(model, data, api, strict=False)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(bad, f"We could not parse the JSON body of your request ({e})",
                       kind="validation")
    if not isinstance(data, dict):
        raise ApiError(bad, f"the request body must be a JSON object, got "
                       f"{type(data).__name__}", kind="validation")
    return _validate(model, data, api, strict=True)


def _validate(model, data, api, strict):
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"]]
        # the field as the client wrote it: union branches (str, list[...]) are not fields
        field = ".".join(p for p in loc if not (p[:1].islower() and "[" in p)
                         and p not in ("str", "list", "int", "float", "bool",
                                       "function-after", "literal"))
        field = field or (loc[0] if loc else None)
        if err["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {field}"
        else:
            message = f"{field}: {err['msg']}"
        raise ApiError(422 if api == TEI else 400, message, field, kind="validation")


def model_name(served, given, api=OPENAI):
    """ApiError 404 naming `model` when the client names another model than the one served
    (None: the served one)."""
    if given is not None and given != served.name:
        raise ApiError(404, f"The model `{given}` does not exist (this server serves "
                       f"`{served.name}`)", "model", code="model_not_found")
