"""Llama family (Touvron et al. 2023) from a Hugging Face directory, names as in HF
modeling_llama.py: RMSNorm, rotary positions in the rotate-half convention with rope_theta,
SwiGLU feed-forward (gate_proj, up_proj, down_proj), grouped-query attention (num_key_value_heads),
tied or untied lm_head."""
from ..weights import check_tensors, concat
from . import register_family
from ._hf import HFFamily, head_expected, lm_head
from .decoder import DecoderConfig, DecoderModel, decoder_shapes

IGNORED = (".rotary_emb.inv_freq",)


def config_from_hf(cfg, source="config.json"):
    """DecoderConfig from an HF LlamaConfig dict. Raises ValueError for unsupported settings
    (rope scaling other than the default, activations other than SiLU)."""
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (silu)")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ValueError(f"{source}: rope_parameters / rope_scaling must be a JSON object, got "
                         f"{rope!r}")
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ValueError(f"{source}: rope scaling {rope.get('rope_type', rope.get('type'))!r} "
                         "is not supported")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ValueError(f"{source}: rope_theta must be a number, got {theta!r}")
    if cfg.get("mlp_bias") or (cfg.get("attention_bias") and cfg.get("model_type") == "llama"):
        raise ValueError(f"{source}: attention_bias / mlp_bias are not supported")
    try:
        H = cfg["num_attention_heads"]
        return DecoderConfig(
            vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], n_heads=H,
            n_kv_heads=cfg.get("num_key_value_heads") or H, n_layers=cfg["num_hidden_layers"],
            d_ff=cfg["intermediate_size"],
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            head_dim=cfg.get("head_dim"), norm="rms_norm", norm_eps=cfg.get("rms_norm_eps", 1e-6),
            activation="swiglu", positions="rotary", rope_theta=float(theta),
            rope_interleaved=False, bias=False,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"))
    except KeyError as e:
        raise ValueError(f"{source}: missing key {e.args[0]!r}")


def weights_from_hf(tensors, config, source="model.safetensors"):
    """Map HF Llama tensors to our names, fusing q/k/v and gate/up (weights.concat: lazily for
    Lazy tensors); every shape checked."""
    C, D, F, V = config.d_model, config.head_dim, config.d_ff, config.vocab_size
    Q, K = config.n_heads * D, config.n_kv_heads * D
    expected = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if head_expected(tensors, config):
        expected["lm_head.weight"] = (V, C)
    for i in range(config.n_layers):
        q = f"model.layers.{i}."
        expected.update({q + "input_layernorm.weight": (C,),
                         q + "post_attention_layernorm.weight": (C,),
                         q + "self_attn.q_proj.weight": (Q, C), q + "self_attn.k_proj.weight": (K, C),
                         q + "self_attn.v_proj.weight": (K, C), q + "self_attn.o_proj.weight": (C, Q),
                         q + "mlp.gate_proj.weight": (F, C), q + "mlp.up_proj.weight": (F, C),
                         q + "mlp.down_proj.weight": (C, F)})
    t = check_tensors(tensors, expected, IGNORED, source)
    w = {"embeddings.word": t["model.embed_tokens.weight"], "final_norm.weight": t["model.norm.weight"],
         "lm_head.weight": lm_head(t, "lm_head.weight", t["model.embed_tokens.weight"])}
    for i in range(config.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        w[p + "norm1.weight"] = t[q + "input_layernorm.weight"]
        w[p + "norm2.weight"] = t[q + "post_attention_layernorm.weight"]
        w[p + "qkv.weight"] = concat([t[q + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        w[p + "out.weight"] = t[q + "self_attn.o_proj.weight"]
        w[p + "ff1.weight"] = concat([t[q + "mlp.gate_proj.weight"], t[q + "mlp.up_proj.weight"]])
        w[p + "ff2.weight"] = t[q + "mlp.down_proj.weight"]
    assert set(w) == set(decoder_shapes(config))
    return w


@register_family("llama")
class LlamaModel(HFFamily, DecoderModel):
    """Llama language model (RMSNorm, rotate-half RoPE, SwiGLU, GQA); see DecoderModel."""

    config_from_hf = staticmethod(config_from_hf)
    weights_from_hf = staticmethod(weights_from_hf)
