"""T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning") from a Hugging Face
directory, HF modeling_t5.py (T5ForConditionalGeneration): pre-norm RMS layer norms without
biases, no linear biases, unscaled attention scores, a learned relative position bias in each
stack's first layer shared by its layers (bidirectional buckets in the encoder, causal in the
decoder; computed inside the attention kernels), one shared embedding for both sides, FFN ReLU
(v1.0, "relu") or gated GELU-tanh (v1.1 / flan, "gated-gelu"), LM head tied to the shared
embedding with the decoder output rescaled by d_model^-0.5 (config scale_decoder_outputs, or a
tied config), or a separate lm_head.weight (v1.1). CPU and GPU: the relative bias runs inside
either backend's attention kernels."""
from dataclasses import replace

import numpy as np

from ..weights import check_tensors
from . import register_family
from ._hf import HFFamily
from .seq2seq import Seq2SeqConfig, Seq2SeqModel, seq2seq_shapes

FFN = {"relu": ("relu", False), "gated-gelu": ("gelu_tanh", True), "gelu": ("gelu", False),
       "gated-relu": ("relu", True), "gated-silu": ("silu", True)}
IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


# the longest sequence of a config.json without n_positions (transformers 5 writes none; T5 has
# no position table, HF no limit): T5's pre-training length and the n_positions of every
# original T5 / flan-T5 config, so that one long line is refused or cut, not run for hours
DEFAULT_POSITIONS = 512


def config_from_hf(cfg, source="config.json"):
    """Seq2SeqConfig from an HF T5Config dict (max_position_embeddings: n_positions, else
    DEFAULT_POSITIONS). Raises ValueError for unsupported settings or a field out of range
    (Seq2SeqConfig's checks)."""
    proj = cfg.get("feed_forward_proj", "relu")
    if proj not in FFN:
        raise ValueError(f"{source}: feed_forward_proj {proj!r} is not supported "
                         f"(supported: {sorted(FFN)})")
    act, gated = FFN[proj]
    tied = cfg.get("tie_word_embeddings", True) is not False
    scale = cfg.get("scale_decoder_outputs", tied)
    try:
        V, C = cfg["vocab_size"], cfg["d_model"]
        L = cfg.get("num_layers", 6)
        config = Seq2SeqConfig(
            src_vocab_size=V, tgt_vocab_size=V, d_model=C, n_heads=cfg.get("num_heads", 8),
            encoder_layers=L, decoder_layers=cfg.get("num_decoder_layers") or L,
            d_ff=cfg["d_ff"], d_kv=cfg.get("d_kv", 64), activation=act, gated=gated,
            pre_norm=True, encoder_final_norm=True, decoder_final_norm=True, norm="rms_norm",
            norm_eps=cfg.get("layer_norm_epsilon", 1e-6), bias=False, attention_scale=1.0,
            positions="relative", scale_embedding=False,
            relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
            max_position_embeddings=cfg.get("n_positions") or DEFAULT_POSITIONS,
            decoder_start_token_id=cfg.get("decoder_start_token_id", 0),
            eos_token_id=cfg.get("eos_token_id", 1), pad_token_id=cfg.get("pad_token_id", 0))
    except KeyError as e:
        raise ValueError(f"{source}: missing key {e.args[0]!r}")
    # the head's rescaling once d_model is known to be a positive integer
    return replace(config, lm_head_scale=C ** -0.5) if scale else config


def weights_from_hf(tensors, config, source="model.safetensors"):
    """Map HF T5 tensors to our names (transformer.models.seq2seq): q/k/v fused, the
    cross-attention k/v fused, wi_0 | wi_1 fused as gate | up; every shape checked
    (WeightsError lists every problem)."""
    C, F, V = config.d_model, config.d_ff, config.tgt_vocab_size
    I, H, nb = config.n_heads * config.head_dim, config.n_heads, \
        config.relative_attention_num_buckets
    t = dict(tensors)
    expected = {"shared.weight": (V, C), "encoder.final_layer_norm.weight": (C,),
                "decoder.final_layer_norm.weight": (C,)}
    if "lm_head.weight" in t:
        expected["lm_head.weight"] = (V, C)
    wi = ["wi_0", "wi_1"] if config.gated else ["wi"]
    for side, L in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        expected[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (nb, H)
        for i in range(L):
            q = f"{side}.block.{i}.layer."
            attns = [("0.SelfAttention", "0")] + ([("1.EncDecAttention", "1")]
                                                   if side == "decoder" else [])
            for attn, _ in attns:
                for x in "qkv":
                    expected[f"{q}{attn}.{x}.weight"] = (I, C)
                expected[f"{q}{attn}.o.weight"] = (C, I)
            ff = f"{q}{len(attns)}."
            for name in wi:
                expected[f"{ff}DenseReluDense.{name}.weight"] = (F, C)
            expected[f"{ff}DenseReluDense.wo.weight"] = (C, F)
            for k in range(len(attns) + 1):
                expected[f"{q}{k}.layer_norm.weight"] = (C,)
    found = check_tensors(t, expected, IGNORED, source)
    w = {"encoder.embeddings.word": found["shared.weight"],
         "decoder.embeddings.word": found["shared.weight"],
         "lm_head.weight": found.get("lm_head.weight", found["shared.weight"]),
         "encoder.final_norm.weight": found["encoder.final_layer_norm.weight"],
         "decoder.final_norm.weight": found["decoder.final_layer_norm.weight"]}
    for side, L in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        w[side + ".position_bias.relative"] = np.ascontiguousarray(
            found[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T)
        for i in range(L):
            q, p = f"{side}.block.{i}.layer.", f"{side}.layers.{i}."
            a = f"{q}0.SelfAttention."
            w[p + "qkv.weight"] = np.concatenate([found[a + x + ".weight"] for x in "qkv"])
            w[p + "out.weight"] = found[a + "o.weight"]
            w[p + "norm1.weight"] = found[q + "0.layer_norm.weight"]
            ff = 1
            if side == "decoder":
                c = f"{q}1.EncDecAttention."
                w[p + "cross_q.weight"] = found[c + "q.weight"]
                w[p + "cross_kv.weight"] = np.concatenate([found[c + x + ".weight"]
                                                           for x in "kv"])
                w[p + "cross_out.weight"] = found[c + "o.weight"]
                w[p + "norm_cross.weight"] = found[q + "1.layer_norm.weight"]
                ff = 2
            d = f"{q}{ff}.DenseReluDense."
            w[p + "ff1.weight"] = np.concatenate([found[d + n + ".weight"] for n in wi])
            w[p + "ff2.weight"] = found[d + "wo.weight"]
            w[p + "norm2.weight"] = found[f"{q}{ff}.layer_norm.weight"]
    assert set(w) == set(seq2seq_shapes(config)), set(w) ^ set(seq2seq_shapes(config))
    return w


@register_family("t5")
class T5Model(HFFamily, Seq2SeqModel):
    """T5 encoder-decoder (v1.0 and v1.1 / flan); CPU and GPU. See Seq2SeqModel for the API."""

    config_from_hf = staticmethod(config_from_hf)
    weights_from_hf = staticmethod(weights_from_hf)
