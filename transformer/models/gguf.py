"""GGUF files (llama.cpp) of the "gpt2" and "llama" architectures, loaded into the GPT-2 and Llama
families: the header's metadata becomes the family's HF config dict, the tensors (memory-mapped,
transformer.weights.gguf) are renamed to HF's names and mapped by the family's weights_from_hf
(every shape checked), Llama's Q / K rows un-permuted (convert_hf_to_gguf.py permuted them for
ggml's interleaved rotary pairs), and the tokenizer is built from the metadata
(transformer.tokenizer.gguf). Each weight is dequantized to float32 when placed and packed in the
compute type as it comes, so the float32 model never exists whole at int8 / bfloat16.

Metadata keys ("{arch}." prefix; llama.cpp's gguf.constants Keys.LLM / Keys.Attention /
Keys.Rope): context_length, embedding_length, block_count, feed_forward_length,
attention.head_count, attention.head_count_kv, attention.layer_norm_epsilon (GPT-2),
attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count (Llama; rotary over the
whole head only), rope.scaling.type (none / absent only)."""
import os

import numpy as np

from ..tokenizer.gguf import gguf_tokenizer
from ..weights import WeightsError
from ..weights.gguf import GGUF_NAMES, is_gguf, read_gguf
from . import register_family
from ._hf import check_layer_count


def _hf_config(arch, meta, tensors, source):
    """The HF config dict of the family from GGUF metadata. Raises WeightsError naming a
    missing key or a setting the family does not run."""
    def get(key, default=KeyError):
        value = meta.get(f"{arch}.{key}", default)
        if value is KeyError:
            raise WeightsError(f"{source}: metadata key {arch}.{key} is missing")
        return value

    embd = tensors.get("token_embd.weight")
    if embd is None:
        raise WeightsError(f"{source}: tensor token_embd.weight is missing")
    special = {f"{k}_token_id": meta.get(f"tokenizer.ggml.{g}_token_id")
               for k, g in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))}
    C, H = get("embedding_length"), get("attention.head_count")
    if arch == "gpt2":
        return dict(model_type="gpt2", vocab_size=embd.shape[0], n_embd=C, n_head=H,
                    n_layer=get("block_count"), n_inner=get("feed_forward_length", None),
                    n_positions=get("context_length"),
                    layer_norm_epsilon=get("attention.layer_norm_epsilon", 1e-5), **special)
    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise WeightsError(f"{source}: {arch}.rope.scaling.type {scaling!r} is not supported")
    head_dim = get("attention.key_length", C // H)
    if get("rope.dimension_count", head_dim) != head_dim:
        raise WeightsError(f"{source}: {arch}.rope.dimension_count "
                           f"{get('rope.dimension_count')} != head_dim {head_dim} (partial "
                           "rotary is not supported)")
    return dict(model_type="llama", vocab_size=embd.shape[0], hidden_size=C,
                num_attention_heads=H, num_key_value_heads=get("attention.head_count_kv", H),
                num_hidden_layers=get("block_count"), intermediate_size=get("feed_forward_length"),
                max_position_embeddings=get("context_length"), head_dim=head_dim,
                rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-6),
                rope_theta=get("rope.freq_base", 10000.0),
                tie_word_embeddings="output.weight" not in tensors, **special)


def _hf_tensors(arch, tensors, config, source):
    """The GGUF tensors under HF's names (Lazy, nothing read): GPT-2's (out, in) weights given
    as HF's (in, out) Conv1D layout (a lazy transpose, undone by the family), Llama's q / k rows
    un-permuted (inverse of weights.gguf.permute_rows). Unknown names are reported as
    unexpected by the family's check."""
    from ..weights.gguf import GPT2_CONV1D, permute_rows

    names = {}
    for g, h in GGUF_NAMES[arch].items():
        for i in range(config["n_layer"] if arch == "gpt2" else config["num_hidden_layers"]) \
                if "{i}" in g else (None,):
            names[g.format(i=i)] = h.format(i=i)
    out = {}
    for name, t in tensors.items():
        hf = names.get(name, name)
        if arch == "gpt2" and hf.endswith(GPT2_CONV1D):
            t = t.T
        elif arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if hf.endswith("q_proj.weight") \
                else config["num_key_value_heads"]
            if t.ndim != 2 or len(t) % (2 * heads):
                raise WeightsError(f"{source}: {name} of shape {t.shape} does not hold "
                                   f"{heads} heads of even size")
            t = t.rows(np.argsort(permute_rows(len(t), heads)))
        out[hf] = t
    return out


def default_dtype(types):
    """The CPU compute type of a GGUF file when none is asked, from its tensor types {name:
    type name}: "int8" when every 2-D weight of its blocks is q8_0 (llama.cpp's int8), "int4"
    when they are 4-bit blocks (q4_0, q4_K, taken as stored: transformer.models.base._place)
    beside at most the higher k-quants of a q4_K_M file (q5_K / q6_K, requantized to int4
    groups), else "float32"."""
    blocks = {t for n, t in types.items() if n.startswith("blk.") and n.endswith(".weight")
              and t not in ("F32",)}
    if blocks == {"Q8_0"}:
        return "int8"
    if blocks & {"Q4_0", "Q4_K"} and blocks <= {"Q4_0", "Q4_K", "Q5_K", "Q6_K"}:
        return "int4"
    return "float32"


@register_family(layout="GGUF file", detect=is_gguf)
class GGUFModel:
    """A GGUF file of the "gpt2" or "llama" architecture, loaded as transformer.models.gpt2.
    GPT2Model or transformer.models.llama.LlamaModel (not an instance of this class)."""

    ARCHITECTURES = ("gpt2", "llama")

    @classmethod
    def load(cls, path, threads=None, tokenizer=None, dtype="float32"):
        """The model of the GGUF file `path`, its weights placed in `dtype` on the CPU as they
        are read (Model.from_weights; None: default_dtype of the file's tensor types).
        tokenizer: unused (the file carries its own). Raises
        FileNotFoundError, WeightsError naming the file (unreadable file, missing metadata,
        tensors that do not fit, a tensor type not read) or ValueError (an unsupported
        architecture or setting)."""
        from .gpt2 import GPT2Model
        from .llama import LlamaModel

        source = os.fspath(path)
        meta, tensors, types = read_gguf(source)
        dtype = default_dtype(types) if dtype is None else dtype
        arch = meta.get("general.architecture")
        if arch not in cls.ARCHITECTURES:
            raise ValueError(f"{source}: GGUF architecture {arch!r} is not supported "
                             f"({', '.join(cls.ARCHITECTURES)})")
        family = {"gpt2": GPT2Model, "llama": LlamaModel}[arch]
        config_dict = _hf_config(arch, meta, tensors, source)
        config = family.config_from_hf(config_dict, source)
        check_layer_count(tensors, config.n_layers, source)
        hf = _hf_tensors(arch, tensors, config_dict, source)
        output = hf.pop("lm_head.weight", None) if arch == "gpt2" else None
        weights = family.weights_from_hf(hf, config, source)
        if output is not None:  # a GPT-2 file with an untied output matrix
            if output.shape != weights["lm_head.weight"].shape:
                raise WeightsError(f"{source}: output.weight of shape {output.shape}, expected "
                                   f"{weights['lm_head.weight'].shape}")
            weights["lm_head.weight"] = output
        tok = gguf_tokenizer(meta, config.max_position_embeddings, source)
        return family.from_weights(config, weights, tok, threads, dtype)
