"""MPNet (Song et al. 2020, "MPNet: Masked and Permuted Pre-training") from a Hugging Face
directory, HF modeling_mpnet.py (MPNetModel): BERT's post-LN encoder without token types,
positions from padding_idx + 1 (as RoBERTa), and a learned bidirectional relative position bias
(32 buckets, max distance 128) computed once and added in every layer's attention, here inside
the attention kernel (ops.PositionBias). all-mpnet-base-v2 is this family."""
from . import register_family
from .bert import BertModel, config_from_hf, weights_from_hf
from .config import EncoderConfig

MPNET_LAYOUT = {"out": "attention.attn.o", "norm1": "attention.LayerNorm",
                "ff1": "intermediate.dense", "ff2": "output.dense", "norm2": "output.LayerNorm",
                "qkv": ("attention.attn.", ("q", "k", "v"))}
RELATIVE = "encoder.relative_attention_bias.weight"  # (num_buckets, H)


def mpnet_config(cfg, source="config.json"):
    """EncoderConfig from an HF MPNetConfig dict. Raises ValueError for unsupported settings."""
    base = config_from_hf(dict(cfg, type_vocab_size=0), source, roberta=True)
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
    fields.update(relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
                  layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), type_vocab_size=0)
    return EncoderConfig(**fields)


@register_family("mpnet")
class MPNetModel(BertModel):
    """MPNet encoder loaded from an HF directory; CPU and GPU (the relative position bias runs
    inside either backend's attention kernels). See EncoderModel for the API."""

    @classmethod
    def hf_config(cls, config_dict, source):
        """EncoderConfig from an HF MPNetConfig dict."""
        return mpnet_config(config_dict, source)

    @classmethod
    def hf_weights(cls, tensors, config, source):
        """Our tensors from HF MPNet's, the relative bias table transposed to (H, buckets)."""
        shape = (config.relative_attention_num_buckets, config.n_heads)
        weights = weights_from_hf(tensors, config, source, MPNET_LAYOUT, {RELATIVE: shape})
        weights["position_bias.relative"] = weights.pop(RELATIVE).T
        return weights
