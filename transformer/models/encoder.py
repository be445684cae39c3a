"""Encoder-only stack: embeddings, L x (self-attention + feed-forward), post-LN or pre-LN
(Vaswani et al. 2017, section 3.1; Xiong et al. 2020 for pre-LN), run on packed rows.

Ragged batches: the (B, T) batch is packed to its N real tokens (attention_mask == 1) before the
embeddings, every dense layer runs on (N, C), and attention runs per sequence on the packed rows
(ops.attention_varlen), so padding costs nothing. Padded positions of the (B, T, C) output are 0.

Our tensor names (what a family's name map produces), C = d_model, F = d_ff:
  embeddings.word (V, C), embeddings.position (P, C), embeddings.token_type (TV, C) [optional],
  embeddings.norm.weight / .bias (C) [optional],
  layers.{i}.qkv.weight (3C, C) / .bias (3C)    rows: Q | K | V, heads in order within each
  layers.{i}.out.weight (C, C) / .bias (C)      attention output projection
  layers.{i}.norm1.weight / .bias (C)           after attention (post-LN) or before it (pre-LN)
  layers.{i}.ff1.weight (F, C) / .bias (F)      first feed-forward linear, then the activation
  layers.{i}.ff2.weight (C, F) / .bias (C)
  layers.{i}.norm2.weight / .bias (C)
  final_norm.weight / .bias (C)                 pre-LN only
"""
import numpy as np

from .. import ops
from .._threads import blas_single_threaded, resolve_threads
from ..device import DeviceModel, host_weights, to_numpy
from ._inputs import check_batch, pack


def encoder_shapes(config):
    """{our tensor name: shape} for an EncoderConfig (see the module docstring)."""
    C, F = config.d_model, config.d_ff
    shapes = {"embeddings.word": (config.vocab_size, C),
              "embeddings.position": (config.max_position_embeddings, C),
              "embeddings.norm.weight": (C,), "embeddings.norm.bias": (C,)}
    if config.type_vocab_size:
        shapes["embeddings.token_type"] = (config.type_vocab_size, C)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        shapes.update({p + "qkv.weight": (3 * C, C), p + "qkv.bias": (3 * C,),
                       p + "out.weight": (C, C), p + "out.bias": (C,),
                       p + "norm1.weight": (C,), p + "norm1.bias": (C,),
                       p + "ff1.weight": (F, C), p + "ff1.bias": (F,),
                       p + "ff2.weight": (C, F), p + "ff2.bias": (C,),
                       p + "norm2.weight": (C,), p + "norm2.bias": (C,)})
    if config.pre_norm:
        shapes.update({"final_norm.weight": (C,), "final_norm.bias": (C,)})
    return shapes


def encoder_layers(w, prefix, n_layers, H, D, eps, activation, pre_norm, h, cu, n):
    """The L encoder blocks on packed rows h (N, C) with cu_seqlens cu (B+1,): self-attention and
    feed-forward, post-LN (norm after each residual add) or pre-LN (norm before each sub-layer,
    then `final_norm` when present). w: weights under `prefix` (module docstring names);
    n: threads. Returns (N, C) float32."""
    N, C = h.shape
    ctx = ops.array_module(h).empty((N, H, D), h.dtype)
    for i in range(n_layers):
        p = f"{prefix}layers.{i}."
        x = ops.layer_norm(h, w[p + "norm1.weight"], w[p + "norm1.bias"], eps,
                           threads=n) if pre_norm else h
        qkv = ops.linear(x, w[p + "qkv.weight"], w[p + "qkv.bias"], threads=n).reshape(N, 3, H, D)
        ops.attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, out=ctx, threads=n)
        a = ops.linear(ctx.reshape(N, C), w[p + "out.weight"], w[p + "out.bias"], threads=n)
        if pre_norm:
            h = ops.add(h, a)
            x = ops.layer_norm(h, w[p + "norm2.weight"], w[p + "norm2.bias"], eps, threads=n)
        else:
            h = x = ops.layer_norm(a, w[p + "norm1.weight"], w[p + "norm1.bias"], eps, residual=h,
                                   threads=n)
        f = ops.linear(x, w[p + "ff1.weight"], w[p + "ff1.bias"], activation, threads=n)
        f = ops.linear(f, w[p + "ff2.weight"], w[p + "ff2.bias"], threads=n)
        if pre_norm:
            h = ops.add(h, f)
        else:
            h = ops.layer_norm(f, w[p + "norm2.weight"], w[p + "norm2.bias"], eps, residual=h,
                               threads=n)
    if prefix + "final_norm.weight" in w:
        h = ops.layer_norm(h, w[prefix + "final_norm.weight"], w[prefix + "final_norm.bias"], eps,
                           threads=n)
    return h


class EncoderModel(DeviceModel):
    """An encoder-only Transformer: `model(input_ids, attention_mask, token_type_ids)` -> last
    hidden state (B, T, C) float32; `model.embed(...)` -> sentence embeddings (B, C).

    config: EncoderConfig; weights: {our name: array} (module docstring); tokenizer: optional
    transformer.tokenizer.Tokenizer; threads: see transformer._threads.resolve_threads.
    On device="cuda" (`to("cuda", dtype)`) outputs are CuPy arrays (float32, or the model's
    float16; bfloat16 outputs come back as float32); inputs may stay NumPy."""

    DEVICES = ("cpu", "cuda")

    def __init__(self, config, weights, tokenizer=None, threads=None):
        self.config = config
        self.tokenizer = tokenizer
        self.threads = resolve_threads(threads)
        self.weights = host_weights(weights)

    # -- inputs ---------------------------------------------------------------------------------
    def _pack(self, input_ids, attention_mask, token_type_ids, truncate):
        """Check inputs and pack the real tokens: returns ids, positions, types (N,), the flat
        indices of the real tokens in (B*T,), cu_seqlens (B+1,) and (B, T)."""
        cfg = self.config
        P = cfg.max_position_embeddings
        if truncate:
            cut = lambda a: a[:, :P] if a is not None and np.ndim(a) == 2 else a
            input_ids, attention_mask, token_type_ids = map(cut, (input_ids, attention_mask,
                                                                  token_type_ids))
        ids, mask, _ = check_batch(input_ids, attention_mask, cfg.vocab_size)
        B, T = ids.shape
        if T > P:
            raise ValueError(f"input_ids has T={T} tokens but the model takes at most "
                             f"max_position_embeddings={P} (pass truncate=True to cut the input)")
        types = None
        if token_type_ids is not None:
            types = np.asarray(to_numpy(token_type_ids))
            if not np.issubdtype(types.dtype, np.integer) or types.shape != (B, T):
                raise ValueError(f"token_type_ids must be integers of the shape of input_ids "
                                 f"{(B, T)}, got {types.dtype} {types.shape}")
        flat, cu, positions = pack(mask)
        types = None if types is None else types.ravel()[flat]
        return ids.ravel()[flat], positions, types, flat, cu, (B, T)

    # -- the stack ------------------------------------------------------------------------------
    def _forward_packed(self, ids, positions, types, cu):
        """(N,) ids/positions/types and cu_seqlens -> hidden states (N, C) float32."""
        cfg, w, n = self.config, self.weights, self.threads
        H, D, eps = cfg.n_heads, cfg.head_dim, cfg.layer_norm_eps
        h = ops.embedding(ids, w["embeddings.word"], w["embeddings.position"], positions, types,
                          w.get("embeddings.token_type"), w.get("embeddings.norm.weight"),
                          w.get("embeddings.norm.bias"), eps, threads=n)
        return encoder_layers(w, "", cfg.n_layers, H, D, eps, cfg.activation, cfg.pre_norm, h, cu,
                              n)

    # -- public API -----------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, truncate=False):
        """Last hidden state. input_ids: (B, T) integer in [0, V); attention_mask: (B, T) of 0/1
        (any positions: right or left padding); token_type_ids: (B, T) or None (all 0);
        truncate: cut T to max_position_embeddings instead of raising.
        Returns (B, T, C) float32; padded positions hold 0 (HF computes values there that no one
        reads). Raises TypeError/ValueError/IndexError naming the bad argument."""
        ids, pos, types, flat, cu, (B, T) = self._pack(input_ids, attention_mask, token_type_ids,
                                                      truncate)
        with blas_single_threaded():
            h = self._output(self._forward_packed(ids, pos, types, cu))
        xp = ops.array_module(h)
        out = xp.zeros((B * T, self.config.d_model), h.dtype)
        out[xp.asarray(flat)] = h
        return out.reshape(B, T, -1)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None, pooling="mean",
              normalize=True, truncate=False):
        """Sentence embeddings (B, C) float32: the mean of the last hidden state over the real
        tokens ("mean", as sentence-transformers' Pooling) or the first token ("cls"), then L2
        normalisation when `normalize`. Inputs as for __call__."""
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        ids, pos, types, flat, cu, _ = self._pack(input_ids, attention_mask, token_type_ids,
                                                  truncate)
        with blas_single_threaded():
            h = self._output(self._forward_packed(ids, pos, types, cu))
        xp = ops.array_module(h)
        if pooling == "mean" and xp is np:
            e = np.add.reduceat(h, cu[:-1], axis=0) / np.diff(cu)[:, None].astype(np.float32)
        elif pooling == "mean":  # segment sums from a float64 running sum
            s = xp.concatenate([xp.zeros((1, h.shape[1])), xp.cumsum(h, 0, dtype=np.float64)])
            e = (s[cu[1:]] - s[cu[:-1]]) / xp.asarray(np.diff(cu))[:, None]
        else:
            e = h[cu[:-1]]
        e = e.astype(np.float32)
        if normalize:
            e /= xp.maximum(xp.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return e

    def embed_texts(self, texts, batch_size=32, pooling="mean", normalize=True, progress=None):
        """Embeddings (len(texts), C) float32 of a list of strings, tokenised with the model's
        tokenizer.json (truncated to the model's maximum length) in batches of `batch_size`.
        progress: optional callable(done, total). Raises ValueError without a tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer.json; call embed() with input_ids")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        texts = list(texts)
        out = ops.array_module(self.weights["embeddings.word"]).empty(
            (len(texts), self.config.d_model), np.float32)
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size])
            out[start:start + batch_size] = self.embed(**batch, pooling=pooling,
                                                       normalize=normalize)
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
        return out
