"""Hugging Face text-embeddings-inference's routes: POST /embed, /embed_all, /rerank, /tokenize,
/decode (router/src/http/types.rs: EmbedRequest, EmbedAllRequest, RerankRequest, TokenizeRequest,
DecodeRequest;
answers as bare JSON arrays; errors {"error", "error_type"} with TEI's statuses)."""
from starlette.routing import Route

import numpy as np

from .bodies import check_key, json_response, read_body, route
from .errors import TEI, ApiError
from .schemas import (DecodeRequest, EmbedAllRequest, EmbedRequest, RerankRequest,
                      TokenizeRequest)
from .served import truncate_dimensions

API = TEI


def routes():
    """The Starlette routes of text-embeddings-inference's API."""
    return [Route("/embed", embed, methods=["POST"]),
            Route("/embed_all", embed_all, methods=["POST"]),
            Route("/rerank", rerank, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/decode", decode, methods=["POST"])]


def _texts(served, inputs):
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
        raise ApiError(400, "`inputs` cannot be empty", "inputs", kind="empty")
    if len(texts) > served.max_batch_inputs:
        raise ApiError(413, f"batch size {len(texts)} > maximum allowed batch size "
                       f"{served.max_batch_inputs}", "inputs", kind="validation")
    return texts


def _encoder(served):
    if served.kind != "encoder":
        raise ApiError(400, f"the model {served.name} is a {served.kind} model: it does not "
                       f"embed", "inputs", kind="validation")


async def _rows(served, body):
    left = body.truncation_direction.lower() == "left"
    return await served.encode_many(_texts(served, body.inputs), "inputs",
                                    truncate=body.truncate, left=left)


@route(API)
async def embed(request):
    served = request.app.state.served
    check_key(request)
    body = await read_body(request, API, EmbedRequest)
    _encoder(served)
    rows = await _rows(served, body)
    e = await served.embed(rows, normalize=body.normalize).aresult()
    return json_response(truncate_dimensions(e, body.dimensions).tolist())


@route(API)
async def embed_all(request):
    served = request.app.state.served
    check_key(request)
    body = await read_body(request, API, EmbedAllRequest)
    _encoder(served)
    rows = await _rows(served, body)
    hidden = await served.embed(rows, hidden=True).aresult()
    return json_response([h[:len(r)].tolist() for h, r in zip(hidden, rows)])


@route(API)
async def rerank(request):
    """TEI's /rerank on a cross-encoder (a sequence classifier of one label: config.json
    BertForSequenceClassification / XLMRobertaForSequenceClassification): each (query, text)
    pair tokenised by the pair template (HF's longest-first truncation when `truncate`, whatever
    truncation_direction says; else a pair over the input limit is a 413), scored by Engine.classify (the
    batch-invariant model.classify), sigmoid(logit) unless raw_scores (TEI's convention);
    answers [{index, score, text?}] by score, best first."""
    served = request.app.state.served
    check_key(request)
    body = await read_body(request, API, RerankRequest)
    if served.kind != "encoder" or getattr(served.model, "labels", None) is None \
            or len(served.model.labels) != 1:
        raise ApiError(400, f"the model {served.name} is not a re-ranker (a sequence classifier "
                       f"of one label)", "query", kind="validation")
    texts = _texts(served, body.texts)
    batch = await served.encode_pairs(body.query, texts, "texts", body.truncate)
    logits = (await served.engine.classify(**batch).aresult())[:, 0].astype(np.float64)
    scores = logits if body.raw_scores else 1 / (1 + np.exp(-logits))
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    return json_response([dict(index=i, score=float(scores[i]),
                               **({"text": texts[i]} if body.return_text else {}))
                          for i in order])


@route(API)
async def tokenize(request):
    served = request.app.state.served
    check_key(request)
    body = await read_body(request, API, TokenizeRequest)
    return json_response([served.tokens(t, body.add_special_tokens)
                          for t in _texts(served, body.inputs)])


@route(API)
async def decode(request):
    served = request.app.state.served
    check_key(request)
    body = await read_body(request, API, DecodeRequest)
    rows = body.ids if body.ids and isinstance(body.ids[0], list) else [body.ids]
    if len(rows) > served.max_batch_inputs:
        raise ApiError(413, f"batch size {len(rows)} > maximum allowed batch size "
                       f"{served.max_batch_inputs}", "ids", kind="validation")
    try:
        return json_response([served.decode(r, body.skip_special_tokens) for r in rows])
    except IndexError as e:
        raise ApiError(422, str(e), "ids", kind="tokenizer")
