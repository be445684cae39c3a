"""The CPU backend: float32 activations on NumPy, kernels in csrc/cpu (transformer._cpu), called
directly from each method. float32 / int8 / int4 / bfloat16 are compute types of the matrix
products (weights packed as transformer.ops.packed.PackedWeight); everything else stays float32.
The interface and its contract (no checks): transformer.ops.backend."""

import numpy as np

from .. import _cpu
from .backend import Backend, on_device
from .packed import PackedWeight


def packs(name, a):
    """True for a weight that a CPU model packs (every compute type): a 2-D tensor named
    "*.weight" (a linear layer, the LM head) or "*embeddings.word" (a word-embedding table,
    gathered from the packed rows; tied to the LM head it stays one array)."""
    return getattr(a, "ndim", 0) == 2 and (name.endswith(".weight")
                                           or name.endswith("embeddings.word"))


class CPUBackend(Backend):
    """The kernels of csrc/cpu for `threads`, bound once. Methods take and return float32
    C-contiguous NumPy arrays (weights float32 or PackedWeight) and allocate their output unless
    `out` is given. dtype: the model's compute type ("float32", "int8", "int4", "bfloat16"), which
    place_weight packs for."""

    device = "cpu"
    xp = np
    act_dtype = np.dtype(np.float32)
    copy_on_reorder = False  # reorder_cache permutes the plane table, the keys stay in place

    # -- rows ---------------------------------------------------------------------------------
    def linear(self, x, weight, bias=None, activation=None, out=None):
        """act(x (N, K) @ weight (O, K)^T + bias (O,)) -> (N, O); weight float or PackedWeight."""
        if out is None:
            out = self.xp.empty((x.shape[0], weight.shape[0]), np.float32)
        if type(weight) is PackedWeight:
            weight.linear(x, bias, activation, out, self.threads)
        else:
            _cpu.linear(x, weight, bias, out, activation, self.threads, self.row_invariant)
        return out

    def bias_act(self, x, bias, activation):
        """x (N, O) = act(x + bias), in place; returns x."""
        _cpu.bias_act(x, bias, activation, self.threads)
        return x

    def add(self, a, b, out=None):
        """a + b (N, C) -> a new array (the residual add), or into out."""
        if out is None:
            return a + b
        return np.add(a, b, out=out)

    def layer_norm(self, x, weight, bias, eps, residual=None, out=None):
        """LayerNorm(x + residual) * weight + bias over rows (N, C) -> (N, C); out may alias
        the residual."""
        if out is None:
            out = self.xp.empty(x.shape, np.float32)
        _cpu.layer_norm(x, residual, weight, bias, eps, out, self.threads)
        return out

    def rms_norm(self, x, weight, eps, out=None):
        """RMSNorm(x) * weight over rows (N, C) -> (N, C)."""
        if out is None:
            out = self.xp.empty(x.shape, np.float32)
        _cpu.rms_norm(x, weight, eps, out, self.threads)
        return out

    def add_norm(self, h, y, weight, bias, eps, rms):
        """The pre-LN residual step fused with the next norm: s = h + y and norm(s) (RMSNorm
        when rms, else LayerNorm with bias) of rows (N, C), one kernel. Returns (s, norm(s))."""
        s, out = self.xp.empty(h.shape, np.float32), self.xp.empty(h.shape, np.float32)
        if rms:
            _cpu.rms_norm(y, weight, eps, out, self.threads, h, s)
        else:
            _cpu.layer_norm(y, h, weight, bias, eps, out, self.threads, s)
        return s, out

    def swiglu(self, gate_up, activation="silu", out=None):
        """act(gate) * up of gate_up (N, 2F) -> (N, F); act one of ops.GATED_ACTIVATIONS
        (silu: SwiGLU); out may alias gate_up's first half."""
        if out is None:
            out = self.xp.empty((gate_up.shape[0], gate_up.shape[1] // 2), np.float32)
        _cpu.swiglu(gate_up, out, self.threads, activation)
        return out

    def softmax(self, x, mask=None, out=None):
        """softmax(x + mask) of rows (N, S), mask float32 (N, S) or None -> (N, S)."""
        if out is None:
            out = self.xp.empty(x.shape, np.float32)
        _cpu.softmax(x, mask, out, self.threads)
        return out

    def rotary(self, x, positions, cos, sin, n_heads, interleaved):
        """Rotary embedding of the first n_heads heads of each row of x (N, W) in place;
        positions (N,) int64, cos / sin (P, D/2) float32. Returns x."""
        _cpu.rotary(x, positions, cos, sin, n_heads, 2 * cos.shape[1], interleaved, self.threads)
        return x

    def embedding(self, ids, positions, word, position, norm_weight=None, norm_bias=None,
                  eps=0.0, token_types=None, token_type=None, out=None):
        """LayerNorm?(word[ids] + position[positions] + token_type[token_types]) -> (N, C);
        ids, positions, token_types (N,) int64; word float or PackedWeight (rows gathered and
        dequantized first)."""
        if type(word) is PackedWeight:  # gather and dequantize the rows, then the fused sum
            word, ids = word.rows(ids, self.threads), np.arange(len(ids), dtype=np.int64)
        if out is None:
            out = self.xp.empty((len(ids), word.shape[1]), np.float32)
        _cpu.embedding(ids, positions, token_types, word, position, token_type, norm_weight,
                       norm_bias, eps if norm_weight is not None else 0.0, out, self.threads)
        return out

    # -- attention ----------------------------------------------------------------------------
    def attention(self, q, k, v, plan, causal, scale, key_bias=None, position_bias=None,
                  out=None):
        """Tiled attention over planes q (P, rows, H, D), k, v (P, rows_k, Hkv, D) (any row
        and head strides, D contiguous) for the sequences of plan (a VarlenPlan); key_bias
        (P, rows_k) float32 additive or None; scale None: 1/sqrt(D). Returns out."""
        if out is None:
            out = self.xp.empty(q.shape, np.float32)
        scale, bias = self.attention_args(q.shape[-1], scale, position_bias)
        _cpu.attention(q, k, v, out, plan.planes, plan.starts, plan.lens, plan.k_starts,
                       plan.k_lens, key_bias, causal, scale, self.threads, **bias)
        return out

    def decode_attention(self, q, k_cache, v_cache, lengths, scale=None, kv_index=None,
                         kv_rows=None, key_bias=None, position_bias=None, chunk=None, out=None):
        """One query per row q (R, H, D) against caches (Bkv, S_max, Hkv, D): row r attends to
        keys [0, lengths[r]) (int32 host array) of plane kv_index[r] (int32, default r), or
        through the plane table kv_rows (R, S_max) int32; key_bias (Bkv, S_max) float32 or None;
        chunk: keys per work item (None: decode_chunk). Returns out (R, H, D)."""
        if out is None:
            out = self.xp.empty(q.shape, np.float32)
        if not len(q):
            return out
        scale, bias = self.attention_args(q.shape[2], scale, position_bias)
        _cpu.decode_attention(q, k_cache, v_cache, kv_index, kv_rows, lengths, key_bias, out,
                              scale, self.decode_chunk(lengths, k_cache.shape[2])
                              if chunk is None else chunk, self.threads, **bias)
        return out

    def decode_self_attention(self, qkv, n_heads, positions, rope, interleaved, k_cache,
                              v_cache, lengths, scale, kv_rows=None, position_bias=None,
                              chunk=None):
        """A decode step's self-attention, one fused kernel: qkv (R, (H + 2 Hkv) D) float32
        fused projections of one new token per row, rotated in place by positions (R,) int64
        when rope = (cos, sin) is given; each row's K and V heads stored at positions[r] of
        plane r of k_cache, v_cache (Bkv, S_max, Hkv, D) (one layer, C-contiguous); then its Q
        heads attend to keys [0, lengths[r]) (lengths = positions + 1, int32), through the
        plane table kv_rows (R, S_max) int32 when given. Returns (R, H, D)."""
        R, D = len(qkv), k_cache.shape[3]
        out = self.xp.empty((R, n_heads, D), np.float32)
        cos, sin = (None, None) if rope is None else rope
        scale, bias = self.attention_args(D, scale, position_bias)
        _cpu.decode_self_attention(
            qkv, n_heads, positions, cos, sin, interleaved, k_cache, v_cache, kv_rows, lengths,
            out, scale,
            self.decode_chunk(lengths, k_cache.shape[2]) if chunk is None else chunk,
            self.threads, **bias)
        return out

    def decode_chunk(self, lengths, n_kv_heads):
        """Keys per work item of decode_attention for rows of `lengths` (host integers): at
        least two work items per thread, at least 32 keys per item."""
        per_thread = max(1, -(-2 * self.threads // max(1, len(lengths) * n_kv_heads)))
        return max(32, -(-max(lengths.tolist()) // per_thread))

    def beam_topk(self, logits, beam_scores, num_beams, k, out=None):
        """One beam-search selection step, fused: log_softmax of logits (R, V) float32 plus
        beam_scores (R,), then per batch entry the k best of its num_beams * V scores, best
        first, equal values in ascending index. Returns (values (B, k) float32, indices (B, k)
        int64), NumPy, written into out = (values, indices) when given."""
        B = len(logits) // num_beams
        vals, idx = (self.xp.empty((B, k), np.float32), self.xp.empty((B, k), np.int64)) \
            if out is None else out
        if B:
            row_vals = self.xp.empty((len(logits), k), np.float32)
            row_idx = self.xp.empty((len(logits), k), np.int64)
            _cpu.beam_topk(logits, beam_scores, num_beams, k, row_vals, row_idx, vals, idx,
                           self.threads)
        return vals, idx

    # -- placement and outputs ------------------------------------------------------------------
    def release_threads(self):
        """Release the OpenMP workers of the calling thread (transformer._cpu.release_threads):
        call it in a thread that ran kernels (e.g. where the model was loaded) before other
        threads run them, or libgomp's idle workers stop spinning and every kernel of those
        threads pays a wake-up (several times slower on few cores). They come back on the
        caller's next kernel."""
        _cpu.release_threads()

    def place_weight(self, name, a):
        """Weight `name` (host or device array, or PackedWeight) as the model keeps it: packed
        for the compute type when `packs` says so (float32 as it is, int8 quantized per row,
        CTranslate2's int8; int4 per group of 32; transformer.ops.packed), else float32
        (place)."""
        if packs(name, a):
            return PackedWeight.pack(a, self.dtype)
        return self.place(a)

    def place(self, a):
        """A float array (host or device, or a PackedWeight, dequantized) as a weight-like
        table of the model: C-contiguous float32 NumPy."""
        if on_device(a):  # a GPU model coming back: decoded to float32 on the host
            from .cuda import to_host
            a = to_host(a)
        return np.ascontiguousarray(a, dtype=np.float32)

    def upload(self, a):
        """A host array on the device, its dtype kept: a itself."""
        return a

    def indices(self, a):
        """Host integers as a C-contiguous int64 array on the device."""
        return np.ascontiguousarray(a, np.int64)

    def to_host(self, a):
        """A NumPy array of a model array (float32 on the CPU): a itself."""
        return a

    def output(self, x):
        """A float output as returned to the user: x itself (float32 whatever the compute
        type)."""
        return x

    def from_host(self, a):
        """A host array computed for the user (token ids, scores) as returned: a itself."""
        return a

    def segment_sums(self, h, cu):
        """Per sequence sums (B, C) float64 of packed rows h (N, C) with cu_seqlens cu (B+1,)
        (each sequence non-empty)."""
        return np.add.reduceat(h.astype(np.float64), cu[:-1], axis=0)

    def reorder_cache(self, cache, index):
        """Keep sequences `index` (B',) of a models.block.KVCache in that order. When every
        slot r < B' keeps its length (beams of one prompt reordered among themselves), only
        the plane table is permuted: every position the table points to lies below the length
        of its plane's slot, so the next token of slot r goes to a position of plane r that
        nobody reads. Otherwise the filled positions are gathered in place and the table
        reset."""
        index = np.asarray(index)
        R, S = len(index), int(cache.lengths[index].max(initial=0))  # the filled positions
        if np.array_equal(cache.lengths[index], cache.lengths[:R]):
            cache.planes[:R, :S] = cache.planes[index, :S]
            return
        src = cache.planes[index, :S]  # (R, S) plane of each position, positions along axis 1
        pos = np.arange(S)[None]
        cache.k[:, :R, :S] = cache.k[:, src, pos]
        cache.v[:, :R, :S] = cache.v[:, src, pos]
        cache.planes[:] = np.arange(len(cache.planes), dtype=np.int32)[:, None]
        cache.lengths[:R] = cache.lengths[index]
