"""A stand-in GPU for machines without one: the model code's device paths run on NumPy.

`install(monkeypatch)` makes transformer.ops.cuda believe a GPU is there: cuda.cupy() returns
FAKE_CUPY, a module whose arrays (FakeDeviceArray, a NumPy subclass whose type says it comes
from "cupy") the op fronts dispatch to transformer.ops.cuda, and every cuda backend function is
replaced by the CPU backend's math on float32 copies (float16 and bfloat16 operands decoded from,
and results encoded back to, their storage: bfloat16 as uint16 bits, rounded to nearest even as
csrc/cuda does). What this checks: the model code's device branches (arrays allocated beside the
weights, host index arrays, dtype plumbing, outputs as device arrays, bfloat16 never added as
integers), as CuPy would see them: mixing device and host arrays in arithmetic raises TypeError,
as in CuPy. What it cannot check: the CUDA kernels themselves (tests/ops/test_cuda.py on a GPU),
CuPy's own API coverage, and implicit np.asarray of a device array (CuPy raises; a NumPy
subclass converts silently).
"""
import types

import numpy as np

from transformer.ops import cpu as cpu_backend
from transformer.ops import cuda


class FakeDeviceArray(np.ndarray):
    """A NumPy array that the op fronts take for a CuPy array (its type's module is "cupy...")."""

    __module__ = "cupy.fake"

    def get(self):
        """A host copy, as cupy.ndarray.get()."""
        return np.array(self.view(np.ndarray))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for a in inputs + tuple(kwargs.get("out", ())):
            if isinstance(a, np.ndarray) and not isinstance(a, FakeDeviceArray):
                raise TypeError(f"{ufunc.__name__}: a device array mixed with a NumPy array "
                                "(CuPy raises here)")
        plain = tuple(a.view(np.ndarray) if isinstance(a, FakeDeviceArray) else a
                      for a in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(a.view(np.ndarray) for a in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        return _dev(result)


def _dev(r):
    """Results of the fake module as device arrays."""
    if isinstance(r, tuple):
        return tuple(_dev(x) for x in r)
    if isinstance(r, np.ndarray) and not isinstance(r, FakeDeviceArray):
        return r.view(FakeDeviceArray)
    return r


def _host(a):
    return a.view(np.ndarray) if isinstance(a, FakeDeviceArray) else a


class _FakeCupy(types.ModuleType):
    """numpy's functions, returning FakeDeviceArray; asnumpy gives plain NumPy."""

    ndarray = FakeDeviceArray
    __version__ = "fake"

    def __getattr__(self, name):
        fn = getattr(np, name)
        if not callable(fn) or isinstance(fn, type):
            return fn

        def wrapped(*args, **kwargs):
            args = tuple(_host(a) for a in args)
            kwargs = {k: _host(v) for k, v in kwargs.items()}
            return _dev(fn(*args, **kwargs))
        return wrapped

    @staticmethod
    def asnumpy(a):
        return np.array(_host(a))


FAKE_CUPY = _FakeCupy("cupy")


# -- float encodings ------------------------------------------------------------------------------
def decode(a):
    """float32 NumPy copy of a device float array (bfloat16 bits decoded)."""
    a = _host(a)
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def encode(x, dtype):
    """float32 values as `dtype` storage (bfloat16: uint16 bits, round to nearest even)."""
    x = np.ascontiguousarray(x, np.float32)
    if dtype == np.uint16:
        bits = x.view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return x.astype(dtype)


def _on_cpu(fn, threads_last=True):
    """A cuda backend function computed by the CPU backend's `fn` on float32 copies; one
    thread (tiny models) when the last argument is `threads`."""
    def run(*args):
        plain, back = [], []
        for a in args:
            if isinstance(a, FakeDeviceArray) and a.dtype in cuda.SUFFIX:
                if a.dtype == np.float32:
                    plain.append(a.view(np.ndarray))  # written in place
                else:
                    f = np.array(decode(a))
                    plain.append(f)
                    back.append((a, f, f.copy()))
            else:
                plain.append(_host(a))
        fn(*plain[:-1], 1) if threads_last else fn(*plain)
        for a, f, before in back:  # results (and in-place updates) back to their storage
            if not np.array_equal(f, before, equal_nan=True):
                a.view(np.ndarray)[...] = encode(f, a.dtype)
        return args
    return run


def _add(a, b, out, threads):
    out.view(np.ndarray)[...] = encode(decode(a) + decode(b), out.dtype)
    return out


def _decode_attention(q, k, v, kv_index, lengths, key_bias, out, scale, chunk, threads):
    run = _on_cpu(lambda q, k, v, key_bias, out: cpu_backend.decode_attention(
        q, k, v, None if kv_index is None else np.ascontiguousarray(_host(kv_index), np.int32),
        np.ascontiguousarray(_host(lengths), np.int32),
        None if key_bias is None else np.ascontiguousarray(key_bias, np.float32), out, scale,
        64 if chunk is None else int(chunk), 1, None), threads_last=False)
    run(q, k, v, key_bias, out)
    return out


def _to_float32(x):
    return _dev(np.array(decode(x)))


def _from_float32(x, dtype):
    return _dev(encode(decode(x), np.dtype(np.uint16 if dtype == "bfloat16" else dtype)))


def install(monkeypatch):
    """Route transformer.ops.cuda to the stand-in for the rest of the test."""
    monkeypatch.setattr(cuda, "cupy", lambda: FAKE_CUPY)
    monkeypatch.setattr(cuda, "available", lambda: True)
    for name in ("linear", "bias_act", "layer_norm", "rms_norm", "softmax", "swiglu",
                 "embedding", "rotary", "attention"):
        monkeypatch.setattr(cuda, name, _on_cpu(getattr(cpu_backend, name)))
    monkeypatch.setattr(cuda, "add", _add)
    monkeypatch.setattr(cuda, "decode_attention", _decode_attention)
    monkeypatch.setattr(cuda, "to_float32", _to_float32)
    monkeypatch.setattr(cuda, "from_float32", _from_float32)
