"""The compute types, listed once: which dtypes each device runs, which CPU dtypes pack their
weights (transformer.ops.packed.PackedWeight, csrc/cpu/gemm.c), and what each CPU kernel
variant computes with. The device checks, the CLI (`--dtype`, `transformer info`) and the
benchmarks read this table; a new compute type is added here first (docs/ARCHITECTURE.md)."""

# device -> the dtypes a model placed there runs, float32 first (the default)
DTYPES = {"cpu": ("float32", "int8", "int4", "bfloat16"),
          "cuda": ("float32", "float16", "bfloat16")}

# CPU dtypes whose matrix-product weights are packed (PackedWeight) and run by our own kernels:
# every CPU compute type (float32 too: its panels need no per-call packing, where sgemm packs the
# weights on every call)
PACKED = ("float32", "int8", "int4", "bfloat16")

# the CPU products' kernel variants (csrc/cpu/gemm.c), slowest first, and their instructions
VARIANTS = ("portable", "avx2", "avx512")
INSTRUCTIONS = {
    "float32": {"avx512": "AVX-512F FMA", "avx2": "AVX2 FMA", "portable": "portable C"},
    "int8": {"avx512": "AVX-512 VNNI vpdpbusd",
             "avx2": "AVX2 vpmaddubsw + vpmaddwd (exact int16 pairs)",
             "portable": "portable C"},
    "int4": {"avx512": "AVX-512 VNNI vpdpbusd (4-bit codes as the unsigned operand)",
             "avx2": "AVX2 vpmaddubsw + vpmaddwd (exact int16 group sums)",
             "portable": "portable C"},
    "bfloat16": {"avx512": "AVX512-BF16 vdpbf16ps (without it: AVX-512F FMA on bf16 widened "
                           "to float32)",
                 "avx2": "AVX2 FMA on bf16 widened to float32",
                 "portable": "portable C"},
}


def all_dtypes():
    """Every dtype of every device, sorted (the CLI's --dtype choices)."""
    return sorted({d for dtypes in DTYPES.values() for d in dtypes})
