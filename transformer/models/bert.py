"""BERT family (Devlin et al. 2019) from a Hugging Face directory: config.json +
model.safetensors (+ tokenizer.json). Names follow HF modeling_bert.py (BertModel), with or
without the "bert." prefix of the task models; heads (pooler, MLM/NSP heads) are ignored, except
the sequence classifiers' (transformer.models.classifier: EncoderModel.classify).
RoBERTa and XLM-RoBERTa (Liu et al. 2019; Conneau et al. 2020) are the same stack with positions
counted from padding_idx + 1 (HF modeling_roberta.py) and the "roberta." prefix."""
import os

import numpy as np

from ..tokenizer import Tokenizer, max_input_length
from ..weights import WeightsError, check_tensors
from . import register_family
from ._hf import check_layer_count, read_hf_weights
from .classifier import head_layout, head_shapes, head_weights, labels
from .config import HF_ACTIVATIONS, EncoderConfig
from .encoder import EncoderModel, encoder_shapes, sentence_transformers_pooling

IGNORED = ("pooler.", "cls.", "classifier.", "qa_outputs.", ".position_ids", "lm_head.")
PREFIXES = ("bert.", "roberta.", "mpnet.")
# {our layer name: HF name under encoder.layer.{i}.}, and the fused Q | K | V parts
BERT_LAYOUT = {"out": "attention.output.dense", "norm1": "attention.output.LayerNorm",
               "ff1": "intermediate.dense", "ff2": "output.dense", "norm2": "output.LayerNorm",
               "qkv": ("attention.self.", ("query", "key", "value"))}


def config_from_hf(cfg, source="config.json", roberta=False):
    """EncoderConfig from an HF BertConfig dict (roberta: a RobertaConfig / XLMRobertaConfig
    dict, positions from pad_token_id + 1). Raises ValueError for unsupported settings."""
    act = cfg.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"{source}: hidden_act {act!r} is not supported "
                         f"(supported: {sorted(HF_ACTIVATIONS)})")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type "
                         f"{cfg['position_embedding_type']!r} is not supported (only 'absolute')")
    pad = cfg.get("pad_token_id", 1 if roberta else 0)
    if roberta and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 0):
        raise ValueError(f"{source}: pad_token_id must be a token id (an integer >= 0: RoBERTa's "
                         f"positions start after it), got {pad!r}")
    try:
        return EncoderConfig(
            vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"],
            n_heads=cfg["num_attention_heads"], n_layers=cfg["num_hidden_layers"],
            d_ff=cfg["intermediate_size"],
            max_position_embeddings=cfg.get("max_position_embeddings", 512),
            type_vocab_size=cfg.get("type_vocab_size", 2), activation=HF_ACTIVATIONS[act],
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), pre_norm=False,
            pad_token_id=pad, position_start=pad + 1 if roberta else None)
    except KeyError as e:
        raise ValueError(f"{source}: missing key {e.args[0]!r}")


def _hf_names(config, layout=BERT_LAYOUT):
    """{our name: HF name} (HF names without the "bert." prefix) for a layer layout."""
    names = {"embeddings.word": "embeddings.word_embeddings.weight",
             "embeddings.position": "embeddings.position_embeddings.weight",
             "embeddings.token_type": "embeddings.token_type_embeddings.weight",
             "embeddings.norm.weight": "embeddings.LayerNorm.weight",
             "embeddings.norm.bias": "embeddings.LayerNorm.bias"}
    for i in range(config.n_layers):
        p, q = f"layers.{i}.", f"encoder.layer.{i}."
        for ours, theirs in layout.items():
            if ours != "qkv":
                names.update({p + ours + ".weight": q + theirs + ".weight",
                              p + ours + ".bias": q + theirs + ".bias"})
    return names


def weights_from_hf(tensors, config, source="model.safetensors", layout=BERT_LAYOUT,
                    extra=None):
    """Map HF BERT tensors ({name: array}) to our names (transformer.models.encoder), fusing
    query/key/value into one (3C, C) projection; layout: the per-layer HF names (BERT_LAYOUT,
    or another family's); extra: {HF name: shape} of more tensors to check and return under
    their HF names. Every shape is checked; raises WeightsError listing missing, unexpected
    and mismatched tensors."""
    def canon(name):
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        if "LayerNorm." in name:  # TF-converted checkpoints: gamma/beta
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
            name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        return name

    tensors = {canon(k): v for k, v in tensors.items()}
    ours = encoder_shapes(config)
    names = _hf_names(config, layout)
    C = config.d_model
    expected = {names[k]: s for k, s in ours.items() if k in names}
    expected.update(extra or {})
    where, parts = layout["qkv"]
    for i in range(config.n_layers):
        for part in parts:
            q = f"encoder.layer.{i}.{where}{part}."
            expected[q + "weight"] = (C, C)
            expected[q + "bias"] = (C,)
    found = check_tensors(tensors, expected, IGNORED, source)
    weights = {ours_name: found[hf] for ours_name, hf in names.items() if hf in found}
    weights.update({hf: found[hf] for hf in extra or {}})
    for i in range(config.n_layers):
        q = f"encoder.layer.{i}.{where}"
        for s in ("weight", "bias"):
            weights[f"layers.{i}.qkv.{s}"] = np.concatenate([found[q + p + "." + s]
                                                             for p in parts])
    return weights


@register_family("bert")
class BertModel(EncoderModel):
    """BERT encoder (post-LN), loaded from an HF directory; see EncoderModel for the API."""

    ROBERTA = False

    @classmethod
    def hf_config(cls, config_dict, source):
        """EncoderConfig of this family from an HF config dict."""
        return config_from_hf(config_dict, source, cls.ROBERTA)

    @classmethod
    def hf_weights(cls, tensors, config, source, head=None):
        """{our name: array} of this family from HF tensors (shapes checked); head: {HF name:
        shape} of a classification head's tensors, returned under their HF names."""
        return weights_from_hf(tensors, config, source, extra=head)

    @classmethod
    def from_pretrained(cls, path, config_dict, threads=None, dtype="float32"):
        """Load config.json's model from `path` (model.safetensors, packed in `dtype` as it
        streams in; tokenizer.json and a sentence-transformers pooling config optional). Raises FileNotFoundError, WeightsError
        or ValueError with the file and the problem."""
        config = cls.hf_config(config_dict, os.path.join(path, "config.json"))
        tensors, source = read_hf_weights(path)
        check_layer_count(tensors, config.n_layers, source)
        layout = head_layout(config_dict)  # a sequence classifier (transformer.models.classifier)
        if layout is None:
            weights = cls.hf_weights(tensors, config, source)
        else:
            names = labels(config_dict, os.path.join(path, "config.json"))
            weights = head_weights(cls.hf_weights(
                tensors, config, source, head_shapes(layout, config.d_model, len(names))), layout)
        tok_path = os.path.join(path, "tokenizer.json")
        tokenizer = None
        if os.path.isfile(tok_path):
            tokenizer = Tokenizer(tok_path, max_input_length(path, config.max_length, tok_path))
        model = cls.from_weights(config, weights, tokenizer, threads, dtype)
        if layout is not None:
            model.labels = names
        declared = sentence_transformers_pooling(path)
        if declared:
            model.pooling, model.normalize = declared
        return model


__all__ = ["BertModel", "config_from_hf", "weights_from_hf", "WeightsError"]


@register_family("roberta", "xlm-roberta")
class RobertaModel(BertModel):
    """RoBERTa / XLM-RoBERTa encoder: BERT's stack, positions counted from padding_idx + 1
    among each sequence's real tokens; see EncoderModel for the API."""

    ROBERTA = True
