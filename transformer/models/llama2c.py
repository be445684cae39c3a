"""llama2.c models (karpathy/llama2.c): a Llama checkpoint file (.bin, read by
transformer.weights.llama2c) and its SentencePiece-style tokenizer file (tokenizer.bin /
tok{V}.bin). RMSNorm eps 1e-5, RoPE theta 10000 on interleaved pairs, as run.c."""
import heapq
import math
import os
import re
import struct

import numpy as np

from ..tokenizer import check_ids, check_text
from ..weights import WeightsError
from ..weights.llama2c import read_llama2c
from . import register_family
from .decoder import DecoderConfig, DecoderModel

BOS, EOS = 1, 2


class Llama2cTokenizer:
    """The tokenizer of llama2.c's run.c: file = int32 max_token_length, then per token float32
    score, int32 byte length, bytes. encode: BOS, a leading space (" " token), each UTF-8
    character's token (or its bytes as <0xNN> tokens, id byte + 3), then repeatedly merge the
    adjacent pair whose concatenation is in the vocabulary with the highest score (the leftmost
    such pair on ties, as run.c's scan) - through a heap of candidate pairs over a linked list,
    O(n log n) instead of run.c's O(n^2).
    max_length: longest encoding in tokens (the model's positions) or None; a text that needs
    more is refused before any merge. Raises FileNotFoundError / ValueError for a missing or
    malformed file (no " " token, or fewer than the 259 byte tokens and BOS/EOS)."""

    def __init__(self, path, vocab_size=None, max_length=None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        data = open(path, "rb").read()
        pieces, scores, pos = [], [], 4
        try:
            if len(data) < 4:
                raise ValueError("shorter than its 4-byte header")
            self.max_token_length = struct.unpack_from("<i", data, 0)[0]
            if self.max_token_length < 1:
                raise ValueError(f"max_token_length {self.max_token_length} < 1")
            while pos < len(data) and (vocab_size is None or len(pieces) < vocab_size):
                score, n = struct.unpack_from("<fi", data, pos)
                if n < 0 or pos + 8 + n > len(data):
                    raise ValueError("token length past the end of the file")
                if not math.isfinite(score):
                    raise ValueError(f"token {len(pieces)} has score {score}")
                pieces.append(data[pos + 8:pos + 8 + n])
                scores.append(score)
                pos += 8 + n
        except (struct.error, ValueError) as e:
            raise ValueError(f"{path}: malformed llama2.c tokenizer ({e})")
        if vocab_size is not None and len(pieces) != vocab_size:
            raise ValueError(f"{path}: {len(pieces)} tokens, the model has {vocab_size}")
        if len(pieces) < 259:
            raise ValueError(f"{path}: {len(pieces)} tokens, fewer than <unk>, BOS, EOS and the "
                             "256 byte tokens")
        self.pieces, self.scores = pieces, scores
        self.ids = {p: i for i, p in enumerate(pieces)}
        if b" " not in self.ids:
            raise ValueError(f"{path}: no ' ' token (encode starts every text with it)")
        self.max_length = max_length

    def encode(self, text, bos=True, eos=False):
        """Token ids (list of int) of `text` (a str). Raises TypeError for a non-str, ValueError
        for text that is not valid Unicode or needs more than max_length tokens."""
        b_all = check_text(text).encode("utf-8")
        if self.max_length is not None and text:
            # every token holds at most max_token_length bytes: a lower bound on the count
            need = int(bos) + int(eos) + 1 + -(-len(b_all) // self.max_token_length)
            if need > self.max_length:
                raise ValueError(f"text of {len(b_all)} bytes needs at least {need} tokens, more "
                                 f"than the model's {self.max_length} positions")
        ids = []
        if text:
            ids.append(self.ids[b" "])
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.ids:
                ids.append(self.ids[b])
            else:
                ids.extend(x + 3 for x in b)
        ids = self._merge(ids)
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def _merge(self, ids):
        """run.c's merges: while some adjacent pair's concatenation is a token, merge the pair of
        the highest score (leftmost on ties). Heap entries (-score, left node, left token, right
        token) go stale when a neighbour merges; stale ones are skipped when popped."""
        n = len(ids)
        tok = list(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n

        def pair(i):
            """The heap entry of the pair (i, next of i), or None when it is no token."""
            j = nxt[i]
            if j < n:
                m = self.ids.get(self.pieces[tok[i]] + self.pieces[tok[j]])
                if m is not None and self.scores[m] > -1e10:  # run.c's initial best
                    return (-self.scores[m], i, tok[i], tok[j], m)
            return None

        heap = [e for e in map(pair, range(n - 1)) if e is not None]
        heapq.heapify(heap)
        while heap:
            _, i, a, b, m = heapq.heappop(heap)
            j = nxt[i] if alive[i] else n
            if j >= n or tok[i] != a or tok[j] != b:
                continue  # stale: i or its right neighbour changed since the push
            tok[i] = m
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            for p in (prv[i], i):
                e = pair(p) if p >= 0 else None
                if e is not None:
                    heapq.heappush(heap, e)
        out, i = [], 0
        while i < n:
            out.append(tok[i])
            i = nxt[i]
        return out

    def piece(self, prev, token):
        """Bytes printed for `token` following `prev` (run.c decode: no leading space after
        BOS; <0xNN> tokens are raw bytes)."""
        p = self.pieces[token]
        if prev == BOS and p.startswith(b" "):
            p = p[1:]
        m = re.fullmatch(rb"<0x([0-9A-Fa-f]{2})>", p)
        return bytes([int(m.group(1), 16)]) if m else p

    def decode(self, ids):
        """Text of a sequence of ids, as run.c prints it (BOS and EOS produce nothing). Raises
        IndexError for an id outside [0, V)."""
        out, prev = b"", BOS
        for t in check_ids(ids, len(self.pieces)):
            if t not in (BOS, EOS):
                out += self.piece(prev, t)
            prev = t
        return out.decode("utf-8", errors="replace")


def find_tokenizer(checkpoint, vocab_size):
    """tokenizer.bin beside the checkpoint, else tok{vocab_size}.bin, else None."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    for name in ("tokenizer.bin", f"tok{vocab_size}.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


@register_family(layout="llama2.c checkpoint", detect=os.path.isfile)
class Llama2cModel(DecoderModel):
    """A llama2.c checkpoint as a DecoderModel (see it for the API)."""

    @classmethod
    def load(cls, path, threads=None, tokenizer=None, dtype="float32"):
        """transformer.load's entry: from_checkpoint (dtype is applied by load)."""
        return cls.from_checkpoint(path, tokenizer=tokenizer, threads=threads)

    @classmethod
    def from_checkpoint(cls, path, tokenizer=None, threads=None):
        """Load a llama2.c .bin; tokenizer: path of its tokenizer file (default: found beside
        the checkpoint, or none). Raises FileNotFoundError, WeightsError or ValueError."""
        p, t = read_llama2c(path)
        try:
            config = DecoderConfig(
                vocab_size=p["vocab_size"], d_model=p["dim"], n_heads=p["n_heads"],
                n_kv_heads=p["n_kv_heads"], n_layers=p["n_layers"], d_ff=p["hidden_dim"],
                max_position_embeddings=p["max_seq_len"], norm="rms_norm", norm_eps=1e-5,
                activation="swiglu", positions="rotary", rope_theta=10000.0, rope_interleaved=True,
                bias=False, tie_word_embeddings=p["shared_classifier"], bos_token_id=BOS,
                eos_token_id=None, pad_token_id=0)
        except ValueError as e:
            raise WeightsError(f"{os.fspath(path)}: {e}")
        w = {"embeddings.word": t["tok_embeddings"], "final_norm.weight": t["norm"],
             "lm_head.weight": t["output"]}
        for i in range(config.n_layers):
            pre = f"layers.{i}."
            w[pre + "norm1.weight"] = t["attention_norm"][i]
            w[pre + "norm2.weight"] = t["ffn_norm"][i]
            w[pre + "qkv.weight"] = np.concatenate([t["wq"][i], t["wk"][i], t["wv"][i]])
            w[pre + "out.weight"] = t["wo"][i]
            w[pre + "ff1.weight"] = np.concatenate([t["w1"][i], t["w3"][i]])
            w[pre + "ff2.weight"] = t["w2"][i]
        tokenizer = tokenizer or find_tokenizer(path, config.vocab_size)
        tok = Llama2cTokenizer(tokenizer, config.vocab_size,
                               config.max_position_embeddings) if tokenizer else None
        return cls(config, w, tok, threads)
