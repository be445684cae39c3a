"""Autoregressive generation over the search contract (transformer.generation.contract: a model's
decoding(...) object with start / step / reorder): greedy, sampling and beam search with
Hugging Face's semantics (transformers GenerationMixin: the same tokens as HF generate on the
same weights), one validated GenerationConfig, and HF's logits processors."""
from dataclasses import dataclass

import numpy as np

from .beam import beam_search
from .config import GenerationConfig
from .greedy import greedy_search, greedy_steps
from .processors import build_processors, build_warpers
from .sampling import log_softmax, sample_next, warp

__all__ = ["generate", "stream", "GenerateOutput", "GenerationConfig", "beam_search",
           "greedy_search", "log_softmax", "sample_next", "warp", "generation_defaults"]


@dataclass
class GenerateOutput:
    """What generate returns with return_dict_in_generate=True (HF's GenerateOutput names):
    sequences (N, T + n_new) int64 (N = B * num_return_sequences); scores (N,) float32: each
    hypothesis' sum of the search's token log-probabilities (after the logits processors and
    warpers: a forced token counts log 1 = 0), up to and including its eos; sequences_scores
    (N,) float32: beam search's ranking score (scores / n_new ** length_penalty, HF's), for
    greedy / sampling equal to scores; token_logprobs (N, n_new) float32: each new token's
    log-probability, 0 after the hypothesis ended; attention (with return_attention,
    encoder-decoders): per hypothesis a (n_new_h, S_h) float32 array of cross-attention
    weights, one row per new token (eos included), one column per real source token
    (CTranslate2's return_attention). All accumulated during the search."""

    sequences: np.ndarray
    scores: np.ndarray = None
    sequences_scores: np.ndarray = None
    token_logprobs: np.ndarray = None
    attention: list = None


def generation_defaults(model):
    """The GenerationConfig a model starts from: its config's token ids (eos, pad, decoder
    start), then its directory's generation_config.json (model.generation_config, read at
    load) on top; without that file the config's forced BOS / EOS ids, as HF (which then
    derives the generation config from config.json)."""
    cfg = model.config
    base = GenerationConfig().update(
        eos_token_id=cfg.eos_token_ids, pad_token_id=cfg.pad_token_id,
        decoder_start_token_id=getattr(cfg, "decoder_start_token_id", None))
    file = getattr(model, "generation_config", None)
    if file is None:  # HF GenerationConfig.from_model_config: config.json's forced tokens
        return base.update(forced_bos_token_id=getattr(cfg, "forced_bos_token_id", None),
                           forced_eos_token_id=getattr(cfg, "forced_eos_token_id", None))
    return base.update(**{k: getattr(file, k) for k in getattr(file, "given", ())})


def generate(model, input_ids, attention_mask=None, generation_config=None, streamer=None,
             return_scores=False, return_dict_in_generate=False, return_attention=False,
             attention_layer=-1, attention_heads=1, **kwargs):
    """Continue each row of input_ids (B, T) (left or right padded, attention_mask (B, T) of
    0/1; an encoder-decoder model: the source, and the decoder prefix as decoder_input_ids /
    decoder_attention_mask, left padded).

    The options (GenerationConfig's fields, HF's names: max_new_tokens, do_sample,
    temperature, top_k, top_p, num_beams, length_penalty, early_stopping, num_return_sequences,
    repetition_penalty, no_repeat_ngram_size, min_new_tokens, min_length, bad_words_ids,
    suppress_tokens, begin_suppress_tokens, forced_bos_token_id, forced_eos_token_id,
    eos_token_id, pad_token_id, seed, ...) come from generation_defaults(model) (the model's
    config and generation_config.json), then `generation_config` (a GenerationConfig), then
    the keyword arguments (the arguments win, as HF). Greedy (default), sampling (do_sample)
    or beam search (num_beams > 1; with do_sample beam sampling); the processors of
    transformer.generation.processors in HF's order. streamer: callable(tokens (B * n,)
    int64) with each new column (greedy and sampling). A sequence stops at its first eos;
    finished rows are filled with pad_token_id (default: the config's, else the first eos).
    Returns (B * n, T + n_new) int64 NumPy: the rows as given, then the new tokens; with
    return_scores (sequences, scores (B * n,) float32); with return_dict_in_generate a
    GenerateOutput. return_attention (encoder-decoders; implies return_dict_in_generate):
    GenerateOutput.attention, the cross-attention weights of decoder layer attention_layer
    (default -1: the last) averaged over its first attention_heads heads (0: all; default 1:
    the first head), CTranslate2's alignment_layer / alignment_heads defaults.
    Raises ValueError naming a bad option, TypeError for an unknown one, ValueError when a
    prompt + max_new_tokens exceeds the model's positions."""
    decoding, cfg, processors, warpers, rng = _prepare(model, input_ids, attention_mask,
                                                       generation_config, kwargs)
    if return_attention:
        decoding.record_attention(attention_layer, attention_heads)
        return_dict_in_generate = True
    want = return_scores or return_dict_in_generate
    attention = None
    if cfg.num_beams > 1:
        seqs, extra = beam_search(decoding, cfg, processors, warpers, rng, want,
                                  return_attention)
        if return_attention:
            attention, lengths = extra["attention"], extra["lengths"]
        if want:
            cum, lengths = extra["cumulative"], extra["lengths"]
            token_lp = np.diff(cum, axis=1, prepend=np.float32(0))
            token_lp[np.arange(cum.shape[1])[None] >= lengths[:, None]] = 0
            scores = np.take_along_axis(cum, np.maximum(lengths - 1, 0)[:, None], 1)[:, 0]
            ranking = extra["sequences_scores"]
    else:
        seqs, token_lp, *att = greedy_search(decoding, cfg, processors, warpers, rng, streamer,
                                             want, return_attention)
        if want:
            scores = ranking = token_lp.sum(1, dtype=np.float32)
        if return_attention:
            attention = att[0]
            ended = np.isin(seqs[:, decoding.sequences.shape[1]:], cfg.eos_token_id)
            lengths = np.where(ended.any(1), ended.argmax(1) + 1, ended.shape[1])
    if return_attention:  # per hypothesis: its new tokens x its real source tokens
        src = decoding.source_lengths[np.arange(len(seqs)) // (len(seqs) // len(
            decoding.source_lengths))]
        attention = [attention[h, :lengths[h], :src[h]] for h in range(len(seqs))]
    if return_dict_in_generate:
        return GenerateOutput(seqs, scores, ranking, token_lp, attention)
    if return_scores:
        return seqs, scores
    return seqs


def stream(model, input_ids, attention_mask=None, generation_config=None, **kwargs):
    """generate's greedy search or sampling as an iterator: yields each new column of tokens
    (B * num_return_sequences,) int64 NumPy as soon as it is chosen (pad_token_id for rows that
    have finished); the arguments are generate's. Raises ValueError for num_beams > 1 (beam
    search settles its tokens only at the end) and generate's errors, at the first next()."""
    decoding, cfg, processors, warpers, rng = _prepare(model, input_ids, attention_mask,
                                                       generation_config, kwargs)
    if cfg.num_beams > 1:
        raise ValueError(f"stream needs num_beams=1 (greedy or sampling), got "
                         f"num_beams={cfg.num_beams}")
    yield from greedy_steps(decoding, cfg, processors, warpers, rng)


MAX_STEP_LOGITS = 1 << 31  # rows x vocabulary of one step's logits (8 GiB of float32)


def check_work(cfg, decoding, positions):
    """The work bound of a search, checked before anything sized by max_new_tokens or the rows is
    allocated (the searches' (R, T + max_new_tokens) arrays, the KV cache, a step's (R, V)
    logits): the search's rows R = B x max(num_beams, num_return_sequences) times the
    vocabulary must stay under MAX_STEP_LOGITS, and the longest prompt (its real tokens) +
    max_new_tokens must fit the model's `positions` (None: no limit). Raises ValueError naming
    num_beams / num_return_sequences, or max_new_tokens (or max_length, where it set the
    count)."""
    B = decoding.sequences.shape[0]
    width = max(cfg.num_beams, cfg.num_return_sequences)
    if B * width * max(decoding.vocab_size, 1) > MAX_STEP_LOGITS:
        name = "num_beams" if cfg.num_beams >= cfg.num_return_sequences \
            else "num_return_sequences"
        raise ValueError(f"{name}={width} for {B} prompts: {B * width} search rows of "
                         f"{decoding.vocab_size} logits exceed {MAX_STEP_LOGITS} values a step")
    if positions is None:
        return
    longest = int(decoding.mask.sum(1).max()) if decoding.mask.size else 0
    if longest + cfg.max_new_tokens > positions:
        raise ValueError(f"a prompt of {longest} tokens + max_new_tokens={cfg.max_new_tokens} "
                         f"exceeds the model's {positions} positions (max_new_tokens, else "
                         "max_length, of the call or generation_config.json)")


def _prepare(model, input_ids, attention_mask, generation_config, kwargs):
    """The options resolved and validated, the model's decoding object, the processors and
    warpers, and the sampling generator (None without do_sample), for generate and stream."""
    inputs = {k: kwargs.pop(k) for k in getattr(model, "DECODING_INPUTS", ()) if k in kwargs}
    cfg = generation_defaults(model)
    if generation_config is not None:
        cfg = cfg.update(**{k: getattr(generation_config, k) for k in GenerationConfig.names()})
    cfg = cfg.update(**kwargs)
    decoding = model.decoding(input_ids, attention_mask, cfg, **inputs)
    B, T = decoding.sequences.shape
    cfg = cfg.resolve_lengths(T, getattr(model, "DEFAULT_MAX_NEW_TOKENS", 32),
                              getattr(model.config, "max_position_embeddings", None))
    if cfg.pad_token_id is None:
        cfg = cfg.update(pad_token_id=(np.atleast_1d(cfg.eos_token_id).tolist() or [0])[0])
    cfg = cfg.validate(decoding.vocab_size)
    check_work(cfg, decoding, getattr(model.config, "max_position_embeddings", None))
    processors = build_processors(cfg, T, decoding.vocab_size, decoding.ignore)
    warpers = build_warpers(cfg)
    rng = np.random.default_rng(cfg.seed) if cfg.do_sample else None
    return decoding, cfg, processors, warpers, rng
