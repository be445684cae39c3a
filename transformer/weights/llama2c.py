"""Read llama2.c checkpoints (karpathy/llama2.c, export.py): float32 weights after either
- the legacy header (version 0): 7 int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads,
  vocab_size (negative: the classifier is stored separately), max_seq_len; then token embedding,
  attention RMSNorm weights, wq, wk, wv, wo, FFN RMSNorm weights, w1, w2, w3, final RMSNorm, the
  RoPE tables (max_seq_len x head_dim/2, twice, skipped), then the classifier when not shared;
- or the version-1 header: uint32 magic "ak42" (0x616b3432), int32 version 1, the same 7 int32,
  uint8 shared_classifier, zero padding to 256 bytes; then attention norms, FFN norms, final
  norm, token embedding, wq, wk, wv, wo, w1, w2, w3 (each for every layer), then the classifier
  when not shared.
Weights are memory-mapped, never unpickled; the file size must match the header exactly."""
import os
import struct

import numpy as np

from .mapping import WeightsError

MAGIC = 0x616B3432


def read_llama2c(path):
    """Header and tensors of a llama2.c checkpoint.

    Returns (params, tensors): params {dim, hidden_dim, n_layers, n_heads, n_kv_heads,
    vocab_size, max_seq_len, shared_classifier, version}; tensors {name: float32 array} with names
    tok_embeddings (V, C), attention_norm / ffn_norm (L, C), wq (L, C, C), wk / wv (L, Ckv, C),
    wo (L, C, C), w1 / w3 (L, F, C), w2 (L, C, F), norm (C,), output (V, C) (the embedding when
    shared). Raises FileNotFoundError, or WeightsError for an unknown version, a header with
    impossible values, or a size that does not match the header (truncated file)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(256)
    if len(head) < 28:
        raise WeightsError(f"{path}: {size} bytes is too short for a llama2.c header")
    magic, version = struct.unpack("<Ii", head[:8])
    if magic == MAGIC and len(head) < 256:
        raise WeightsError(f"{path}: {size} bytes is too short for a llama2.c version-1 header")
    if magic == MAGIC:
        if version != 1:
            raise WeightsError(f"{path}: llama2.c version {version} is not supported (float32 "
                               "legacy and version 1 are)")
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack("<7i", head[8:36])
        shared, offset = bool(head[36]), 256
    else:
        version = 0
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack("<7i", head[:28])
        shared, vocab, offset = vocab > 0, abs(vocab), 28
    params = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads,
                  n_kv_heads=n_kv, vocab_size=vocab, max_seq_len=seq, shared_classifier=shared,
                  version=version)
    if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq) < 1 or dim % n_heads \
            or n_heads % n_kv or max(dim, hidden, vocab) > 1 << 20 or n_layers > 1024:
        raise WeightsError(f"{path}: implausible llama2.c header {params} (not a llama2.c file?)")
    L, C, F, V = n_layers, dim, hidden, vocab
    D = C // n_heads
    Ckv = n_kv * D
    shapes = {"tok_embeddings": (V, C), "attention_norm": (L, C), "ffn_norm": (L, C),
              "norm": (C,), "wq": (L, C, C), "wk": (L, Ckv, C), "wv": (L, Ckv, C),
              "wo": (L, C, C), "w1": (L, F, C), "w2": (L, C, F), "w3": (L, F, C)}
    if version == 0:
        order = ["tok_embeddings", "attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1",
                 "w2", "w3", "norm", "freq_cis_real", "freq_cis_imag"]
        shapes["freq_cis_real"] = shapes["freq_cis_imag"] = (seq, D // 2)
    else:
        order = ["attention_norm", "ffn_norm", "norm", "tok_embeddings", "wq", "wk", "wv", "wo",
                 "w1", "w2", "w3"]
    if not shared:
        order.append("output")
        shapes["output"] = (V, C)
    expected = offset + 4 * sum(int(np.prod(shapes[n])) for n in order)
    if size != expected:
        raise WeightsError(f"{path}: {size} bytes but the header {params} needs {expected} "
                           f"({'truncated' if size < expected else 'trailing data'})")
    data = np.memmap(path, dtype="<f4", mode="r", offset=offset)
    tensors, pos = {}, 0
    for name in order:
        n = int(np.prod(shapes[name]))
        tensors[name] = np.asarray(data[pos:pos + n]).reshape(shapes[name])
        pos += n
    tensors.pop("freq_cis_real", None)
    tensors.pop("freq_cis_imag", None)
    if shared:
        tensors["output"] = tensors["tok_embeddings"]
    return params, tensors
