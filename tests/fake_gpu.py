"""A stand-in GPU for machines without one: the model code's device paths run on NumPy.

`install(monkeypatch)` makes transformer.ops.cuda believe a GPU is there: cuda.cupy() returns
FAKE_CUPY, a module whose arrays (FakeDeviceArray, a NumPy subclass whose type says it comes
from "cupy") the op fronts dispatch to transformer.ops.cuda.CUDABackend, and every kernel
function of transformer.ops.cuda (which that backend object calls) is replaced by the CPU
kernels (transformer._cpu, CPU_MATH) on float32 copies (float16 and bfloat16 operands decoded from,
and results encoded back to, their storage: bfloat16 as uint16 bits, rounded to nearest even as
csrc/cuda does). What this checks: the model code's device branches (arrays allocated beside the
weights, host index arrays, dtype plumbing, outputs as device arrays, bfloat16 never added as
integers), as CuPy would see them: mixing device and host arrays in arithmetic raises TypeError,
as in CuPy. Keyword arguments of the backend functions pass through (swiglu's activation); the
attention functions' position-bias keywords (an ops.PositionBias's kernel_args()) go through the
real transformer.ops.cuda.position_bias_args first (its checks, its cache of the tables on the
"device"), and the CPU kernels get back what its kernel arguments say.
What it cannot check: the CUDA kernels themselves (tests/ops/test_cuda.py on a GPU), CuPy's own
API coverage, and implicit np.asarray of a device array (CuPy raises; a NumPy subclass converts
silently).
"""
import collections
import types

import numpy as np

from transformer import _cpu
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
    """numpy's functions, returning FakeDeviceArray; asnumpy gives plain NumPy; cuda.Device().id
    is 0 (one device)."""

    ndarray = FakeDeviceArray
    __version__ = "fake"
    cuda = types.SimpleNamespace(Device=lambda *args: types.SimpleNamespace(id=0))

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


# The CPU kernels (transformer._cpu) behind the argument lists of transformer.ops.cuda's kernel
# functions, which CUDABackend calls (threads last, as there).
CPU_MATH = {
    "linear": lambda x, w, b, act, out, threads: _cpu.linear(x, w, b, out, act, threads),
    "bias_act": _cpu.bias_act,
    "layer_norm": _cpu.layer_norm,
    "rms_norm": _cpu.rms_norm,
    "softmax": _cpu.softmax,
    "swiglu": lambda gate_up, out, threads, activation="silu": _cpu.swiglu(gate_up, out, threads,
                                                                           activation),
    "embedding": _cpu.embedding,
    "rotary": _cpu.rotary,
}


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
    thread (tiny models) when the last positional argument is `threads`; keyword arguments
    passed on (device arrays among them as host arrays)."""
    def run(*args, **kwargs):
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
        kwargs = {k: _host(v) for k, v in kwargs.items()}
        fn(*plain[:-1], 1, **kwargs) if threads_last else fn(*plain, **kwargs)
        for a, f, before in back:  # results (and in-place updates) back to their storage
            if not np.array_equal(f, before, equal_nan=True):
                a.view(np.ndarray)[...] = encode(f, a.dtype)
        return args
    return run


def _cpu_position_bias(H, position_bias):
    """The CPU kernels' position-bias keywords as the CUDA kernels would see them: the keywords
    through cuda.position_bias_args (checks, tables uploaded to the stand-in device and cached),
    then back from its kernel arguments (slopes, table, n_buckets, bucket_of, n_tab, half,
    bidirectional)."""
    slopes, table, nb, bucket_of, n_tab, half, bidirectional = \
        cuda.position_bias_args(H, **position_bias)
    out = {}
    if slopes is not cuda._NULL:
        assert isinstance(slopes, FakeDeviceArray) and slopes.dtype == np.float32
        out["alibi"] = np.ascontiguousarray(_host(slopes))
    if table is not cuda._NULL:
        assert isinstance(table, FakeDeviceArray) and table.shape == (H, int(nb))
        assert isinstance(bucket_of, FakeDeviceArray) and bucket_of.dtype == np.int32
        assert bucket_of.shape == (int(n_tab),)
        out.update(rel_table=np.ascontiguousarray(_host(table)),
                   bucket_of=np.ascontiguousarray(_host(bucket_of)), half=int(half),
                   bidirectional=bool(bidirectional))
    return out


def _attention(q, k, v, out, plane, q_start, q_len, k_start, k_len, key_bias, causal, scale,
               threads, **position_bias):
    bias = _cpu_position_bias(q.shape[2], position_bias)
    _on_cpu(_cpu.attention)(q, k, v, out, plane, q_start, q_len, k_start, k_len, key_bias,
                                   causal, scale, threads, **bias)
    return out


def _add(a, b, out, threads):
    out.view(np.ndarray)[...] = encode(decode(a) + decode(b), out.dtype)
    return out


def _decode_attention(q, k, v, kv_index, lengths, key_bias, out, scale, chunk, threads,
                      **position_bias):
    bias = _cpu_position_bias(q.shape[1], position_bias)
    run = _on_cpu(lambda q, k, v, key_bias, out: _cpu.decode_attention(
        q, k, v, None if kv_index is None else np.ascontiguousarray(_host(kv_index), np.int32),
        None, np.ascontiguousarray(_host(lengths), np.int32),
        None if key_bias is None else np.ascontiguousarray(key_bias, np.float32), out, scale,
        64 if chunk is None else int(chunk), 1, **bias), threads_last=False)
    run(q, k, v, key_bias, out)
    return out


def _to_float32(x):
    return _dev(np.array(decode(x)))


def _from_float32(x, dtype):
    return _dev(encode(decode(x), np.dtype(np.uint16 if dtype == "bfloat16" else dtype)))


def install(monkeypatch):
    """Route transformer.ops.cuda to the stand-in for the rest of the test."""
    monkeypatch.setattr(cuda, "cupy", lambda: FAKE_CUPY)
    monkeypatch.setattr(cuda, "_TABLES", collections.OrderedDict())  # stand-in arrays stay here
    monkeypatch.setattr(cuda, "available", lambda: True)
    for name in ("linear", "bias_act", "layer_norm", "rms_norm", "softmax", "swiglu",
                 "embedding", "rotary"):
        monkeypatch.setattr(cuda, name, _on_cpu(CPU_MATH[name]))
    monkeypatch.setattr(cuda, "attention", _attention)
    monkeypatch.setattr(cuda, "add", _add)
    monkeypatch.setattr(cuda, "decode_attention", _decode_attention)
    monkeypatch.setattr(cuda, "to_float32", _to_float32)
    monkeypatch.setattr(cuda, "from_float32", _from_float32)
