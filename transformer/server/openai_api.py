"""OpenAI's API: POST /v1/embeddings, /v1/completions, /v1/chat/completions, GET /v1/models
(field names, defaults, response objects and error objects of the OpenAI API reference; the
streams as server-sent events ending in `data: [DONE]`)."""
import base64
import json
import time
import uuid

from starlette.responses import StreamingResponse
from starlette.routing import Route

from .bodies import check_key, json_response, model_name, read_body, route
from .errors import OPENAI, ApiError, error_body
from .generation import Generation, options, stop_strings
from .schemas import ChatRequest, CompletionRequest, EmbeddingsRequest
from .served import truncate_dimensions

API = OPENAI


def routes():
    """The Starlette routes of the OpenAI API."""
    return [Route("/v1/models", models, methods=["GET"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"])]


@route(API)
async def models(request):
    check_key(request)
    served = request.app.state.served
    return json_response({"object": "list", "data": [
        {"id": served.name, "object": "model", "created": served.created,
         "owned_by": "transformer"}]})


def _inputs(served, value, param):
    """OpenAI's input / prompt (a string, a list of strings, a list of token ids or a list of
    such lists) as (texts or None, rows of token ids); ApiError 400 naming `param`."""
    if isinstance(value, str):
        value = [value]
    if not value:
        raise ApiError(400, f"{param} must not be empty", param)
    if isinstance(value[0], int):
        value = [value]
    if len(value) > served.max_batch_inputs:
        raise ApiError(400, f"{param} has {len(value)} items, more than the server's limit "
                       f"of {served.max_batch_inputs}", param)
    if isinstance(value[0], str):
        return value, None
    for i, ids in enumerate(value):
        if not ids:
            raise ApiError(400, f"{param}[{i}] must not be empty", f"{param}")
        served.check_length(ids, param)
    return None, [list(ids) for ids in value]


def _openai_limit(error):
    """The tokenizer's 413 for a too long input: a 400 on the OpenAI routes."""
    if error.status == 413:
        error.status = 400
    return error


@route(API)
async def embeddings(request):
    served = request.app.state.served
    check_key(request)
    body = await read_body(request, API, EmbeddingsRequest)
    model_name(served, body.model)
    if served.kind != "encoder":
        raise ApiError(400, f"the model {served.name} is a {served.kind} model: it does not "
                       f"embed", "model")
    texts, rows = _inputs(served, body.input, "input")
    try:
        if texts is not None:
            rows = await served.encode_many(texts, "input")
    except ApiError as e:
        raise _openai_limit(e)
    e = await served.embed(rows).aresult()
    e = truncate_dimensions(e, body.dimensions)
    data = []
    for i, row in enumerate(e):
        value = base64.b64encode(row.astype("<f4").tobytes()).decode() \
            if body.encoding_format == "base64" else row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(map(len, rows))
    return json_response({"object": "list", "data": data, "model": served.name,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _generating(served):
    if served.kind != "decoder":
        raise ApiError(400, f"the model {served.name} is a {served.kind} model: completions "
                       f"need a decoder" + (" (use /translate)" if served.kind == "seq2seq"
                                            else ""), "model")


@route(API)
async def completions(request):
    served = request.app.state.served
    check_key(request)
    body = await read_body(request, API, CompletionRequest)
    model_name(served, body.model)
    _generating(served)
    if body.best_of not in (None, body.n):
        raise ApiError(400, "best_of is not supported by this server (only best_of = n)",
                       "best_of")
    if body.suffix:
        raise ApiError(400, "suffix is not supported by this server", "suffix")
    texts, prompts = _inputs(served, body.prompt, "prompt")
    try:
        if texts is not None:
            prompts = await served.encode_many(texts, "prompt")
    except ApiError as e:
        raise _openai_limit(e)
    gen = Generation(served, prompts, body.n,
                     options(served, body, body.max_tokens, map(len, prompts)),
                     stop_strings(body.stop)).submit()
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def logprobs(choice):
        if body.logprobs is None:
            return None
        tokens = choice.pieces()
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": choice.logprobs,
                "top_logprobs": [{t: lp} for t, lp in zip(tokens, choice.logprobs)]
                if body.logprobs > 0 else None, "text_offset": offsets}

    def echo(i):
        if not body.echo:
            return ""
        p = i // body.n
        return texts[p] if texts is not None else served.decode(prompts[p])

    def usage(choices):
        return _usage(sum(map(len, prompts)), choices)

    if not body.stream:
        choices = await gen.results()
        return json_response({"id": rid, "object": "text_completion", "created": created,
                              "model": served.name, "choices": [
                                  {"index": i, "text": echo(i) + c.text,
                                   "logprobs": logprobs(c), "finish_reason": c.finish_reason}
                                  for i, c in enumerate(choices)],
                              "usage": usage(choices)})

    def chunk(choices, use=None):
        return _chunk(rid, "text_completion", created, served.name, choices, use)

    async def events():
        done, started = [], set()
        async for i, delta, choice in gen.stream():
            if i not in started and body.echo:
                delta = echo(i) + delta
            started.add(i)
            if choice is None:
                yield chunk([{"index": i, "text": delta, "logprobs": None,
                              "finish_reason": None}])
            else:
                done.append(choice)
                yield chunk([{"index": i, "text": delta, "logprobs": logprobs(choice),
                              "finish_reason": choice.finish_reason}])
        if body.stream_options is not None and body.stream_options.include_usage:
            yield chunk([], usage(done))

    return sse(events())


@route(API)
async def chat_completions(request):
    served = request.app.state.served
    check_key(request)
    body = await read_body(request, API, ChatRequest)
    model_name(served, body.model)
    _generating(served)
    if body.response_format not in (None, {"type": "text"}):
        raise ApiError(400, "response_format: only {\"type\": \"text\"} is supported",
                       "response_format")
    messages = []
    for m in body.messages:
        message = m.model_dump(exclude_none=True)
        if isinstance(m.content, list):
            message["content"] = "".join(part.text for part in m.content)
        messages.append(message)
    text = served.render_chat(messages)
    try:
        prompt = served.encode(text, "messages", add_special_tokens=False)
    except ApiError as e:
        raise _openai_limit(e)
    if not prompt:
        raise ApiError(400, "the messages render to no tokens", "messages")
    max_tokens = body.max_completion_tokens or body.max_tokens or \
        max(1, served.max_input_tokens - len(prompt))
    gen = Generation(served, [prompt], body.n, options(served, body, max_tokens, [len(prompt)]),
                     stop_strings(body.stop)).submit()
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def logprobs(choice):
        if not body.logprobs:
            return None
        content = []
        for token, lp in zip(choice.pieces(), choice.logprobs):
            entry = {"token": token, "logprob": lp, "bytes": list(token.encode())}
            content.append(dict(entry, top_logprobs=[entry] if body.top_logprobs else []))
        return {"content": content}

    def usage(choices):
        return _usage(len(prompt), choices)

    if not body.stream:
        choices = await gen.results()
        return json_response({"id": rid, "object": "chat.completion", "created": created,
                              "model": served.name, "choices": [
                                  {"index": i, "message": {"role": "assistant",
                                                           "content": c.text},
                                   "logprobs": logprobs(c), "finish_reason": c.finish_reason}
                                  for i, c in enumerate(choices)],
                              "usage": usage(choices)})

    def chunk(choices, use=None):
        return _chunk(rid, "chat.completion.chunk", created, served.name, choices, use)

    async def events():
        for i in range(body.n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None}])
        done = []
        async for i, delta, choice in gen.stream():
            if choice is None:
                yield chunk([{"index": i, "delta": {"content": delta}, "logprobs": None,
                              "finish_reason": None}])
            else:
                done.append(choice)
                yield chunk([{"index": i, "delta": {"content": delta} if delta else {},
                              "logprobs": logprobs(choice),
                              "finish_reason": choice.finish_reason}])
        if body.stream_options is not None and body.stream_options.include_usage:
            yield chunk([], usage(done))

    return sse(events())


def _usage(prompt_tokens, choices):
    """OpenAI's usage object of a request: its prompt tokens and its choices' new tokens."""
    done = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done,
            "total_tokens": prompt_tokens + done}


def _chunk(rid, kind, created, model, choices, use=None):
    """One streamed event of a completion ("text_completion") or chat completion
    ("chat.completion.chunk"): its choices, and the usage object when given."""
    out = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    if use is not None:
        out["usage"] = use
    return out


def sse(events, api=API):
    """A text/event-stream response of the JSON objects `events` yields (`data: {...}`), ending
    in `data: [DONE]` (OpenAI's stream). An error after the stream began is sent as one
    `data: {"error": ...}` event. A client that disconnects cancels the iteration (Starlette
    cancels the response task), which cancels the engine requests."""
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except ApiError as e:
            yield f"data: {error_body(e, api)[1].decode()}\n\n"
        except Exception as e:  # noqa: BLE001 - the request's error, as an event
            yield f"data: {error_body(ApiError(500, str(e)), api)[1].decode()}\n\n"
        yield "data: [DONE]\n\n"
    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
