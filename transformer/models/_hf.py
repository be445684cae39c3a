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
