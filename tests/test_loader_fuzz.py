"""Fuzz of every weight loader (safetensors, llama2.c, CTranslate2 model.bin): truncation at many
offsets, flipped header bytes, wrong dtypes and shapes. Each load either succeeds or raises a
ValueError (WeightsError is one) naming the file, and traced allocations stay below 4 x the file
size + 16 MiB (nothing sized from a corrupt header before it is checked against the file)."""
import shutil
import sys
import tracemalloc

import numpy as np
import pytest

import transformer

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent / "models"))
from test_bad_input import tiny_dir  # noqa: E402,F401


def _offsets(size, n, rng):
    """n offsets into [0, size): the first and last 64 bytes densely, the rest at random."""
    head = list(range(0, min(size, 64), 3))
    tail = list(range(max(0, size - 64), size, 7))
    return sorted(set(head + tail + rng.integers(0, size, n).tolist()))


def _check_load(target, name, size):
    tracemalloc.start()
    try:
        transformer.load(target, threads=1)
    except ValueError as e:
        assert name in str(e), f"{type(e).__name__} without the file name: {e}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 * size + (16 << 20), f"peak {peak} bytes for a {size}-byte file"


def _check_fuzzed(path, target, name, rng, n=24):
    data = path.read_bytes()
    for cut in _offsets(len(data), n, rng):  # truncated
        path.write_bytes(data[:cut])
        _check_load(target, name, len(data))
    for pos in _offsets(min(len(data), 4096), n, rng):  # flipped header bytes
        for value in (0x00, 0xFF, data[pos] ^ 0x80):
            path.write_bytes(data[:pos] + bytes([value]) + data[pos + 1:])
            _check_load(target, name, len(data))
    path.write_bytes(data)


def test_fuzz_safetensors(tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    rng = np.random.default_rng(0)
    _check_fuzzed(d / "model.safetensors", d, "model.safetensors", rng)
    t = load_file(str(d / "model.safetensors"))
    name = "encoder.layer.0.attention.output.dense.weight"
    for bad in (t[name].astype(np.int64), t[name].astype(np.uint8), t[name][:, :3],
                t[name][None], t[name].astype(bool)):
        save_file(dict(t, **{name: np.ascontiguousarray(bad)}), str(d / "model.safetensors"))
        with pytest.raises(ValueError, match="model.safetensors"):
            transformer.load(d, threads=1)


def test_fuzz_llama2c(shared_models, tmp_path):
    src = shared_models / "stories260K" / "stories260K.bin"
    if not src.is_file():
        pytest.skip("stories260K not found")
    path = tmp_path / "m.bin"
    shutil.copy(src, path)
    shutil.copy(src.parent / "tok512.bin", tmp_path / "tok512.bin")
    _check_fuzzed(path, path, "m.bin", np.random.default_rng(1))
    tok = tmp_path / "tok512.bin"
    data = tok.read_bytes()
    for cut in _offsets(len(data), 16, np.random.default_rng(2)):
        tok.write_bytes(data[:cut])
        _check_load(path, "tok512.bin", len(data))


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_fuzz_ctranslate2(shared_models, tmp_path, kind):
    src = shared_models / "aren-transliteration" / kind
    if not (src / "model.bin").is_file():
        pytest.skip("aren-transliteration not found")
    d = tmp_path / "ct2"
    shutil.copytree(src, d)
    _check_fuzzed(d / "model.bin", d, "model.bin", np.random.default_rng(3), n=12)
