"""Autoregressive generation over a model that exposes prefill / decode_step / new_cache:
greedy, sampling (temperature, top-k, top-p, seed) and beam search with Hugging Face's semantics
(transformers GenerationMixin: same tokens as HF generate on the same weights)."""
import numpy as np

from ..device import to_numpy
from .beam import beam_search
from .sampling import log_softmax, sample_next, warp

__all__ = ["generate", "beam_search", "log_softmax", "sample_next", "warp"]


def _check(name, value, ok, expected):
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _is_real(value):
    """True for a finite real number (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, (bool, np.bool_)) and bool(np.isfinite(value))


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _token(name, value, V, optional=True):
    """value as an int token id in [0, V) (or None when optional); IndexError / TypeError
    naming `name` otherwise."""
    if value is None and optional:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer token id, got {value!r}")
    if not 0 <= value < V:
        raise IndexError(f"{name} must lie in [0, {V}) (the vocabulary), got {value}")
    return int(value)


def generate(model, input_ids, attention_mask=None, max_new_tokens=32, do_sample=False,
             temperature=1.0, top_k=0, top_p=1.0, num_beams=1, length_penalty=1.0,
             early_stopping=False, eos_token_id=None, pad_token_id=None, seed=None,
             num_return_sequences=1, streamer=None, forced_bos_token_id=None,
             forced_eos_token_id=None):
    """Continue each prompt of input_ids (B, T) (left or right padded, attention_mask (B, T) of
    0/1) by up to max_new_tokens tokens.

    Greedy (default), sampling (do_sample: logits / temperature, then top_k (0 = off), then top_p
    (1.0 = off), as HF's warpers; seed: int for reproducible draws), or beam search (num_beams > 1:
    HF's vectorised beam search with length_penalty (score = sum log p / new_len**length_penalty)
    and early_stopping False / True / "never"). eos_token_id: int or list (default: the model
    config's); a sequence stops at its first eos; finished rows are filled with pad_token_id
    (default: the config's, else the first eos). streamer: callable(tokens (B,) int64) called with
    each new column (greedy and sampling). forced_bos_token_id: the token forced when the sequence
    holds one token (HF ForcedBOSTokenLogitsProcessor); forced_eos_token_id: the token forced at
    the last step (ForcedEOSTokenLogitsProcessor). The model's logits may be device arrays: each
    step brings them to the host as NumPy float32 (transformer.device.to_numpy) and the search
    runs there; token ids go back to the model as NumPy.
    Returns (B * num_return_sequences, T + n_new) int64 NumPy: the prompt rows as given, then the
    new tokens. Raises ValueError for out-of-range arguments or a prompt + max_new_tokens longer than
    the model's positions.

    A sequence that has finished leaves the batch: later steps decode only the others."""
    cfg = model.config
    _check("max_new_tokens", max_new_tokens, isinstance(max_new_tokens, (int, np.integer))
           and max_new_tokens >= 1, "a positive integer")
    _check("num_beams", num_beams, isinstance(num_beams, (int, np.integer)) and num_beams >= 1,
           "a positive integer")
    _check("num_return_sequences", num_return_sequences,
           1 <= num_return_sequences <= max(1, num_beams) and (num_beams > 1 or do_sample
                                                              or num_return_sequences == 1),
           "between 1 and num_beams (or any count with do_sample)")
    _check("temperature", temperature, _is_real(temperature) and temperature > 0,
           "a finite positive number")
    _check("top_k", top_k, _is_int(top_k) and top_k >= 0, "an integer >= 0")
    _check("top_p", top_p, _is_real(top_p) and 0 < top_p <= 1, "in (0, 1]")
    _check("length_penalty", length_penalty, _is_real(length_penalty), "a finite number")
    _check("early_stopping", early_stopping, early_stopping in (False, True, "never"),
           "False, True or 'never'")
    V = cfg.vocab_size
    if eos_token_id is None:
        eos = cfg.eos_token_ids
    else:
        eos = tuple(np.atleast_1d(eos_token_id).tolist())
        for e in eos:
            _token("eos_token_id", e, V, optional=False)
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (
            eos[0] if eos else 0)
    elif not _is_int(pad_token_id):
        raise TypeError(f"pad_token_id must be an integer, got {pad_token_id!r}")
    forced_bos_token_id = _token("forced_bos_token_id", forced_bos_token_id, V)
    forced_eos_token_id = _token("forced_eos_token_id", forced_eos_token_id, V)
    ids, mask, lens = model._check_inputs(input_ids, attention_mask)
    longest = int(lens.max()) + max_new_tokens
    if longest > cfg.max_position_embeddings:
        raise ValueError(f"a prompt of {lens.max()} tokens + max_new_tokens={max_new_tokens} "
                         f"exceeds the model's {cfg.max_position_embeddings} positions")
    if num_return_sequences > 1 and num_beams == 1:  # independent samples of each prompt
        ids, mask = np.repeat(ids, num_return_sequences, 0), np.repeat(mask, num_return_sequences, 0)
    T = ids.shape[1]

    def forced_token(step):
        """The token forced at `step` (first: forced_bos_token_id, last: forced_eos_token_id),
        or None."""
        token = (forced_bos_token_id if T + step == 1 else None)
        if step == max_new_tokens - 1 and forced_eos_token_id is not None:
            token = forced_eos_token_id
        return token

    def force(scores, step):
        """Forced first / last tokens: every other score -inf, the forced one 0."""
        token = forced_token(step)
        if token is None:
            return scores
        forced = np.full_like(scores, -np.inf)
        forced[:, token] = 0
        return forced

    force.token = forced_token  # lets beam search skip steps where nothing is forced

    if num_beams > 1:
        rng = np.random.default_rng(seed) if do_sample else None
        return beam_search(model, ids, mask, max_new_tokens, num_beams, length_penalty,
                           early_stopping, eos, pad_token_id, num_return_sequences, rng, force)

    rng = np.random.default_rng(seed)
    B = ids.shape[0]
    cache = model.new_cache(B, longest)
    logits = to_numpy(model.prefill(ids, mask, cache))  # the search runs on the host
    eos_arr = np.array(eos, np.int64)
    alive = np.arange(B)  # the rows still generating; finished ones leave the cache
    new = []
    for step in range(max_new_tokens):
        logits = force(logits, step)
        if do_sample:
            nxt = sample_next(warp(logits, temperature, top_k, top_p), rng)
        else:
            nxt = np.argmax(logits, axis=-1)
        column = np.full(B, pad_token_id, np.int64)
        column[alive] = nxt
        new.append(column)
        if streamer is not None:
            streamer(column)
        going = ~np.isin(nxt, eos_arr)
        if not going.any() or step == max_new_tokens - 1:
            break
        if not going.all():
            alive, nxt = alive[going], nxt[going]
            cache.reorder(np.flatnonzero(going))
        logits = to_numpy(model.decode_step(nxt, cache))
    return np.concatenate([ids, np.stack(new, 1)], axis=1)
