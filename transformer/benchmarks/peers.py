"""Peer set-up shared by the model suites: PyTorch through HF transformers, the CTranslate2
conversion, the ONNX export, the int8 versions of each peer (torch dynamic quantization, ONNX
Runtime dynamic quantization), the GGUF file for llama.cpp (the `gguf` package), and the random
models the suites make once and cache. Each peer runtime is imported inside the function that
needs it; conversions run in a preparation process (engines.Engine.prepare_files).
"""
import hashlib
import json
import os
import warnings

from .._io import atomic_path
from .stats import log


def load_torch(threads):
    """torch and transformers ready for a timed peer: transformers' warnings off, torch pinned
    to `threads` intra-op threads and 1 inter-op thread. Returns (torch, transformers, version
    text). Raises ImportError when either is not installed."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (interop pool started)
        pass
    return torch, transformers, (f"torch {torch.__version__}, transformers "
                                 f"{transformers.__version__}")


def torch_note(torch, model):
    """The note of an HF model in PyTorch: its attention implementation and torch's threads."""
    attn = getattr(model.config, "_attn_implementation", None)
    return (f"attention implementation: {attn}; torch threads: intra-op "
            f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")


def cached_model(workdir, name, expected, make, tag="bench"):
    """The model directory `name` under workdir, made once and reused: reused when it has a
    model.safetensors and its config.json has every key of `expected` with that value; else
    make(folder, expected) -> note (a module-level function: it runs in a preparation process
    of its own, process.run_in_process) writes it into a temporary folder, which is then
    renamed (a run cut short leaves no half-written model). Returns (dir, note)."""
    from .process import run_in_process
    path = os.path.join(workdir, name)
    cfg_path = os.path.join(path, "config.json")
    if os.path.exists(cfg_path) and os.path.exists(os.path.join(path, "model.safetensors")):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        if all(cfg.get(k) == v for k, v in expected.items()):
            return path, f"reused cached model {path}"
        log(f"cached model {path} has another configuration; making it again", tag)
    log(f"making the random model {name} (once; cached in {path})", tag)
    os.makedirs(workdir, exist_ok=True)
    with atomic_path(path) as tmp:
        note = run_in_process(make, tmp, expected)
    return path, f"made {path}: {note}"


def ct2_convert(model_dir, out_dir, notes, tag="bench", tokenizer=None):
    """The CTranslate2 conversion of model_dir in out_dir (TransformersConverter, float32, no
    quantization), made once (into a temporary folder, then renamed) and reused. tokenizer:
    None (the converter loads the model's own), or a stand-in object it gets instead (a random
    model has none; it supplies the vocabulary). Appends what was done to notes; returns
    out_dir. Raises ImportError without ctranslate2."""
    if os.path.exists(os.path.join(out_dir, "model.bin")):
        notes.append(f"reused cached CTranslate2 conversion {out_dir}")
        return out_dir
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            if tokenizer is None:
                return super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            return tokenizer

    log("converting the model with CTranslate2's TransformersConverter (once; cached)", tag)
    with warnings.catch_warnings(), atomic_path(out_dir) as tmp:
        warnings.simplefilter("ignore")
        Converter(model_dir).convert(tmp, force=True)
    notes.append("converted with ctranslate2.converters.TransformersConverter (no quantization"
                 + ("" if tokenizer is None else "; stand-in tokenizer for the vocabulary")
                 + ")")
    return out_dir


ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(model):
    """The names of ENCODER_INPUTS that the HF model's forward() takes (MPNet has no
    token_type_ids), in that order."""
    import inspect
    params = inspect.signature(model.forward).parameters
    return [n for n in ENCODER_INPUTS if n in params]


def export_onnx(model_dir, path):
    """Export the HF model's last_hidden_state to ONNX at `path` with torch.onnx.export's
    TorchScript exporter (dynamo=False; torch 2.13, the bench extra's pin, has it), opset 17,
    dynamic batch and sequence axes; inputs: those of input_ids, attention_mask, token_type_ids
    that the model takes (model_inputs). Written to a temporary file, then renamed. Returns a
    note; raises RuntimeError for a model without input_ids and attention_mask first."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    names = model_inputs(model)
    if names[:2] != ["input_ids", "attention_mask"]:
        raise RuntimeError(f"ONNX export: the model takes {names} of {list(ENCODER_INPUTS)}")

    class LastHidden(torch.nn.Module):
        """The model with positional inputs (`names`), returning only last_hidden_state."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    # A padded example, so that no "mask is all ones" shortcut is traced into the graph.
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 1037, 3231, 102]])
    example = {"input_ids": ids, "attention_mask": (ids != 0).long(),
               "token_type_ids": torch.zeros_like(ids)}
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHidden(), tuple(example[n] for n in names), tmp,
                          input_names=names, output_names=["last_hidden_state"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={n: axes for n in names + ["last_hidden_state"]})
    return "exported with torch.onnx.export, TorchScript exporter (dynamo=False), opset 17"


def cache_dir(workdir, model_dir):
    """Per-model cache folder under workdir for the peers' conversions (ONNX export, CTranslate2
    conversion, GGUF file), named from the model directory (name + path hash), created if
    needed."""
    real = os.path.realpath(model_dir)
    tag = hashlib.sha1(real.encode()).hexdigest()[:10]
    d = os.path.join(workdir, f"{os.path.basename(real.rstrip(os.sep)) or 'model'}-{tag}")
    os.makedirs(d, exist_ok=True)
    return d


def onnx_model(model_dir, cache, dtype, notes, tag="bench"):
    """The ONNX file of an HF encoder for `dtype`, made once under `cache` and reused:
    model.onnx (float32, export_onnx) and for "int8" model-int8.onnx from it, by
    onnxruntime.quantization.quantize_dynamic (weight_type QInt8: symmetric int8 weights, one
    scale per tensor, ORT's default; activations quantized dynamically as uint8). Appends what
    was done to notes; returns the path. Raises ImportError without onnxruntime/torch,
    ValueError for a dtype ORT's CPU provider does not run (bfloat16)."""
    if dtype not in ("float32", "int8"):
        raise ValueError(f"no {dtype}: ONNX Runtime's CPU execution provider has no {dtype} "
                         "MatMul kernels")
    path = os.path.join(cache, "model.onnx")
    if os.path.exists(path):
        notes.append(f"reused cached ONNX export {path}")
    else:
        log("exporting the model to ONNX (once; cached)", tag)
        notes.append(export_onnx(model_dir, path))
    if dtype == "float32":
        return path
    qpath = os.path.join(cache, "model-int8.onnx")
    if os.path.exists(qpath):
        notes.append(f"reused cached int8 ONNX model {qpath}")
        return qpath
    from onnxruntime.quantization import QuantType, quantize_dynamic
    log("quantizing the ONNX model to int8 (once; cached)", tag)
    with warnings.catch_warnings(), atomic_path(qpath) as tmp:
        warnings.simplefilter("ignore")
        quantize_dynamic(path, tmp, weight_type=QuantType.QInt8)
    notes.append("int8: onnxruntime.quantization.quantize_dynamic(weight_type=QInt8) on the "
                 "exported float32 graph")
    return qpath


def conv1d_to_linear(model):
    """Replace every HF `Conv1D` (GPT-2's projections: y = x @ W + b, W (in, out)) by the equal
    torch.nn.Linear (weight W^T), in place, so that torch's dynamic quantization, which acts on
    nn.Linear only, reaches them. Returns the number replaced."""
    import torch
    from transformers.pytorch_utils import Conv1D
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                w = child.weight.data                       # (in, out)
                lin = torch.nn.Linear(w.shape[0], w.shape[1])
                lin.weight.data.copy_(w.t())
                lin.bias.data.copy_(child.bias.data)
                setattr(parent, name, lin)
                count += 1
    return count


def torch_at_dtype(torch, model, dtype, notes):
    """A copy of an HF float32 model in PyTorch at `dtype`: "float32" the model itself;
    "int8" torch.ao.quantization.quantize_dynamic on every nn.Linear (GPT-2's Conv1D made
    Linear first), qint8 weights with one scale per output row
    (per_channel_dynamic_qconfig, as CTranslate2's int8), activations quantized per call;
    "bfloat16" / "float16" model.to(that dtype). Appends the recipe to notes."""
    import copy
    if dtype == "float32":
        return model
    model = copy.deepcopy(model)
    if dtype in ("bfloat16", "float16"):
        notes.append(f"{dtype}: model.to(torch.{dtype})")
        return model.to(getattr(torch, dtype)).eval()
    n = conv1d_to_linear(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization
        model = q.quantize_dynamic(model, {torch.nn.Linear: q.per_channel_dynamic_qconfig},
                                   dtype=torch.qint8)
    notes.append("int8: torch.ao.quantization.quantize_dynamic on nn.Linear "
                 "(per_channel_dynamic_qconfig: qint8 weights, one scale per output row)"
                 + (f"; {n} GPT-2 Conv1D layers made nn.Linear first" if n else ""))
    return model.eval()


class StandInGPT2Tokenizer:
    """What CTranslate2's GPT-2 converter asks of a tokenizer, for a model without one: the
    vocabulary "<0>".."<V-2>" plus "<|endoftext|>" as the last id, which is bos, eos and unk."""
    bos_token = eos_token = unk_token = "<|endoftext|>"

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def get_vocab(self):
        """{token string: id}."""
        vocab = {f"<{i}>": i for i in range(self.vocab_size - 1)}
        vocab[self.eos_token] = self.vocab_size - 1
        return vocab


class StandInMarianTokenizer:
    """What CTranslate2's Marian converter asks of a tokenizer, for a model without
    sentencepiece files: the vocabulary by id ("</s>" = eos, "<unk>" = unk, "<2>".."<V-2>",
    "<pad>" = V-1, which the Marian loader drops), eos and unk."""
    eos_token, unk_token, pad_token, bos_token = "</s>", "<unk>", "<pad>", None

    def __init__(self, vocab_size, eos=0, unk=1):
        self.vocab_size, self.eos, self.unk = vocab_size, eos, unk

    def get_vocab(self):
        """{token string: id}."""
        pad = self.vocab_size - 1
        vocab = {f"<{i}>": i for i in range(self.vocab_size)}
        del vocab[f"<{self.eos}>"], vocab[f"<{self.unk}>"], vocab[f"<{pad}>"]
        vocab.update({self.eos_token: self.eos, self.unk_token: self.unk, self.pad_token: pad})
        return vocab

    def convert_ids_to_tokens(self, ids):
        inv = {v: k for k, v in self.get_vocab().items()}
        return inv[ids] if isinstance(ids, int) else [inv[i] for i in ids]


# ---------------------------------------------------------------------------------------------
# GGUF for llama.cpp, written from the same weights (the `gguf` package)
# ---------------------------------------------------------------------------------------------

GGUF_TYPES = {"float32": "F32", "int8": "Q8_0", "int4": "Q4_0", "bfloat16": "BF16"}


def gguf_vocabulary(vocab_size):
    """Token strings for llama.cpp's GPT-2 BPE vocabulary of a random model: GPT-2's byte-level
    symbols for the first 256 ids (so any text llama.cpp tokenizes at load, e.g. its newline
    probe, has tokens), "<i>" for the rest, "<|endoftext|>" for the last id (bos = eos)."""
    # GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256, 257, ...
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
            *range(ord("\xae"), ord("\xff") + 1)}
    extra = iter(range(256, 512))
    symbol = [chr(b) if b in keep else chr(next(extra)) for b in range(256)]
    tokens = [symbol[i] if i < 256 else f"<{i}>" for i in range(vocab_size - 1)]
    return tokens + ["<|endoftext|>"]


def write_gpt2_gguf(model_dir, path, dtype):
    """Write the GPT-2 directory's weights (model.safetensors, config.json) as a llama.cpp GGUF
    file at `path` for `dtype` (transformer.weights.gguf.write_gguf, as convert_hf_to_gguf.py
    lays them out): "float32" F32, "int8" Q8_0 (llama.cpp's int8: blocks of 32 weights with
    one scale each), "int4" Q4_0 (blocks of 32 with one scale; the tied token embedding too),
    "bfloat16" BF16, for the matrices; norms, biases and position embeddings
    stay F32. The vocabulary is a stand-in GPT-2 BPE one (gguf_vocabulary, one merge): a random
    model has no tokenizer; ids go in and come out directly. Returns a note. Raises
    ImportError without gguf, ValueError for an unknown dtype or a row length Q8_0 cannot
    hold (not a multiple of 32)."""
    from safetensors.numpy import load_file

    from ..weights.gguf import write_gguf
    if dtype not in GGUF_TYPES:
        raise ValueError(f"no GGUF type for dtype {dtype!r}; choose from {list(GGUF_TYPES)}")
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    C, V = cfg["n_embd"], cfg["vocab_size"]
    if dtype in ("int8", "int4") and C % 32:
        raise ValueError(f"{GGUF_TYPES[dtype]} needs rows of a multiple of 32 weights; C = {C}")
    write_gguf(path, "gpt2", dict(cfg, bos_token_id=V - 1, eos_token_id=V - 1),
               load_file(os.path.join(model_dir, "model.safetensors")), GGUF_TYPES[dtype],
               tokens=gguf_vocabulary(V), token_types=[1] * (V - 1) + [3],  # 3: control
               merges=["\u0120 t"],                # GPT-2's first merge ("Ġ t")
               name=os.path.basename(os.path.normpath(model_dir)))
    from .limits import package_version
    return (f"GGUF written with gguf {package_version('gguf')} from {model_dir}: "
            f"matrices {GGUF_TYPES[dtype]}, norms, biases and position embeddings F32")
