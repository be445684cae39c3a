"""transformer: a compiled CPU and GPU Transformer inference engine for Python.

    import transformer
    model = transformer.load("path/to/all-MiniLM-L6-v2")
    emb = model.embed_texts(["Hello world"])        # (1, 384) float32, L2-normalised
"""
import os

__version__ = "0.1.0"

__all__ = ["load", "__version__"]


def load(path, device="cpu", dtype=None, threads=None, tokenizer=None):
    """Load a model directory in the Hugging Face layout (config.json + model.safetensors in
    float32, float16 or bfloat16, and tokenizer.json when present; the family comes from
    config.json's model_type/architectures), a CTranslate2 model directory (model.bin +
    source/target_vocabulary.txt), a GGUF file of llama.cpp (architectures gpt2 and llama; types
    F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, dequantized as read; tokenizer from
    its metadata), or a llama2.c checkpoint file (tokenizer: its tokenizer file, default
    tokenizer.bin or tok{vocab}.bin beside it). Weights are read one tensor at a time and packed
    in `dtype` as they come (the float32 model never exists whole at int8 / bfloat16).

    device: "cpu" or "cuda" (needs CuPy: the cuda12 / cuda13 extras, and a GPU; every family
    runs there: encoders, decoders with their KV cache, encoder-decoders with beam search);
    dtype: None (float32; a GGUF file whose blocks are all q8_0: int8), "float32"; on the CPU
    "int8" (CTranslate2's int8: every linear layer and word-embedding table int8 with one scale
    per row, activations quantized per row
    before each product, int32 accumulation, float32 out; a CTranslate2 int8 directory is taken
    as stored), "int4" (those weights 4-bit in groups of 32 along the input, a float32 scale
    and minimum per group, transformer.ops.packed) or "bfloat16" (those weights in bf16,
    float32 accumulation); on the GPU
    "float16" / "bfloat16"; threads: CPU kernel threads (default OMP_NUM_THREADS, else every
    core available). Returns the family's model
    object (e.g. transformer.models.bert.BertModel), its weights on `device`; on "cuda" its
    outputs are CuPy arrays (transformer.device.to_numpy gives NumPy).
    Raises FileNotFoundError for a missing path or file, ValueError for an unknown family, bad
    config or unsupported device/dtype, RuntimeError for device="cuda" without CuPy or a GPU
    (checked before anything is read), transformer.weights.WeightsError for weights that do not
    fit the config."""
    from .device import check
    from .models import load as load_family

    device, checked = check(device, dtype)
    # on the CPU the weights are packed as they are read; None lets the file choose (GGUF)
    model = load_family(os.fspath(path), threads, tokenizer,
                        dtype if device == "cpu" else "float32")
    if device == "cpu" and (dtype is None or model.dtype == checked):
        return model
    return model.to(device, checked)  # ValueError for a family that does not run on the device

