"""GGUF files (llama.cpp; the format: ggml-org/ggml docs/gguf.md) through the `gguf` package:
`gguf.GGUFReader` memory-maps the file and parses its header, `gguf.quants` dequantizes blocks.
Nothing here parses GGUF bytes by hand.

- read_gguf: metadata and tensors, each a transformer.weights.Lazy dequantized to float32 when
  placed (numpy shape = ggml's ne reversed: (rows, row length)); blocks that a compute type can
  hold exactly are also offered as stored (Lazy.stored):
    q4_0 (llama.cpp ggml-quants.c dequantize_row_q4_0: value = d * (q - 8), q 0..15, one f16 d
    per 32) and q4_K (dequantize_row_q4_K: super-blocks of 256 with f16 d and dmin, eight 6-bit
    scales sc and minimums m, value = d * sc * q - dmin * m per 32) as int4 groups of 32
    (q4_groups: code q, scale d or d * sc, minimum -8 d or -dmin * m; equal to
    gguf.quants.dequantize bit for bit), and q8_0 (value = d * q, q int8, one f16 d per 32) as
    int8 with a scale per 32 (q8_groups).
- Where a compute type does not hold a block layout exactly, the weights are dequantized once
  (exactly, in float32) and requantized by the compute type: at int8 (one scale per row,
  CTranslate2's) each weight moves by at most half a step of its row, max|w_row| / 254, on top
  of the file's own rounding (q8_0: max|block of 32| / 254); at bfloat16 by at most 2^-9 of its
  magnitude. Measured on random GPT-2 / Llama models (tests/models/test_gguf.py): the mean KL
  of next-token distributions to float32 at int8 is about 2.5x llama.cpp's own on a q8_0 file,
  within a few percent of it on q4_0 / q4_K_M files; at float32 and bfloat16 at most llama.cpp's.
- GGUF_NAMES: llama.cpp's tensor names (gguf.constants TENSOR_NAMES, as convert_hf_to_gguf.py
  writes them) against Hugging Face's for the "gpt2" and "llama" architectures; hf_to_gguf /
  write_gguf: an HF state dict as convert_hf_to_gguf.py writes it (Conv1D weights transposed,
  Llama's Q / K rows permuted by LlamaModel.permute), the writer the tests and the benchmarks
  share.
"""
import os
import pathlib

import numpy as np

from .._io import atomic_path
from .lazy import Lazy
from .mapping import WeightsError

MAGIC = b"GGUF"
# tensor types read (gguf.quants dequantizes them); the others (IQ*, TQ*, MXFP4, integers) are
# refused by name
READ_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K",
              "Q4_K", "Q5_K", "Q6_K")
STORED_INT4 = ("Q4_0", "Q4_K")  # held exactly as int4 groups of 32 with a scale and a minimum

# llama.cpp name -> Hugging Face name, per architecture ("{i}": the block index)
GGUF_NAMES = {
    "gpt2": {"token_embd.weight": "transformer.wte.weight",
             "position_embd.weight": "transformer.wpe.weight",
             "output_norm.weight": "transformer.ln_f.weight",
             "output_norm.bias": "transformer.ln_f.bias",
             "output.weight": "lm_head.weight",
             **{f"blk.{{i}}.{g}.{s}": f"transformer.h.{{i}}.{h}.{s}"
                for g, h in (("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"),
                             ("attn_output", "attn.c_proj"), ("ffn_norm", "ln_2"),
                             ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj"))
                for s in ("weight", "bias")}},
    "llama": {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight",
              **{f"blk.{{i}}.{g}.weight": f"model.layers.{{i}}.{h}.weight"
                 for g, h in (("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"),
                              ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                              ("attn_output", "self_attn.o_proj"),
                              ("ffn_norm", "post_attention_layernorm"),
                              ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                              ("ffn_down", "mlp.down_proj"))}},
}
# GPT-2's Conv1D weights are stored (in, out) by HF and (out, in) in GGUF
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_gguf(path):
    """True for a file that starts with the GGUF magic (b"GGUF")."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def q4_groups(data, qtype):
    """int4 groups of 32 of a q4_0 or q4_K tensor as stored: data (O, bytes per row) uint8 (the
    GGUFReader tensor's data) -> codes (O, K) uint8 in 0..15, scale (O, K // 32) float32,
    minimum (O, K // 32) float32, with codes * scale + minimum (float32, per group of 32 along K)
    equal to gguf.quants.dequantize(data, qtype) exactly (block layouts in the module
    docstring; q4_K's 6-bit scales unpacked by gguf.quants.Q4_K.get_scale_min). Raises
    ValueError for another qtype."""
    from gguf import GGMLQuantizationType as T, quants

    data = np.ascontiguousarray(data, np.uint8)
    O = data.shape[0]
    name = T(qtype).name
    if name == "Q4_0":
        blocks = data.reshape(-1, 18)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
        qs = blocks[:, 2:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)          # (n, 32)
        scale, minimum = d, d * np.float32(-8)
    elif name == "Q4_K":
        blocks = data.reshape(-1, 144)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        sc, m = quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())       # (n, 8) each
        qs = blocks[:, 16:].reshape(-1, 4, 32)                           # 4 x 32 bytes
        codes = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 256)  # sub-blocks 2j, 2j+1
        scale = (d * sc.astype(np.float32)).reshape(-1)
        minimum = -(dmin * m.astype(np.float32)).reshape(-1)
    else:
        raise ValueError(f"q4_groups reads Q4_0 and Q4_K, not {name}")
    return (codes.reshape(O, -1).astype(np.uint8), scale.reshape(O, -1),
            minimum.reshape(O, -1))


def q8_groups(data):
    """int8 groups of 32 of a q8_0 tensor as stored: data (O, bytes per row) uint8 -> q (O, K)
    int8 and scale (O, K // 32) float32 (value = q * scale, per group of 32 along K), equal to
    gguf.quants.dequantize(data, Q8_0) exactly."""
    data = np.ascontiguousarray(data, np.uint8)
    blocks = data.reshape(-1, 34)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    q = blocks[:, 2:].copy().view(np.int8)
    return q.reshape(data.shape[0], -1), scale.reshape(data.shape[0], -1)


def _stored(t):
    """The stored blocks of a reader tensor (Lazy.stored), or None."""
    name = t.tensor_type.name
    if len(t.data.shape) != 2:
        return None
    if name in STORED_INT4:
        return lambda: ("int4", q4_groups(t.data, t.tensor_type))
    if name == "Q8_0":
        return lambda: ("int8", q8_groups(t.data))
    return None


def read_gguf(path):
    """Metadata and tensors of the GGUF file at `path`, memory-mapped (gguf.GGUFReader).

    Returns (metadata, tensors, types): metadata {key: int, float, bool, str or list} (the
    header's key-value pairs, e.g. "general.architecture", "llama.block_count",
    "tokenizer.ggml.tokens"); tensors {GGUF name: Lazy} of numpy shape (ggml's ne reversed),
    each read as float32 when placed (gguf.quants.dequantize), with Lazy.stored for q4_0 / q4_K
    (int4 groups) and q8_0 (int8 groups); types {GGUF name: type name ("F32", "Q4_K", ...)}.
    Raises FileNotFoundError, ImportError without the gguf package, or WeightsError naming
    the file for one the reader cannot parse
    (truncated, corrupt) and naming the tensor and its type for a type it does not read
    (READ_TYPES)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        import gguf
    except ImportError as e:
        raise ImportError(f"{path}: reading GGUF files needs the gguf package (pip install "
                          "'transformer[gguf]')") from e
    try:
        reader = gguf.GGUFReader(path)
        metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        found = reader.tensors
        reader.fields.clear()  # the parsed parts (arrays per token string) are not needed again
    except Exception as e:  # the reader's ValueError, IndexError, struct / NumPy errors
        raise WeightsError(f"cannot read {path}: truncated or corrupt GGUF file "
                           f"({type(e).__name__}: {e})")
    unread = [(t.name, t.tensor_type.name) for t in found if t.tensor_type.name not in READ_TYPES]
    if unread:
        raise WeightsError(f"{path}: tensor {unread[0][0]} has type {unread[0][1]}, which is not "
                           f"read (types read: {', '.join(READ_TYPES)})"
                           + (f"; {len(unread) - 1} more such tensors" if len(unread) > 1 else ""))
    tensors, types = {}, {}
    for t in found:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))

        def read_rows(start, stop, t=t, shape=shape):
            data = t.data[start:stop] if len(shape) > 1 else t.data
            out = np.array(gguf.quants.dequantize(data, t.tensor_type), np.float32, copy=True)
            _release(reader, t, start, stop, len(t.data) if len(shape) > 1 else 1)
            return out.reshape((stop - start,) + shape[1:] if len(shape) > 1 else shape)

        def read(t=t, shape=shape, read_rows=read_rows):
            return read_rows(0, shape[0] if len(shape) > 1 else 1)
        tensors[t.name] = Lazy(shape, np.float32, read, _stored(t), t.name,
                               read_rows if len(shape) == 2 else None)
        types[t.name] = t.tensor_type.name
    return metadata, tensors, types


def _release(reader, t, start, stop, rows):
    """Drop the file pages of rows [start, stop) of tensor t from the process's resident set
    once read (madvise MADV_DONTNEED on the read-only map: they come back from the page cache
    if read again), so that a GGUF file read whole does not stay resident beside the model."""
    mm = getattr(reader.data, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not rows:
        return
    import mmap
    per_row = t.n_bytes // rows
    lo = t.data_offset + start * per_row
    hi = t.data_offset + stop * per_row
    page = mmap.PAGESIZE
    lo, hi = -(-lo // page) * page, hi // page * page  # whole pages inside the range only
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def permute_rows(n_rows, n_head):
    """Row order of llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py, conversion/llama.py:
    w.reshape(n_head, 2, rows // n_head // 2, ...).swapaxes(1, 2).reshape(w.shape)), which turns
    HF's rotate-half Q / K rows into GGUF's interleaved pairs: GGUF row r = HF row
    permute_rows(...)[r]. Its inverse (np.argsort) un-permutes."""
    return np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def hf_to_gguf(arch, state, n_layers, n_head=None, n_head_kv=None):
    """An HF state dict {name: float32 array} as llama.cpp's convert_hf_to_gguf.py names and
    lays it out: [(GGUF name, array)], GPT-2's Conv1D weights transposed to (out, in), Llama's
    q_proj / k_proj rows permuted (permute_rows with n_head, n_head_kv heads). HF names with no
    GGUF name (attention masks, rotary tables) are dropped; a tied lm_head is not written."""
    table = {}
    for g, h in GGUF_NAMES[arch].items():
        for i in range(n_layers) if "{i}" in g else (None,):
            table[h.format(i=i)] = g.format(i=i)
    out = []
    for name, a in state.items():
        if arch == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # saved from GPT2Model rather than GPT2LMHeadModel
        if name not in table or (name == "lm_head.weight" and arch == "gpt2"):
            continue
        a = np.ascontiguousarray(a, np.float32)
        if arch == "gpt2" and name.endswith(GPT2_CONV1D):
            a = np.ascontiguousarray(a.T)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = n_head if name.endswith("q_proj.weight") else n_head_kv
            a = a[permute_rows(len(a), heads)]
        out.append((table[name], a))
    return out


def write_gguf(path, arch, config, state, qtype="F32", tokens=None, scores=None,
               token_types=None, merges=None, tokenizer_model=None, name="model"):
    """Write an HF model as a GGUF file at `path` the way convert_hf_to_gguf.py does for "gpt2"
    and "llama": config = the HF config dict, state {HF name: float32 array} (hf_to_gguf),
    qtype the type of the 2-D weights ("F32", "F16", "BF16", "Q8_0", "Q4_0", through
    gguf.quants.quantize); 1-D tensors and position_embd stay F32, as the converter keeps them
    (conversion/base.py prepare_tensors). The
    tokenizer metadata ("tokenizer.ggml.*") is written when tokens is given: tokenizer_model
    "gpt2" with merges (byte-level BPE) or "llama" with scores (SentencePiece), token_types
    (gguf.TokenType values). Written to a temporary name and renamed (no half-written file).
    Raises ValueError for an unknown arch or qtype, gguf.QuantError for a row length the
    block type cannot hold."""
    import gguf

    if arch not in GGUF_NAMES:
        raise ValueError(f"arch must be one of {sorted(GGUF_NAMES)}, got {arch!r}")
    q = getattr(gguf.GGMLQuantizationType, qtype, None)
    if qtype not in ("F32", "F16", "BF16", "Q8_0", "Q4_0"):
        raise ValueError(f"qtype must be F32, F16, BF16, Q8_0 or Q4_0, got {qtype!r}")
    file_type = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16",
                 "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0"}[qtype]
    w = gguf.GGUFWriter(None, arch)        # the file: write_header_to_file's, atomic_path's
    w.add_name(name)
    if arch == "gpt2":
        C, H, L = config["n_embd"], config["n_head"], config["n_layer"]
        w.add_context_length(config.get("n_positions", 1024))
        w.add_embedding_length(C)
        w.add_feed_forward_length(config.get("n_inner") or 4 * C)
        w.add_block_count(L)
        w.add_head_count(H)
        w.add_layer_norm_eps(config.get("layer_norm_epsilon", 1e-5))
        H_kv = H
    else:
        C, H, L = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
        H_kv = config.get("num_key_value_heads") or H
        w.add_vocab_size(config["vocab_size"])
        w.add_context_length(config.get("max_position_embeddings", 2048))
        w.add_embedding_length(C)
        w.add_feed_forward_length(config["intermediate_size"])
        w.add_block_count(L)
        w.add_head_count(H)
        w.add_head_count_kv(H_kv)
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        w.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
        w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
        w.add_rope_dimension_count(config.get("head_dim") or C // H)
    w.add_file_type(getattr(gguf.LlamaFileType, file_type))
    if tokens is not None:
        w.add_tokenizer_model(tokenizer_model or ("gpt2" if arch == "gpt2" else "llama"))
        if arch == "gpt2":
            w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        if scores is not None:
            w.add_token_scores(scores)
        if token_types is not None:
            w.add_token_types(token_types)
        if merges is not None:
            w.add_token_merges(merges)
        for key in ("bos", "eos", "pad", "unk"):
            if config.get(f"{key}_token_id") is not None:
                getattr(w, f"add_{key}_token_id")(config[f"{key}_token_id"])
    for gname, a in hf_to_gguf(arch, state, L, H, H_kv):
        if a.ndim != 2 or gname == "position_embd.weight":  # as the converter: kept F32
            w.add_tensor(gname, a)
        elif qtype == "F16":
            w.add_tensor(gname, a.astype(np.float16))
        elif qtype != "F32":
            w.add_tensor(gname, gguf.quants.quantize(a, q), raw_dtype=q)
        else:
            w.add_tensor(gname, a)
    with atomic_path(path) as tmp:
        w.write_header_to_file(pathlib.Path(tmp))
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
