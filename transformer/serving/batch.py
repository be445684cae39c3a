"""One decode step over the rows of many requests: the single place where the serving engine
advances a decoding (transformer/serving/engine.py calls nothing else for a step).

Iteration-level scheduling (Yu et al. 2022, "Orca: a distributed serving system for
Transformer-based generative models", OSDI; vLLM's scheduler) runs one decode step a
scheduler iteration over every request that asked for one. The forward is the model's
(step_decodings, block.RowGroups): every weight is read once for the rows of all requests."""


def step_many(model, work):
    """One decode step for several requests of `model`, as one forward (model.step_decodings:
    the rows of every request through each linear together, each request's attention on its
    own cache).

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
    cross-attention) set as step sets it; bit-identical to decoding.step(tokens) alone when the
    model is batch_invariant (the Engine sets it).
    Raises what decoding.step raises, before any cache changes (every input is checked
    first); the engine then fails each request of the call."""
    return model.step_decodings(work)
