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
  position_bias.relative (H, num_buckets)       relative attention bias (MPNet) [optional]
"""
import os

import numpy as np

from . import block
from .._threads import blas_single_threaded
from ..device import to_numpy
from .._io import read_json
from .base import Model
from ._inputs import check_batch, check_no_holes, pack
from .classifier import run_head

POOLING_MODES = ("mean", "max", "cls", "mean_sqrt_len")
# sentence-transformers' Pooling config flags, in the order its forward() concatenates them
_ST_FLAGS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
             ("pooling_mode_mean_tokens", "mean"), ("pooling_mode_mean_sqrt_len_tokens",
                                                     "mean_sqrt_len"))


def sentence_transformers_pooling(path):
    """(pooling modes, normalize) a sentence-transformers directory declares in modules.json
    (a Pooling module's config.json, a Normalize module), or None without modules.json.
    Raises ValueError naming the file for a malformed one or an unsupported pooling mode."""
    modules_path = os.path.join(path, "modules.json")
    if not os.path.isfile(modules_path):
        return None
    modules = read_json(modules_path, "JSON list of modules", list)
    types = {}
    for m in modules:
        if not isinstance(m, dict) or not isinstance(m.get("type"), str):
            raise ValueError(f"{modules_path}: each module must be an object with a 'type'")
        types[m["type"].rsplit(".", 1)[-1]] = m
    modes = ("mean",)
    if "Pooling" in types:
        sub = str(types["Pooling"].get("path", ""))
        cfg_path = os.path.join(path, sub, "config.json")
        root = os.path.realpath(path)
        if os.path.commonpath([root, os.path.realpath(cfg_path)]) != root:
            raise ValueError(f"{modules_path}: Pooling path {sub!r} lies outside {root}")
        cfg = read_json(cfg_path)
        modes = tuple(mode for flag, mode in _ST_FLAGS if cfg.get(flag))
        unsupported = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v
                       and k not in dict(_ST_FLAGS)]
        if unsupported or not modes:
            raise ValueError(f"{cfg_path}: pooling {unsupported or 'none'} is not supported "
                             f"(supported: {[f for f, _ in _ST_FLAGS]})")
    return modes, "Normalize" in types


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
    if config.relative_attention_num_buckets:
        shapes["position_bias.relative"] = (config.n_heads, config.relative_attention_num_buckets)
    return shapes


class EncoderModel(Model):
    """An encoder-only Transformer: `model(input_ids, attention_mask, token_type_ids)` -> last
    hidden state (B, T, C) float32; `model.embed(...)` -> sentence embeddings (B, C).

    config: EncoderConfig; weights: {our name: array} (module docstring); tokenizer: optional
    transformer.tokenizer.Tokenizer; threads: see transformer._threads.resolve_threads.
    On device="cuda" (`to("cuda", dtype)`) outputs are CuPy arrays (float32, or the model's
    float16; bfloat16 outputs come back as float32); inputs may stay NumPy."""

    kind = "encoder"

    # -- inputs ---------------------------------------------------------------------------------
    def _pack(self, input_ids, attention_mask, token_type_ids, truncate):
        """Check inputs and pack the real tokens: returns ids, positions, types (N,), the flat
        indices of the real tokens in (B*T,), cu_seqlens (B+1,) and (B, T)."""
        cfg = self.config
        P = cfg.max_length
        if truncate:
            cut = lambda a: a[:, :P] if a is not None and np.ndim(a) == 2 else a
            input_ids, attention_mask, token_type_ids = map(cut, (input_ids, attention_mask,
                                                                  token_type_ids))
        ids, mask, _ = check_batch(input_ids, attention_mask, cfg.vocab_size)
        if cfg.positions == "relative":
            check_no_holes(mask)
        B, T = ids.shape
        if T > P:
            raise ValueError(f"input_ids has T={T} tokens but the model takes at most {P} "
                             f"(max_position_embeddings={cfg.max_position_embeddings}; pass "
                             f"truncate=True to cut the input)")
        types = None
        if token_type_ids is not None:
            types = np.asarray(to_numpy(token_type_ids))
            if not np.issubdtype(types.dtype, np.integer) or types.shape != (B, T):
                raise ValueError(f"token_type_ids must be integers of the shape of input_ids "
                                 f"{(B, T)}, got {types.dtype} {types.shape}")
            if not cfg.type_vocab_size and not types.any():
                types = None  # all type 0 from a tokenizer, for a model without token types
            elif not cfg.type_vocab_size:
                raise ValueError("token_type_ids given but the model has no token types")
            elif types.min() < 0 or types.max() >= cfg.type_vocab_size:
                raise IndexError(f"token_type_ids must lie in [0, {cfg.type_vocab_size}), got "
                                 f"values in [{types.min()}, {types.max()}]")
        flat, cu, positions = pack(mask)
        if cfg.position_start is not None:  # rank among the real tokens (RoBERTa)
            positions = np.arange(len(flat)) - np.repeat(cu[:-1], np.diff(cu)) \
                + cfg.position_start
        types = None if types is None else types.ravel()[flat].astype(np.int64)
        return ids.ravel()[flat], positions, types, flat, cu, (B, T)

    # -- the stack ------------------------------------------------------------------------------
    def _forward_packed(self, ids, positions, types, cu):
        """(N,) ids/positions/types (checked) and cu_seqlens -> hidden states (N, C) float32."""
        cfg, w, k = self.config, self.weights, self.kernels
        table = w.get("embeddings.token_type")
        if table is not None and types is None:
            types = np.zeros(len(ids), np.int64)
        h = k.embedding(ids, positions, w["embeddings.word"], w["embeddings.position"],
                        w.get("embeddings.norm.weight"), w.get("embeddings.norm.bias"),
                        cfg.layer_norm_eps, types, table)
        spec = cfg.block
        return block.run(spec, k, self.stack(), h, block.PackedSelfAttention(
            spec, k, cu, position_bias=self._relative_bias(
                "", self.config.relative_attention_max_distance)))

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
            return self._padded(self._forward_packed(ids, pos, types, cu), flat, (B, T))

    pooling, normalize = ("mean",), True  # embed()'s defaults; a directory may declare others

    def _pool(self, h, cu, modes):
        """Pooled rows (B, C * len(modes)) of packed hidden states h (N, C), in `modes` order."""
        xp = self.kernels.xp
        lens = xp.asarray(np.diff(cu).astype(np.float64))[:, None]
        sums = None
        out = []
        for mode in modes:
            if mode in ("mean", "mean_sqrt_len") and sums is None:
                sums = self.kernels.segment_sums(h, cu)
            if mode == "mean":
                out.append(sums / lens)
            elif mode == "mean_sqrt_len":
                out.append(sums / xp.sqrt(lens))
            elif mode == "max":
                out.append(xp.stack([h[a:b].max(0) for a, b in zip(cu[:-1], cu[1:])]))
            else:
                out.append(h[cu[:-1]])
        return (out[0] if len(out) == 1 else xp.concatenate(out, axis=1)).astype(np.float32)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None, pooling=None,
              normalize=None, truncate=False):
        """Sentence embeddings (B, C) float32 (sentence-transformers' Pooling and Normalize
        modules, sentence_transformers/models/Pooling.py): over each sequence's real tokens of
        the last hidden state, "mean", "max", "cls" (the first token) or "mean_sqrt_len" (the
        sum over sqrt(length)); a tuple of modes concatenates them in that order (B, C * n).
        pooling None: the model's (`self.pooling`: what the directory's modules.json and
        1_Pooling/config.json declare, else mean); normalize None: the model's (a Normalize
        module, else True); then L2 normalisation when normalize. Inputs as for __call__.
        Raises ValueError for an unknown pooling mode."""
        modes = self.pooling if pooling is None else (
            (pooling,) if isinstance(pooling, str) else tuple(pooling))
        if not modes or any(m not in POOLING_MODES for m in modes):
            raise ValueError(f"pooling must be one of {POOLING_MODES} or a tuple of them, got "
                             f"{pooling!r}")
        normalize = self.normalize if normalize is None else normalize
        ids, pos, types, flat, cu, _ = self._pack(input_ids, attention_mask, token_type_ids,
                                                  truncate)
        with blas_single_threaded():
            h = self._output(self._forward_packed(ids, pos, types, cu))
        e = self._pool(h, cu, modes)
        if normalize:
            xp = self.kernels.xp
            e /= xp.maximum(xp.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return e

    labels = None  # a sequence classifier's class names (classify's columns), else None

    def classify(self, input_ids, attention_mask=None, token_type_ids=None, truncate=False):
        """Logits (B, num_labels) float32 of a sequence classifier (a cross-encoder: config.json
        architectures BertForSequenceClassification, (XLM-)RobertaForSequenceClassification):
        the head of transformer.models.classifier on the last hidden state of each sequence's
        first real token ([CLS] / <s>: HF's column 0 of a right-padded batch); column j is the
        class `self.labels[j]` (config.json id2label). No softmax / sigmoid: as HF's
        `logits`. Inputs as for __call__ (a query / passage pair: token_type_ids 1 on the
        passage for BERT, as the tokenizer makes them, classify_texts). Raises TypeError for a
        model without a classification head, and __call__'s errors for bad inputs."""
        if self.labels is None:
            raise TypeError(f"{type(self).__name__} has no sequence-classification head "
                            f"(config.json architectures: BertForSequenceClassification or "
                            f"XLMRobertaForSequenceClassification); use embed()")
        ids, pos, types, flat, cu, _ = self._pack(input_ids, attention_mask, token_type_ids,
                                                  truncate)
        with blas_single_threaded():
            h = self._forward_packed(ids, pos, types, cu)
            return run_head(self.kernels, self.weights, h[cu[:-1]])

    def classify_texts(self, texts, text_pair=None, batch_size=32):
        """Logits (len(texts), num_labels) float32 of strings, or of (text, text_pair[i])
        pairs (a reranker's query and passage), tokenised by the model's tokenizer.json as HF's
        tokenizer(texts, text_pair) does (the pair template's token types, longest-first
        truncation to the model's maximum length), in batches of `batch_size`. Raises
        ValueError without a tokenizer or for lists of different lengths, and classify's
        errors."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer.json; call classify() with input_ids")
        if isinstance(texts, str) or isinstance(text_pair, str):
            raise TypeError("texts and text_pair must be lists of strings, not a single string")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        texts = list(texts)
        pairs = None if text_pair is None else list(text_pair)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"text_pair has {len(pairs)} strings but texts has {len(texts)}")
        out = []
        for start in range(0, len(texts), batch_size):
            end = start + batch_size
            batch = self.tokenizer(texts[start:end], None if pairs is None else pairs[start:end])
            out.append(self.classify(**batch))
        xp = self.kernels.xp
        return xp.concatenate(out) if out else xp.zeros((0, len(self.labels)), np.float32)

    def embed_texts(self, texts, batch_size=32, pooling=None, normalize=None, progress=None):
        """Embeddings (len(texts), C * pooling modes) float32 of a list of strings, tokenised
        with the model's tokenizer.json (truncated to the model's maximum length) in batches of
        `batch_size`; pooling and normalize as for embed(). progress: optional
        callable(done, total). Raises ValueError without a tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer.json; call embed() with input_ids")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        texts = list(texts)
        n_modes = len(self.pooling if pooling is None else
                      (pooling,) if isinstance(pooling, str) else tuple(pooling))
        out = self.kernels.xp.empty(
            (len(texts), self.config.d_model * n_modes), np.float32)
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size])
            out[start:start + batch_size] = self.embed(**batch, pooling=pooling,
                                                       normalize=normalize)
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
        return out
