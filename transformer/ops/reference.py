"""float64 NumPy reference of every op in transformer.ops: the simple, obviously-correct twin
that tests and the kernel lab compare against. Same signatures (minus `threads`), float64 math,
float64 results."""
import math

import numpy as np
from scipy.special import erf


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def linear(x, weight, bias=None, activation=None):
    """act(x (..., K) @ weight (O, K)^T + bias (O))."""
    y = _f64(x) @ _f64(weight).T
    return bias_act(y, bias, activation)


def bias_act(x, bias=None, activation="gelu"):
    """act(x + bias): None, relu, gelu (erf), gelu_tanh."""
    y = _f64(x) + (0.0 if bias is None else _f64(bias))
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "gelu":
        return 0.5 * y * (1.0 + erf(y / math.sqrt(2.0)))
    if activation == "silu":
        return y / (1.0 + np.exp(-y))
    if activation == "gelu_tanh":
        return 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y ** 3)))
    return y


def layer_norm(x, weight, bias, eps=1e-5, residual=None):
    """LayerNorm(x + residual) * weight + bias over the last axis (biased variance)."""
    y = _f64(x) + (0.0 if residual is None else _f64(residual))
    mean = y.mean(-1, keepdims=True)
    var = ((y - mean) ** 2).mean(-1, keepdims=True)
    return (y - mean) / np.sqrt(var + eps) * _f64(weight) + _f64(bias)


def rms_norm(x, weight, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis."""
    x = _f64(x)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * _f64(weight)


def rotary(x, positions, n_heads, head_dim, theta=10000.0, interleaved=False):
    """Rotary embedding of the first n_heads heads of each row of x (N, W), angles computed here
    from theta in float64 (RoFormer eq. 15 / HF rotate_half). Returns a new array."""
    y = _f64(x).copy()
    inv = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    ang = np.asarray(positions, np.float64)[:, None] * inv[None]  # (N, D/2)
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    h = y[:, :n_heads * head_dim].reshape(len(y), n_heads, head_dim)
    if interleaved:
        a, b = h[..., 0::2].copy(), h[..., 1::2].copy()
        h[..., 0::2], h[..., 1::2] = a * c - b * s, a * s + b * c
    else:
        a, b = h[..., :head_dim // 2].copy(), h[..., head_dim // 2:].copy()
        h[..., :head_dim // 2], h[..., head_dim // 2:] = a * c - b * s, b * c + a * s
    y[:, :n_heads * head_dim] = h.reshape(len(y), n_heads * head_dim)
    return y


def swiglu(gate_up, activation="silu"):
    """act(gate) * up for gate_up = [gate | up] on the last axis (Shazeer 2020, GLU variants:
    silu SwiGLU, gelu / gelu_tanh GEGLU, relu ReGLU), act as bias_act."""
    g, u = np.split(_f64(gate_up), 2, axis=-1)
    return bias_act(g, None, activation) * u


def softmax(x, mask=None):
    """softmax(x + mask) over the last axis; rows entirely -inf give zeros; a row holding a NaN
    or +inf gives NaN (as PyTorch), never zeros."""
    y = _f64(x)
    if mask is not None:  # a removed entry stays removed, whatever (NaN) its score
        m = np.broadcast_to(_f64(mask), y.shape)
        y = np.where(m == -np.inf, -np.inf, y + m)
    mx = y.max(-1, keepdims=True) if y.shape[-1] else np.full(y.shape[:-1] + (1,), -np.inf)
    dead = mx == -np.inf
    e = np.exp(y - np.where(dead, 0.0, mx))
    s = e.sum(-1, keepdims=True)
    return np.where(dead, 0.0, e / np.where(dead, 1.0, s))


def embedding(input_ids, word_embeddings, position_embeddings, position_ids=None,
              token_type_ids=None, token_type_embeddings=None, norm_weight=None, norm_bias=None,
              eps=1e-12):
    """word[ids] + position[pos] (+ token_type[types]), then LayerNorm when weights are given."""
    ids = np.asarray(input_ids)
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(ids.shape[-1]), ids.shape)
    y = _f64(word_embeddings)[ids] + _f64(position_embeddings)[np.asarray(position_ids)]
    if token_type_embeddings is not None:
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        y = y + _f64(token_type_embeddings)[types]
    if norm_weight is not None:
        y = layer_norm(y, norm_weight, norm_bias, eps)
    return y


def attention(q, k, v, attention_mask=None, causal=False, scale=None, position_bias=None):
    """softmax(scale Q K^T + position bias + mask) V with the full (B, H, T, S) score matrix.
    q (B, H, T, D); k, v (B, Hkv, S, D); attention_mask (B, S) 0/1; causal aligned at the end;
    position_bias: an ops.PositionBias (its dense (H, T, S) float64 form) or None."""
    q, k, v = _f64(q), _f64(k), _f64(v)
    B, H, T, D = q.shape
    S = k.shape[2]
    rep = H // k.shape[1]
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v, rep, axis=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = scale * q @ k.transpose(0, 1, 3, 2)
    if position_bias is not None:
        scores = scores + position_bias.dense(T, S)[None]
    bias = np.zeros((B, 1, T, S))
    if attention_mask is not None:
        bias = bias + np.where(np.asarray(attention_mask)[:, None, None, :] != 0, 0.0, -np.inf)
    if causal:
        t = np.arange(T)[:, None]
        s = np.arange(S)[None, :]
        bias = bias + np.where(s <= t + S - T, 0.0, -np.inf)
    return softmax(scores, bias) @ v


def attention_varlen(q, k, v, cu_seqlens, causal=False, scale=None, cu_seqlens_k=None,
                     position_bias=None):
    """Packed ragged attention: sequence b owns rows cu_seqlens[b]:cu_seqlens[b+1] of q and
    cu_seqlens_k[b]:cu_seqlens_k[b+1] of k, v (default cu_seqlens)."""
    cu_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
    out = np.zeros(q.shape, np.float64)
    for a, b, c, d in zip(cu_seqlens[:-1], cu_seqlens[1:], cu_k[:-1], cu_k[1:]):
        if b > a and d > c:
            qs = _f64(q[a:b]).transpose(1, 0, 2)[None]
            ks = _f64(k[c:d]).transpose(1, 0, 2)[None]
            vs = _f64(v[c:d]).transpose(1, 0, 2)[None]
            out[a:b] = attention(qs, ks, vs, None, causal, scale,
                                 position_bias)[0].transpose(1, 0, 2)
    return out


def decode_attention(q, k_cache, v_cache, lengths, attention_mask=None, scale=None,
                     kv_index=None, position_bias=None):
    """One query per sequence (B, H, D) against k_cache/v_cache (Bkv, S_max, Hkv, D) plane
    kv_index[b] (default b) up to lengths[b], through the full attention reference."""
    q = _f64(q)
    B, H, D = q.shape
    out = np.zeros((B, H, D))
    for b in range(B):
        L = int(lengths[b])
        p = b if kv_index is None else int(kv_index[b])
        k = _f64(k_cache[p, :L]).transpose(1, 0, 2)[None]
        v = _f64(v_cache[p, :L]).transpose(1, 0, 2)[None]
        m = None if attention_mask is None else np.asarray(attention_mask)[p:p + 1, :L]
        if L:
            out[b] = attention(q[b][None, :, None], k, v, m, False, scale,
                               position_bias)[0, :, 0]
    return out


def beam_topk(logits, beam_scores, num_beams, k):
    """log_softmax(logits (B * num_beams, V)) + beam_scores (B * num_beams,) in float64; per
    batch entry the k best of its num_beams * V scores: (values (B, k), indices (B, k) into
    beam * V + token), best first, equal values in ascending index."""
    x = _f64(logits)
    m = x.max(-1, keepdims=True)
    lp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True)) + _f64(beam_scores)[:, None]
    flat = lp.reshape(-1, num_beams * x.shape[1])
    idx = np.argsort(-flat, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(flat, idx, -1), idx
