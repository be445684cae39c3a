"""LibreTranslate's routes for encoder-decoder models: POST /translate (q a string or a list;
source / target checked against the model's languages; alternatives: the n-best of beam search;
JSON or a form body, as libretranslatepy sends), GET /languages. Our beam options: num_beams,
length_penalty, max_new_tokens. Answers {"translatedText", "alternatives"}; errors
{"error"} (400 bad input, 403 bad api_key, 429 overloaded)."""
import asyncio

import numpy as np
from starlette.routing import Route

from .bodies import check_key, json_response, read_body, route
from .errors import LIBRETRANSLATE, ApiError
from .schemas import TranslateRequest

API = LIBRETRANSLATE


def routes():
    """The Starlette routes of LibreTranslate's API."""
    return [Route("/translate", translate, methods=["POST"]),
            Route("/languages", languages, methods=["GET"])]


@route(API)
async def languages(request):
    served = request.app.state.served
    check_key(request, request.query_params.get("api_key"))
    out = []
    if served.kind == "seq2seq":
        source, target = served.source_lang or "auto", served.target_lang or "auto"
        out = [{"code": source, "name": source, "targets": [target]}]
        if target != source:
            out.append({"code": target, "name": target, "targets": []})
    return json_response(out)


def beam_options(served, body):
    """generate's options of a /translate request: beam search with num_beams (default the
    server's --num-beams, at least alternatives + 1) returning alternatives + 1 hypotheses."""
    beams = body.num_beams or max(served.num_beams, body.alternatives + 1)
    if beams < body.alternatives + 1:
        raise ApiError(400, f"num_beams={beams} cannot give {body.alternatives} alternatives "
                       f"(needs num_beams >= alternatives + 1)", "num_beams")
    opts = dict(num_beams=beams, num_return_sequences=body.alternatives + 1,
                length_penalty=body.length_penalty)
    if body.max_new_tokens is not None:
        opts["max_new_tokens"] = body.max_new_tokens
    return opts


@route(API)
async def translate(request):
    served = request.app.state.served
    body = await read_body(request, API, TranslateRequest, form=True)
    check_key(request, body.api_key)
    if served.kind != "seq2seq":
        raise ApiError(400, f"the model {served.name} is a {served.kind} model: /translate "
                       f"needs an encoder-decoder", "q")
    served.check_languages(body.source, body.target)
    if body.format != "text":
        raise ApiError(400, "format: only \"text\" is supported by this server", "format")
    texts = [body.q] if isinstance(body.q, str) else body.q
    if not texts:
        raise ApiError(400, "Invalid request: missing q parameter", "q")
    if len(texts) > served.max_batch_inputs:
        raise ApiError(400, f"q has {len(texts)} texts, more than the server's limit of "
                       f"{served.max_batch_inputs}", "q")
    opts = beam_options(served, body)
    encoded = iter(await served.encode_many([t for t in texts if t.strip()], "q"))
    sources = [next(encoded) if t.strip() else None for t in texts]
    handles = []
    try:
        for ids in sources:
            if ids is not None:
                handles.append(served.engine.submit(np.asarray([ids], np.int64), **opts))
        outs = iter(await asyncio.gather(*(h.aresult() for h in handles)))
    except BaseException:
        for h in handles:
            h.cancel()
        raise
    best, alternatives = [], []
    for ids in sources:
        if ids is None:  # a blank text: a blank translation (the CLI's translate too)
            best.append("")
            alternatives.append([""] * body.alternatives)
            continue
        hyps = [served.decode(row.tolist()) for row in next(outs)]
        best.append(hyps[0])
        alternatives.append(hyps[1:])
    single = isinstance(body.q, str)
    answer = {"translatedText": best[0] if single else best}
    if body.alternatives:
        answer["alternatives"] = alternatives[0] if single else alternatives
    return json_response(answer)
