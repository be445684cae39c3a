"""Shared steps of loading a Hugging Face directory: safetensors weights (one file or an index of
shards) and the optional tokenizer (tokenizer.json, or SentencePiece files: hf_tokenizer)."""
import os

from .._io import read_json
from ..tokenizer import hf_tokenizer
from ..weights import WeightsError, open_safetensors


def _shard_paths(path, index):
    """The shard files named by model.safetensors.index.json's weight_map, each a plain file
    name inside `path` (symlinks resolved: a shard may not point outside the directory)."""
    weight_map = read_json(index).get("weight_map", {})
    if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                   for v in weight_map.values()):
        raise WeightsError(f"{index}: weight_map must map tensor names to shard file names")
    root = os.path.realpath(path)
    shards = []
    for shard in sorted(set(weight_map.values())):
        full = os.path.realpath(os.path.join(root, shard))
        if os.path.isabs(shard) or os.path.commonpath([root, full]) != root or full == root:
            raise WeightsError(f"{index}: shard {shard!r} lies outside the model directory "
                               f"{root}")
        shards.append(full)
    if not shards:
        raise WeightsError(f"{index}: empty weight_map")
    return shards


def read_hf_weights(path):
    """All tensors of `path`/model.safetensors, or of the shards listed in
    model.safetensors.index.json (each must lie inside `path`), as {name: Lazy} (read when
    placed: transformer.weights.safetensors; float32, float16 and bfloat16 files alike), and
    the source name for messages. Raises FileNotFoundError when
    there are none (pickled .bin checkpoints are never loaded) and WeightsError for an
    unreadable file or a shard outside the directory."""
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return open_safetensors(single), single
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        tensors = {}
        for shard in _shard_paths(path, index):
            tensors.update(open_safetensors(shard))
        return tensors, index
    raise FileNotFoundError(f"{path}: no model.safetensors (only safetensors weights are read; "
                            "pickled .bin files are never loaded)")


def head_expected(tensors, config, name="lm_head.weight"):
    """Whether the LM head `name` is a tensor of its own to read and shape-check: when the config
    unties it (tie_word_embeddings false: the file must hold it) or the file holds one anyway
    (HF then loads the stored head whatever the config says, when it differs from the word
    embeddings: transformers' "both are present in the checkpoints with different values, so
    we will NOT tie them")."""
    return not config.tie_word_embeddings or name in tensors


def lm_head(found, name, embeddings):
    """The LM head: found[name] when read (head_expected) and not equal to the word embeddings,
    else the embeddings themselves (one array: tied)."""
    import numpy as np
    head = found.get(name)
    if head is None or head is embeddings or np.array_equal(head, embeddings):
        return embeddings
    return head


def check_layer_count(tensors, n_layers, source):
    """Raise WeightsError when the config asks for more layers than `tensors` could hold (every
    layer has at least one tensor), before any per-layer work is done for that count."""
    if n_layers > len(tensors):
        raise WeightsError(f"{source}: the config asks for {n_layers} layers but the file holds "
                           f"only {len(tensors)} tensors")


class HFFamily:
    """Mixin of the families read from a Hugging Face directory: subclasses set
    `config_from_hf(config_dict, source)` and `weights_from_hf(tensors, config, source)` as
    staticmethods; from_pretrained ties them to the weights and tokenizer files."""

    config_from_hf = weights_from_hf = None

    @classmethod
    def from_pretrained(cls, path, config_dict, threads=None, dtype="float32"):
        """Load config.json's model from `path`, packed in `dtype` as it streams in
        (Model.from_weights). Raises FileNotFoundError, WeightsError or ValueError naming the
        file and the problem."""
        config = cls.config_from_hf(config_dict, os.path.join(path, "config.json"))
        tensors, source = read_hf_weights(path)
        check_layer_count(tensors, _layers(config), source)
        weights = cls.weights_from_hf(tensors, config, source)
        tokenizer = hf_tokenizer(path, config.max_position_embeddings, config.vocab_size)
        return cls.from_weights(config, weights, tokenizer, threads, dtype)


def _layers(config):
    """Total layer count of a config (n_layers, or encoder + decoder layers)."""
    return getattr(config, "n_layers", 0) + getattr(config, "encoder_layers", 0) \
        + getattr(config, "decoder_layers", 0)
