"""One validated set of decoding options, with Hugging Face's names and precedence
(transformers generation/configuration_utils.py GenerationConfig and GenerationMixin.generate):
the engine's defaults, then the model config's token ids, then the model directory's
generation_config.json, then the keyword arguments of the call (the arguments win)."""
import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np

from .._io import read_json

# generation_config.json keys read from a model directory (the others are ignored: HF writes
# bookkeeping such as "transformers_version" and "_from_model_config")
_FILE_KEYS = ("max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample",
              "temperature", "top_k", "top_p", "num_beams", "length_penalty", "early_stopping",
              "num_return_sequences", "repetition_penalty", "no_repeat_ngram_size",
              "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id",
              "forced_eos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")

_NULLABLE = ("max_new_tokens", "max_length", "bad_words_ids", "suppress_tokens",
             "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "seed")


MAX_TOKEN_ID = 2 ** 63  # token ids are int64 (an id past the vocabulary: never produced)
_FLOAT32_LOG_MAX = math.log(float(np.finfo(np.float32).max))  # ~88.7


class TokenIdError(IndexError, ValueError):
    """A token id outside the vocabulary: an IndexError (as every out-of-range id in this
    package) and a ValueError (a bad generation option)."""


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _token_list(name, value, V=None):
    """value (None, an int, or a sequence of ints) as a tuple of token ids in [0, V) (V None:
    any id >= 0)."""
    if value is None:
        return ()
    if not (_is_int(value) or isinstance(value, (list, tuple, np.ndarray))):
        raise ValueError(f"{name} must be a token id or a list of them, got {value!r}")
    ids = [value] if _is_int(value) else list(value)
    for t in ids:
        if not _is_int(t) or t < 0 or t >= (MAX_TOKEN_ID if V is None else V):
            where = f"[0, {V})" if V is not None else "[0, 2 ** 63)"
            raise (TokenIdError if _is_int(t) else ValueError)(
                f"{name} must hold token ids {where}, got {value!r}")
    return tuple(int(t) for t in ids)


@dataclass
class GenerationConfig:
    """The decoding options of one generate call (HF GenerationConfig names and meanings).

    Lengths: max_new_tokens (new tokens at most; None: max_length - the prompt length, else 32),
    max_length (prompt + new tokens; used only without max_new_tokens), min_new_tokens,
    min_length (eos is banned before these lengths: MinNewTokensLengthLogitsProcessor /
    MinLengthLogitsProcessor). Search: do_sample, num_beams, length_penalty (beam score =
    sum log p / new_len ** length_penalty), early_stopping (False / True / "never"),
    num_return_sequences (<= num_beams with beams; with do_sample independent samples per
    prompt). Warpers (sampling): temperature, top_k (0 = off; HF's default is 50, ours 0),
    top_p (1.0 = off). Processors: repetition_penalty (1.0 = off), no_repeat_ngram_size (0 =
    off), bad_words_ids (list of token sequences never produced), suppress_tokens,
    begin_suppress_tokens (banned at the first new position), forced_bos_token_id (forced
    when the sequence holds one token), forced_eos_token_id (forced at the last position).
    Tokens: eos_token_id (int or list; () = none), pad_token_id, decoder_start_token_id.
    seed: int or None, for the draws of sampling.

    `validate(vocab_size)` checks every value and returns self; ValueError names the argument."""

    max_new_tokens: int = None
    max_length: int = None
    min_new_tokens: int = 0
    min_length: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: object = False
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list = None
    suppress_tokens: list = None
    begin_suppress_tokens: list = None
    forced_bos_token_id: int = None
    forced_eos_token_id: int = None
    eos_token_id: object = None
    pad_token_id: int = None
    decoder_start_token_id: int = None
    seed: int = None

    @classmethod
    def names(cls):
        """The option names (the dataclass fields)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def update(self, **kwargs):
        """A copy with `kwargs` applied. None switches off an option that can be off (forced
        tokens, token lists, lengths, seed: _NULLABLE); for the others (numbers, eos / pad /
        start ids) None keeps the value below. Raises TypeError for an unknown name."""
        unknown = sorted(set(kwargs) - set(self.names()))
        if unknown:
            raise TypeError(f"generate() got unexpected keyword argument(s) {unknown}; "
                            f"the decoding options are {list(self.names())}")
        return dataclasses.replace(self, **{k: v for k, v in kwargs.items()
                                            if v is not None or k in _NULLABLE})

    @classmethod
    def from_file(cls, path):
        """The options of a model directory's generation_config.json (HF layout; `given` lists
        the keys it sets), or None when the file is absent. Raises ValueError for a file that
        is not a JSON object."""
        file = os.path.join(path, "generation_config.json")
        if not os.path.isfile(file):
            return None
        data = read_json(file, "JSON object (generation options)")
        given = {k: data[k] for k in _FILE_KEYS if k in data}
        cfg = cls().update(**given)
        cfg.given = tuple(given)  # the keys the file sets (they win over config.json's)
        return cfg

    def resolve_lengths(self, prompt_length, default_max_new_tokens=32, positions=None):
        """max_new_tokens for a prompt of prompt_length tokens: max_new_tokens when set, else
        max_length - prompt_length, else default_max_new_tokens capped so that the sequence
        fits the model's `positions` (HF _prepare_generated_length caps its default alike).
        Returns a copy with max_new_tokens set. Raises ValueError when nothing is left."""
        if self.max_new_tokens is not None:
            n = self.max_new_tokens
        elif self.max_length is not None:
            n = self.max_length - prompt_length
            if _is_int(n) and n < 1:
                raise ValueError(f"max_length={self.max_length} leaves no new token after a "
                                 f"prompt of {prompt_length} tokens (give max_new_tokens)")
        else:
            n = default_max_new_tokens
            if positions is not None:
                n = max(1, min(n, positions - prompt_length))
        return dataclasses.replace(self, max_new_tokens=n)

    def validate(self, vocab_size):
        """Check every option against a vocabulary of vocab_size tokens; normalise token lists
        (eos_token_id, suppress_tokens, begin_suppress_tokens as tuples, bad_words_ids as a tuple
        of tuples). Returns self. Raises ValueError naming the argument."""
        V = vocab_size

        def check(name, ok, expected):
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        def integer(name, low):
            v = getattr(self, name)
            check(name, _is_int(v) and v >= low, f"an integer >= {low}")

        def real(name):
            v = getattr(self, name)
            check(name, _is_real(v) and math.isfinite(v), "a finite number")

        # an eos or pad id outside the vocabulary is never produced (HF's GPT-2 default 50256
        # with a small vocabulary): allowed, as HF
        self.eos_token_id = _token_list("eos_token_id", self.eos_token_id)
        integer("max_new_tokens", 1)
        for name in ("min_new_tokens", "min_length", "top_k", "no_repeat_ngram_size"):
            integer(name, 0)
        integer("num_beams", 1)
        integer("num_return_sequences", 1)
        for name in ("temperature", "top_p", "length_penalty", "repetition_penalty"):
            real(name)
        check("do_sample", isinstance(self.do_sample, (bool, np.bool_)), "True or False")
        # HF TemperatureLogitsWarper: strictly positive (a tiny one: greedy, see Temperature)
        check("temperature", self.temperature > 0, "a finite positive number")
        check("top_p", 0 < self.top_p <= 1, "in (0, 1]")
        check("repetition_penalty", self.repetition_penalty > 0, "positive")
        check("early_stopping", self.early_stopping is True or self.early_stopping is False
              or self.early_stopping == "never", "False, True or 'never'")
        if self.num_beams > 1:
            check("num_return_sequences", self.num_return_sequences <= self.num_beams,
                  f"at most num_beams={self.num_beams}")
            # beam scores divide by new_length ** length_penalty (float32): it must stay finite
            # and non-zero up to max_new_tokens (Python's float power raises OverflowError)
            check("length_penalty", abs(self.length_penalty) * math.log(self.max_new_tokens)
                  < _FLOAT32_LOG_MAX, f"such that max_new_tokens={self.max_new_tokens} ** "
                  "length_penalty fits float32 (|length_penalty| * ln(max_new_tokens) < 88)")
        else:
            check("num_return_sequences", self.do_sample or self.num_return_sequences == 1,
                  "1 for greedy search (sample with do_sample, or use num_beams)")
        check("pad_token_id", self.pad_token_id is None or (
            _is_int(self.pad_token_id) and 0 <= self.pad_token_id < MAX_TOKEN_ID),
            "None or a token id in [0, 2 ** 63)")
        for name in ("forced_bos_token_id", "forced_eos_token_id", "decoder_start_token_id"):
            v = getattr(self, name)
            check(name, v is None or _is_int(v), "None or an integer token id")
            if v is not None and not 0 <= v < V:
                raise TokenIdError(f"{name} must lie in [0, {V}) (the vocabulary), got {v}")
        self.suppress_tokens = _token_list("suppress_tokens", self.suppress_tokens, V)
        self.begin_suppress_tokens = _token_list("begin_suppress_tokens",
                                                 self.begin_suppress_tokens, V)
        words = self.bad_words_ids
        if words is not None:
            check("bad_words_ids", isinstance(words, (list, tuple)) and all(
                isinstance(w, (list, tuple)) and len(w) > 0 for w in words),
                "a list of non-empty lists of token ids")
            self.bad_words_ids = tuple(_token_list("bad_words_ids", w, V) for w in words)
        check("seed", self.seed is None or _is_int(self.seed), "None or an integer")
        return self
