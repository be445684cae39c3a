"""Decoder-only stack (GPT-2, Llama, llama2.c): token (+ learned) embeddings, L pre-norm blocks of
causal self-attention and feed-forward, a final norm and the LM head (Radford et al. 2019;
Touvron et al. 2023), with a KV cache for generation.

Ragged batches: prompts are packed to their real tokens (attention_mask == 1, left or right
padding); every sequence is computed as if it were alone (positions count its real tokens from 0,
as HF generate's position_ids = cumsum(attention_mask) - 1), attention is causal per sequence
(ops.attention_varlen), and each sequence's keys/values go to its own rows of the KV cache, so the
cache never holds padding.

Our tensor names (what a family's name map produces); C = d_model, D = head_dim,
Q = n_heads * D, K = n_kv_heads * D, F = d_ff; ".bias" tensors only when config.bias:
  embeddings.word (V, C), embeddings.position (P, C) [learned positions only]
  embeddings.norm.weight / .bias (C) [embedding_norm only: LayerNorm after the word embedding]
  layers.{i}.norm1.weight (C) [.bias for LayerNorm]   before attention
  layers.{i}.qkv.weight (Q + 2K, C) [.bias]           rows: Q heads | K heads | V heads
  layers.{i}.out.weight (C, Q) [.bias]
  layers.{i}.norm2.weight (C) [.bias]                 before the feed-forward block
  layers.{i}.ff1.weight (F, C) or (2F, C) for SwiGLU, rows gate | up [.bias]
  layers.{i}.ff2.weight (C, F) [.bias]
  final_norm.weight (C) [.bias], lm_head.weight (V, C) (the same array as embeddings.word when tied)
"""
import numpy as np

from .. import ops
from ..ops.position_bias import alibi_slopes
from . import block
from .block import KVCache
from .._threads import blas_single_threaded
from ..generation.contract import Decoding
from ._inputs import check_batch, check_tokens
from .base import Model
from .config import DecoderConfig

__all__ = ["DecoderConfig", "DecoderModel", "DecoderDecoding", "decoder_shapes"]


def decoder_shapes(config):
    """{our tensor name: shape} for a DecoderConfig (see the module docstring)."""
    C, D, F = config.d_model, config.head_dim, config.d_ff
    Q, K = config.n_heads * D, config.n_kv_heads * D
    norm = [".weight", ".bias"] if config.norm == "layer_norm" else [".weight"]
    shapes = {"embeddings.word": (config.vocab_size, C)}
    if config.embedding_norm:
        shapes.update({"embeddings.norm" + s: (C,) for s in (".weight", ".bias")})
    if config.positions == "learned":
        shapes["embeddings.position"] = (config.max_position_embeddings, C)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        F1 = 2 * F if config.gated else F
        for name, shape in (("qkv", (Q + 2 * K, C)), ("out", (C, Q)), ("ff1", (F1, C)),
                            ("ff2", (C, F))):
            shapes[p + name + ".weight"] = shape
            if config.bias:
                shapes[p + name + ".bias"] = shape[:1]
        for n in ("norm1", "norm2"):
            shapes.update({p + n + s: (C,) for s in norm})
    shapes.update({"final_norm" + s: (C,) for s in norm})
    shapes["lm_head.weight"] = (config.vocab_size, C)
    return shapes


class DecoderDecoding(Decoding):
    """The search contract (transformer.generation.contract) over a DecoderModel: the prompts
    input_ids (B, T) with attention_mask (B, T) (left or right padding) are prefilled into a
    KVCache; step is decode_step, reorder the cache's. Raises TypeError / ValueError /
    IndexError naming a bad input (transformer.models._inputs.check_batch)."""

    def __init__(self, model, input_ids, attention_mask=None):
        self.model, self.threads, self.backend = model, model.threads, model.kernels
        self.sequences, self.mask, self.lengths = check_batch(input_ids, attention_mask,
                                                              model.config.vocab_size)
        self.vocab_size = model.config.vocab_size
        if attention_mask is not None:  # HF: (mask != 0).argmax(1), the left padding
            self.ignore = self.mask.argmax(1)
        self.cache = None

    def start(self, rows, max_new_tokens):
        self.begin(rows, max_new_tokens)
        return self.model.prefill(self.sequences, self.mask, self.cache)

    def begin(self, rows, max_new_tokens):
        """start without the prefill: the cache made (ValueError when a prompt +
        max_new_tokens exceeds the model's positions); a one-prompt decoding is then
        prefilled in chunks by DecoderModel.prefill_decodings (the serving engine)."""
        longest = int(self.lengths.max()) + max_new_tokens
        positions = self.model.config.max_position_embeddings
        if longest > positions:
            raise ValueError(f"a prompt of {self.lengths.max()} tokens + max_new_tokens="
                             f"{max_new_tokens} exceeds the model's {positions} positions")
        self.cache = self.model.new_cache(rows, longest)
        self.prompt = self.sequences[0][self.mask[0]] if len(self.sequences) == 1 else None

    def step(self, tokens):
        return self.model.decode_step(tokens, self.cache)

    def reorder(self, index):
        self.cache.reorder(index)


class DecoderModel(Model):
    """A decoder-only language model: `model(input_ids, attention_mask)` -> logits (B, T, V)
    float32; `model.generate(...)` -> token ids (see transformer.generation.generate).

    config: DecoderConfig; weights: {our name: array} (module docstring); tokenizer: optional
    object with encode(text) -> ids and decode(ids) -> text; threads: kernel threads.
    On device="cuda" (`to("cuda", dtype)`) the weights and the KV cache are CuPy arrays of the
    dtype; logits are CuPy (float32, or float16 for a float16 model; bfloat16 comes back as
    float32), generate returns CuPy int64 ids (transformer.device.to_numpy for NumPy); inputs may
    be NumPy or CuPy."""

    kind = "decoder"
    DEFAULT_MAX_NEW_TOKENS = 32
    generation_config = None  # GenerationConfig of generation_config.json, set at load

    def _moved(self):
        """The ALiBi bias of the config (host slopes; the GPU backend uploads them once)."""
        cfg = self.config
        self._position_bias = ops.PositionBias.alibi(alibi_slopes(cfg.n_heads)) \
            if cfg.positions == "alibi" else None

    # -- building blocks --------------------------------------------------------------------------
    def _embed(self, ids, positions):
        w, cfg = self.weights, self.config
        if cfg.positions != "learned":
            positions = np.zeros_like(positions)  # the zero row: positions act in attention
        position = w.get("embeddings.position")
        return self.kernels.embedding(ids, positions, w["embeddings.word"],
                                      self._zero_positions() if position is None else position,
                                      w.get("embeddings.norm.weight"),
                                      w.get("embeddings.norm.bias"), cfg.norm_eps)

    def _rope_for(self, longest):
        """The rotary (cos, sin) tables (P, D/2) covering positions 0..longest at least, float32
        on the device whatever the dtype (Model._grown), or None without rotary."""
        cfg = self.config
        if cfg.positions != "rotary":
            return None
        return self._grown("rope", longest + 1, cfg.max_position_embeddings, lambda n: tuple(
            self.kernels.upload(t) for t in ops.rotary_tables(n, cfg.head_dim, cfg.rope_theta)))

    def logits(self, h):
        """LM head: h (N, C) -> logits (N, V) float32 (on the GPU the model's dtype, bfloat16 as
        uint16 bits)."""
        return self.kernels.linear(h, self.weights["lm_head.weight"])

    # -- prefill and decode -------------------------------------------------------------------------
    def prefill(self, input_ids, attention_mask=None, cache=None, all_logits=False):
        """Run the prompts through the stack. input_ids, attention_mask: (B, T); cache: a fresh
        KVCache (filled here with each sequence's real tokens) or None.
        Returns logits (B, V) of each sequence's last real token, or with all_logits (N, V) for
        every real token in packed order plus the flat indices of those tokens in (B*T,)."""
        ids, mask, lens = check_batch(input_ids, attention_mask, self.config.vocab_size)
        if lens.max() > (cache.max_length if cache else self.config.max_position_embeddings):
            raise ValueError(f"a prompt of {lens.max()} tokens does not fit the model's "
                             f"{self.config.max_position_embeddings} positions"
                             + (f" / the cache's {cache.max_length}" if cache else ""))
        if cache is not None and len(lens) > len(cache.lengths):
            raise ValueError(f"{len(lens)} prompts do not fit the cache's "
                             f"{len(cache.lengths)} rows")
        flat = np.flatnonzero(mask.ravel())
        cu = np.concatenate([[0], np.cumsum(lens)])
        positions = (np.cumsum(mask, 1) - 1).ravel()[flat]
        spec, k = self.config.block, self.kernels
        attend = block.PackedSelfAttention(spec, k, cu, positions,
                                           self._rope_for(int(positions.max())),
                                           self._position_bias, cache, positions)
        with blas_single_threaded():
            h = block.run(spec, k, self.stack(), self._embed(ids.ravel()[flat], positions),
                          attend)
            if cache is not None:
                cache.lengths[:len(lens)] = lens
            if all_logits:
                return self.logits(h), flat
            return self.logits(k.xp.ascontiguousarray(h[cu[1:] - 1]))

    def decode_step(self, tokens, cache):
        """One new token per sequence: tokens (B,) integers in [0, V), appended at position
        cache.lengths[b] of cache rows b < B. Returns logits (B, V) as `logits`; the cache
        grows by one position. Raises ValueError / IndexError for tokens that do not fit."""
        return self.decode_steps([(tokens, cache)])[0]

    def decode_steps(self, steps):
        """decode_step for several caches at once, as one forward: steps [(tokens (B_i,),
        cache_i)] with distinct caches. The rows of every cache go through each linear
        together; each cache's rows attend to it alone (block.RowGroups). Returns [logits
        (B_i, V)], each what decode_step(tokens_i, cache_i) returns (bit for bit when the model
        is batch_invariant). Every step is checked before any cache changes: ValueError /
        IndexError as decode_step's."""
        V = self.config.vocab_size
        tokens = [check_tokens(t, V, len(cache.lengths)) for t, cache in steps]
        positions = [self._step_positions(t, cache) for t, (_, cache) in zip(tokens, steps)]
        spec, k = self.config.block, self.kernels
        rope = self._rope_for(max(max(p.tolist()) for p in positions))
        attend, offsets = block.row_groups(k, [
            block.CachedSelfAttention(spec, k, cache, p, rope, self._position_bias)
            for (_, cache), p in zip(steps, positions)], map(len, tokens))
        with blas_single_threaded():
            h = block.run(spec, k, self.stack(),
                          self._embed(block.concat_rows(tokens), block.concat_rows(positions)),
                          attend)
            for t, (_, cache) in zip(tokens, steps):
                cache.lengths[:len(t)] += 1
            return block.split_rows(self.logits(h), offsets)

    def prefill_decodings(self, work):
        """The next chunk of several one-prompt decodings' prompts as one forward (the serving
        engine's chunked, batched prefill): work [(decoding, n)] of DecoderDecodings that ran
        begin(), n >= 1 the tokens of the chunk (each decoding's chunks in order; every chunk
        but a prompt's last a multiple of 64 tokens keeps the bits of the whole prefill:
        block.PromptChunk). The rows of every chunk go through each linear together, each
        chunk's attention on its own cache row 0. Returns, per pair, the logits (1, V) of the
        prompt's last token once its last chunk ran, else None. Raises ValueError for a chunk
        past its prompt, before any cache changes."""
        spec, k = self.config.block, self.kernels
        chunks = []
        for decoding, n in work:
            cache, prompt = decoding.cache, decoding.prompt
            start = int(cache.lengths[0])
            if prompt is None or not 1 <= n <= len(prompt) - start:
                raise ValueError(f"a prompt chunk of {n} tokens from position {start} does not "
                                 f"fit a one-prompt decoding")
            chunks.append((cache, start, n, prompt[start:start + n]))
        rope = self._rope_for(max(start + n for _, start, n, _ in chunks))
        contexts = [block.PromptChunk(spec, k, cache, 0, start, n, rope, self._position_bias)
                    for cache, start, n, _ in chunks]
        attend, _ = block.row_groups(k, contexts, [n for _, _, n, _ in chunks])
        ids = block.concat_rows([c[3] for c in chunks])
        positions = block.concat_rows([ctx.positions for ctx in contexts])
        with blas_single_threaded():
            h = block.run(spec, k, self.stack(), self._embed(ids, positions), attend)
            done = []
            for (decoding, _), (cache, start, n, _) in zip(work, chunks):
                cache.lengths[0] = start + n
                done.append(start + n == len(decoding.prompt))
            ends = np.cumsum([n for _, _, n, _ in chunks])
            last = [int(e) - 1 for e, d in zip(ends, done) if d]
            logits = iter(self.logits(k.xp.ascontiguousarray(h[last])) if last else [])
        return [next(logits)[None] if d else None for d in done]

    def step_decodings(self, work):
        """One search step of several requests as one forward (the serving engine's batched
        step): work [(decoding, tokens (R_i,))] of DecoderDecodings of this model, started.
        Returns [logits (R_i, V)], what each decoding.step(tokens) returns (decode_steps)."""
        return self.decode_steps([(tokens, decoding.cache) for decoding, tokens in work])

    @staticmethod
    def _step_positions(tokens, cache):
        """The positions (B,) int64 of one new token per cache row b < B: the rows' lengths.
        Raises ValueError when a row's cache is full."""
        positions = cache.lengths[:len(tokens)].astype(np.int64)
        if positions.max() >= cache.max_length:
            raise ValueError(f"the KV cache is full ({cache.max_length} positions)")
        return positions

    # -- public API ---------------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None):
        """Logits (B, T, V) float32 for input_ids (B, T) integer in [0, V) with an optional
        attention_mask (B, T) of 0/1 (left or right padding). Each sequence is computed as if alone
        (positions count its real tokens); padded positions get logits 0.
        Raises TypeError/ValueError/IndexError naming the bad argument."""
        ids, mask, _ = check_batch(input_ids, attention_mask, self.config.vocab_size)
        logits, flat = self.prefill(ids, mask, all_logits=True)
        return self._padded(logits, flat, ids.shape)

    def new_cache(self, batch_size, max_length):
        """A KVCache for batch_size sequences of up to max_length positions (capped at
        max_position_embeddings)."""
        cfg = self.config
        return KVCache(cfg.n_layers, batch_size, min(max_length, cfg.max_position_embeddings),
                       cfg.n_kv_heads, cfg.head_dim, self.kernels)

    def decoding(self, input_ids, attention_mask=None, config=None):
        """The search contract for these prompts (DecoderDecoding); config is unused here."""
        return DecoderDecoding(self, input_ids, attention_mask)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """Continue each prompt; see transformer.generation.generate for the arguments.
        Returns (B * num_return_sequences, T + new) int64: the prompts then the new tokens
        (NumPy; CuPy on device="cuda", where the search itself runs on the host over logits
        copied back each step as float32); with return_scores / return_dict_in_generate the
        scores too (generate's docstring)."""
        from ..generation import generate
        return self._device_outputs(generate(self, input_ids, attention_mask, **kwargs))

    def stream(self, input_ids, attention_mask=None, **kwargs):
        """An iterator over the new tokens of greedy search or sampling: each new column
        (B * num_return_sequences,) int64 NumPy as it is chosen (transformer.generation.stream;
        the arguments are generate's)."""
        from ..generation import stream
        return stream(self, input_ids, attention_mask, **kwargs)

