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


class MarianTokenizer:
    """Hugging Face MarianTokenizer's semantics (transformers/models/marian/tokenization_marian.py)
    for directories without a tokenizer.json: SentencePiece pieces (the `sentencepiece`
    package) of source.spm for the source and target.spm for the target, mapped to ids through
    vocab.json (target_vocab.json when the vocabularies are separate; a piece not in the
    vocabulary is <unk>), a leading language code ">>xx<<" kept as one token, </s> appended;
    truncated to max_length tokens (</s> kept).

    __call__(texts) -> {"input_ids", "attention_mask"} (B, T) int64, right-padded with <pad>;
    encode(text) -> source ids; encode_target(text) -> target ids; decode(ids) -> text, special
    tokens skipped, pieces joined by the source model (the target one with separate
    vocabularies), as HF's decode. Raises FileNotFoundError for a missing file, ValueError for a
    vocabulary without <unk>, </s> or <pad>, ImportError naming the package without
    sentencepiece."""

    SPECIAL = ("</s>", "<unk>", "<pad>")

    def __init__(self, directory, max_length):
        try:
            import sentencepiece
        except ImportError as e:
            raise ImportError("Marian directories without tokenizer.json need the "
                              "sentencepiece package (pip install sentencepiece)") from e
        from .models._hf import read_json

        directory = os.fspath(directory)
        paths = {n: os.path.join(directory, n) for n in ("source.spm", "target.spm",
                                                         "vocab.json")}
        for p in paths.values():
            if not os.path.isfile(p):
                raise FileNotFoundError(f"tokenizer file not found: {p}")
        self.encoder = read_json(paths["vocab.json"], "JSON vocabulary object")
        target_vocab = os.path.join(directory, "target_vocab.json")
        self.separate_vocabs = os.path.isfile(target_vocab)
        self.target_encoder = read_json(target_vocab) if self.separate_vocabs else self.encoder
        for vocab, path in ((self.encoder, paths["vocab.json"]), (self.target_encoder,
                                                                 target_vocab)):
            missing = [t for t in self.SPECIAL if not isinstance(vocab.get(t), int)]
            if missing:
                raise ValueError(f"{path}: the vocabulary has no {missing}")
        self.decoder = {v: k for k, v in self.target_encoder.items()}
        self._spm = {}
        for side in ("source", "target"):
            sp = sentencepiece.SentencePieceProcessor()
            try:
                sp.Load(paths[side + ".spm"])
            except (OSError, RuntimeError) as e:
                raise ValueError(f"cannot read {paths[side + '.spm']}: {e}")
            self._spm[side] = sp
        self.max_length = int(max_length)
        self.pad_token_id = self.encoder["<pad>"]
        self.eos_token_id = self.encoder["</s>"]

    def _encode(self, text, side):
        text = check_text(text)
        code = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[:end + 2]], text[end + 2:]
        vocab = self.encoder if side == "source" else self.target_encoder
        unk = vocab["<unk>"]
        pieces = code + self._spm[side].encode(text, out_type=str)
        return [vocab.get(p, unk) for p in pieces][:self.max_length - 1] + [vocab["</s>"]]

    def encode(self, text):
        """Source token ids (list of int) of one text, </s> last."""
        return self._encode(text, "source")

    def encode_target(self, text):
        """Target token ids (list of int) of one text (target.spm), </s> last."""
        return self._encode(text, "target")

    def __call__(self, texts):
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.encode(t) for t in texts]
        T = max(map(len, rows), default=0)
        ids = np.full((len(rows), T), self.pad_token_id, np.int64)
        mask = np.zeros((len(rows), T), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids):
        """Text of target ids, special tokens skipped. Raises IndexError for an id outside the
        vocabulary."""
        ids = check_ids(ids, max(self.decoder) + 1)
        special = {self.target_encoder[t] for t in self.SPECIAL}
        pieces = [self.decoder.get(i, "<unk>") for i in ids if i not in special]
        sp = self._spm["target" if self.separate_vocabs else "source"]
        return sp.decode_pieces(pieces).replace("\u2581", " ").strip()
