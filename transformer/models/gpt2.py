"""GPT-2 family (Radford et al. 2019) from a Hugging Face directory (config.json +
model.safetensors), names as in HF modeling_gpt2.py: Conv1D weights stored (in, out) and
transposed here, the fused c_attn split-free (its Q|K|V column order is ours), the LM head tied
to wte unless the file holds its own (tie_word_embeddings false, or a stored head that
differs). Names with or without the "transformer." prefix of GPT2LMHeadModel."""
from ..weights import check_tensors
from . import register_family
from ._hf import HFFamily, head_expected, lm_head
from .config import is_int
from .decoder import DecoderConfig, DecoderModel, decoder_shapes

IGNORED = (".attn.bias", ".attn.masked_bias")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu", "relu": "relu"}


def config_from_hf(cfg, source="config.json"):
    """DecoderConfig from an HF GPT2Config dict. Raises ValueError for unsupported settings."""
    act = cfg.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"{source}: activation_function {act!r} is not supported")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(key):
            raise ValueError(f"{source}: {key}=True is not supported")
    if cfg.get("scale_attn_weights") is False:
        raise ValueError(f"{source}: scale_attn_weights=False is not supported")
    C = cfg.get("n_embd", 768)
    try:
        return DecoderConfig(
            vocab_size=cfg["vocab_size"], d_model=C, n_heads=cfg.get("n_head", 12),
            n_layers=cfg.get("n_layer", 12), d_ff=cfg.get("n_inner") or (4 * C if is_int(C) else C),
            max_position_embeddings=cfg.get("n_positions", 1024), norm="layer_norm",
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5), activation=ACTIVATIONS[act],
            positions="learned", bias=True,
            tie_word_embeddings=cfg.get("tie_word_embeddings", True),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"))
    except KeyError as e:
        raise ValueError(f"{source}: missing key {e.args[0]!r}")


def weights_from_hf(tensors, config, source="model.safetensors"):
    """Map HF GPT-2 tensors to our names (transformer.models.decoder), transposing the Conv1D
    (in, out) weights; every shape checked (WeightsError lists every problem)."""
    tensors = {(k[12:] if k.startswith("transformer.") else k): v for k, v in tensors.items()}
    C, F, V = config.d_model, config.d_ff, config.vocab_size
    expected = {"wte.weight": (V, C), "wpe.weight": (config.max_position_embeddings, C),
                "ln_f.weight": (C,), "ln_f.bias": (C,)}
    # our name <- (HF name, HF shape, transpose)
    names = {"embeddings.word": ("wte.weight", False), "embeddings.position": ("wpe.weight", False),
             "final_norm.weight": ("ln_f.weight", False), "final_norm.bias": ("ln_f.bias", False)}
    for i in range(config.n_layers):
        p, q = f"layers.{i}.", f"h.{i}."
        for ours, hf, shape, t in (("norm1.weight", "ln_1.weight", (C,), False),
                                   ("norm1.bias", "ln_1.bias", (C,), False),
                                   ("qkv.weight", "attn.c_attn.weight", (C, 3 * C), True),
                                   ("qkv.bias", "attn.c_attn.bias", (3 * C,), False),
                                   ("out.weight", "attn.c_proj.weight", (C, C), True),
                                   ("out.bias", "attn.c_proj.bias", (C,), False),
                                   ("norm2.weight", "ln_2.weight", (C,), False),
                                   ("norm2.bias", "ln_2.bias", (C,), False),
                                   ("ff1.weight", "mlp.c_fc.weight", (C, F), True),
                                   ("ff1.bias", "mlp.c_fc.bias", (F,), False),
                                   ("ff2.weight", "mlp.c_proj.weight", (F, C), True),
                                   ("ff2.bias", "mlp.c_proj.bias", (C,), False)):
            expected[q + hf] = shape
            names[p + ours] = (q + hf, t)
    if head_expected(tensors, config):
        expected["lm_head.weight"] = (V, C)
    found = check_tensors(tensors, expected, IGNORED, source)
    weights = {ours: (found[hf].T if t else found[hf]) for ours, (hf, t) in names.items()}
    weights["lm_head.weight"] = lm_head(found, "lm_head.weight", weights["embeddings.word"])
    assert set(weights) == set(decoder_shapes(config))
    return weights


@register_family("gpt2")
class GPT2Model(HFFamily, DecoderModel):
    """GPT-2 language model (pre-LN, learned positions, GELU-tanh MLP, tied LM head); see
    DecoderModel for the API."""

    config_from_hf = staticmethod(config_from_hf)
    weights_from_hf = staticmethod(weights_from_hf)
