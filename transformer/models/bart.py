"""Marian (MarianMTModel) and BART (BartForConditionalGeneration) from Hugging Face directories:
the same weight names (HF modeling_marian.py / modeling_bart.py), different settings:
Marian: post-LN, sinusoidal [sin | cos] positions from 0, embeddings x sqrt(d_model), SiLU
("swish") or other activations, final_logits_bias; BART: post-LN, learned positions offset by 2,
layernorm_embedding, GELU, final_logits_bias. Both tie the LM head to the target embeddings."""
import numpy as np

from ..weights import check_tensors
from . import register_family
from ._hf import HFFamily
from .seq2seq import Seq2SeqConfig, Seq2SeqModel, seq2seq_shapes

ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu",
               "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
IGNORED = ()


def config_from_hf(cfg, source="config.json"):
    """Seq2SeqConfig from an HF MarianConfig or BartConfig dict. Raises ValueError for
    unsupported settings (different encoder/decoder widths or head counts, pre-LN variants)."""
    kind = cfg.get("model_type")
    act = cfg.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"{source}: activation_function {act!r} is not supported")
    if cfg.get("encoder_attention_heads") != cfg.get("decoder_attention_heads") or \
            cfg.get("encoder_ffn_dim") != cfg.get("decoder_ffn_dim"):
        raise ValueError(f"{source}: different encoder and decoder head counts or widths are not "
                         "supported")
    if cfg.get("normalize_before") or cfg.get("add_final_layer_norm"):
        raise ValueError(f"{source}: pre-LN variants (mBART-style) are not supported here")
    try:
        V = cfg["vocab_size"]
        return Seq2SeqConfig(
            src_vocab_size=V, tgt_vocab_size=cfg.get("decoder_vocab_size") or V,
            d_model=cfg["d_model"], n_heads=cfg["encoder_attention_heads"],
            encoder_layers=cfg["encoder_layers"], decoder_layers=cfg["decoder_layers"],
            d_ff=cfg["encoder_ffn_dim"], activation=ACTIVATIONS[act], pre_norm=False,
            layernorm_embedding=kind == "bart",
            positions="learned" if kind == "bart" else "sinusoidal", sinusoids="marian",
            position_offset=2 if kind == "bart" else 0,
            max_position_embeddings=cfg.get("max_position_embeddings", 1024),
            scale_embedding=cfg.get("scale_embedding", kind == "marian"), norm_eps=1e-5,
            decoder_start_token_id=cfg["decoder_start_token_id"],
            eos_token_id=cfg.get("eos_token_id"), pad_token_id=cfg.get("pad_token_id"),
            bos_token_id=cfg.get("bos_token_id"),
            forced_bos_token_id=cfg.get("forced_bos_token_id"),
            forced_eos_token_id=cfg.get("forced_eos_token_id"))
    except KeyError as e:
        raise ValueError(f"{source}: missing key {e.args[0]!r}")


def weights_from_hf(tensors, config, source="model.safetensors"):
    """Map HF Marian/BART tensors to our names (transformer.models.seq2seq), fusing q/k/v and the
    cross-attention k/v; every shape checked (WeightsError lists every problem)."""
    C, F = config.d_model, config.d_ff
    t = dict(tensors)
    # tied embeddings are saved once, under any of these names
    for side in ("encoder", "decoder"):
        name = f"model.{side}.embed_tokens.weight"
        if name not in t and "model.shared.weight" in t:
            t[name] = t["model.shared.weight"]
    t.pop("model.shared.weight", None)
    if "lm_head.weight" not in t and "model.decoder.embed_tokens.weight" in t:
        t["lm_head.weight"] = t["model.decoder.embed_tokens.weight"]
    expected = {"lm_head.weight": (config.tgt_vocab_size, C),
                "final_logits_bias": (1, config.tgt_vocab_size)}
    ours = {"lm_head.weight": "lm_head.weight"}
    lin = {"q_proj": (C, C), "k_proj": (C, C), "v_proj": (C, C), "out_proj": (C, C)}
    for side, V, L in (("encoder", config.src_vocab_size, config.encoder_layers),
                       ("decoder", config.tgt_vocab_size, config.decoder_layers)):
        m = f"model.{side}."
        expected[m + "embed_tokens.weight"] = (V, C)
        ours[side + ".embeddings.word"] = m + "embed_tokens.weight"
        if config.positions == "learned":
            expected[m + "embed_positions.weight"] = (config.max_position_embeddings + 2, C)
            ours[side + ".embeddings.position"] = m + "embed_positions.weight"
        if config.layernorm_embedding:
            for s in ("weight", "bias"):
                expected[m + "layernorm_embedding." + s] = (C,)
                ours[f"{side}.embeddings.norm.{s}"] = m + "layernorm_embedding." + s
        for i in range(L):
            q, p = f"{m}layers.{i}.", f"{side}.layers.{i}."
            attns = ["self_attn"] + (["encoder_attn"] if side == "decoder" else [])
            for a in attns:
                for name, shape in lin.items():
                    expected[f"{q}{a}.{name}.weight"] = shape
                    expected[f"{q}{a}.{name}.bias"] = shape[:1]
            norms = {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"}
            if side == "decoder":
                norms["encoder_attn_layer_norm"] = "norm_cross"
            for hf, us in norms.items():
                for s in ("weight", "bias"):
                    expected[f"{q}{hf}.{s}"] = (C,)
                    ours[f"{p}{us}.{s}"] = f"{q}{hf}.{s}"
            for hf, us, shape in (("fc1", "ff1", (F, C)), ("fc2", "ff2", (C, F))):
                for s in ("weight", "bias"):
                    expected[f"{q}{hf}.{s}"] = shape if s == "weight" else shape[:1]
                    ours[f"{p}{us}.{s}"] = f"{q}{hf}.{s}"
            for s in ("weight", "bias"):
                ours[f"{p}out.{s}"] = f"{q}self_attn.out_proj.{s}"
                if side == "decoder":
                    ours[f"{p}cross_q.{s}"] = f"{q}encoder_attn.q_proj.{s}"
                    ours[f"{p}cross_out.{s}"] = f"{q}encoder_attn.out_proj.{s}"
    # Marian's sinusoid tables, when saved, are used as stored
    for side in ("encoder", "decoder"):
        name = f"model.{side}.embed_positions.weight"
        if config.positions != "learned" and name in t:
            expected[name] = (config.max_position_embeddings, C)
            ours[side + ".embeddings.position"] = name
    found = check_tensors(t, expected, IGNORED, source)
    w = {us: found[hf] for us, hf in ours.items()}
    w["lm_head.bias"] = found["final_logits_bias"][0]
    for side, L in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for i in range(L):
            q, p = f"model.{side}.layers.{i}.", f"{side}.layers.{i}."
            for s in ("weight", "bias"):
                w[f"{p}qkv.{s}"] = np.concatenate(
                    [found[f"{q}self_attn.{x}_proj.{s}"] for x in "qkv"])
                if side == "decoder":
                    w[f"{p}cross_kv.{s}"] = np.concatenate(
                        [found[f"{q}encoder_attn.{x}_proj.{s}"] for x in "kv"])
    assert set(w) - {"encoder.embeddings.position", "decoder.embeddings.position"} == \
        set(seq2seq_shapes(config, lm_head_bias=True)) - {"encoder.embeddings.position",
                                                          "decoder.embeddings.position"}
    return w


@register_family("marian", "bart")
class BartModel(HFFamily, Seq2SeqModel):
    """Marian or BART encoder-decoder; see Seq2SeqModel for the API."""

    config_from_hf = staticmethod(config_from_hf)
    weights_from_hf = staticmethod(weights_from_hf)
