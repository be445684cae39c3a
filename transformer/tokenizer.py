"""Text to input_ids through a Hugging Face tokenizer.json (the `tokenizers` library)."""
import os

import numpy as np


class Tokenizer:
    """Wraps tokenizers.Tokenizer: pads each batch to its longest sequence (not to a fixed
    length) and truncates to `max_length` tokens.

    path: tokenizer.json; max_length: longest sequence in tokens, special tokens included.
    Calling it on a list of B strings returns {"input_ids", "attention_mask", "token_type_ids"},
    each (B, T) int64. Raises FileNotFoundError / ValueError for a missing or unreadable file."""

    def __init__(self, path, max_length):
        from tokenizers import Tokenizer as _HFTokenizer

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            self._tok = _HFTokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"cannot read tokenizer {path}: {e}")
        from .models._hf import read_json
        padding = read_json(path).get("padding") or {}
        if not isinstance(padding, dict):
            raise ValueError(f"{path}: padding must be a JSON object, got {padding!r}")
        self.max_length = int(max_length)
        self._tok.enable_truncation(self.max_length)
        self._tok.enable_padding(pad_id=padding.get("pad_id", 0),
                                 pad_type_id=padding.get("pad_type_id", 0),
                                 pad_token=padding.get("pad_token", "[PAD]"))

    def __call__(self, texts):
        if isinstance(texts, str):
            texts = [texts]
        texts = [check_text(t) for t in texts]
        enc = self._tok.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}

    def encode(self, text):
        """Token ids (list of int) of one text, special tokens added as the tokenizer's
        post-processor says (e.g. [CLS] ... [SEP], or a BOS)."""
        return self._tok.encode(check_text(text)).ids

    def decode(self, ids):
        """Text of a sequence of token ids (special tokens skipped). Raises IndexError for an id
        outside [0, vocabulary size)."""
        return self._tok.decode(check_ids(ids, self._tok.get_vocab_size()))


def check_text(text, name="text"):
    """text itself when it is a str that can be encoded as UTF-8; else TypeError / ValueError
    naming `name` (bytes, None, or lone surrogates from undecodable input)."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text ({e.reason} at character "
                         f"{e.start}; undecodable input bytes?)")
    return text


def check_ids(ids, vocab_size, name="ids"):
    """ids as a list of int in [0, vocab_size), or an IndexError / TypeError naming `name`."""
    a = np.asarray(ids)
    if a.size == 0:
        return []
    if not np.issubdtype(a.dtype, np.integer) or a.ndim != 1:
        raise TypeError(f"{name} must be a 1-D sequence of integers, got {a.dtype} {a.shape}")
    if a.min() < 0 or a.max() >= vocab_size:
        raise IndexError(f"{name} must lie in [0, {vocab_size}), got values in "
                         f"[{a.min()}, {a.max()}]")
    return a.tolist()
