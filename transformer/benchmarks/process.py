"""Each engine in a fresh process of its own: a Worker is a new Python interpreter that builds one
object (an engine of the registry, a limit probe) and answers calls on it, so that no runtime's
thread pools, allocator or imports disturb another's timings.

Protocol: requests on the worker's stdin, replies on a duplicate of its stdout (fd 1 itself is
pointed at stderr, so a runtime that prints cannot corrupt the channel):
  ("new", fn, args)      obj = fn(*args) (e.g. engines.make(name, setup))
  ("call", method, args) getattr(obj, method)(*args)
  ("run", fn, args)      fn(*args) (a preparation step: a model made, a conversion cached)
  ("modules",)           sorted(sys.modules): what this process imported
A reply is ("ok", value) or ("error", kind, message, traceback); the error is raised again in
the parent as the same class for ImportError, ValueError, engines.Unsupported and
harness.NotApplicable, else as WorkerError naming the kind.

Messages are JSON with the NumPy arrays sent as raw buffers after it (write_message): plain
values, lists, tuples, dicts, arrays of non-object dtypes, and functions, classes and objects
(their __dict__) of this package's modules only, named "module:qualname" and looked up, never
executed from the message (decode refuses any other name).
"""
import importlib
import json
import os
import struct
import subprocess
import sys
import traceback
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _name(obj):
    return f"{obj.__module__}:{obj.__qualname__}"


def _lookup(name):
    """The function or class "module:qualname" of this package; ValueError for any other."""
    module, _, qual = name.partition(":")
    if not module.startswith("transformer."):
        raise ValueError(f"refused to look up {name!r}: not a name of this package")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def encode(value, arrays):
    """value as JSON-able data, its arrays appended to `arrays` (see the module docstring).
    Raises TypeError for a value it cannot send."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("object arrays are not sent")
        arrays.append(np.ascontiguousarray(value))
        return {"nd": len(arrays) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, list):
        return [encode(v, arrays) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v, arrays) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, arrays), encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, types.MethodType):
        return {"method": [encode(value.__self__, arrays), value.__func__.__name__]}
    if isinstance(value, (type, types.FunctionType)):
        return {"fn": _name(value)}
    if hasattr(value, "__dict__"):
        state = value.__getstate__() if hasattr(value, "__getstate__") else value.__dict__
        return {"obj": _name(type(value)), "state": encode(dict(state or {}), arrays)}
    raise TypeError(f"cannot send a {type(value).__name__}")


def decode(data, arrays):
    """The value encode() described (arrays: the buffers that came with it, in order)."""
    if isinstance(data, list):
        return [decode(v, arrays) for v in data]
    if not isinstance(data, dict):
        return data
    if "nd" in data:      # an array's buffer (bytes or the array itself) as described
        return np.frombuffer(arrays[data["nd"]], np.dtype(data["dtype"])).reshape(data["shape"])
    if "tuple" in data:
        return tuple(decode(v, arrays) for v in data["tuple"])
    if "dict" in data:
        return {decode(k, arrays): decode(v, arrays) for k, v in data["dict"]}
    if "method" in data:
        return getattr(decode(data["method"][0], arrays), data["method"][1])
    if "fn" in data:
        return _lookup(data["fn"])
    cls = _lookup(data["obj"])
    obj = cls.__new__(cls)
    obj.__dict__.update(decode(data["state"], arrays))
    return obj


def write_message(f, value):
    """Send value on the binary stream f: sizes, the JSON, then each array's bytes."""
    arrays = []
    head = json.dumps(encode(value, arrays)).encode()
    f.write(struct.pack("<QQ", len(head), len(arrays)) + head)
    for a in arrays:
        f.write(struct.pack("<Q", a.nbytes))
        f.write(a.tobytes())
    f.flush()


def _read(f, n):
    data = f.read(n)        # a buffered pipe: all n bytes, or fewer at the end of the stream
    if len(data) < n:
        raise EOFError("the stream ended")
    return data


def read_message(f):
    """The value write_message sent on f; EOFError at the end of the stream."""
    n_head, n_arrays = struct.unpack("<QQ", _read(f, 16))
    data = json.loads(bytes(_read(f, n_head)))
    return decode(data, [_read(f, struct.unpack("<Q", _read(f, 8))[0]) for _ in range(n_arrays)])


class WorkerError(RuntimeError):
    """An exception raised in a worker (kind: its class name), or the worker's death."""

    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def _raise_again(kind, message):
    from .harness import NotApplicable, Unsupported
    known = {"ImportError": ImportError, "ModuleNotFoundError": ImportError,
             "ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
             "Unsupported": Unsupported, "NotApplicable": NotApplicable}
    raise known[kind](message) if kind in known else WorkerError(kind, message)


class Worker:
    """A fresh Python running serve() (this interpreter, this package first
    on its path, the parent's environment: OMP_NUM_THREADS included). Use as a context manager;
    request(...) sends one request and returns the value (see the module docstring)."""

    def __init__(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from transformer.benchmarks.process import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def request(self, *req):
        """Send one request; return its value or raise the worker's error again."""
        try:
            write_message(self.proc.stdin, req)
            reply = read_message(self.proc.stdout)
        except (EOFError, BrokenPipeError) as e:
            code = self.proc.wait(timeout=60)
            raise WorkerError("WorkerDied", f"the worker process exited with status {code} "
                              f"({type(e).__name__})") from None
        if reply[0] == "ok":
            return reply[1]
        _raise_again(reply[1], reply[2])

    def close(self):
        """End the worker (its stdin closed; killed after 60 s)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_in_process(fn, *args):
    """fn(*args) in a fresh worker (fn: a function of this package, or a bound method of an
    object of this package's classes; see encode); returns its value."""
    with Worker() as w:
        return w.request("run", fn, args)


def serve():
    """The worker's loop (see the module docstring); returns at the end of stdin."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    obj = None
    while True:
        try:
            op, *rest = read_message(sys.stdin.buffer)
            if op == "new":
                obj, value = rest[0](*rest[1]), None
            elif op == "call":
                value = getattr(obj, rest[0])(*rest[1])
            elif op == "run":
                value = rest[0](*rest[1])
            else:
                value = sorted(sys.modules)
            reply = ("ok", value)
        except EOFError:
            return
        except BaseException as e:  # noqa: BLE001 - every error goes back to the parent
            reply = ("error", type(e).__name__, str(e), traceback.format_exc())
        try:
            write_message(channel, reply)
        except TypeError as e:
            write_message(channel, ("error", "TypeError", str(e), ""))
