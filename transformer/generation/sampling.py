"""Logit warpers and sampling, with the semantics of HF's TemperatureLogitsWarper,
TopKLogitsWarper and TopPLogitsWarper (applied in that order)."""
import numpy as np


def log_softmax(logits, dtype=np.float64):
    """log softmax over the last axis: logits (..., V) -> (..., V) of `dtype` (float64 by
    default; beam search uses float32, as Hugging Face does)."""
    x = np.asarray(logits, dtype)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def warp(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Scores (B, V) float64: (logits - row max) / temperature; then all but the top_k highest
    set to -inf (top_k 0 = off); then outside the nucleus set to -inf: the smallest set of
    highest-probability tokens whose probability mass reaches top_p (1.0 = off; at least one
    token is kept)."""
    x = np.asarray(logits, np.float64)
    # shifted by the row max before dividing: the same distribution, and no overflow to
    # inf - inf = NaN for a tiny temperature (which then keeps only the top token)
    top = x.max(-1, keepdims=True)
    with np.errstate(over="ignore"):  # a tiny temperature: -inf for all but the top
        x = (x - np.where(np.isfinite(top), top, 0.0)) / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = np.partition(x, V - top_k, axis=-1)[:, V - top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")
        p = np.exp(log_softmax(np.take_along_axis(x, order, -1)))
        before = np.cumsum(p, -1) - p  # mass of the strictly more probable tokens
        drop = before >= top_p
        drop[:, 0] = False
        x = x.copy()
        np.put_along_axis(x, order, np.where(drop, -np.inf, np.take_along_axis(x, order, -1)),
                          -1)
    return x


def sample_next(scores, rng):
    """One token per row drawn from softmax(scores) (B, V) with the numpy Generator rng.
    Returns (B,) int64."""
    p = np.exp(log_softmax(scores))
    c = np.cumsum(p, -1)
    u = rng.random((p.shape[0], 1)) * c[:, -1:]
    return np.minimum((c <= u).sum(-1), p.shape[-1] - 1).astype(np.int64)
