"""Shared steps of loading a Hugging Face directory: safetensors weights (one file or an index of
shards) and the optional tokenizer.json."""
import json
import os

from ..tokenizer import Tokenizer
from ..weights import WeightsError, read_safetensors


def read_hf_weights(path):
    """All tensors of `path`/model.safetensors, or of the shards listed in
    model.safetensors.index.json. Raises FileNotFoundError when there are none (pickled .bin
    checkpoints are never loaded) and WeightsError for an unreadable file."""
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return read_safetensors(single), single
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        if not shards:
            raise WeightsError(f"{index}: empty weight_map")
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(os.path.join(path, shard)))
        return tensors, index
    raise FileNotFoundError(f"{path}: no model.safetensors (only safetensors weights are read; "
                            "pickled .bin files are never loaded)")


def hf_tokenizer(path, max_length):
    """Tokenizer of `path`/tokenizer.json truncating to max_length tokens, or None."""
    tok = os.path.join(path, "tokenizer.json")
    return Tokenizer(tok, max_length) if os.path.isfile(tok) else None


class HFFamily:
    """Mixin of the families read from a Hugging Face directory: subclasses set
    `config_from_hf(config_dict, source)` and `weights_from_hf(tensors, config, source)` as
    staticmethods; from_pretrained ties them to the weights and tokenizer files."""

    config_from_hf = weights_from_hf = None

    @classmethod
    def from_pretrained(cls, path, config_dict, threads=None):
        """Load config.json's model from `path`. Raises FileNotFoundError, WeightsError or
        ValueError naming the file and the problem."""
        config = cls.config_from_hf(config_dict, os.path.join(path, "config.json"))
        tensors, source = read_hf_weights(path)
        weights = cls.weights_from_hf(tensors, config, source)
        return cls(config, weights, hf_tokenizer(path, config.max_position_embeddings), threads)
