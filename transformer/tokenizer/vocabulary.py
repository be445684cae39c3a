"""Vocabulary-only tokenization (CTranslate2 model directories): the vocabulary files, one token
a line, and whitespace-separated tokens <-> ids."""
import os

from .checks import check_ids, check_text

__all__ = ["VocabularyTokenizer", "read_vocabulary"]


def read_vocabulary(path):
    """Tokens of a CTranslate2 vocabulary file, one a line, with "<unk>" appended when absent (as
    CTranslate2 does). Raises FileNotFoundError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e})")
    if tokens and tokens[-1] == "":
        tokens.pop()
    if "<unk>" not in tokens:
        tokens.append("<unk>")
    return tokens


class VocabularyTokenizer:
    """Whitespace tokens <-> ids for vocabulary-only models: encode("a b c") -> ids (unknown
    tokens map to <unk>, no BOS/EOS added); decode(ids) -> tokens joined by spaces, special
    tokens (<blank>, <s>, </s>) dropped."""

    SPECIAL = ("<blank>", "<s>", "</s>")

    def __init__(self, source, target):
        self.source, self.target = source, target
        self._ids = {t: i for i, t in enumerate(source)}
        self._unk = self._ids["<unk>"]

    def encode(self, text):
        """Source ids (list of int) of whitespace-separated tokens."""
        return [self._ids.get(t, self._unk) for t in check_text(text).split()]

    def decode(self, ids):
        """Target tokens of ids, space-separated, special tokens dropped. Raises IndexError for
        an id outside [0, len(target))."""
        return " ".join(self.target[i] for i in check_ids(ids, len(self.target))
                        if self.target[i] not in self.SPECIAL)
