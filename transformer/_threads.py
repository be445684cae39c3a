"""Thread-count policy shared by every kernel.

Threads: the `threads=` argument, else OMP_NUM_THREADS, else the cores this process may use.
BLAS (sgemm) is kept single-threaded while our kernels run, because each OpenMP thread of ours
calls it on its own block: one thread pool, never BLAS threads nested inside OpenMP threads.
"""
import os
import threading

from threadpoolctl import ThreadpoolController

_controller = None
_lock = threading.Lock()
_depth = 0
_saved = None


def resolve_threads(threads=None):
    """Number of threads to use: `threads` if given (int >= 1), else OMP_NUM_THREADS, else the
    number of cores available to this process. Raises ValueError for a non-positive count."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        if env.isdigit() and int(env) > 0:
            return int(env)
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


class blas_single_threaded:
    """Context manager: BLAS libraries run one thread inside it (re-entrant, shared by Python
    threads through a counter; the previous setting comes back when the last user leaves)."""

    def __enter__(self):
        global _controller, _depth, _saved
        with _lock:
            if _depth == 0:
                if _controller is None:
                    _controller = ThreadpoolController().select(user_api="blas")
                _saved = _controller.limit(limits=1)
            _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth, _saved
        with _lock:
            _depth -= 1
            if _depth == 0:
                _saved.restore_original_limits()
                _saved = None
        return False
