"""Hugging Face T5Tokenizer's semantics for T5 directories that ship only spiece.model (a
SentencePiece unigram model), and HF's clean_up_tokenization."""
import os
import re

import numpy as np

from .._io import read_json
from .checks import check_ids, check_text, pad_batch, positive_int, text_list
from .spm import sentencepiece_module

__all__ = ["T5Tokenizer", "clean_up_tokenization", "WHITE_SPACE", "SPIECE_UNDERLINE"]


# Rust's char::is_whitespace (the Unicode White_Space property): where the `tokenizers`
# library's WhitespaceSplit pre-tokenizer, used by Hugging Face's T5Tokenizer, cuts words.
WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200b)))
               + "\u2028\u2029\u202f\u205f\u3000")
SPIECE_UNDERLINE = "\u2581"   # SentencePiece's meta symbol for a space


def clean_up_tokenization(text):
    """HF's clean_up_tokenization (tokenization_utils_base.py), applied by decode when a
    tokenizer_config.json sets clean_up_tokenization_spaces: the space before . ? ! , and
    before the English contractions n't 'm 's 've 're removed, " ' " made "'"."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                     (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                     (" 're", "'re")):
        text = text.replace(old, new)
    return text


class T5Tokenizer:
    """Hugging Face T5Tokenizer's semantics for a T5 directory that ships only spiece.model (a
    SentencePiece unigram model) and no tokenizer.json, as transformers 5 builds it from that
    file (models/t5/tokenization_t5.py with convert_slow_tokenizer.T5Converter.convert_from_spm):

    - ids are the SentencePiece ids (T5: <pad> 0, </s> 1, <unk> 2); `extra_ids` sentinels
      <extra_id_0> .. <extra_id_{extra_ids-1}> follow them at the top, <extra_id_i> =
      vocab_size - 1 - i with vocab_size = pieces + extra_ids;
    - <pad>, </s>, <unk> and the sentinels are recognised in the input text, as written (not
      normalised), the longest first;
    - the text between them is normalised by the model's rules (nmt_nfkc for T5) and cut into
      words at white space (Unicode White_Space, as the tokenizers library's WhitespaceSplit;
      a character the normaliser deletes, such as U+000B, cuts nothing); every word gets the
      leading "\u2581" and is segmented by the unigram model (consecutive unknown characters:
      one <unk>). So a stretch of text after a special token starts a new word ("<extra_id_0>.",
      '\u2581' then '.'): transformers 5 has no `legacy` switch and always does this, as
      transformers 4's legacy=True (its default) did (checked against 4.57, slow and fast);
      4.x's legacy=False (no '\u2581' after a special token) is not offered;
    - encode appends </s> (also after a </s> in the text, as transformers 5 and 4's fast
      tokenizer do; 4's slow one does not repeat it), keeping it when truncating to
      max_length tokens;
    - decode skips the special tokens (<pad>, </s>, <unk>, the sentinels), joins the pieces
      with "\u2581" read as a space and the first piece's "\u2581" dropped (the tokenizers
      library's Metaspace decoder), then, if tokenizer_config.json says
      clean_up_tokenization_spaces, applies clean_up_tokenization.

    path: a directory holding spiece.model (and optionally tokenizer_config.json, whose
    "extra_ids" and "clean_up_tokenization_spaces" are read) or the spiece.model file itself;
    max_length: the longest encoding in tokens, </s> included; extra_ids /
    clean_up_tokenization_spaces: override tokenizer_config.json (defaults 100 / False, HF's);
    vocab_size: the model's vocabulary (None: unchecked), which pieces + extra_ids must fit.

    __call__(texts) -> {"input_ids", "attention_mask"} (B, T) int64, right-padded with <pad>;
    encode(text) -> list of int; decode(ids) -> str. Raises FileNotFoundError for a missing
    spiece.model, ValueError for an unreadable model, one without <pad>, </s> or <unk>, or a bad
    max_length / extra_ids (named), ImportError naming the package without sentencepiece."""

    SPECIAL = ("<pad>", "</s>", "<unk>")

    def __init__(self, path, max_length, extra_ids=None, clean_up_tokenization_spaces=None,
                 vocab_size=None):
        sentencepiece = sentencepiece_module("T5 directories")

        path = os.fspath(path)
        model = os.path.join(path, "spiece.model") if os.path.isdir(path) else path
        if not os.path.isfile(model):
            raise FileNotFoundError(f"tokenizer file not found: {model}")
        settings = {}
        config = os.path.join(os.path.dirname(model), "tokenizer_config.json")
        if os.path.isfile(config):
            settings = read_json(config)
        extra = settings.get("extra_ids", 100) if extra_ids is None else extra_ids
        if isinstance(extra, bool) or not isinstance(extra, (int, np.integer)) or extra < 0:
            where = f"{config}: " if extra_ids is None else ""
            raise ValueError(f"{where}extra_ids must be an integer >= 0, got {extra!r}")
        clean = (settings.get("clean_up_tokenization_spaces", False)
                 if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces)
        if not isinstance(clean, (bool, np.bool_)):  # a string "false" would read as true
            where = f"{config}: " if clean_up_tokenization_spaces is None else ""
            raise ValueError(f"{where}clean_up_tokenization_spaces must be true or false, got "
                             f"{clean!r}")
        self.max_length = positive_int(max_length, "max_length")
        self.extra_ids, self.clean_up_tokenization_spaces = int(extra), bool(clean)

        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.Load(model)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"cannot read {model}: {e}")
        self._sp = sp
        ids = {}
        for token in self.SPECIAL:
            i = sp.piece_to_id(token)
            if sp.id_to_piece(i) != token:
                raise ValueError(f"{model}: the SentencePiece model has no {token} piece (a T5 "
                                 "spiece.model has <pad> 0, </s> 1, <unk> 2)")
            ids[token] = i
        self.pad_token_id, self.eos_token_id, self.unk_token_id = (ids[t] for t in self.SPECIAL)
        self.n_pieces = sp.get_piece_size()
        if vocab_size is not None and self.n_pieces + self.extra_ids > vocab_size:
            # checked before the sentinels are made: 10 ** 6 of them took seconds and GBs
            where = f"{config}: " if extra_ids is None else ""
            raise ValueError(f"{where}extra_ids={self.extra_ids} + the {self.n_pieces} pieces of "
                             f"{model} exceed the model's vocab_size={vocab_size}")
        self.vocab_size = self.n_pieces + self.extra_ids
        self.added = dict(ids)
        self.added.update({f"<extra_id_{i}>": self.vocab_size - 1 - i
                           for i in range(self.extra_ids)})
        self._special_ids = set(self.added.values())
        longest_first = sorted(self.added, key=len, reverse=True)
        self._added_re = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
        separators = "".join(self._separators())
        self._words_re = re.compile(f"[{re.escape(separators)}]+") if separators else None

    def _separators(self):
        """The White_Space characters that still cut words after the model's normalisation:
        tokenizers normalises before it splits, so one the normaliser deletes (nmt_nfkc:
        U+000B, U+000C) joins its neighbours into one word. Every White_Space character with a
        sentencepiece too old for normalize() (< 0.2.0)."""
        normalize = getattr(self._sp, "normalize", None)
        if normalize is None:
            return WHITE_SPACE
        base = len(normalize("xx").replace("x", ""))   # the dummy-prefix "\u2581", if any
        kept = []
        for c in WHITE_SPACE:
            rest = normalize(f"x{c}x").replace("x", "")[base:]
            if rest and all(r in WHITE_SPACE or r == SPIECE_UNDERLINE for r in rest):
                kept.append(c)
        return kept

    def sentinel_token_id(self, i):
        """Id of <extra_id_i> (vocab_size - 1 - i). Raises IndexError outside [0, extra_ids)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) \
                or not 0 <= i < self.extra_ids:
            raise IndexError(f"sentinel index must lie in [0, {self.extra_ids}), got {i!r}")
        return self.vocab_size - 1 - int(i)

    def _content_ids(self, text):
        """Ids of a checked text, special tokens as written in it, no </s> added."""
        ids = []
        for k, part in enumerate(self._added_re.split(text)):
            if k % 2:  # a special token (the regex's captured group)
                ids.append(self.added[part])
                continue
            words = [w for w in (self._words_re.split(part) if self._words_re else [part]) if w]
            if words:
                for row in self._sp.encode(words):
                    ids.extend(row)
        return ids

    def encode(self, text):
        """Token ids (list of int) of one text, </s> last; at most max_length of them."""
        return self._content_ids(check_text(text))[:self.max_length - 1] + [self.eos_token_id]

    def __call__(self, texts):
        return pad_batch([self.encode(t) for t in text_list(texts)], self.pad_token_id)

    def decode(self, ids):
        """Text of token ids, special tokens skipped (see the class docstring). Raises
        IndexError for an id outside [0, vocab_size), TypeError for non-integer ids."""
        ids = check_ids(ids, self.vocab_size)
        pieces = [self._sp.id_to_piece(i) for i in ids if i not in self._special_ids]
        text = "".join(p.replace(SPIECE_UNDERLINE, "" if k == 0 else " ")
                       for k, p in enumerate(pieces))
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text
