"""What a request needs before it is queued: its inputs and options checked the way generate
checks them (so a bad request fails at submit with generate's own ValueError / TypeError), and
its size: the rows its search runs and the KV tokens it reserves."""
from dataclasses import dataclass

import numpy as np

from ..device import to_numpy
from ..generation import generation_defaults
from ..generation.config import GenerationConfig

# generate's arguments that are not decoding options (GenerationConfig fields)
GENERATE_ARGS = ("generation_config", "return_scores", "return_dict_in_generate",
                 "return_attention", "attention_layer", "attention_heads")


@dataclass
class Plan:
    """A checked generation request: ids (B, T) int64 and mask (B, T) int64 or None (the
    source for an encoder-decoder); kwargs: generate's keyword arguments as given; cfg: the
    resolved, validated GenerationConfig (max_new_tokens set); rows: cache rows its search
    uses (B x num_beams, else B x num_return_sequences); kv_tokens: its KV reservation;
    create_cost / start_cost: the tokens its decoding's construction (an encoder-decoder's
    encoder) and its prefill run, for the scheduler's per-iteration token budget."""

    ids: np.ndarray
    mask: np.ndarray
    kwargs: dict
    cfg: GenerationConfig
    rows: int
    kv_tokens: int
    create_cost: int
    start_cost: int


def as_batch(a, name, dtype_kind="i"):
    """a as a 2-D NumPy array: a 1-D array becomes one row (1, T). Raises TypeError for
    non-integer values (dtype_kind "i"; "b" also takes bool), ValueError for another rank or
    an empty array. CuPy arrays come to the host."""
    a = np.asarray(to_numpy(a))
    if a.ndim == 1:
        a = a[None]
    kinds = ("i", "u") + (("b",) if dtype_kind == "b" else ())
    if a.dtype.kind not in kinds:
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"{name} must have shape (T,) or (B, T) with B, T >= 1, got "
                         f"{a.shape}")
    return a


def check_ids(ids, mask, vocab_size, name="input_ids", mask_name="attention_mask"):
    """ids (B, T) in [0, vocab_size) and mask None or (B, T) of 0/1 with a real token a row.
    Returns (ids int64, mask int64 or None, lengths (B,)). Raises IndexError / ValueError /
    TypeError naming the argument (the model's own checks, made before queueing)."""
    ids = as_batch(ids, name).astype(np.int64)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise IndexError(f"{name} must lie in [0, {vocab_size}), got values in "
                         f"[{ids.min()}, {ids.max()}]")
    if mask is None:
        return ids, None, np.full(len(ids), ids.shape[1])
    mask = as_batch(mask, mask_name, "b").astype(np.int64)
    if mask.shape != ids.shape:
        raise ValueError(f"{mask_name} must have the shape of {name} {ids.shape}, got "
                         f"{mask.shape}")
    if np.any((mask != 0) & (mask != 1)):
        raise ValueError(f"{mask_name} must hold only 0 and 1")
    lengths = mask.sum(1)
    if lengths.min() == 0:
        raise ValueError(f"{mask_name} row {int(np.argmin(lengths))} has no real token")
    return ids, mask, lengths


def vocab_sizes(model):
    """(input vocabulary, output vocabulary) of a model: an encoder-decoder's source and target
    vocabularies, else the config's vocab_size twice."""
    cfg = model.config
    return (getattr(cfg, "src_vocab_size", None) or cfg.vocab_size,
            getattr(cfg, "tgt_vocab_size", None) or cfg.vocab_size)


def plan_generation(model, input_ids, attention_mask, kwargs):
    """Check a generation request as generate would and size it (a Plan).

    input_ids (T,) or (B, T) integers (an encoder-decoder: the source), attention_mask the
    same shape or None; kwargs: generate's keyword arguments (decoding options, the model's
    DECODING_INPUTS such as decoder_input_ids, return_scores, ...). The options resolve as in
    transformer.generation.generate: generation_defaults(model), then generation_config, then
    the keywords; resolve_lengths on the decoder prefix; validate on the output vocabulary.
    Raises TypeError for an unknown option (or `streamer`: the handle streams), ValueError /
    IndexError for a bad option or input, ValueError when a prompt + max_new_tokens exceeds
    the model's positions (naming max_position_embeddings)."""
    if "streamer" in kwargs:
        raise TypeError("submit takes no streamer: iterate the handle for the new tokens")
    V_in, V_out = vocab_sizes(model)
    ids, mask, lengths = check_ids(input_ids, attention_mask, V_in)
    options = dict(kwargs)
    inputs = {k: options.pop(k) for k in getattr(model, "DECODING_INPUTS", ()) if k in options}
    extra = {k: options.pop(k) for k in GENERATE_ARGS if k in options}
    cfg = generation_defaults(model)
    given = extra.get("generation_config")
    if given is not None:
        cfg = cfg.update(**{k: getattr(given, k) for k in GenerationConfig.names()})
    cfg = cfg.update(**options)
    B = len(ids)
    if model.kind == "seq2seq":
        start = cfg.decoder_start_token_id
        prefix = inputs.get("decoder_input_ids")
        if prefix is None:
            T, longest = 1, 1
        else:
            prefix, pmask, plens = check_ids(prefix, inputs.get("decoder_attention_mask"),
                                             V_out, "decoder_input_ids", "decoder_attention_mask")
            kwargs = dict(kwargs, decoder_input_ids=prefix)  # (T,) given: one row, as the source
            if pmask is not None:
                kwargs["decoder_attention_mask"] = pmask
            if len(prefix) != B:
                raise ValueError(f"decoder_input_ids has {len(prefix)} rows, the source {B}")
            grow = int((prefix[:, 0] != start).all())  # decoder_start_token_id prepended
            T, longest = prefix.shape[1] + grow, int(plens.max()) + grow
    else:
        T, longest = ids.shape[1], int(lengths.max())
    positions = getattr(model.config, "max_position_embeddings", None)
    cfg = cfg.resolve_lengths(T, getattr(model, "DEFAULT_MAX_NEW_TOKENS", 32), positions)
    if cfg.pad_token_id is None:
        cfg = cfg.update(pad_token_id=(np.atleast_1d(cfg.eos_token_id).tolist() or [0])[0])
    cfg = cfg.validate(V_out)
    need = (T if model.kind == "seq2seq" else longest) + cfg.max_new_tokens
    if positions is not None and need > positions:
        raise ValueError(f"a prompt of {T if model.kind == 'seq2seq' else longest} tokens + "
                         f"max_new_tokens={cfg.max_new_tokens} exceeds the model's "
                         f"max_position_embeddings={positions}")
    rows = B * (cfg.num_beams if cfg.num_beams > 1 else cfg.num_return_sequences)
    kv_tokens = rows * (longest + cfg.max_new_tokens)
    source = int(lengths.sum())
    if model.kind == "seq2seq":  # the cross-attention keys and values of the sources
        kv_tokens += source
        create_cost, start_cost = source, B * longest
    else:
        create_cost, start_cost = 0, source
    return Plan(ids, mask, dict(kwargs), cfg, rows, kv_tokens, create_cost, start_cost)


def kv_bytes_per_token(model):
    """Bytes of keys and values one token takes in the model's KV cache: 2 x layers x KV
    heads x head_dim x the cache's item size (float32 on the CPU, the model's dtype on a GPU).
    Raises ValueError for a config without those sizes."""
    cfg = model.config
    layers = getattr(cfg, "n_layers", None) or getattr(cfg, "decoder_layers", None)
    heads = getattr(cfg, "n_kv_heads", None) or getattr(cfg, "n_heads", None)
    head_dim = getattr(cfg, "head_dim", None)
    if not (layers and heads and head_dim):
        raise ValueError("kv_budget_bytes needs the model's layers, KV heads and head_dim; "
                         "give kv_budget_tokens")
    device, dtype = getattr(model, "device", "cpu"), getattr(model, "dtype", "float32")
    size = 4 if device == "cpu" or dtype in ("float32", "int8") else 2
    return 2 * layers * heads * head_dim * size
