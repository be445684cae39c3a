"""llama2.c models (karpathy/llama2.c): a Llama checkpoint file (.bin, read by
transformer.weights.llama2c) and its SentencePiece-style tokenizer file (tokenizer.bin /
tok{V}.bin). RMSNorm eps 1e-5, RoPE theta 10000 on interleaved pairs, as run.c."""
import os
import re
import struct

import numpy as np

from ..weights.llama2c import read_llama2c
from .decoder import DecoderConfig, DecoderModel

BOS, EOS = 1, 2


class Llama2cTokenizer:
    """The tokenizer of llama2.c's run.c: file = int32 max_token_length, then per token float32
    score, int32 byte length, bytes. encode: BOS, a leading space (" " token), each UTF-8
    character's token (or its bytes as <0xNN> tokens, id byte + 3), then repeatedly merge the
    adjacent pair whose concatenation is in the vocabulary with the highest score.
    Raises FileNotFoundError / ValueError for a missing or malformed file."""

    def __init__(self, path, vocab_size=None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        data = open(path, "rb").read()
        pieces, scores, pos = [], [], 4
        try:
            while pos < len(data) and (vocab_size is None or len(pieces) < vocab_size):
                score, n = struct.unpack_from("<fi", data, pos)
                if n < 0 or pos + 8 + n > len(data):
                    raise ValueError("token length past the end of the file")
                pieces.append(data[pos + 8:pos + 8 + n])
                scores.append(score)
                pos += 8 + n
        except (struct.error, ValueError) as e:
            raise ValueError(f"{path}: malformed llama2.c tokenizer ({e})")
        if vocab_size is not None and len(pieces) != vocab_size:
            raise ValueError(f"{path}: {len(pieces)} tokens, the model has {vocab_size}")
        self.pieces, self.scores = pieces, scores
        self.ids = {p: i for i, p in enumerate(pieces)}

    def encode(self, text, bos=True, eos=False):
        """Token ids (list of int) of `text`."""
        ids = [BOS] if bos else []
        if text:
            ids.append(self.ids[b" "])
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.ids:
                ids.append(self.ids[b])
            else:
                ids.extend(x + 3 for x in b)
        start = 1 if bos else 0
        while True:
            best, best_i = -1e10, -1
            for i in range(start, len(ids) - 1):
                j = self.ids.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if j is not None and self.scores[j] > best:
                    best, best_i, best_id = self.scores[j], i, j
            if best_i < 0:
                break
            ids[best_i:best_i + 2] = [best_id]
        return ids + ([EOS] if eos else [])

    def piece(self, prev, token):
        """Bytes printed for `token` following `prev` (run.c decode: no leading space after
        BOS; <0xNN> tokens are raw bytes)."""
        p = self.pieces[token]
        if prev == BOS and p.startswith(b" "):
            p = p[1:]
        m = re.fullmatch(rb"<0x([0-9A-Fa-f]{2})>", p)
        return bytes([int(m.group(1), 16)]) if m else p

    def decode(self, ids):
        """Text of a sequence of ids, as run.c prints it (BOS and EOS produce nothing)."""
        out, prev = b"", BOS
        for t in map(int, ids):
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


class Llama2cModel(DecoderModel):
    """A llama2.c checkpoint as a DecoderModel (see it for the API)."""

    @classmethod
    def from_checkpoint(cls, path, tokenizer=None, threads=None):
        """Load a llama2.c .bin; tokenizer: path of its tokenizer file (default: found beside
        the checkpoint, or none). Raises FileNotFoundError, WeightsError or ValueError."""
        p, t = read_llama2c(path)
        config = DecoderConfig(
            vocab_size=p["vocab_size"], d_model=p["dim"], n_heads=p["n_heads"],
            n_kv_heads=p["n_kv_heads"], n_layers=p["n_layers"], d_ff=p["hidden_dim"],
            max_position_embeddings=p["max_seq_len"], norm="rms_norm", norm_eps=1e-5,
            activation="swiglu", positions="rotary", rope_theta=10000.0, rope_interleaved=True,
            bias=False, tie_word_embeddings=p["shared_classifier"], bos_token_id=BOS,
            eos_token_id=None, pad_token_id=0)
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
        tok = Llama2cTokenizer(tokenizer, config.vocab_size) if tokenizer else None
        return cls(config, w, tok, threads)
