"""Attention score biases computed from query and key positions inside the attention kernels
(never materialised as an (H, T, S) tensor): ALiBi and relative position buckets.

- ALiBi (Press et al. 2022, "Train Short, Test Long", section 3; HF modeling_bloom.py
  build_alibi_tensor): score[h, i, j] += slope_h * j, j the key's position among its sequence's
  real tokens (equal under softmax to slope_h * (j - i)); slopes 2^(-8 k / n) for n heads, a
  power of two, interleaved for the rest (`alibi_slopes`).
- Relative position buckets (T5, Raffel et al. 2020, section 2.1; MPNet, Song et al. 2020; HF
  modeling_t5.py T5Attention._relative_position_bucket): score[h, i, j] +=
  table[h, bucket(j - i)], log-spaced buckets beyond num_buckets / 2 (a quarter when
  bidirectional, where keys after the query use the upper half), saturated at max_distance.
"""
import math

import numpy as np

__all__ = ["PositionBias", "alibi_slopes", "relative_bucket"]


def alibi_slopes(n_heads):
    """ALiBi head slopes (n_heads,) float32, HF BLOOM's build_alibi_tensor: for the largest power
    of two p <= n_heads, 2^(-8 (k + 1) / p) for k < p; the remaining heads take every other
    slope of 2p heads, 2^(-4 (2 k + 1) / p). Raises ValueError for n_heads < 1."""
    if not isinstance(n_heads, (int, np.integer)) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
    p = 2 ** int(math.floor(math.log2(n_heads)))
    base = 2.0 ** (-(2.0 ** -(math.log2(p) - 3)))
    slopes = [base ** k for k in range(1, p + 1)]
    if p != n_heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * p) - 3)))
        slopes += [extra ** k for k in range(1, 2 * (n_heads - p), 2)]
    return np.array(slopes, np.float32)


def relative_bucket(relative_position, num_buckets=32, max_distance=128, bidirectional=True):
    """Bucket of each key - query distance (an integer array), HF's formula: exact buckets for
    small distances, then log-spaced up to max_distance (float32 arithmetic, as HF computes it
    in PyTorch), saturated at the last bucket. Returns int64 of relative_position's shape."""
    rel = np.asarray(relative_position, np.int64)
    ret = np.zeros(rel.shape, np.int64)
    if bidirectional:
        num_buckets //= 2
        ret += (rel > 0) * num_buckets
        n = np.abs(rel)
    else:
        n = np.maximum(-rel, 0)
    max_exact = num_buckets // 2
    # n >= 1 inside the log: distances below max_exact take the exact branch anyway
    large = max_exact + (np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
                         / np.float32(math.log(max_distance / max_exact))
                         * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return ret + np.where(n < max_exact, n, large)


class PositionBias:
    """A position bias for ops.attention / attention_varlen / decode_attention (the CPU and
    the CUDA kernels, which take the same kernel_args()).

    PositionBias.alibi(slopes): slopes (H,) float. PositionBias.relative(table, max_distance,
    bidirectional): table (H, num_buckets) float, the learned bias of each head and bucket
    (HF's relative_attention_bias weight, transposed). Positions: the queries of a sequence sit
    at the end of its keys (query t of T at t + S - T, as with a KV cache), keys at 0..S-1.
    max_length: the longest sequence the bias will see (None: any): the kernels' table of
    buckets per distance then stops at that distance, not at max_distance, so that a huge
    max_distance costs nothing (the bucket of a distance does not depend on it).
    Raises ValueError for shapes or values that do not fit."""

    def __init__(self, slopes=None, table=None, max_distance=128, bidirectional=True,
                 max_length=None):
        if (slopes is None) == (table is None):
            raise ValueError("give exactly one of slopes (ALiBi) and table (relative buckets)")
        self.slopes = None if slopes is None else _vector("slopes", slopes)
        self.table = None if table is None else np.ascontiguousarray(table, np.float32)
        if self.table is not None and (self.table.ndim != 2 or self.table.shape[1] < 2):
            raise ValueError(f"table must be (H, num_buckets >= 2), got {self.table.shape}")
        if not (isinstance(max_distance, (int, np.integer)) and max_distance >= 1):
            raise ValueError(f"max_distance must be a positive integer, got {max_distance!r}")
        if max_length is not None and not (isinstance(max_length, (int, np.integer))
                                           and max_length >= 1):
            raise ValueError(f"max_length must be None or a positive integer, got "
                             f"{max_length!r}")
        self.max_distance, self.bidirectional = int(max_distance), bool(bidirectional)
        self.max_length = None if max_length is None else int(max_length)
        self.n_heads = len(self.slopes) if self.table is None else self.table.shape[0]
        self._kernel_args = None

    @classmethod
    def alibi(cls, slopes):
        """ALiBi with per-head slopes (H,) (alibi_slopes(H) for BLOOM)."""
        return cls(slopes=slopes)

    @classmethod
    def relative(cls, table, max_distance=128, bidirectional=True, max_length=None):
        """Relative position buckets with a learned (H, num_buckets) table."""
        return cls(table=table, max_distance=max_distance, bidirectional=bidirectional,
                   max_length=max_length)

    def kernel_args(self):
        """Keyword arguments of the backends' attention kernels (transformer._cpu.attention /
        decode_attention; transformer.ops.cuda takes the same and uploads the tables once):
        alibi, rel_table, bucket_of (the bucket of each distance 0.. max_distance + 1, whose
        last entry saturates), half (bidirectional: the first bucket of keys after the query),
        bidirectional."""
        if self._kernel_args is None:
            if self.table is None:
                self._kernel_args = dict(alibi=self.slopes)
            else:
                nb = self.table.shape[1]
                # distances 0..max_distance + 1 (the last saturates), or only up to the
                # longest that occurs (a distance past the table reads its last entry)
                n = np.arange(self.max_distance + 2 if self.max_length is None
                              else min(self.max_distance + 2, self.max_length + 1))
                # the distance's bucket without the "key after query" offset
                of = relative_bucket(-n, nb, self.max_distance, self.bidirectional)
                self._kernel_args = dict(rel_table=self.table,
                                         bucket_of=np.ascontiguousarray(of, np.int32),
                                         half=nb // 2 if self.bidirectional else 0,
                                         bidirectional=self.bidirectional)
        return self._kernel_args

    def dense(self, T, S):
        """The (H, T, S) float64 bias of T queries (at S - T..) against S keys (tests, the
        float64 reference)."""
        i = np.arange(S - T, S)[:, None]
        j = np.arange(S)[None, :]
        if self.table is None:
            return self.slopes.astype(np.float64)[:, None, None] * np.broadcast_to(j, (T, S))
        buckets = relative_bucket(j - i, self.table.shape[1], self.max_distance,
                                  self.bidirectional)
        return self.table.astype(np.float64)[:, buckets]


def _vector(name, a):
    a = np.ascontiguousarray(a, np.float32)
    if a.ndim != 1 or not a.size or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a non-empty 1-D array of finite values, got {a.shape}")
    return a
