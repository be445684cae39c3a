"""Encoder-decoder Transformer (Vaswani et al. 2017, section 3.1): an encoder stack, a decoder
stack with masked self-attention and cross-attention over the encoder output, and the LM head.
Marian, BART and CTranslate2 TransformerBase/Big models are this class with different settings.

encode() and decode-time state are separate (the Annotated Transformer's EncoderDecoder): the
encoder runs once per request, the cross-attention K/V of every layer are computed once from its
output and shared by all beams of a source sentence (decode_attention's kv_index), and the
decoder's self-attention goes through the KV cache of transformer.models.decoder.

Ragged batches are packed (as in the encoder-only and decoder-only stacks); positions are the
column index in the padded (B, T) input, as Hugging Face's Marian/BART compute them.

Our tensor names, C = d_model, F = d_ff ([opt] = depending on the config):
  encoder.embeddings.word (Vs, C); encoder.embeddings.position (P, C) [learned positions, or a
  stored sinusoid table used as it is];
  encoder.embeddings.norm.weight / .bias [layernorm_embedding];
  encoder.layers.{i}.{norm1, qkv, out, norm2, ff1, ff2}.* as transformer.models.encoder;
  encoder.final_norm.weight / .bias [opt];
  decoder.embeddings.word (Vt, C), decoder.embeddings.position, decoder.embeddings.norm.* as above;
  decoder.layers.{i}.norm1.* (self-attention), qkv.weight (3C, C), qkv.bias, out.weight (C, C),
  out.bias, norm_cross.*, cross_q.weight (C, C), cross_q.bias, cross_kv.weight (2C, C) (rows K | V),
  cross_kv.bias, cross_out.weight (C, C), cross_out.bias, norm2.*, ff1.*, ff2.*;
  decoder.final_norm.* [opt]; lm_head.weight (Vt, C); lm_head.bias (Vt) [opt: final_logits_bias].
"""
import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from .._threads import blas_single_threaded
from ..generation.contract import Decoding
from ..ops.packed import PackedWeight
from ..weights import check_tensors
from . import register_family
from ._hf import check_layer_count, hf_tokenizer, read_hf_weights
from ._inputs import check_batch, check_tokens, pack
from . import block
from .block import BlockSpec, KVCache
from .base import Model
from .config import check_positive


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyper-parameters of an encoder-decoder model.

    src_vocab_size, tgt_vocab_size, d_model C, n_heads H, encoder_layers, decoder_layers, d_ff F,
    activation ("relu", "gelu", "gelu_tanh", "silu"), pre_norm (False: post-LN as the paper,
    Marian and BART), encoder_final_norm / decoder_final_norm, layernorm_embedding (BART),
    positions: "learned", or sinusoidal "sinusoidal_paper" (PE(p, 2i) = sin, PE(p, 2i+1) = cos,
    frequencies 10000^(-2i/C)), "sinusoidal_marian" ([sin | cos], 10000^(-2i/C)) or
    "sinusoidal_t2t" ([sin | cos], 10000^(-i/(C/2 - 1)), tensor2tensor / OpenNMT / CTranslate2);
    position_offset (added to the 0-based position: 2 for BART, 1 for CTranslate2),
    max_position_embeddings, scale_embedding (x sqrt(C)), norm_eps, decoder_start_token_id,
    eos_token_id, pad_token_id, bos_token_id, forced_bos_token_id / forced_eos_token_id (HF
    generation defaults of the family).
    T5's settings: norm "rms_norm" (no biases in norms), gated (a gated FFN, ff1 = gate | up),
    bias (False: no linear biases), d_kv (head_dim when not d_model / n_heads), attention_scale
    (1.0: unscaled scores; None: 1/sqrt(D)), positions "relative" (no position tables; a learned
    relative position bias per stack, relative_attention_num_buckets and
    relative_attention_max_distance: bidirectional in the encoder, causal in the decoder),
    lm_head_scale (d_model^-0.5 for T5's rescaled head).
    Raises ValueError for inconsistent values."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int
    n_heads: int
    encoder_layers: int
    decoder_layers: int
    d_ff: int
    activation: str = "relu"
    pre_norm: bool = False
    encoder_final_norm: bool = False
    decoder_final_norm: bool = False
    layernorm_embedding: bool = False
    positions: str = "sinusoidal_paper"
    position_offset: int = 0
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    norm_eps: float = 1e-5
    decoder_start_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 0
    bos_token_id: int = None
    forced_bos_token_id: int = None
    forced_eos_token_id: int = None
    norm: str = "layer_norm"
    gated: bool = False
    bias: bool = True
    d_kv: int = None
    attention_scale: float = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    lm_head_scale: float = 1.0

    def __post_init__(self):
        check_positive(self, ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads",
                              "encoder_layers", "decoder_layers", "d_ff",
                              "max_position_embeddings"))
        if self.d_kv is None and self.d_model % self.n_heads:
            raise ValueError(f"config d_model={self.d_model} must be a multiple of "
                             f"n_heads={self.n_heads} (or give d_kv)")
        if self.d_kv is not None:
            check_positive(self, ("d_kv",))
        if self.norm not in ("layer_norm", "rms_norm"):
            raise ValueError(f"config norm must be 'layer_norm' or 'rms_norm', got {self.norm!r}")
        if self.activation not in ("relu", "gelu", "gelu_tanh", "silu"):
            raise ValueError(f"config activation {self.activation!r} is not supported")
        if self.positions not in ("learned", "sinusoidal_paper", "sinusoidal_marian",
                                  "sinusoidal_t2t", "relative"):
            raise ValueError(f"config positions {self.positions!r} is not supported")

    @property
    def head_dim(self):
        """D = d_kv, else d_model / n_heads."""
        return self.d_kv or self.d_model // self.n_heads

    @cached_property
    def encoder_block(self):
        """The BlockSpec of the encoder's layers (bidirectional self-attention)."""
        return BlockSpec(self.norm, self.norm_eps, self.pre_norm, self.activation, self.gated,
                         self.attention_scale, n_heads=self.n_heads, head_dim=self.head_dim,
                         positions="relative" if self.positions == "relative"
                         else "sinusoidal" if self.positions.startswith("sinusoidal")
                         else "learned")

    @cached_property
    def decoder_block(self):
        """The BlockSpec of the decoder's layers (causal self-attention, cross-attention)."""
        return replace(self.encoder_block, causal=True, cross_attention=True)

    # the names generation reads
    @property
    def vocab_size(self):
        """Target vocabulary size (the LM head's width)."""
        return self.tgt_vocab_size

    @property
    def eos_token_ids(self):
        """The end-of-sequence ids as a tuple."""
        return () if self.eos_token_id is None else (self.eos_token_id,)


PRESETS = {  # Vaswani et al. 2017, table 3; ReLU, post-LN, sinusoidal positions, scaled embeddings
    "transformer-base": dict(d_model=512, n_heads=8, encoder_layers=6, decoder_layers=6, d_ff=2048),
    "transformer-big": dict(d_model=1024, n_heads=16, encoder_layers=6, decoder_layers=6,
                            d_ff=4096),
}


def preset(name, src_vocab_size, tgt_vocab_size, **overrides):
    """Seq2SeqConfig of the paper's "transformer-base" (N=6, d_model=512, d_ff=2048, h=8) or
    "transformer-big" (N=6, d_model=1024, d_ff=4096, h=16). Raises ValueError for another name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return Seq2SeqConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                         **dict(PRESETS[name], **overrides))


def sinusoid_table(n_positions, C, kind):
    """Sinusoidal position encodings (n_positions, C) float32 for position 0.. (Vaswani et al.
    2017, section 3.5), in the layout `kind` (see Seq2SeqConfig.positions); computed in float64."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    half = C // 2
    if kind == "sinusoidal_t2t":
        inv = np.exp(-math.log(10000.0) * np.arange(half) / max(half - 1, 1))
    else:
        inv = 10000.0 ** (-2.0 * np.arange(half) / C)
    ang = pos * inv[None]
    table = np.zeros((n_positions, C))
    if kind == "sinusoidal_paper":
        table[:, 0:2 * half:2] = np.sin(ang)
        table[:, 1:2 * half:2] = np.cos(ang)
    else:
        table[:, :half] = np.sin(ang)
        table[:, half:2 * half] = np.cos(ang)
    return table.astype(np.float32)


def seq2seq_shapes(config, lm_head_bias=False):
    """{our tensor name: shape} (module docstring) for a Seq2SeqConfig."""
    C, F, I = config.d_model, config.d_ff, config.n_heads * config.head_dim
    F1 = 2 * F if config.gated else F
    norm = (".weight",) if config.norm == "rms_norm" else (".weight", ".bias")
    shapes = {}
    for side, V, L in (("encoder", config.src_vocab_size, config.encoder_layers),
                       ("decoder", config.tgt_vocab_size, config.decoder_layers)):
        shapes[side + ".embeddings.word"] = (V, C)
        if config.positions == "learned":
            shapes[side + ".embeddings.position"] = (config.max_position_embeddings
                                                     + config.position_offset, C)
        if config.layernorm_embedding:
            shapes.update({side + ".embeddings.norm.weight": (C,),
                           side + ".embeddings.norm.bias": (C,)})
        if config.positions == "relative":
            shapes[side + ".position_bias.relative"] = (config.n_heads,
                                                        config.relative_attention_num_buckets)
        linears = {"qkv": (3 * I, C), "out": (C, I), "ff1": (F1, C), "ff2": (C, F)}
        norms = ["norm1", "norm2"]
        if side == "decoder":
            linears.update({"cross_q": (I, C), "cross_kv": (2 * I, C), "cross_out": (C, I)})
            norms.append("norm_cross")
        for i in range(L):
            p = f"{side}.layers.{i}."
            for name, shape in linears.items():
                shapes[p + name + ".weight"] = shape
                if config.bias:
                    shapes[p + name + ".bias"] = shape[:1]
            for name in norms:
                shapes.update({p + name + s: (C,) for s in norm})
        if getattr(config, side + "_final_norm"):
            shapes.update({side + ".final_norm" + s: (C,) for s in norm})
    shapes["lm_head.weight"] = (config.tgt_vocab_size, C)
    if lm_head_bias:
        shapes["lm_head.bias"] = (config.tgt_vocab_size,)
    return shapes


class EncoderOutput:
    """What encode() returns: hidden (N, C) float32 packed real source tokens, cu_seqlens (B+1,),
    lengths (B,), and per decoder layer the cross-attention keys and values, both as packed
    (N, H, D) views and as padded planes (B, S_max, H, D) for the decode kernel. On the GPU the
    hidden states and K/V are CuPy arrays of the model's dtype; cu_seqlens and lengths stay
    NumPy."""

    def __init__(self, hidden, cu, lengths):
        self.hidden, self.cu, self.lengths = hidden, cu, lengths
        self.cross_kv = []      # per layer: (N, 2, H, D)
        self.cross_planes = []  # per layer: (k (B, S_max, H, D), v (B, S_max, H, D))


class _DecodeState(KVCache):
    """KV cache of the decoder plus, per cache row, the source sentence it translates
    (src_index) and the offset of its positions (offset: a left-padded decoder prefix's
    padding, so that a token's position is its column, as HF); k, v on the device of
    `backend` (the model's)."""

    def __init__(self, config, rows, max_length, enc, src_index, backend=None):
        super().__init__(config.decoder_layers, rows, max_length, config.n_heads,
                         config.head_dim, backend)
        self.enc = enc
        self.src_index = np.asarray(src_index, np.int32)
        self.offset = np.zeros(len(self.src_index), np.int64)
        self.alignment = None  # (layer, heads) whose cross-attention weights to record
        self.attention = None  # (R, S_max) float32: those weights at the last call

    def reorder(self, index):
        super().reorder(index)
        self.src_index = self.src_index[np.asarray(index)]
        self.offset = self.offset[np.asarray(index)]


class Seq2SeqDecoding(Decoding):
    """The search contract (transformer.generation.contract) over a Seq2SeqModel: the source
    input_ids (B, S) / attention_mask are encoded once; the search extends the decoder prefix
    decoder_input_ids (B, T) with decoder_attention_mask (B, T) (rows of different lengths left
    padded; default: decoder_start_token_id alone). As HF (_prepare_decoder_input_ids_for_
    generation), a prefix whose rows all start with another token gets decoder_start_token_id
    prepended (and a 1 in its mask). Positions are columns of the padded prefix and attention
    skips its padding, as HF's Marian / BART. Raises TypeError / ValueError / IndexError naming
    a bad input."""

    def __init__(self, model, input_ids, attention_mask=None, start_token_id=None,
                 decoder_input_ids=None, decoder_attention_mask=None):
        cfg = model.config
        self.model, self.threads, self.vocab_size = model, model.threads, cfg.tgt_vocab_size
        self.backend = model.kernels
        self.enc = model.encode(input_ids, attention_mask)
        B = len(self.enc.lengths)
        start = cfg.decoder_start_token_id if start_token_id is None else start_token_id
        if decoder_input_ids is None:
            if decoder_attention_mask is not None:
                raise ValueError("decoder_attention_mask needs decoder_input_ids")
            self.sequences, self.mask = np.full((B, 1), start, np.int64), np.ones((B, 1), bool)
            return
        ids, mask, _ = check_batch(decoder_input_ids, decoder_attention_mask, self.vocab_size,
                                   "decoder_input_ids", "decoder_attention_mask")
        if len(ids) != B:
            raise ValueError(f"decoder_input_ids has {len(ids)} rows, the source batch {B}")
        if mask[:, -1].min() == 0:
            raise ValueError("decoder_attention_mask must end with a real token in every row "
                             "(pad decoder prefixes on the left)")
        if (ids[:, 0] != start).all():
            ids = np.concatenate([np.full((B, 1), start, np.int64), ids], 1)
            mask = np.concatenate([np.ones((B, 1), bool), mask], 1)
        self.sequences, self.mask = ids, mask
        if decoder_attention_mask is not None:  # HF: (mask != 0).argmax(1)
            self.ignore = mask.argmax(1)

    _alignment = None

    def record_attention(self, layer, heads):
        L, H = self.model.config.decoder_layers, self.model.config.n_heads
        if not (-L <= layer < L):
            raise ValueError(f"attention_layer must be in [{-L}, {L}), got {layer!r}")
        if not (0 <= heads <= H):
            raise ValueError(f"attention_heads must be in [0, {H}] (0: all), got {heads!r}")
        self._alignment = (layer % L, heads or H)

    @property
    def source_lengths(self):
        return self.enc.lengths

    @property
    def attention(self):
        return self.state.attention

    def start(self, rows, max_new_tokens):
        model, cfg = self.model, self.model.config
        B, T = self.sequences.shape
        if T + max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(f"a decoder prefix of {T} tokens + max_new_tokens={max_new_tokens} "
                             f"exceeds the model's {cfg.max_position_embeddings} positions")
        lens = self.mask.sum(1)
        self.state = _DecodeState(cfg, rows, int(lens.max()) + max_new_tokens, self.enc,
                                  np.arange(B), model.kernels)
        self.state.offset = (T - lens).astype(np.int64)
        self.state.alignment = self._alignment
        if T == 1:
            return model._decode_step(self.sequences[:, 0], self.state)
        return model._prefill_decoder(self.sequences, self.mask, self.state)

    def step(self, tokens):
        return self.model._decode_step(tokens, self.state)

    def reorder(self, index):
        self.state.reorder(index)


class Seq2SeqModel(Model):
    """An encoder-decoder Transformer. model(input_ids, attention_mask, decoder_input_ids) ->
    logits (B, T, V); generate(input_ids, attention_mask, ...) -> target ids starting with
    decoder_start_token_id; score(...) -> per-token log-probabilities.

    config: Seq2SeqConfig; weights: {our name: array} (module docstring); tokenizer: optional
    (encode(text) -> ids, decode(ids) -> text), source/target vocabularies for vocabulary-only
    models; threads: kernel threads.
    On device="cuda" (`to("cuda", dtype)`) the weights, the encoder output and the decoder's
    KV cache are CuPy arrays of the dtype; logits are CuPy (float32, or float16 for a float16
    model; bfloat16 comes back as float32), generate returns CuPy ids (and scores); score()
    returns NumPy; inputs may be NumPy or CuPy."""

    kind = "seq2seq"

    def __init__(self, config, weights, tokenizer=None, threads=None, source_vocabulary=None,
                 target_vocabulary=None):
        self.source_vocabulary = source_vocabulary
        self.target_vocabulary = target_vocabulary
        super().__init__(config, weights, tokenizer, threads)

    def _moved(self):
        """The word embeddings of each side beside the weights (same device and dtype), times
        sqrt(C) when config.scale_embedding (scaled in float32, then rounded to the dtype), and
        T5's scaled final norm (_decoder_stack)."""
        config, w = self.config, self.weights
        scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self._words = {}
        for side in ("encoder", "decoder"):
            word = w[side + ".embeddings.word"]
            if scale != 1.0 and isinstance(word, PackedWeight):
                word = word.scaled(scale)
            elif scale != 1.0:
                word = self.kernels.place(self.kernels.to_host(word) * np.float32(scale))
            self._words[side] = word
        final = w.get("decoder.final_norm.weight")
        self._scaled_final = None
        if config.lm_head_scale != 1.0:
            if final is None or config.norm != "rms_norm":
                raise ValueError("lm_head_scale needs an RMSNorm decoder final_norm (T5)")
            self._scaled_final = (self.kernels.place(
                self.kernels.to_host(final) * np.float32(config.lm_head_scale)), None)

    # -- blocks ---------------------------------------------------------------------------------
    def _position_table(self, side, need):
        """The position table of `side` covering rows [0, need) at least: learned or a stored
        sinusoid table as it is; relative positions: one zero row; else the config's sinusoids
        (one table for both sides, grown by doubling up to max_position_embeddings + offset:
        Model._grown)."""
        stored = self.weights.get(side + ".embeddings.position")
        if stored is not None:
            return stored
        cfg = self.config
        if cfg.positions == "relative":  # no position embedding: one zero row
            return self._zero_positions()
        return self._grown("sinusoids", need, cfg.max_position_embeddings + cfg.position_offset,
                           lambda n: self.kernels.place(sinusoid_table(n, cfg.d_model,
                                                                       cfg.positions)))

    def _embed(self, side, ids, positions):
        word = self._words[side]
        w = self.weights
        offset = self.config.position_offset
        pos = self._position_table(side, int(positions.max()) + offset + 1 if positions.size
                                   else 1)
        limit = self.config.max_position_embeddings + offset
        if self.config.positions == "relative":
            positions = np.zeros_like(positions)  # the zero row; positions act in attention
        if positions.size and positions.max() + offset >= min(len(pos), limit):
            raise ValueError(f"a sequence longer than max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        return self.kernels.embedding(ids, positions + offset, word, pos,
                                      w.get(side + ".embeddings.norm.weight"),
                                      w.get(side + ".embeddings.norm.bias"), self.config.norm_eps)

    def _logits(self, h):
        w = self.weights
        return self.kernels.linear(h, w["lm_head.weight"], w.get("lm_head.bias"))

    def _decoder_stack(self):
        """The decoder's blocks; with config.lm_head_scale != 1 (T5's tied head: the decoder
        output times d_model^-0.5) the final norm's weight carries the scale (_moved)."""
        blocks, final = self.stack("decoder.")
        return (blocks, self._scaled_final) if self._scaled_final is not None else (blocks, final)

    def _position_bias(self, side):
        """The relative position bias of `side`'s self-attention (T5: bidirectional in the
        encoder, causal in the decoder), or None."""
        return self._relative_bias(side + ".", self.config.relative_attention_max_distance,
                                   side == "encoder")

    # -- encoder ----------------------------------------------------------------------------------
    def _pack(self, name, input_ids, attention_mask, vocab):
        """Checked and packed batch: ids (N,), positions (N,), flat indices, cu_seqlens, lengths."""
        mask_name = "attention_mask" if name == "input_ids" else "decoder_attention_mask"
        ids, mask, lens = check_batch(input_ids, attention_mask, vocab, name, mask_name)
        flat, cu, positions = pack(mask)
        return ids.ravel()[flat], positions, flat, cu, lens

    def encode(self, input_ids, attention_mask=None):
        """Run the encoder once: input_ids (B, S) integer in [0, Vs), attention_mask (B, S) of 0/1.
        Returns an EncoderOutput (packed hidden states and each decoder layer's cross-attention
        K/V). Raises TypeError/ValueError/IndexError naming the bad argument."""
        cfg = self.config
        ids, positions, _, cu, lens = self._pack("input_ids", input_ids, attention_mask,
                                                 cfg.src_vocab_size)
        H, D, k = cfg.n_heads, cfg.head_dim, self.kernels
        spec = cfg.encoder_block
        with blas_single_threaded():
            h = block.run(spec, k, self.stack("encoder."), self._embed("encoder", ids, positions),
                          block.PackedSelfAttention(spec, k, cu, position_bias=self._position_bias(
                              "encoder")))
            enc = EncoderOutput(h, cu, lens)
            B, S = len(lens), int(lens.max())
            rows = np.repeat(np.arange(B), lens)
            cols = np.arange(len(h)) - cu[rows]
            xp = k.xp
            rows, cols = k.indices(rows), k.indices(cols)
            for layer in self.stack("decoder.")[0]:
                kv = k.linear(h, *layer.cross_kv).reshape(len(h), 2, H, D)
                kp = xp.zeros((B, S, H, D), h.dtype)
                vp = xp.zeros((B, S, H, D), h.dtype)
                kp[rows, cols], vp[rows, cols] = kv[:, 0], kv[:, 1]
                enc.cross_kv.append(kv)
                enc.cross_planes.append((kp, vp))
        return enc

    # -- decoder --------------------------------------------------------------------------------
    def _decode_step(self, tokens, state):
        """One decoder token per cache row: tokens (R,) -> logits (R, V) (float32; on the GPU
        the model's dtype); state grows by one."""
        cfg = self.config
        tokens = check_tokens(tokens, cfg.tgt_vocab_size, len(state.lengths))
        R = len(tokens)
        positions = state.lengths[:R].astype(np.int64)
        if positions.max() >= state.max_length:
            raise ValueError(f"the decoder cache is full ({state.max_length} positions)")
        src = state.src_index[:R]
        enc, k, spec = state.enc, self.kernels, cfg.decoder_block
        attend = block.CachedSelfAttention(spec, k, state, positions,
                                           position_bias=self._position_bias("decoder"))
        cross = block.CachedCrossAttention(spec, k, enc.cross_planes, enc.lengths, src,
                                           self._recorder(state, src))
        with blas_single_threaded():
            h = self._embed("decoder", tokens, positions + state.offset[:R])
            h = block.run(spec, k, self._decoder_stack(), h, attend, cross)
            state.lengths[:R] += 1
            return self._logits(h)

    def _recorder(self, state, src, last=None):
        """record(i, q) for the cross-attention contexts: keeps the alignment weights of the
        layer `state.alignment` names (of the rows `last` of q when given), or None."""
        if state is None or state.alignment is None:
            return None
        layer, heads = state.alignment

        def record(i, q):
            if i == layer:
                state.attention = self._cross_weights(q if last is None else q[last],
                                                      state.enc, i, src, heads)
        return record

    def _cross_weights(self, q, enc, layer, src, heads):
        """Cross-attention weights softmax(scale q k^T) (scale: config.attention_scale, default
        1/sqrt(D)) of decoder layer `layer` for queries q (R, H, D) against the keys of sources
        src (R,), averaged over the first `heads` heads: (R, S_max) float32 NumPy, 0 beyond each
        source's length (CTranslate2's alignment: return_attention). Computed on the host in
        float32."""
        k = self.kernels.to_host(enc.cross_planes[layer][0]).astype(np.float32)[src, :, :heads]
        q = self.kernels.to_host(q).astype(np.float32)[:, :heads]
        scale = self.config.attention_scale
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        s = np.einsum("rhd,rshd->rhs", q, k) * np.float32(scale)
        s = np.where(np.arange(k.shape[1])[None, None] < enc.lengths[src][:, None, None], s,
                     -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True)).mean(1)

    def _teacher_forced(self, enc, ids, positions, cu, state=None):
        """The decoder layers over packed target tokens ids / positions (N,) with cu_seqlens cu
        (causal self-attention per row, cross-attention to enc). With a decode `state`, each
        row's keys and values also go to its cache row (and the alignment attention of the
        last real tokens is kept, CTranslate2's return_attention). Returns h (N, C)."""
        spec, k = self.config.decoder_block, self.kernels
        slots = None
        if state is not None:  # each token's position in its cache row
            slots = np.arange(len(ids)) - np.repeat(cu[:-1], np.diff(cu))
        attend = block.PackedSelfAttention(spec, k, cu, position_bias=self._position_bias(
            "decoder"), cache=state, slots=slots)
        cross = block.PackedCrossAttention(spec, k, cu, enc.cross_kv, enc.cu, self._recorder(
            state, np.arange(len(cu) - 1), cu[1:] - 1))
        return block.run(spec, k, self._decoder_stack(), self._embed("decoder", ids, positions),
                         attend, cross)

    def _prefill_decoder(self, decoder_input_ids, mask, state):
        """Teacher-forced decoder over prefixes decoder_input_ids (B, T) with mask (B, T) bool
        (positions: columns), each row's real tokens written to rows 0..B-1 of the fresh
        `state`. Returns logits (B, V) of each row's last real token (as _decode_step)."""
        ids, positions, _, cu, lens = self._pack("decoder_input_ids", decoder_input_ids, mask,
                                                 self.config.tgt_vocab_size)
        with blas_single_threaded():
            h = self._teacher_forced(state.enc, ids, positions, cu, state)
            state.lengths[:len(lens)] = lens
            last = self.kernels.xp.ascontiguousarray(h[cu[1:] - 1])
            return self._logits(last)

    def decode(self, enc, decoder_input_ids, decoder_attention_mask=None):
        """Teacher-forced decoder over whole target prefixes: decoder_input_ids (B, T) against
        the encoder output `enc`. Returns logits (B, T, V) float32 (0 at padded positions)."""
        cfg = self.config
        ids, positions, flat, cu, lens = self._pack("decoder_input_ids", decoder_input_ids,
                                                    decoder_attention_mask, cfg.tgt_vocab_size)
        B, T = np.shape(decoder_input_ids)
        if B != len(enc.lengths):
            raise ValueError(f"decoder_input_ids has {B} rows, the source batch {len(enc.lengths)}")
        with blas_single_threaded():
            logits = self._logits(self._teacher_forced(enc, ids, positions, cu))
        return self._padded(logits, flat, (B, T))

    # -- public API -------------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None,
                 decoder_attention_mask=None):
        """Logits (B, T, V) float32 of decoder_input_ids (B, T) given the source input_ids (B, S)
        and its attention_mask (B, S) of 0/1. Raises ValueError when decoder_input_ids is None."""
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required (the target prefix, starting with "
                             f"decoder_start_token_id={self.config.decoder_start_token_id})")
        return self.decode(self.encode(input_ids, attention_mask), decoder_input_ids,
                           decoder_attention_mask)

    DECODING_INPUTS = ("decoder_input_ids", "decoder_attention_mask")
    DEFAULT_MAX_NEW_TOKENS = 64
    generation_config = None  # GenerationConfig of generation_config.json, set at load

    def decoding(self, input_ids, attention_mask=None, config=None, decoder_input_ids=None,
                 decoder_attention_mask=None):
        """The search contract for this request (Seq2SeqDecoding): the source encoded once,
        the decoder prefix (default: config.decoder_start_token_id) to extend."""
        return Seq2SeqDecoding(self, input_ids, attention_mask,
                               None if config is None else config.decoder_start_token_id,
                               decoder_input_ids, decoder_attention_mask)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """Translate: target ids (B * num_return_sequences, T + n_new) int64: the decoder
        prefix (decoder_input_ids / decoder_attention_mask, left padded; default
        decoder_start_token_id alone, T = 1) then the new tokens, by greedy search, sampling or
        beam search (the options of transformer.generation.generate; max_new_tokens default
        64; the family's forced_bos / forced_eos and generation_config.json defaults apply).
        return_scores: also (B * n,) float32, each hypothesis' sum of the search's token
        log-probabilities, accumulated during the search (after the processors: a forced token
        counts log 1 = 0); return_dict_in_generate: a GenerateOutput.
        NumPy arrays; CuPy on device="cuda" (the search runs on the host over logits copied
        back each step as float32; the encoder output and KV cache stay on the device)."""
        from ..generation import generate
        return self._device_outputs(generate(self, input_ids, attention_mask, **kwargs))

    def stream(self, input_ids, attention_mask=None, **kwargs):
        """An iterator over the new tokens of greedy search or sampling: each new column
        (B * num_return_sequences,) int64 NumPy as it is chosen (transformer.generation.stream;
        the arguments are generate's)."""
        from ..generation import stream
        return stream(self, input_ids, attention_mask, **kwargs)

    def score(self, input_ids, attention_mask, target_ids, target_mask=None):
        """Per-token log-probabilities of given targets, as CTranslate2's score_batch: target_ids
        (B, T) integer without the start token (eos appended here after each row's real tokens;
        target_mask (B, T) of 0/1 marks them, default all). Returns a list of B NumPy float64
        arrays (on every device): log p of each target token, then of the eos."""
        from ..generation import log_softmax

        cfg = self.config
        tgt = np.asarray(target_ids)
        if tgt.ndim != 2 or not np.issubdtype(tgt.dtype, np.integer):
            raise ValueError(f"target_ids must be an integer array (B, T), got {tgt.shape} "
                             f"{tgt.dtype}")
        if target_mask is None:
            lens = np.full(len(tgt), tgt.shape[1])
        else:
            if np.shape(target_mask) != tgt.shape:
                raise ValueError(f"target_mask must have shape {tgt.shape}")
            lens = np.asarray(target_mask).sum(1)
        B, T = len(tgt), int(lens.max()) + 1
        dec_in = np.full((B, T), cfg.decoder_start_token_id, np.int64)
        labels = np.full((B, T), cfg.eos_token_id, np.int64)
        dmask = (np.arange(T)[None] <= lens[:, None]).astype(np.int64)
        for b, L in enumerate(lens):
            dec_in[b, 1:L + 1] = labels[b, :L] = tgt[b, :L]
        lp = log_softmax(self.kernels.to_host(self(input_ids, attention_mask, dec_in, dmask)))
        tok = np.take_along_axis(lp, labels[..., None], -1)[..., 0]
        return [tok[b, :L + 1] for b, L in enumerate(lens)]



@register_family("transformer")
class TransformerModel(Seq2SeqModel):
    """Bring-your-own-weights encoder-decoder: config.json {"model_type": "transformer",
    "preset": "transformer-base" | "transformer-big" (optional), "src_vocab_size": ...,
    "tgt_vocab_size": ..., any Seq2SeqConfig field} and model.safetensors holding our tensor names
    (this module's docstring; lm_head.bias optional)."""

    @classmethod
    def from_pretrained(cls, path, config_dict, threads=None):
        """Load the directory; ValueError for unknown config keys, WeightsError for tensors that
        do not fit the config."""
        fields = {k: v for k, v in config_dict.items()
                  if k not in ("model_type", "preset", "architectures")}
        try:
            if "preset" in config_dict:
                config = preset(config_dict["preset"], **fields)
            else:
                config = Seq2SeqConfig(**fields)
        except TypeError as e:
            raise ValueError(f"{path}/config.json: {e}")
        tensors, source = read_hf_weights(path)
        check_layer_count(tensors, config.encoder_layers + config.decoder_layers, source)
        shapes = seq2seq_shapes(config, lm_head_bias="lm_head.bias" in tensors)
        weights = check_tensors(tensors, shapes, (), source)
        return cls(config, weights, hf_tokenizer(path, config.max_position_embeddings), threads)
