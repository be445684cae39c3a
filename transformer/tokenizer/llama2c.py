"""The tokenizer of llama2.c's run.c (karpathy/llama2.c): its tokenizer file (tokenizer.bin /
tok{V}.bin) and run.c's encode (byte-level pieces, highest-score merges) and decode."""
import heapq
import math
import os
import re
import struct

from .checks import check_ids, check_text

__all__ = ["Llama2cTokenizer", "find_tokenizer", "BOS", "EOS"]

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

    def text_bytes(self, n_tokens):
        """The UTF-8 bytes of a text that encode (bos, no eos) accepts when n_tokens <=
        max_length: (n_tokens - 2) * max_token_length (tokenizer.cut_text's bound)."""
        return max(0, n_tokens - 2) * self.max_token_length

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


