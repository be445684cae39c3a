"""Text to input_ids through a Hugging Face tokenizer.json (the `tokenizers` library)."""
import json
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
        with open(path, encoding="utf-8") as f:
            padding = json.load(f).get("padding") or {}
        self.max_length = int(max_length)
        self._tok.enable_truncation(self.max_length)
        self._tok.enable_padding(pad_id=padding.get("pad_id", 0),
                                 pad_type_id=padding.get("pad_type_id", 0),
                                 pad_token=padding.get("pad_token", "[PAD]"))

    def __call__(self, texts):
        if isinstance(texts, str):
            texts = [texts]
        enc = self._tok.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}

    def encode(self, text):
        """Token ids (list of int) of one text, special tokens added as the tokenizer's
        post-processor says (e.g. [CLS] ... [SEP], or a BOS)."""
        return self._tok.encode(text).ids

    def decode(self, ids):
        """Text of a sequence of token ids (special tokens skipped)."""
        return self._tok.decode(list(map(int, ids)))
