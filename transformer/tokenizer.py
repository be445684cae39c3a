"""Text to input_ids: a Hugging Face tokenizer.json (the `tokenizers` library), or the
SentencePiece models of Marian (source.spm / target.spm + vocab.json) and T5 (spiece.model)
directories that ship no tokenizer.json (the `sentencepiece` package)."""
import os
import re

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


def text_list(texts, name="texts"):
    """texts as a list of str (one str: a list of it), each checked by check_text; TypeError
    naming `name` for anything else (None, bytes, a number)."""
    if isinstance(texts, str):
        return [check_text(texts, name)]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"{name} must be a str or a sequence of str, got {type(texts).__name__}")
    return [check_text(t, f"{name}[{i}]") for i, t in enumerate(texts)]


def pad_batch(rows, pad_id):
    """{"input_ids", "attention_mask"}, each (B, T) int64, of B token-id lists right-padded
    with pad_id to the longest (T = 0 for no rows or only empty ones)."""
    T = max(map(len, rows), default=0)
    ids = np.full((len(rows), T), pad_id, np.int64)
    mask = np.zeros((len(rows), T), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask}


def _sentencepiece(what):
    """The sentencepiece module, or ImportError saying that `what` needs it."""
    try:
        import sentencepiece
    except ImportError as e:
        raise ImportError(f"{what} without tokenizer.json need the sentencepiece package "
                          "(pip install sentencepiece)") from e
    return sentencepiece


def _positive_int(value, name):
    """value as an int >= 1 (bool refused), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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
        sentencepiece = _sentencepiece("Marian directories")
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
        return pad_batch([self.encode(t) for t in text_list(texts)], self.pad_token_id)

    def decode(self, ids):
        """Text of target ids, special tokens skipped. Raises IndexError for an id outside the
        vocabulary."""
        ids = check_ids(ids, max(self.decoder) + 1)
        special = {self.target_encoder[t] for t in self.SPECIAL}
        pieces = [self.decoder.get(i, "<unk>") for i in ids if i not in special]
        sp = self._spm["target" if self.separate_vocabs else "source"]
        return sp.decode_pieces(pieces).replace("\u2581", " ").strip()


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
    clean_up_tokenization_spaces: override tokenizer_config.json (defaults 100 / False, HF's).

    __call__(texts) -> {"input_ids", "attention_mask"} (B, T) int64, right-padded with <pad>;
    encode(text) -> list of int; decode(ids) -> str. Raises FileNotFoundError for a missing
    spiece.model, ValueError for an unreadable model, one without <pad>, </s> or <unk>, or a bad
    max_length / extra_ids (named), ImportError naming the package without sentencepiece."""

    SPECIAL = ("<pad>", "</s>", "<unk>")

    def __init__(self, path, max_length, extra_ids=None, clean_up_tokenization_spaces=None):
        sentencepiece = _sentencepiece("T5 directories")
        from .models._hf import read_json

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
        self.max_length = _positive_int(max_length, "max_length")
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
