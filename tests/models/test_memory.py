"""Memory of a loaded model: resident size (RSS) in a fresh subprocess before and after
`transformer.load(..., dtype=...)` and one generate, on a random GPT-2-shaped safetensors model;
int8 and bfloat16 are packed as the tensors stream in, so the float32 model never exists whole
(issue 22: resident int8 <= 0.30x and bfloat16 <= 0.55x the float32 model's, peak during load
<= 1.2x the final resident size). The test asserts the ratios with margins for the allocator
and a smaller model; `python tests/models/test_memory.py` prints the exact numbers for the
8-layer GPT-2-small shape (C=768, V=50257)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

CHILD = r'''
import json, sys
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out
import numpy as np
import transformer, transformer.models.gpt2, transformer.tokenizer  # noqa: E401 (imports first)
base = status()["VmRSS"]
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
model = transformer.load(sys.argv[1], dtype=sys.argv[2], threads=1)
model.generate(np.array([[1, 2, 3, 4]]), max_new_tokens=1)
after = status()
print(json.dumps({"resident": after["VmRSS"] - base, "peak": after["VmHWM"] - base}))
'''


def write_gpt2(path, C, L, V, P=1024):
    """A random GPT-2 (C, L layers, V tokens) as config.json + model.safetensors at path."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(L):
        for n, s in (("ln_1", (C,)), ("attn.c_attn", (C, 3 * C)), ("attn.c_proj", (C, C)),
                     ("ln_2", (C,)), ("mlp.c_fc", (C, 4 * C)), ("mlp.c_proj", (4 * C, C))):
            shapes[f"h.{i}.{n}.weight"] = s
            shapes[f"h.{i}.{n}.bias"] = (s[-1],)
    os.makedirs(path, exist_ok=True)
    save_file({k: rng.standard_normal(s, np.float32) * np.float32(0.02)
               for k, s in shapes.items()}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(model_type="gpt2", vocab_size=V, n_embd=C, n_head=C // 64, n_layer=L,
                       n_positions=P), f)


def measure(path, dtype):
    """{"resident", "peak"} bytes over the process's size after its imports, in a fresh
    process (this package first on its path)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), dtype], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_packed_models_are_small_in_memory(tmp_path):
    write_gpt2(tmp_path, C=512, L=8, V=32000)
    f32 = measure(tmp_path, "float32")
    for dtype, ratio in (("int8", 0.40), ("int4", 0.30), ("bfloat16", 0.65)):
        got = measure(tmp_path, dtype)
        assert got["resident"] <= ratio * f32["resident"], (dtype, got, f32)
        assert got["peak"] <= 1.5 * got["resident"], (dtype, got)


def test_chunked_packing_equals_whole(rng):
    """A weight packed a chunk of rows at a time (Lazy.read_rows, as loading does), through a
    transpose too, gives the packed bytes and scales of the whole weight packed at once."""
    from transformer.ops.packed import PackedWeight
    from transformer.weights import Lazy

    w = rng.standard_normal((300, 70)).astype(np.float32)
    w[5] = 0  # a row of zeros keeps scale 1
    lazy = Lazy(w.shape, np.float32, lambda: w, read_rows=lambda a, b: w[a:b],
                read_cols=lambda a, b: w[:, a:b])
    for dtype in ("float32", "int8", "int4", "bfloat16"):
        for src, ref in ((lazy, w), (lazy.T, w.T)):
            whole = PackedWeight.pack(np.ascontiguousarray(ref), dtype)
            chunked = PackedWeight._pack_rows(src, dtype, chunk_bytes=64 * 4 * 70)
            assert np.array_equal(chunked.data, whole.data)
            if dtype == "int8":
                assert np.array_equal(chunked.scale, whole.scale)
                assert np.array_equal(chunked._comp, whole._comp)


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        write_gpt2(d, C=768, L=8, V=50257)
        res = {dtype: measure(d, dtype) for dtype in ("float32", "int8", "int4", "bfloat16")}
    for dtype, r in res.items():
        print(f"{dtype:9s} resident {r['resident'] / 2**20:7.1f} MiB "
              f"({r['resident'] / res['float32']['resident']:.3f}x float32)  peak "
              f"{r['peak'] / 2**20:7.1f} MiB ({r['peak'] / r['resident']:.3f}x resident)")
