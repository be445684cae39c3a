"""CPU backend: the math only, on arguments that transformer.ops has already checked
(float32, C-contiguous, shapes consistent, indices in range). Kernels live in csrc/cpu."""
import numpy as np

from .. import _cpu


def linear(x, weight, bias, activation, out, threads):
    """out (N, O) = act(x (N, K) @ weight (O, K)^T + bias (O))."""
    _cpu.linear(x, weight, bias, out, activation, threads)
    return out


def bias_act(x, bias, activation, threads):
    """x (N, O) = act(x + bias), in place."""
    _cpu.bias_act(x, bias, activation, threads)
    return x


def layer_norm(x, residual, weight, bias, eps, out, threads):
    """out (N, C) = LayerNorm(x + residual)."""
    _cpu.layer_norm(x, residual, weight, bias, eps, out, threads)
    return out


def rms_norm(x, weight, eps, out, threads):
    """out (N, C) = RMSNorm(x) * weight."""
    _cpu.rms_norm(x, weight, eps, out, threads)
    return out


def rotary(x, positions, cos, sin, n_heads, head_dim, interleaved, threads):
    """Rotate the first n_heads heads of each row of x (N, W) in place."""
    _cpu.rotary(x, positions, cos, sin, n_heads, head_dim, interleaved, threads)
    return x


def swiglu(gate_up, out, threads, activation="silu"):
    """out (N, F) = act(gate_up[:, :F]) * gate_up[:, F:], act "silu" (SwiGLU), "gelu",
    "gelu_tanh" or "relu"."""
    _cpu.swiglu(gate_up, out, threads, activation)
    return out


def decode_attention(q, k, v, kv_index, lengths, key_bias, out, scale, chunk, threads,
                     kv_rows=None, **position_bias):
    """Split-K attention of one query per sequence against its KV cache; kv_rows (B, S_max)
    int32: the plane of each key (a reordered beam cache), or None; position_bias: the kernel
    arguments of an ops.PositionBias."""
    _cpu.decode_attention(q, k, v, kv_index, kv_rows, lengths, key_bias, out, scale, chunk,
                          threads, **position_bias)
    return out


def softmax(x, mask, out, threads):
    """out (N, S) = softmax(x + mask) along the last axis."""
    _cpu.softmax(x, mask, out, threads)
    return out


def embedding(input_ids, position_ids, token_type_ids, word, position, token_type,
              weight, bias, eps, out, threads):
    """out (N, C) = LayerNorm(word[ids] + position[pos] + token_type[types])."""
    _cpu.embedding(input_ids, position_ids, token_type_ids, word, position, token_type,
                   weight, bias, eps, out, threads)
    return out


def attention(q, k, v, out, plane, q_start, q_len, k_start, k_len, key_bias, causal, scale,
              threads, **position_bias):
    """Tiled attention over (P, rows, H, D) planes; see transformer._cpu.attention."""
    _cpu.attention(q, k, v, out, plane, q_start, q_len, k_start, k_len, key_bias, causal,
                   scale, threads, **position_bias)
    return out


def beam_topk(logits, beam_scores, num_beams, k, vals, idx, threads):
    """vals, idx (B, k): the k best log_softmax(logits) + beam_scores per batch entry."""
    R = logits.shape[0]
    row_vals = np.empty((R, k), np.float32)
    row_idx = np.empty((R, k), np.int64)
    _cpu.beam_topk(logits, beam_scores, num_beams, k, row_vals, row_idx, vals, idx, threads)
    return vals, idx
