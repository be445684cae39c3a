"""One decode step over the rows of many requests: the single place where the serving engine
advances a decoding (transformer/serving/engine.py calls nothing else for a step).

Iteration-level scheduling (Yu et al. 2022, "Orca: a distributed serving system for
Transformer-based generative models", OSDI; vLLM's scheduler) runs one decode step a
scheduler iteration over every request that asked for one. This first version steps each
request's decoding in turn (the same kernels, the same row counts as the request run alone,
so the outputs are bit-identical); a batched forward in the model layer replaces its body."""


def step_many(model, work):
    """One decode step for several requests of `model`.

    work: a list of (decoding, tokens) pairs, one per request, in the scheduler's order, where
    decoding is the object model.decoding(...) returned for that request (the search contract,
    transformer.generation.contract: DecoderDecoding or Seq2SeqDecoding), already started
    (start ran) and with every reorder the search asked for already applied, and tokens is
    (R_i,) int64 C-contiguous NumPy: one token per cache row 0..R_i-1 of that decoding
    (R_i >= 1, the rows still running). Each decoding belongs to one request only; no two
    pairs share a decoding.
    Returns a list of logits, one per pair in the same order: exactly what decoding.step(tokens)
    returns ((R_i, V) float32 NumPy on the CPU; a device array on the GPU), with each
    decoding's cache advanced by one position and its `attention` (encoder-decoders recording
    cross-attention) set as step sets it. A request's logits must be bit-identical to its
    decoding.step(tokens) alone (the engine's batch invariance).
    Raises what decoding.step raises; the engine then fails every request of the call with
    that error, so a batched body should check its inputs before touching any cache. The
    tokens come from the searches (ids in [0, V), one per running row), so an error here is
    a bug or an exhausted resource, not a bad request.

    A batched body (the coordinator's): the requests' rows are independent (each its own
    cache rows, positions = each row's cache length, and for encoder-decoders its own source
    rows and cross-attention keys / values); the sum over R_i rows is the batch; the split
    of the (sum R_i, V) logits by R_i gives the list. All decodings are of this one model."""
    return [decoding.step(tokens) for decoding, tokens in work]
