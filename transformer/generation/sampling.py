"""Sampling: log softmax, the warpers (HF's TemperatureLogitsWarper, TopKLogitsWarper and
TopPLogitsWarper, applied in that order) and one draw per row."""
import numpy as np


def log_softmax(logits, dtype=np.float64):
    """log softmax over the last axis: logits (..., V) -> (..., V) of `dtype` (float64 by
    default; beam search uses float32, as Hugging Face does)."""
    x = np.asarray(logits, dtype)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def warp(logits, temperature=1.0, top_k=0, top_p=1.0, min_tokens_to_keep=1):
    """Scores (B, V) float64: (logits - row max) / temperature (the same distribution; a tiny
    temperature keeps only the top token instead of overflowing to NaN); then all but the top_k
    highest set to -inf (top_k 0 = off); then outside the nucleus set to -inf: the smallest set
    of highest-probability tokens whose probability mass reaches top_p (1.0 = off; at least
    min_tokens_to_keep tokens are kept). The warpers of transformer.generation.processors, in
    HF's order."""
    from .processors import Temperature, TopK, TopP

    x = np.array(logits, np.float64)
    x = Temperature(temperature)(None, x)
    if top_k:
        x = TopK(top_k, min_tokens_to_keep)(None, x)
    if top_p < 1.0:
        x = TopP(top_p, min_tokens_to_keep)(None, x)
    return x


def sample_next(scores, rng):
    """One token per row drawn from softmax(scores) (B, V) with the numpy Generator rng.
    Returns (B,) int64."""
    p = np.exp(log_softmax(scores))
    c = np.cumsum(p, -1)
    u = rng.random((p.shape[0], 1)) * c[:, -1:]
    return np.minimum((c <= u).sum(-1), p.shape[-1] - 1).astype(np.int64)
