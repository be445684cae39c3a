"""llama2.c models (karpathy/llama2.c): a Llama checkpoint file (.bin, read by
transformer.weights.llama2c) and its SentencePiece-style tokenizer file (tokenizer.bin /
tok{V}.bin). RMSNorm eps 1e-5, RoPE theta 10000 on interleaved pairs, as run.c."""
import os

import numpy as np

from ..tokenizer.llama2c import BOS, Llama2cTokenizer, find_tokenizer
from ..weights import WeightsError
from ..weights.gguf import is_gguf
from ..weights.llama2c import read_llama2c
from . import register_family
from .decoder import DecoderConfig, DecoderModel


def _is_checkpoint(path):
    """Any file but a GGUF one (those start with their magic) is taken for a llama2.c
    checkpoint; read_llama2c checks its header."""
    return os.path.isfile(path) and not is_gguf(path)


@register_family(layout="llama2.c checkpoint", detect=_is_checkpoint)
class Llama2cModel(DecoderModel):
    """A llama2.c checkpoint as a DecoderModel (see it for the API)."""

    @classmethod
    def load(cls, path, threads=None, tokenizer=None, dtype="float32"):
        """transformer.load's entry: from_checkpoint (dtype is applied by load)."""
        return cls.from_checkpoint(path, tokenizer=tokenizer, threads=threads)

    @classmethod
    def from_checkpoint(cls, path, tokenizer=None, threads=None):
        """Load a llama2.c .bin; tokenizer: path of its tokenizer file (default: found beside
        the checkpoint, or none). Raises FileNotFoundError, WeightsError or ValueError."""
        p, t = read_llama2c(path)
        try:
            config = DecoderConfig(
                vocab_size=p["vocab_size"], d_model=p["dim"], n_heads=p["n_heads"],
                n_kv_heads=p["n_kv_heads"], n_layers=p["n_layers"], d_ff=p["hidden_dim"],
                max_position_embeddings=p["max_seq_len"], norm="rms_norm", norm_eps=1e-5,
                activation="swiglu", positions="rotary", rope_theta=10000.0, rope_interleaved=True,
                bias=False, tie_word_embeddings=p["shared_classifier"], bos_token_id=BOS,
                eos_token_id=None, pad_token_id=0)
        except ValueError as e:
            raise WeightsError(f"{os.fspath(path)}: {e}")
        w = {"embeddings.word": t["tok_embeddings"], "final_norm.weight": t["norm"],
             "lm_head.weight": t["output"]}
        for i in range(config.n_layers):
            pre = f"layers.{i}."
            w[pre + "norm1.weight"] = t["attention_norm"][i]
            w[pre + "norm2.weight"] = t["ffn_norm"][i]
            w[pre + "qkv.weight"] = np.concatenate([t["wq"][i], t["wk"][i], t["wv"][i]])
            w[pre + "out.weight"] = t["wo"][i]
            w[pre + "ff1.weight"] = np.concatenate([t["w1"][i], t["w3"][i]])
            w[pre + "ff2.weight"] = t["w2"][i]
        tokenizer = tokenizer or find_tokenizer(path, config.vocab_size)
        tok = Llama2cTokenizer(tokenizer, config.vocab_size,
                               config.max_position_embeddings) if tokenizer else None
        return cls(config, w, tok, threads)
