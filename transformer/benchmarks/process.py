"""Each engine in a fresh process of its own: a Worker is a new Python interpreter that builds one
object (an engine of the registry, a limit probe) and answers calls on it, so that no runtime's
thread pools, allocator or imports disturb another's timings.

Protocol: pickled requests on the worker's stdin, pickled replies on a duplicate of its stdout
(fd 1 itself is pointed at stderr, so a runtime that prints cannot corrupt the channel):
  ("new", fn, args)      obj = fn(*args) (e.g. engines.make(name, setup))
  ("call", method, args) getattr(obj, method)(*args)
  ("run", fn, args)      fn(*args) (a preparation step: a model made, a conversion cached)
  ("modules",)           sorted(sys.modules): what this process imported
A reply is ("ok", value) or ("error", kind, message, traceback); the error is raised again in
the parent as the same class for ImportError, ValueError, engines.Unsupported and
harness.NotApplicable, else as WorkerError naming the kind.
"""
import os
import pickle
import subprocess
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WorkerError(RuntimeError):
    """An exception raised in a worker (kind: its class name), or the worker's death."""

    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def _raise_again(kind, message):
    from .engines import Unsupported
    from .harness import NotApplicable
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
            pickle.dump(req, self.proc.stdin)
            self.proc.stdin.flush()
            reply = pickle.load(self.proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError) as e:
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
    """fn(*args) in a fresh worker (fn and args picklable: a module-level function or a bound
    method of a picklable object); returns its value."""
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
            op, *rest = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            if op == "new":
                obj, value = rest[0](*rest[1]), None
            elif op == "call":
                value = getattr(obj, rest[0])(*rest[1])
            elif op == "run":
                value = rest[0](*rest[1])
            else:
                value = sorted(sys.modules)
            reply = ("ok", value)
        except BaseException as e:  # noqa: BLE001 - every error goes back to the parent
            reply = ("error", type(e).__name__, str(e), traceback.format_exc())
        pickle.dump(reply, channel)
        channel.flush()
