"""Thread-count policy shared by every kernel.

Threads: the `threads=` argument, else OMP_NUM_THREADS, else the cores this process may use.
BLAS (sgemm) is kept single-threaded while our kernels run, because each OpenMP thread of ours
calls it on its own block: one thread pool, never BLAS threads nested inside OpenMP threads.
"""
import os
import threading

import numpy as np

from threadpoolctl import ThreadpoolController

_controller = None
_lock = threading.Lock()
_depth = 0
_saved = None


# The most threads a kernel may be asked for: OpenMP runtimes fail to create tens of thousands
# of threads (libgomp "Thread creation failed", or a crash), so larger counts are refused.
MAX_THREADS = max(1024, 4 * (os.cpu_count() or 1))


def resolve_threads(threads=None):
    """Number of threads to use: `threads` if given (int in [1, MAX_THREADS]), else
    OMP_NUM_THREADS, else the number of cores available to this process. Raises ValueError for a
    count that is not a positive integer or exceeds MAX_THREADS (max(1024, 4 x the cores))."""
    if type(threads) is int and 0 < threads <= MAX_THREADS:  # the common case, first
        return threads
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        if env.isdigit() and int(env) > 0:
            if int(env) > MAX_THREADS:
                raise ValueError(f"OMP_NUM_THREADS={env} exceeds the limit of {MAX_THREADS} "
                                 "threads")
            return int(env)
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    if threads > MAX_THREADS:
        raise ValueError(f"threads must be at most {MAX_THREADS} (4 x the {os.cpu_count()} "
                         f"cores, at least 1024), got {threads}")
    return int(threads)


def _blas_libraries():
    """threadpoolctl's controllers of the loaded BLAS libraries (found once: SciPy's OpenBLAS,
    which csrc/cpu calls, is loaded with transformer._cpu)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController().select(user_api="blas").lib_controllers
    return _controller


class blas_single_threaded:
    """Context manager: BLAS libraries run one thread inside it (re-entrant, shared by Python
    threads through a counter; the previous setting comes back when the last user leaves).
    Entering costs two calls into each BLAS library (get / set its thread count), not a
    threadpoolctl scan, so a decode step of a small model can afford it."""

    def __enter__(self):
        global _depth, _saved
        with _lock:
            if _depth == 0:
                _saved = [(lib, lib.get_num_threads()) for lib in _blas_libraries()]
                for lib, n in _saved:
                    if n != 1:
                        lib.set_num_threads(1)
            _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth, _saved
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, n in _saved:
                    if n != 1:
                        lib.set_num_threads(n)
                _saved = None
        return False
