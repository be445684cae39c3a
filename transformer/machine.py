"""The machine this process runs on, described once: CPU model, SIMD flags and level, cores,
threads, BLAS, memory, OS and Python (`transformer info` and the benchmarks' results.json).

Reads /proc (Linux) and threadpoolctl; imports neither the compiled extension nor a peer.
"""
import os
import platform

# x86-64 micro-architecture levels by the /proc/cpuinfo flags they need, highest first
SIMD_LEVELS = (("x86-64-v4 (AVX-512)", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
               ("x86-64-v3 (AVX2 + FMA)", {"avx2", "fma", "bmi2"}))


def _cpuinfo(key):
    """The value of the first /proc/cpuinfo line starting with `key`, or None (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU's feature flags (set of str, e.g. {"avx2", "fma", ...}; empty off Linux)."""
    return set((_cpuinfo("flags") or "").split())


def simd_level(flags=None):
    """"x86-64-v4 (AVX-512)", "x86-64-v3 (AVX2 + FMA)" or "baseline (SSE2)" from the flags."""
    flags = cpu_flags() if flags is None else flags
    return next((name for name, need in SIMD_LEVELS if need <= flags), "baseline (SSE2)")


def available_cores():
    """Cores this process may run on (its affinity mask, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory():
    """{"total_gib", "available_gib"} from /proc/meminfo, or {} off Linux."""
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out["total_gib" if key == "MemTotal" else "available_gib"] = \
                        int(rest.split()[0]) / 2**20
    except (OSError, ValueError):
        pass
    return out


def blas():
    """The BLAS libraries loaded once SciPy's BLAS is (threadpoolctl), as
    "<internal api> <version> (<architecture>, <file>)" strings; [] when unknown."""
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS so threadpoolctl sees it)
        from threadpoolctl import threadpool_info
        return sorted({f"{i.get('internal_api')} {i.get('version')} "
                       f"({i.get('architecture', '?')}, {os.path.basename(i.get('filepath', ''))})"
                       for i in threadpool_info() if i.get("user_api") == "blas"})
    except Exception:  # noqa: BLE001 - descriptive only
        return []


def llc_bytes():
    """Size of the largest CPU cache in bytes (Linux sysfs, cpu0), or None when unknown."""
    import glob
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KMGkmg")
        if digits.isdigit():
            sizes.append(int(digits) * mult)
    return max(sizes) if sizes else None


def describe(threads=None):
    """The machine as a dict: "cpu" (model name), "simd" (level), "flags" (the SIMD flags
    among sse4_2, avx, avx2, fma, f16c, avx512*, amx*), "llc_bytes" (llc_bytes), "cores", "threads" (resolved:
    transformer._threads.resolve_threads(threads)), "blas" (list of str), "memory"
    ({"total_gib", "available_gib"}), "platform", "machine", "python", "omp_num_threads".
    Raises ValueError for a bad `threads` (see resolve_threads)."""
    from ._threads import resolve_threads
    flags = cpu_flags()
    simd = sorted(f for f in flags if f in ("sse4_2", "avx", "avx2", "fma", "f16c")
                  or f.startswith(("avx512", "amx")))
    return {"cpu": _cpuinfo("model name") or platform.processor() or "unknown CPU",
            "simd": simd_level(flags), "flags": simd, "llc_bytes": llc_bytes(),
            "cores": available_cores(),
            "threads": resolve_threads(threads), "blas": blas(), "memory": memory(),
            "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
