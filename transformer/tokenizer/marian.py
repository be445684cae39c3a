"""Hugging Face MarianTokenizer's semantics for Marian directories without a tokenizer.json:
the SentencePiece models source.spm / target.spm and the vocab.json ids."""
import os

from .._io import read_json
from .checks import check_ids, check_text, pad_batch, text_list
from .spm import sentencepiece_module

__all__ = ["MarianTokenizer"]


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
        sentencepiece = sentencepiece_module("Marian directories")

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
        return pad_batch([self.encode(t) for t in text_list(texts)], self.pad_token_id)

    def decode(self, ids):
        """Text of target ids, special tokens skipped. Raises IndexError for an id outside the
        vocabulary."""
        ids = check_ids(ids, max(self.decoder) + 1)
        special = {self.target_encoder[t] for t in self.SPECIAL}
        pieces = [self.decoder.get(i, "<unk>") for i in ids if i not in special]
        sp = self._spm["target" if self.separate_vocabs else "source"]
        return sp.decode_pieces(pieces).replace("\u2581", " ").strip()


