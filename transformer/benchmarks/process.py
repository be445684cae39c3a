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

A message is a pickle (the standard library's, as multiprocessing sends) behind its length.
Both sides read it with Unpickler.find_class limited to this package's functions and classes,
NumPy's array, dtype and scalar reconstruction and a few builtin types, so a message can name no
other callable: a function from elsewhere is refused with ValueError ("not a name of this
package"). A bound method travels as (object, public method name).
"""
import io
import os
import pickle
import struct
import subprocess
import sys
import traceback
import types

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUMPY_NAMES = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
BUILTIN_NAMES = {"set", "frozenset", "slice", "complex", "bytearray", "range"}


def _method(obj, name):
    """The bound method obj.name, as a message names it: public names only."""
    if name.startswith("_"):
        raise ValueError(f"refused to send the private method {name!r}")
    return getattr(obj, name)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, types.MethodType):
            return _method, (obj.__self__, obj.__func__.__name__)
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        ours = (module == "transformer" or module.startswith("transformer.")) and \
            not any(p.startswith("__") for p in name.split("."))
        if ours or (module.split(".")[0] == "numpy" and name in NUMPY_NAMES) or \
                (module == "builtins" and name in BUILTIN_NAMES):
            return super().find_class(module, name)
        raise ValueError(f"refused to look up {module}:{name}: not a name of this package")


def write_message(f, value):
    """Send value on the binary stream f: its pickle's length, then the pickle."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(value)
    f.write(struct.pack("<Q", buf.tell()) + buf.getbuffer())
    f.flush()


def _read(f, n):
    data = f.read(n)
    if len(data) < n:
        raise EOFError("the stream ended")
    return data


def read_message(f):
    """The value write_message sent on f (read whole before it is unpickled, so a refused
    message leaves the stream in step); EOFError at the end of the stream, ValueError for a
    message naming a callable from elsewhere."""
    data = _read(f, struct.unpack("<Q", _read(f, 8))[0])
    return _Unpickler(io.BytesIO(data)).load()


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
        except Exception as e:  # noqa: BLE001 - a value that cannot be sent
            write_message(channel, ("error", type(e).__name__, str(e), ""))
