"""BERT family (Devlin et al. 2019) from a Hugging Face directory: config.json +
model.safetensors (+ tokenizer.json). Names follow HF modeling_bert.py (BertModel), with or
without the "bert." prefix of the task models; heads (pooler, MLM/NSP heads) are ignored."""
import os

import numpy as np

from ..tokenizer import Tokenizer
from ..weights import WeightsError, check_tensors
from . import register_family
from ._hf import check_layer_count, read_hf_weights, read_json
from .config import HF_ACTIVATIONS, EncoderConfig
from .encoder import EncoderModel, encoder_shapes

IGNORED = ("pooler.", "cls.", "classifier.", "qa_outputs.", ".position_ids")


def config_from_hf(cfg, source="config.json"):
    """EncoderConfig from an HF BertConfig dict. Raises ValueError for unsupported settings."""
    act = cfg.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"{source}: hidden_act {act!r} is not supported "
                         f"(supported: {sorted(HF_ACTIVATIONS)})")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type "
                         f"{cfg['position_embedding_type']!r} is not supported (only 'absolute')")
    try:
        return EncoderConfig(
            vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"],
            n_heads=cfg["num_attention_heads"], n_layers=cfg["num_hidden_layers"],
            d_ff=cfg["intermediate_size"],
            max_position_embeddings=cfg.get("max_position_embeddings", 512),
            type_vocab_size=cfg.get("type_vocab_size", 2), activation=HF_ACTIVATIONS[act],
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), pre_norm=False,
            pad_token_id=cfg.get("pad_token_id", 0))
    except KeyError as e:
        raise ValueError(f"{source}: missing key {e.args[0]!r}")


def _hf_names(config):
    """{our name: HF name} (HF names without the "bert." prefix)."""
    names = {"embeddings.word": "embeddings.word_embeddings.weight",
             "embeddings.position": "embeddings.position_embeddings.weight",
             "embeddings.token_type": "embeddings.token_type_embeddings.weight",
             "embeddings.norm.weight": "embeddings.LayerNorm.weight",
             "embeddings.norm.bias": "embeddings.LayerNorm.bias"}
    for i in range(config.n_layers):
        p, q = f"layers.{i}.", f"encoder.layer.{i}."
        names.update({p + "out.weight": q + "attention.output.dense.weight",
                      p + "out.bias": q + "attention.output.dense.bias",
                      p + "norm1.weight": q + "attention.output.LayerNorm.weight",
                      p + "norm1.bias": q + "attention.output.LayerNorm.bias",
                      p + "ff1.weight": q + "intermediate.dense.weight",
                      p + "ff1.bias": q + "intermediate.dense.bias",
                      p + "ff2.weight": q + "output.dense.weight",
                      p + "ff2.bias": q + "output.dense.bias",
                      p + "norm2.weight": q + "output.LayerNorm.weight",
                      p + "norm2.bias": q + "output.LayerNorm.bias"})
    return names


def weights_from_hf(tensors, config, source="model.safetensors"):
    """Map HF BERT tensors ({name: array}) to our names (transformer.models.encoder), fusing
    query/key/value into one (3C, C) projection. Every shape is checked; raises WeightsError
    listing missing, unexpected and mismatched tensors."""
    def canon(name):
        name = name[5:] if name.startswith("bert.") else name
        if "LayerNorm." in name:  # TF-converted checkpoints: gamma/beta
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
            name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        return name

    tensors = {canon(k): v for k, v in tensors.items()}
    ours = encoder_shapes(config)
    names = _hf_names(config)
    C = config.d_model
    expected = {names[k]: s for k, s in ours.items() if k in names}
    for i in range(config.n_layers):
        for part in ("query", "key", "value"):
            q = f"encoder.layer.{i}.attention.self.{part}."
            expected[q + "weight"] = (C, C)
            expected[q + "bias"] = (C,)
    found = check_tensors(tensors, expected, IGNORED, source)
    weights = {ours_name: found[hf] for ours_name, hf in names.items() if hf in found}
    for i in range(config.n_layers):
        q = f"encoder.layer.{i}.attention.self."
        weights[f"layers.{i}.qkv.weight"] = np.concatenate(
            [found[q + p + ".weight"] for p in ("query", "key", "value")])
        weights[f"layers.{i}.qkv.bias"] = np.concatenate(
            [found[q + p + ".bias"] for p in ("query", "key", "value")])
    return weights


def _max_length(path, config, tokenizer_json):
    """Longest input in tokens: sentence-transformers' max_seq_length when present, else the
    tokenizer's truncation length, capped at max_position_embeddings."""
    limit = config.max_position_embeddings
    st = os.path.join(path, "sentence_bert_config.json")
    try:
        if os.path.isfile(st):
            return min(limit, int(read_json(st).get("max_seq_length", limit)))
        trunc = read_json(tokenizer_json).get("truncation") or {}
        return min(limit, int(trunc.get("max_length", limit)))
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: bad max_seq_length or truncation setting ({e})")


@register_family("bert")
class BertModel(EncoderModel):
    """BERT encoder (post-LN), loaded from an HF directory; see EncoderModel for the API."""

    @classmethod
    def from_pretrained(cls, path, config_dict, threads=None):
        """Load config.json's BERT from `path` (model.safetensors, tokenizer.json optional).
        Raises FileNotFoundError, WeightsError or ValueError with the file and the problem."""
        config = config_from_hf(config_dict, os.path.join(path, "config.json"))
        tensors, source = read_hf_weights(path)
        check_layer_count(tensors, config.n_layers, source)
        weights = weights_from_hf(tensors, config, source)
        tok_path = os.path.join(path, "tokenizer.json")
        tokenizer = None
        if os.path.isfile(tok_path):
            tokenizer = Tokenizer(tok_path, _max_length(path, config, tok_path))
        return cls(config, weights, tokenizer, threads)


__all__ = ["BertModel", "config_from_hf", "weights_from_hf", "WeightsError"]
