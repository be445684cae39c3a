"""Greedy search and sampling over the search contract, with the semantics of Hugging Face's
GenerationMixin._sample (transformers generation/utils.py): each step the processors on the
float32 logits, then (sampling) the warpers and one draw, else the argmax."""
import numpy as np

from .sampling import log_softmax, sample_next


def greedy_search(decoding, cfg, processors, warpers=(), rng=None, streamer=None,
                  want_scores=False, want_attention=False):
    """Greedy search (rng None) or sampling (rng: a numpy Generator) over `decoding` (the
    search contract, transformer.generation.contract). Each prompt is prefilled once; with
    num_return_sequences n its n samples start from that cache row (independent draws from
    one seeded generator). cfg: a validated GenerationConfig; processors / warpers:
    LogitsProcessorLists; streamer: callable(tokens (B * n,) int64) with each new column (pad
    for finished rows). A row that emitted eos leaves the batch (its cache rows are dropped).
    Returns (sequences (B * n, T + n_new) int64, and with want_scores the per-token
    log-probabilities (B * n, n_new) float32 of the chosen tokens under the processed (and
    warped) distribution, 0 after a row ended, else None; and with want_attention the
    cross-attention weights (B * n, n_new, S) float32 of each new token, decoding.attention:
    the caller has called decoding.record_attention)."""
    steps = greedy_steps(decoding, cfg, processors, warpers, rng, want_scores, want_attention)
    while True:
        try:
            column = next(steps)
        except StopIteration as done:
            return done.value
        if streamer is not None:
            streamer(column)


def greedy_steps(decoding, cfg, processors, warpers=(), rng=None, want_scores=False,
                 want_attention=False):
    """greedy_search as a generator: yields each new column (B * n,) int64 (pad for finished
    rows) as soon as it is chosen; its return value (StopIteration.value) is greedy_search's."""
    ids = decoding.sequences
    B0, T = ids.shape
    n, max_new = cfg.num_return_sequences, cfg.max_new_tokens
    B = B0 * n
    eos_arr = np.array(cfg.eos_token_id, np.int64)
    tokens = np.full((B, T + max_new), cfg.pad_token_id, np.int64)
    tokens[:, :T] = np.repeat(ids, n, 0)
    logprobs = np.zeros((B, max_new), np.float32) if want_scores else None
    to_host = decoding.backend.to_host  # the search runs on the host
    logits = to_host(decoding.start(B, max_new))
    att = np.repeat(decoding.attention, n, 0) if want_attention else None
    if want_attention:
        attention = np.zeros((B, max_new, att.shape[1]), np.float32)
    if n > 1:  # the samples of a prompt start from its cache row
        decoding.reorder(np.repeat(np.arange(B0), n))
        logits = np.repeat(logits, n, 0)
    alive = np.arange(B)  # the rows still generating; finished ones leave the cache
    steps = 0
    for step in range(max_new):
        cur = T + step
        if processors.applies(cur):
            logits = processors(tokens[alive, :cur], np.array(logits, np.float32), alive // n)
        if rng is not None:
            scores = warpers(tokens[alive, :cur], np.array(logits, np.float64))
            nxt = sample_next(scores, rng)
        else:
            scores = logits
            nxt = np.argmax(logits, axis=-1)
        if want_scores:
            logprobs[alive, step] = np.take_along_axis(log_softmax(scores), nxt[:, None], 1)[:, 0]
        tokens[alive, cur] = nxt
        if want_attention:
            attention[alive, step] = att
        steps = step + 1
        yield tokens[:, cur].copy()
        going = ~np.isin(nxt, eos_arr)
        if not going.any() or step == max_new - 1:
            break
        if not going.all():
            alive, nxt = alive[going], nxt[going]
            decoding.reorder(np.flatnonzero(going))
        logits = to_host(decoding.step(nxt))
        if want_attention:
            att = decoding.attention
    out = tokens[:, :T + steps], None if logprobs is None else logprobs[:, :steps]
    return out + (attention[:, :steps],) if want_attention else out
