"""The Transformer of Vaswani et al. 2017 ("Attention Is All You Need") with weights of your own:
the paper's base and big settings (table 3: ReLU, post-LN, sinusoidal positions of section 3.5,
embeddings scaled by sqrt(d_model)) as Seq2SeqConfig presets, and the "transformer" family that
loads a directory of config.json + model.safetensors in our tensor names
(transformer.models.seq2seq)."""
from ..weights import check_tensors
from . import register_family
from ..tokenizer import hf_tokenizer
from ._hf import check_layer_count, read_hf_weights
from .config import Seq2SeqConfig
from .seq2seq import Seq2SeqModel, seq2seq_shapes

PRESETS = {  # Vaswani et al. 2017, table 3; ReLU, post-LN, sinusoidal positions, scaled embeddings
    "transformer-base": dict(d_model=512, n_heads=8, encoder_layers=6, decoder_layers=6, d_ff=2048),
    "transformer-big": dict(d_model=1024, n_heads=16, encoder_layers=6, decoder_layers=6,
                            d_ff=4096),
}


def preset(name, src_vocab_size, tgt_vocab_size, **overrides):
    """Seq2SeqConfig of the paper's "transformer-base" (N=6, d_model=512, d_ff=2048, h=8) or
    "transformer-big" (N=6, d_model=1024, d_ff=4096, h=16). Raises ValueError for another name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return Seq2SeqConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                         **dict(PRESETS[name], **overrides))


@register_family("transformer")
class TransformerModel(Seq2SeqModel):
    """Bring-your-own-weights encoder-decoder: config.json {"model_type": "transformer",
    "preset": "transformer-base" | "transformer-big" (optional), "src_vocab_size": ...,
    "tgt_vocab_size": ..., any Seq2SeqConfig field} and model.safetensors holding our tensor names
    (transformer.models.seq2seq's docstring; lm_head.bias optional)."""

    @classmethod
    def from_pretrained(cls, path, config_dict, threads=None, dtype="float32"):
        """Load the directory; ValueError for unknown config keys, WeightsError for tensors that
        do not fit the config."""
        fields = {k: v for k, v in config_dict.items()
                  if k not in ("model_type", "preset", "architectures")}
        try:
            if "preset" in config_dict:
                config = preset(config_dict["preset"], **fields)
            else:
                config = Seq2SeqConfig(**fields)
        except TypeError as e:
            raise ValueError(f"{path}/config.json: {e}")
        tensors, source = read_hf_weights(path)
        check_layer_count(tensors, config.encoder_layers + config.decoder_layers, source)
        shapes = seq2seq_shapes(config, lm_head_bias="lm_head.bias" in tensors)
        weights = check_tensors(tensors, shapes, (), source)
        return cls.from_weights(config, weights, hf_tokenizer(path, config.max_position_embeddings),
                                threads, dtype)
