"""The transformer block and the stack runner of every family (Vaswani et al. 2017, section 3.1):
the encoder-only, decoder-only and encoder-decoder models all run their layers through `run`.

What varies between families is data, not code:
  BlockSpec     norm kind ("layer_norm" / "rms_norm", Zhang & Sennrich 2019) and placement
                (post-LN as the paper and BERT, pre-LN as GPT-2 / Llama / T5: Xiong et al. 2020),
                the FFN (plain, or gated: Shazeer 2020 "GLU Variants Improve Transformer"),
                heads (n_heads, n_kv_heads for grouped-query attention, head_dim), causal or not,
                cross-attention, the position scheme and the attention scale.
  Layer         the weights of one block, looked up once when the model is placed.
  attention     a context object per forward that says what the block's attention does with
  contexts      the fused projection of layer i: PackedSelfAttention (ragged prefill / encoder,
                optionally filling a KVCache), CachedSelfAttention (one new token per row
                against its KVCache), PackedCrossAttention / CachedCrossAttention (queries
                against an encoder's keys and values). Rotary positions (RoFormer) and attention
                biases (ALiBi, Press et al. 2022; relative buckets, Raffel et al. 2020) belong
                to the contexts, which know the positions.
  KVCache       keys and values of every layer, sized by shapes.

Our tensor names of one block under its prefix `<stack>layers.{i}.` (C = d_model, Q = H * D,
K = Hkv * D, F = d_ff; biases optional; norms have no bias for RMSNorm):
  norm1.*  qkv.weight (Q + 2K, C) rows Q | K | V  out.weight (C, Q)   (self-attention)
  norm_cross.*  cross_q.weight (Q, C)  cross_out.weight (C, Q)        (cross-attention only;
                the keys and values come from the encoder, cross_kv.weight (2Q, C))
  norm2.*  ff1.weight (F, C), or gated (2F, C) rows gate | up  ff2.weight (C, F)
and `<stack>final_norm.*` after the last block when present.

Kernels come from the backend object chosen at placement (transformer.ops.backend; `k` below):
no argument is checked here, the models check their inputs once at their boundary; what
differs between devices (how the KV cache reorders, how a decode step's attention runs) is the
backend's, never tested here."""
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..ops.backend import VarlenPlan


NORMS = ("layer_norm", "rms_norm")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")  # of the FFN (gated: act(gate) * up)
POSITIONS = ("learned", "sinusoidal", "rotary", "alibi", "relative", "none")


def _positive(name, value, optional=True):
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class BlockSpec:
    """What varies in a block.

    norm "layer_norm" or "rms_norm" with eps; pre_norm (norm before each sub-layer, residual
    added after; else post-LN: norm(x + sublayer(x))); activation of the FFN ("relu", "gelu",
    "gelu_tanh", "silu"); gated (act(gate) * up from a fused (2F, C) ff1); attention_scale
    (None: 1/sqrt(head_dim); T5: 1.0); n_heads H, n_kv_heads Hkv (None: H), head_dim D;
    causal self-attention; cross_attention (a decoder of an encoder-decoder); positions: how
    positions enter ("learned" / "sinusoidal" tables at the embedding, "rotary" in the
    attention contexts, "alibi" / "relative" attention biases, "none"); rope_interleaved
    (rotary pairs (2i, 2i+1) as llama2.c, else (i, i + D/2) as HF rotate_half)."""

    norm: str = "layer_norm"
    eps: float = 1e-5
    pre_norm: bool = False
    activation: str = "gelu"
    gated: bool = False
    attention_scale: float = None
    n_heads: int = None
    n_kv_heads: int = None
    head_dim: int = None
    causal: bool = False
    cross_attention: bool = False
    positions: str = "learned"
    rope_interleaved: bool = False

    def __post_init__(self):
        """The one vocabulary of blocks, checked: norm in NORMS with eps > 0, activation in
        ACTIVATIONS, positions in POSITIONS, positive head counts with n_heads a multiple of
        n_kv_heads, an even head_dim for rotary positions, a positive attention_scale or None.
        Raises ValueError naming the field."""
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ValueError(f"norm eps must be positive, got {self.eps!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        for name in ("n_heads", "n_kv_heads", "head_dim"):
            _positive(name, getattr(self, name))
        if self.n_heads and self.n_kv_heads and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.positions == "rotary" and self.head_dim and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.attention_scale is not None and not self.attention_scale > 0:
            raise ValueError(f"attention_scale must be positive or None, got "
                             f"{self.attention_scale!r}")

    @property
    def kv_heads(self):
        """Hkv (n_kv_heads, default n_heads)."""
        return self.n_kv_heads or self.n_heads


class Layer:
    """The weights of one block (module docstring names), looked up once: each linear and norm
    as a (weight, bias or None) pair; the cross-attention pairs are None without it."""

    NAMES = ("norm1", "qkv", "out", "norm_cross", "cross_q", "cross_kv", "cross_out", "norm2",
             "ff1", "ff2")
    __slots__ = NAMES

    def __init__(self, w, prefix):
        for name in self.NAMES:
            weight = w.get(prefix + name + ".weight")
            setattr(self, name, None if weight is None
                    else (weight, w.get(prefix + name + ".bias")))


def layers(w, prefix):
    """[Layer] of the blocks `<prefix>layers.{i}.` (i = 0.. while `<prefix>layers.{i}.qkv.weight`
    is in the weights w), then the (weight, bias) pair of `<prefix>final_norm` or None:
    (layers, final_norm)."""
    final = w.get(prefix + "final_norm.weight")
    n = 0
    while f"{prefix}layers.{n}.qkv.weight" in w:
        n += 1
    return ([Layer(w, f"{prefix}layers.{i}.") for i in range(n)],
            None if final is None else (final, w.get(prefix + "final_norm.bias")))


def norm(spec, k, pair, x, residual=None):
    """norm(x + residual) with pair = (weight, bias): the residual (post-LN) fused into the
    LayerNorm kernel, added first for RMSNorm. k: the backend object."""
    if spec.norm == "rms_norm":
        if residual is not None:
            x = k.add(x, residual)
        return k.rms_norm(x, pair[0], spec.eps)
    return k.layer_norm(x, pair[0], pair[1], spec.eps, residual)


def feed_forward(spec, k, layer, x):
    """ff2(act(ff1(x))), or gated: ff2(act(gate) * up) with ff1 = gate | up (one fused gated
    kernel, SwiGLU for silu)."""
    if not spec.gated:
        return k.linear(k.linear(x, *layer.ff1, spec.activation), *layer.ff2)
    return k.linear(k.swiglu(k.linear(x, *layer.ff1), spec.activation), *layer.ff2)


def sublayer(spec, k, pair, h, fn):
    """One post-LN residual sub-layer around fn (attention or FFN) with the norm `pair`:
    norm(h + fn(h)), the residual add fused into the norm kernel."""
    return norm(spec, k, pair, fn(h), residual=h)


def run(spec, k, stack, h, attend, cross_attend=None):
    """The stack: each block's self-attention, cross-attention (when cross_attend is given) and
    feed-forward sub-layers, then the final norm when the stack has one.

    Post-LN: h = norm(h + f(h)) per sub-layer. Pre-LN: h = h + f(norm(h)), each residual add
    fused with the norm that follows it (the backend's add_norm), so the residual stream h and the
    next sub-layer's input x come from one kernel.

    spec: BlockSpec; k: the backend object; stack: (layers, final_norm) from `layers`; h (N, C) rows
    of the model's dtype; attend(i, qkv (N, Q + 2K)) -> context (N, Q) and cross_attend(i,
    q (N, Q)) -> context (N, Q): attention contexts of this forward. Returns (N, C)."""
    blocks, final = stack
    if not spec.pre_norm:
        for i, layer in enumerate(blocks):
            h = sublayer(spec, k, layer.norm1, h,
                         lambda x: k.linear(attend(i, k.linear(x, *layer.qkv)), *layer.out))
            if cross_attend is not None:
                h = sublayer(spec, k, layer.norm_cross, h, lambda x: k.linear(
                    cross_attend(i, k.linear(x, *layer.cross_q)), *layer.cross_out))
            h = sublayer(spec, k, layer.norm2, h, lambda x: feed_forward(spec, k, layer, x))
        return h if final is None else norm(spec, k, final, h)
    if not blocks:
        return h if final is None else norm(spec, k, final, h)
    rms = spec.norm == "rms_norm"
    x = norm(spec, k, blocks[0].norm1, h)
    for i, layer in enumerate(blocks):
        y = k.linear(attend(i, k.linear(x, *layer.qkv)), *layer.out)
        if cross_attend is not None:
            h, x = k.add_norm(h, y, *layer.norm_cross, spec.eps, rms)
            y = k.linear(cross_attend(i, k.linear(x, *layer.cross_q)), *layer.cross_out)
        h, x = k.add_norm(h, y, *layer.norm2, spec.eps, rms)
        y = feed_forward(spec, k, layer, x)
        following = blocks[i + 1].norm1 if i + 1 < len(blocks) else final
        if following is None:
            return k.add(h, y)
        h, x = k.add_norm(h, y, *following, spec.eps, rms)
    return x


# -- attention contexts ---------------------------------------------------------------------------
class _SelfAttention:
    """What both self-attention contexts share: splitting the fused projection, rotary positions
    (rope: (cos, sin) tables on the device, or None) and the attention bias (an
    ops.PositionBias or None)."""

    rope_positions = None

    def __init__(self, spec, k, positions, rope, position_bias):
        self.spec, self.k = spec, k
        self.H, self.Hkv, self.D = spec.n_heads, spec.kv_heads, spec.head_dim
        self.rope, self.position_bias = rope, position_bias
        self.positions = positions

    def split(self, qkv):
        """q (N, H, D) and k, v (N, Hkv * D) views of qkv (N, Q + 2K), rotated first if
        rotary."""
        H, Hkv, D = self.H, self.Hkv, self.D
        if self.rope is not None:
            if self.rope_positions is None:  # on x's device, made once
                self.rope_positions = self.k.indices(self.positions)
            self.k.rotary(qkv, self.rope_positions, *self.rope, H + Hkv,
                          self.spec.rope_interleaved)
        return (qkv[:, :H * D].reshape(qkv.shape[0], H, D), qkv[:, H * D:(H + Hkv) * D],
                qkv[:, (H + Hkv) * D:])



class PackedSelfAttention(_SelfAttention):
    """Self-attention of packed rows (N, ...) with cu_seqlens cu (B+1,): sequence b's rows
    cu[b]:cu[b+1] attend to each other (causal when spec.causal). positions (N,): each row's
    position (rotary). With a KVCache, row j of sequence b also stores its keys and values at
    cache row b, position slots[j] (the prefill of generation)."""

    def __init__(self, spec, k, cu, positions=None, rope=None, position_bias=None,
                 cache=None, slots=None):
        super().__init__(spec, k, positions, rope, position_bias)
        self.plan = VarlenPlan(cu)
        self.cache = cache
        if cache is not None:
            seq = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
            self.cache_index = cache.index(seq, slots)

    def __call__(self, i, qkv):
        q, k, v = self.split(qkv)
        if self.cache is not None:
            self.cache.write(i, self.cache_index, k, v)
        N, Hkv, D = len(q), self.Hkv, self.D
        ctx = self.k.attention_varlen(q, k.reshape(N, Hkv, D), v.reshape(N, Hkv, D), self.plan,
                                      self.spec.causal, self.spec.attention_scale,
                                      self.position_bias)
        return ctx.reshape(N, -1)


class CachedSelfAttention(_SelfAttention):
    """Self-attention of one new token per cache row r < R at positions (R,) int64 = the
    row's filled length: its keys and values are appended to the KVCache at position
    positions[r] of plane r (entered in the cache's plane table), then it attends to the row's
    keys 0..positions[r] through that table: the backend's decode_self_attention (one fused
    kernel on the CPU)."""

    def __init__(self, spec, k, cache, positions, rope=None, position_bias=None):
        super().__init__(spec, k, positions, rope, position_bias)
        R = len(positions)
        self.cache, self.R = cache, R
        rows = np.arange(R)
        self.lengths = (positions + 1).astype(np.int32)
        cache.planes[rows, positions] = rows
        self.kv_rows = cache.planes[:R]
        self.chunk = k.decode_chunk(self.lengths, self.Hkv)

    def __call__(self, i, qkv):
        kc, vc = self.cache.layers[i]
        ctx = self.k.decode_self_attention(
            qkv, self.H, self.positions, self.rope, self.spec.rope_interleaved, kc, vc,
            self.lengths, self.spec.attention_scale, self.kv_rows, self.position_bias,
            self.chunk)
        return ctx.reshape(self.R, -1)


class PromptChunk(_SelfAttention):
    """Self-attention of the next n tokens of one sequence's prompt, at positions
    start..start+n-1 of KVCache row `row` (chunked prefill, Agrawal et al. 2023 "SARATHI"):
    their keys and values are written there, then each attends causally to the row's keys up to
    itself (the earlier chunks read from the cache; the attention kernel aligns causal queries
    to the end of the keys). Chunks that start at multiples of the kernel's query tile (64
    rows) give the same bits as the whole prompt through PackedSelfAttention: the same query
    tiles meet the same key blocks. rope: (cos, sin) or None; position_bias as the others."""

    def __init__(self, spec, k, cache, row, start, n, rope=None, position_bias=None):
        super().__init__(spec, k, np.arange(start, start + n, dtype=np.int64), rope,
                         position_bias)
        self.cache, self.row, self.n = cache, row, n
        self.index = cache.index(np.full(n, row), self.positions)
        self.plan = VarlenPlan([0, n], [0, start + n])

    def __call__(self, i, qkv):
        q, k, v = self.split(qkv)
        self.cache.write(i, self.index, k, v)
        kc, vc = self.cache.layers[i]
        r = self.row
        ctx = self.k.attention(q[None], kc[r:r + 1], vc[r:r + 1], self.plan, self.spec.causal,
                               self.spec.attention_scale, position_bias=self.position_bias)
        return ctx.reshape(self.n, -1)


class RowGroups:
    """The attention of several independent forwards run as one: rows [offsets[g],
    offsets[g + 1]) belong to contexts[g] (a CachedSelfAttention, CachedCrossAttention, ... of
    its own cache), which attends them alone; the linears, norms and FFN around it run once over
    all rows. So a decode step of many requests (the serving engine's continuous batching)
    reads each weight once, and each request's rows get what they would alone whenever the
    products are row invariant (transformer.ops.backend.Backend.row_invariant).
    offsets: (G + 1,) host integers from 0."""

    def __init__(self, k, contexts, offsets):
        self.k, self.contexts, self.offsets = k, contexts, [int(o) for o in offsets]

    def __call__(self, i, x):
        o = self.offsets
        return self.k.xp.concatenate([ctx(i, x[o[g]:o[g + 1]])
                                      for g, ctx in enumerate(self.contexts)])


def row_groups(k, contexts, sizes):
    """The attention of consecutive row groups of `sizes` rows, each attended by its own
    context: contexts[0] itself for one group (no bookkeeping on a lone request's decode
    step), else a RowGroups; and the offsets (G + 1,) that split_rows cuts the forward's
    output by (None for one group)."""
    if len(contexts) == 1:
        return contexts[0], None
    offsets = np.cumsum([0] + list(sizes))
    return RowGroups(k, contexts, offsets), offsets


def split_rows(x, offsets):
    """x (N, ...) cut into its row groups [offsets[g], offsets[g + 1]) (views); [x] for
    offsets None (one group)."""
    if offsets is None:
        return [x]
    return [x[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def concat_rows(arrays):
    """The host arrays of every row group as one (the array itself for one group)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class PackedCrossAttention:
    """Cross-attention of packed decoder rows with cu_seqlens cu to an encoder's packed keys and
    values: kv[i] (Ns, 2, H, D) of layer i with cu_seqlens cu_k. record(i, q (N, H, D)) is
    called first when given (the alignment weights of CTranslate2's return_attention)."""

    def __init__(self, spec, k, cu, kv, cu_k, record=None):
        self.spec, self.k, self.kv, self.record = spec, k, kv, record
        self.plan = VarlenPlan(cu, cu_k)

    def __call__(self, i, q):
        spec = self.spec
        q = q.reshape(len(q), spec.n_heads, spec.head_dim)
        if self.record is not None:
            self.record(i, q)
        kv = self.kv[i]
        ctx = self.k.attention_varlen(q, kv[:, 0], kv[:, 1], self.plan, False,
                                      spec.attention_scale)
        return ctx.reshape(len(q), -1)


class CachedCrossAttention:
    """Cross-attention of one decoder query per row r < R to the encoder output of source
    src[r]: planes[i] = (k, v) (B, S_max, H, D) of layer i, lengths (B,) the sources' real
    tokens. record as PackedCrossAttention."""

    def __init__(self, spec, k, planes, lengths, src, record=None):
        self.spec, self.k, self.planes, self.record = spec, k, planes, record
        self.src = np.ascontiguousarray(src, np.int32)
        self.lengths = np.ascontiguousarray(lengths[self.src], np.int32)

    def __call__(self, i, q):
        spec = self.spec
        q = q.reshape(len(q), spec.n_heads, spec.head_dim)
        if self.record is not None:
            self.record(i, q)
        kc, vc = self.planes[i]
        ctx = self.k.decode_attention(q, kc, vc, self.lengths, spec.attention_scale,
                                      kv_index=self.src)
        return ctx.reshape(len(q), -1)


# -- the KV cache -----------------------------------------------------------------------------------
class KVCache:
    """Keys and values of every layer, preallocated for `max_length` positions and written in
    place, sized by shapes: k, v (n_layers, batch_size, max_length, n_kv_heads, head_dim) on the
    device of `backend` (a transformer.ops.backend object, default the CPU's) in its activation
    dtype; lengths (B,) int32, the positions filled per sequence (ragged: sequence b owns rows
    [0, lengths[b])); planes (B, max_length) int32: the plane of k/v holding position j of
    sequence b (b itself until a beam search reorders the sequences). lengths and planes live
    on the host on every device. How the cache reorders is the backend's (reorder_cache: on
    the CPU the table is permuted and the keys stay in place; on the GPU the keys are gathered
    and the table stays the identity: copy_on_reorder)."""

    def __init__(self, n_layers, batch_size, max_length, n_kv_heads, head_dim, backend=None):
        shape = (n_layers, batch_size, max_length, n_kv_heads, head_dim)
        self.backend = ops.backend() if backend is None else backend
        self.k = self.backend.empty(shape)
        self.v = self.backend.empty(shape)
        self.lengths = np.zeros(batch_size, np.int32)
        self.max_length = max_length
        self.planes = np.repeat(np.arange(batch_size, dtype=np.int32)[:, None], max_length, 1)
        self.layers = [(self.k[i], self.v[i]) for i in range(n_layers)]  # per-layer views
        # (L, B * max_length, Hkv * D) views: one flat index per write
        self._k_rows = self.k.reshape(n_layers, -1, n_kv_heads * head_dim)
        self._v_rows = self.v.reshape(n_layers, -1, n_kv_heads * head_dim)

    @property
    def copy_on_reorder(self):
        """True when reorder gathers the keys and values (the plane table stays the identity),
        False when it permutes the plane table: the backend's strategy."""
        return self.backend.copy_on_reorder

    def index(self, rows, slots):
        """The flat write index of positions slots (N,) of cache rows `rows` (N,) (int64
        NumPy), for `write`: an index array on the cache's device, or a slice for one row."""
        flat = rows * self.max_length + slots
        if len(flat) == 1:  # one row (a batch-1 decode step): a slice, cheaper than a gather
            return slice(int(flat[0]), int(flat[0]) + 1)
        return self.backend.indices(flat)

    def write(self, layer, index, k, v):
        """Store keys and values k, v (N, Hkv * D) of `layer` at the flat `index` (N,)."""
        self._k_rows[layer, index] = k
        self._v_rows[layer, index] = v

    def reorder(self, index):
        """Keep sequences `index` (B',) in that order, B' <= the current count (beam search
        reordering beams, or dropping the sequences that finished): the backend's
        reorder_cache."""
        self.backend.reorder_cache(self, index)
