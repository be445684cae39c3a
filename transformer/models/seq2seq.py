"""Encoder-decoder Transformer (Vaswani et al. 2017, section 3.1): an encoder stack, a decoder
stack with masked self-attention and cross-attention over the encoder output, and the LM head.
Marian, BART, T5 and CTranslate2 TransformerBase/Big models are this class with different
settings; the paper's own presets and its bring-your-own-weights family are in
transformer.models.transformer2017; the config is transformer.models.config.Seq2SeqConfig.

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

import numpy as np

from .._threads import blas_single_threaded
from ..generation.contract import Decoding
from ..ops import sinusoid_table
from ..ops.packed import PackedWeight
from . import block
from ._inputs import check_batch, check_no_holes, check_tokens, pack
from .base import Model
from .block import KVCache
from .config import Seq2SeqConfig

__all__ = ["Seq2SeqConfig", "Seq2SeqModel", "Seq2SeqDecoding", "EncoderOutput", "seq2seq_shapes",
           "sinusoid_table"]


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

    def split(self, counts):
        """The outputs of consecutive groups of counts[g] sources (sum(counts) = B), each as
        encode() returns it for those sources alone (its planes as wide as its own longest
        source): the serving engine encodes the sources of several requests together."""
        out, b0 = [], 0
        for n in counts:
            b1 = b0 + n
            a, z = int(self.cu[b0]), int(self.cu[b1])
            part = EncoderOutput(self.hidden[a:z], self.cu[b0:b1 + 1] - self.cu[b0],
                                 self.lengths[b0:b1])
            S = int(self.lengths[b0:b1].max())
            part.cross_kv = [kv[a:z] for kv in self.cross_kv]
            part.cross_planes = [tuple(p[b0:b1, :S].copy() for p in planes)
                                 for planes in self.cross_planes]
            out.append(part)
            b0 = b1
        return out


class _DecodeState(KVCache):
    """KV cache of the decoder plus, per cache row, the source sentence it translates
    (src_index); k, v on the device of `backend` (the model's). A row's positions count its
    own tokens (its length), whatever the padding of the batch it came in."""

    def __init__(self, config, rows, max_length, enc, src_index, backend=None):
        super().__init__(config.decoder_layers, rows, max_length, config.n_heads,
                         config.head_dim, backend)
        self.enc = enc
        self.src_index = np.asarray(src_index, np.int32)
        self.alignment = None  # (layer, heads) whose cross-attention weights to record
        self.attention = None  # (R, S_max) float32: those weights at the last call

    def reorder(self, index):
        super().reorder(index)
        self.src_index = self.src_index[np.asarray(index)]


class Seq2SeqDecoding(Decoding):
    """The search contract (transformer.generation.contract) over a Seq2SeqModel: the source
    input_ids (B, S) / attention_mask are encoded once; the search extends the decoder prefix
    decoder_input_ids (B, T) with decoder_attention_mask (B, T) (rows of different lengths left
    padded; default: decoder_start_token_id alone). As HF (_prepare_decoder_input_ids_for_
    generation), a prefix whose rows all start with another token gets decoder_start_token_id
    prepended (and a 1 in its mask). Attention skips the padding, and each row's positions
    count from its first real token (CTranslate2's), so a row gives the same tokens batched or
    alone; alone (no padding) that is HF's Marian / BART, whose positions are the columns of
    the padded prefix. Raises TypeError / ValueError / IndexError naming a bad input."""

    def __init__(self, model, input_ids, attention_mask=None, start_token_id=None,
                 decoder_input_ids=None, decoder_attention_mask=None, encoder_output=None):
        cfg = model.config
        self.model, self.threads, self.vocab_size = model, model.threads, cfg.tgt_vocab_size
        self.backend = model.kernels
        self.enc = model.encode(input_ids, attention_mask) if encoder_output is None \
            else encoder_output
        B = len(self.enc.lengths)
        start = cfg.decoder_start_token_id if start_token_id is None else start_token_id
        if start is None:  # HF _get_decoder_start_token_id: bos_token_id next
            start = cfg.bos_token_id
        if start is None:
            raise ValueError("decoder_start_token_id and bos_token_id are null (config.json and "
                             "generation_config.json): give decoder_start_token_id")
        if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)) \
                or not 0 <= start < self.vocab_size:  # checked before the prefix is made of it
            raise ValueError(f"decoder_start_token_id must be a token id in [0, "
                             f"{self.vocab_size}), got {start!r}")
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
                                                                       cfg.sinusoids)))

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
        if self.config.positions == "relative":
            check_no_holes(mask, mask_name)
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
        return self._decode_steps([(tokens, state)])[0]

    def _decode_steps(self, steps):
        """_decode_step of several decode states [(tokens (R_i,), state_i)] as one forward:
        the rows of every state go through each linear together, each state's rows attend to
        its own cache and source (block.RowGroups when there are several). Returns [logits
        (R_i, V)], each what _decode_step returns alone (bit for bit when the model is
        batch_invariant). Every step is checked before any state changes."""
        cfg, k = self.config, self.kernels
        spec, bias = cfg.decoder_block, self._position_bias("decoder")
        tokens, positions, attends, crosses = [], [], [], []
        for t, state in steps:
            t = check_tokens(t, cfg.tgt_vocab_size, len(state.lengths))
            R = len(t)
            p = state.lengths[:R].astype(np.int64)
            if p.max() >= state.max_length:
                raise ValueError(f"the decoder cache is full ({state.max_length} positions)")
            src = state.src_index[:R]
            enc = state.enc
            tokens.append(t)
            positions.append(p)
            attends.append(block.CachedSelfAttention(spec, k, state, p, position_bias=bias))
            crosses.append(block.CachedCrossAttention(spec, k, enc.cross_planes, enc.lengths,
                                                      src, self._recorder(state, src)))
        sizes = [len(t) for t in tokens]
        attend, offsets = block.row_groups(k, attends, sizes)
        cross, _ = block.row_groups(k, crosses, sizes)
        with blas_single_threaded():
            h = block.run(spec, k, self._decoder_stack(),
                          self._embed("decoder", block.concat_rows(tokens),
                                      block.concat_rows(positions)), attend, cross)
            for t, (_, state) in zip(tokens, steps):
                state.lengths[:len(t)] += 1
            return block.split_rows(self._logits(h), offsets)

    def step_decodings(self, work):
        """One search step of several requests as one forward (the serving engine's batched
        step): work [(decoding, tokens (R_i,))] of Seq2SeqDecodings of this model, started.
        Returns [logits (R_i, V)], what each decoding.step(tokens) returns (_decode_steps)."""
        return self._decode_steps([(tokens, decoding.state) for decoding, tokens in work])

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
        """Teacher-forced decoder over prefixes decoder_input_ids (B, T) with mask (B, T) bool,
        each row's real tokens written to rows 0..B-1 of the fresh `state`, their positions
        counted from the row's first real token (CTranslate2's; a row alone is HF's, whose
        positions are the columns of the padded batch: the same without padding), so that a
        row gives the same tokens batched or alone. Returns logits (B, V) of each row's last
        real token (as _decode_step)."""
        ids, _, _, cu, lens = self._pack("decoder_input_ids", decoder_input_ids, mask,
                                         self.config.tgt_vocab_size)
        positions = np.arange(len(ids), dtype=np.int64) - np.repeat(cu[:-1], lens)
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
                 decoder_attention_mask=None, encoder_output=None):
        """The search contract for this request (Seq2SeqDecoding): the source encoded once
        (or encoder_output, encode()'s result for input_ids, when given), the decoder prefix
        (default: config.decoder_start_token_id) to extend."""
        return Seq2SeqDecoding(self, input_ids, attention_mask,
                               None if config is None else config.decoder_start_token_id,
                               decoder_input_ids, decoder_attention_mask, encoder_output)

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
            m = np.asarray(target_mask)
            if m.shape != tgt.shape:
                raise ValueError(f"target_mask must have shape {tgt.shape}")
            lens = m.sum(1) if m.size else np.zeros(len(tgt), np.int64)
            if not (np.issubdtype(m.dtype, np.integer) or m.dtype == np.bool_) \
                    or np.any(m != (np.arange(m.shape[1])[None] < lens[:, None])):
                raise ValueError("target_mask must hold 1 for each row's target tokens then 0 "
                                 "(integers or booleans, right padding)")
            lens = lens.astype(np.int64)
        B, T = len(tgt), int(lens.max()) + 1
        if cfg.decoder_start_token_id is None:
            raise ValueError("decoder_start_token_id is null (config.json): score needs it")
        dec_in = np.full((B, T), cfg.decoder_start_token_id, np.int64)
        if not cfg.eos_token_ids:
            raise ValueError("score needs an eos_token_id (config.json)")
        labels = np.full((B, T), cfg.eos_token_ids[0], np.int64)
        dmask = (np.arange(T)[None] <= lens[:, None]).astype(np.int64)
        for b, L in enumerate(lens):
            dec_in[b, 1:L + 1] = labels[b, :L] = tgt[b, :L]
        lp = log_softmax(self.kernels.to_host(self(input_ids, attention_mask, dec_in, dmask)))
        tok = np.take_along_axis(lp, labels[..., None], -1)[..., 0]
        return [tok[b, :L + 1] for b, L in enumerate(lens)]
