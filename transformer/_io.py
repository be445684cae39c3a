"""Files and the terminal, once for the whole package: reading a JSON file with errors that name
it (read_json), writing an output file that is never left half written (atomic_output), and
progress lines on stderr (Progress); atomic_path for a writer that takes a path (a
converter writing a folder, a library writing a file). Only the standard library is imported
here."""
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

__all__ = ["read_json", "atomic_output", "atomic_path", "check_output", "Progress"]


def read_json(path, what="JSON object", kind=dict):
    """The JSON value of type `kind` (an object: dict; a list: list) in the file at `path`.
    what: how the error names the expected value. Raises FileNotFoundError for a missing
    file, ValueError naming the file for bad UTF-8, bad JSON, JSON nested too deeply, or JSON
    of another type."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e})")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})")
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply")
    if not isinstance(value, kind):
        raise ValueError(f"{path}: expected a {what}, got a JSON {type(value).__name__}")
    return value


def check_output(path, name="output", inputs=()):
    """Check before any work that `path` can receive an output: not a directory, its directory
    exists, and it is none of `inputs` (paths read by the same job; '-' and None skipped): the
    output replaces its file only at the end, so a clash found then loses the whole job (or,
    for an input, the input itself). Raises ValueError naming `name` and the path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{name} {path} is a directory (give a file path)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{name} {path}: the directory {parent} does not exist")
    for given in inputs:
        if given is None or given == "-":
            continue
        given = os.fspath(given)
        same = os.path.abspath(given) == os.path.abspath(path)
        if not same and os.path.exists(path) and os.path.exists(given):
            same = os.path.samefile(given, path)
        if same:
            raise ValueError(f"{name} {path} is the input file too: the output would replace "
                             "the input (choose another output)")


class atomic_output:
    """Context manager: a file written under a temporary name in the directory of `path`
    (.NAME.XXXXXXXX.tmp), flushed to disk (fsync) and renamed onto `path` (os.replace) only
    when the `with` block completes; on any exception or interrupt the temporary file is
    removed and `path` is left as it was, never half written.

        with atomic_output("emb.npy", "wb") as f:
            np.save(f, emb)

    mode: "w" (text, UTF-8) or "wb" (binary). Raises what opening, writing or renaming raises
    (OSError: a missing directory, no permission, a full disk)."""

    def __init__(self, path, mode="w"):
        if mode not in ("w", "wb"):
            raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
        self.path, self.mode = os.fspath(path), mode

    def __enter__(self):
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, self.tmp = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".",
                                        suffix=".tmp", dir=folder)
        self.file = os.fdopen(fd, self.mode, **({} if "b" in self.mode
                                               else {"encoding": "utf-8"}))
        return self.file

    def __exit__(self, kind, value, tb):
        try:
            if kind is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if kind is None:
                os.replace(self.tmp, self.path)
        finally:
            if not self.file.closed:
                self.file.close()
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


def _remove(path):
    """Remove the file or folder at path, if any."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


@contextlib.contextmanager
def atomic_path(path):
    """Context manager for a writer that takes a path: yields a temporary name beside `path`
    (PATH.tmp; what a cut-short run left there is removed first) for it to write a file or a
    folder at; when the `with` block completes that is renamed onto `path` (a folder at `path`
    is replaced whole); on any exception it is removed and `path` is left as it was.

        with atomic_path("model.onnx") as tmp:
            torch.onnx.export(model, args, tmp)

    Raises what writing or renaming raises (OSError)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    _remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp):
            _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


class Progress:
    """Progress of long work on stderr: `label: done/total unit, R unit/s, ETA h:mm:ss`,
    updated in place ('\\r') on a terminal at most 5 times a second; elsewhere (a log, a pipe)
    a line at most every 10 s. The last report (done == total, or final=True) always prints,
    once, and ends the line.

    Call it as progress(done) or progress(done, total) (the callback of
    EncoderModel.embed_texts), and progress(done, final=True) at the end when the total is
    not known (total None: `done/?`, no ETA). stream: default sys.stderr."""

    def __init__(self, label, total=None, unit="lines", stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.done, self.finished = 0, False

    def __call__(self, done, total=None, final=False):
        if total is not None:
            self.total = total
        self.done = done
        final = final or self.total is not None and done >= self.total
        if self.finished:
            return
        now = time.monotonic()
        if not (final or self.tty and now - self.last >= 0.2 or now - self.last >= 10):
            return
        self.last, self.finished = now, final
        rate = done / max(now - self.start, 1e-9)
        msg = (f"{self.label}: {done}/{self.total if self.total is not None else '?'} "
               f"{self.unit}, {rate:.1f} {self.unit}/s")
        if self.total is not None and rate > 0 and not final:
            s = int((self.total - done) / rate)
            msg += f", ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + msg, end=end, file=self.stream, flush=True)
