"""Hugging Face's tokenizer.json (the `tokenizers` library) and the choice of a model directory's
tokenizer: tokenizer.json, else a Marian or T5 SentencePiece model (hf_tokenizer)."""
import os

import numpy as np

from .._io import read_json
from .checks import check_ids, check_text
from .marian import MarianTokenizer
from .t5 import T5Tokenizer

__all__ = ["Tokenizer", "hf_tokenizer", "max_input_length"]


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
        padding = read_json(path).get("padding") or {}
        if not isinstance(padding, dict):
            raise ValueError(f"{path}: padding must be a JSON object, got {padding!r}")
        self._setup(max_length, padding)

    @classmethod
    def wrap(cls, tokenizer, max_length, pad_id=0, pad_token="[PAD]"):
        """A Tokenizer around a built tokenizers.Tokenizer (e.g. from a GGUF file's metadata:
        transformer.tokenizer.gguf), padding with pad_id / pad_token."""
        self = cls.__new__(cls)
        self._tok = tokenizer
        self._setup(max_length, {"pad_id": pad_id, "pad_token": pad_token})
        return self

    def _setup(self, max_length, padding):
        self.max_length = int(max_length)
        self._tok.enable_truncation(self.max_length)
        self._tok.enable_padding(pad_id=padding.get("pad_id", 0),
                                 pad_type_id=padding.get("pad_type_id", 0),
                                 pad_token=padding.get("pad_token", "[PAD]"))

    def __call__(self, texts, text_pair=None):
        """texts: a string or a list of B; text_pair: None or as many second texts, each pair
        encoded as one sequence by the tokenizer's pair template (BERT: [CLS] a [SEP] b [SEP],
        token types 1 on b), as HF's tokenizer(texts, text_pair)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [check_text(t) for t in texts]
        if text_pair is not None:
            pairs = [check_text(t) for t in ([text_pair] if isinstance(text_pair, str)
                                             else text_pair)]
            if len(pairs) != len(texts):
                raise ValueError(f"text_pair has {len(pairs)} texts but texts has {len(texts)}")
            texts = list(zip(texts, pairs))
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




def hf_tokenizer(path, max_length, vocab_size=None):
    """Tokenizer of `path` truncating to max_length tokens, the one place that chooses it:
    tokenizer.json (the `tokenizers` library), else a Marian SentencePiece pair (source.spm,
    target.spm, vocab.json), else a T5 SentencePiece model (spiece.model; its pieces and
    extra_ids must fit the model's vocab_size when given), else None."""
    tok = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tok):
        return Tokenizer(tok, max_length)
    if os.path.isfile(os.path.join(path, "source.spm")):
        return MarianTokenizer(path, max_length)
    if os.path.isfile(os.path.join(path, "spiece.model")):
        return T5Tokenizer(path, max_length, vocab_size=vocab_size)
    return None


def max_input_length(path, limit, tokenizer_json):
    """Longest input in tokens of the encoder directory `path`: sentence-transformers'
    max_seq_length (sentence_bert_config.json) when present, else the truncation length of
    `tokenizer_json`, capped at `limit` (the model's positions). Raises ValueError naming the
    file and the setting for one that is not a positive integer."""
    st = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(st):
        file, key, value = st, "max_seq_length", read_json(st).get("max_seq_length", limit)
    else:
        trunc = read_json(tokenizer_json).get("truncation") or {}
        if not isinstance(trunc, dict):
            raise ValueError(f"{tokenizer_json}: truncation must be a JSON object or null, got "
                             f"{trunc!r}")
        file, key, value = tokenizer_json, "truncation.max_length", trunc.get("max_length", limit)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{file}: {key} must be a positive integer, got {value!r}")
    return min(limit, value)
