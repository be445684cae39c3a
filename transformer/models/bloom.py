"""BLOOM (BigScience 2022) from a Hugging Face directory, HF modeling_bloom.py
(BloomForCausalLM): pre-LN decoder with a LayerNorm after the word embedding, ALiBi positions
(Press et al. 2022; the slopes added in the attention kernels, ops.PositionBias), GELU-tanh MLP,
LM head tied to the word embeddings unless the file holds its own. The fused query_key_value
rows are per head (H, 3, D) and are reordered here to our Q | K | V layout. Names with or
without the "transformer." prefix."""
import numpy as np

from ..weights import check_tensors
from . import register_family
from ._hf import HFFamily, head_expected, lm_head
from .config import is_int
from .decoder import DecoderConfig, DecoderModel, decoder_shapes

IGNORED = ()


def config_from_hf(cfg, source="config.json"):
    """DecoderConfig from an HF BloomConfig dict. Raises ValueError for unsupported settings."""
    if cfg.get("apply_residual_connection_post_layernorm"):
        raise ValueError(f"{source}: apply_residual_connection_post_layernorm=True is not "
                         "supported")
    if cfg.get("pretraining_tp", 1) != 1 and cfg.get("slow_but_exact"):
        raise ValueError(f"{source}: slow_but_exact tensor-parallel emulation is not supported")
    C = cfg.get("hidden_size", cfg.get("n_embed", 64))
    try:
        return DecoderConfig(
            vocab_size=cfg["vocab_size"], d_model=C, n_heads=cfg.get("n_head", 8),
            n_layers=cfg.get("n_layer", 2), d_ff=4 * C if is_int(C) else C,
            max_position_embeddings=cfg.get("seq_length", 2048), norm="layer_norm",
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5), activation="gelu_tanh",
            positions="alibi", embedding_norm=True, bias=True,
            tie_word_embeddings=cfg.get("tie_word_embeddings", True),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"))
    except KeyError as e:
        raise ValueError(f"{source}: missing key {e.args[0]!r}")


def weights_from_hf(tensors, config, source="model.safetensors"):
    """Map HF BLOOM tensors to our names (transformer.models.decoder); every shape checked
    (WeightsError lists every problem)."""
    tensors = {(k[12:] if k.startswith("transformer.") else k): v for k, v in tensors.items()}
    C, F, V, H, D = (config.d_model, config.d_ff, config.vocab_size, config.n_heads,
                     config.head_dim)
    names = {"embeddings.word": ("word_embeddings.weight", (V, C)),
             "embeddings.norm.weight": ("word_embeddings_layernorm.weight", (C,)),
             "embeddings.norm.bias": ("word_embeddings_layernorm.bias", (C,)),
             "final_norm.weight": ("ln_f.weight", (C,)), "final_norm.bias": ("ln_f.bias", (C,))}
    for i in range(config.n_layers):
        p, q = f"layers.{i}.", f"h.{i}."
        for ours, hf, shape in (("norm1", "input_layernorm", (C,)),
                                ("qkv", "self_attention.query_key_value", (3 * C, C)),
                                ("out", "self_attention.dense", (C, C)),
                                ("norm2", "post_attention_layernorm", (C,)),
                                ("ff1", "mlp.dense_h_to_4h", (F, C)),
                                ("ff2", "mlp.dense_4h_to_h", (C, F))):
            names[p + ours + ".weight"] = (q + hf + ".weight", shape)
            names[p + ours + ".bias"] = (q + hf + ".bias", shape[:1])
    expected = dict(names.values())
    if head_expected(tensors, config):
        expected["lm_head.weight"] = (V, C)
    found = check_tensors(tensors, expected, IGNORED, source)
    weights = {ours: found[hf] for ours, (hf, _) in names.items()}
    for i in range(config.n_layers):  # rows (H, 3, D) -> (3, H, D)
        for s in ("weight", "bias"):
            w = weights[f"layers.{i}.qkv.{s}"]
            weights[f"layers.{i}.qkv.{s}"] = np.ascontiguousarray(
                w.reshape((H, 3, D) + w.shape[1:]).swapaxes(0, 1).reshape(w.shape))
    weights["lm_head.weight"] = lm_head(found, "lm_head.weight", weights["embeddings.word"])
    assert set(weights) == set(decoder_shapes(config))
    return weights


@register_family("bloom")
class BloomModel(HFFamily, DecoderModel):
    """BLOOM language model (ALiBi, embedding LayerNorm, tied LM head); CPU and GPU (the ALiBi
    bias runs inside either backend's attention kernels). See DecoderModel for the API."""

    config_from_hf = staticmethod(config_from_hf)
    weights_from_hf = staticmethod(weights_from_hf)
