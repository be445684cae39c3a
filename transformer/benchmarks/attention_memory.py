"""Attention-memory suite: peak memory and time against sequence length, our tiled attention
(transformer.ops.attention: blocks of queries x blocks of keys, online softmax, O(block) scratch)
against a naive NumPy attention that materialises the (B, H, T, T) float32 score matrix
(bench/README.md, "attention-memory"). Each (implementation, T) runs in a fresh process
(process.run_in_process(measure_one, ...)): peak RSS delta (VmHWM reset by clear_refs) and
tracemalloc's peak of one call, then the median time of `reps` more; growth exponents are the
log-log slopes over the larger half of the sizes (1: linear, 2: quadratic).
"""
import gc
import math
import time

from .. import machine
from . import harness, limits, stats
from .engines import ENGINE
from .process import WorkerError, run_in_process
from .stats import log

TAG = "attention-memory"
B, H, D = 1, 8, 64
NAIVE = "naive"
WHAT = {"peak_rss_bytes": "peak RSS", "traced_peak_bytes": "traced peak", "time": "time"}
LEVELS = {"tiny": dict(T=[64, 128, 256], naive_max=256, reps=1),
          "quick": dict(T=[128, 256, 512, 1024, 2048, 4096], naive_max=4096, reps=2),
          "full": dict(T=[128, 256, 512, 1024, 2048, 4096, 8192, 16384], naive_max=8192,
                       reps=3)}


def naive_attention(q, k, v):
    """softmax(q k^T / sqrt(D)) v through the full (B, H, T, S) float32 score matrix, softmax in
    place. q: (B, H, T, D), k, v: (B, H, S, D) float32. Returns (B, H, T, D) float32."""
    import numpy as np
    s = q @ k.swapaxes(-1, -2)                       # (B, H, T, S) float32
    s *= np.float32(1 / math.sqrt(q.shape[-1]))
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    return s @ v


def _status_kib(field):
    """A "VmRSS"/"VmHWM" line of /proc/self/status in KiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_one(impl, T, threads, reps, seed=0):
    """In this process: the memory and time of one attention call at sequence length T (see the
    module docstring). impl: "transformer" or "naive". Returns {"impl", "T", "peak_rss_bytes",
    "rss_method", "traced_peak_bytes", "first_s", "seconds" (list), "output_bytes"}.
    Meant to run in a fresh process (process.run_in_process)."""
    import tracemalloc

    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(3))
    small = [a[:, :, :64] for a in (q, k, v)]
    limiter = threadpool_limits(limits=threads, user_api="blas")
    if impl == ENGINE:
        from .. import ops

        def run(a, b, c):
            return ops.attention(a, b, c, threads=threads)
    elif impl == NAIVE:
        run = naive_attention
    else:
        raise ValueError(f"impl must be {ENGINE!r} or {NAIVE!r}, got {impl!r}")
    run(*small)                                      # thread pools and BLAS buffers up
    gc.collect()
    rss0 = _status_kib("VmRSS")
    reset = _reset_peak()
    hwm0 = _status_kib("VmHWM")
    if rss0 is None or hwm0 is None:
        import resource
        hwm0 = rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
        reset = False
    tracemalloc.start()
    t0 = time.perf_counter()
    out = run(q, k, v)
    first = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    hwm1 = _status_kib("VmHWM")
    if hwm1 is None:
        import resource
        hwm1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out_bytes = int(out.nbytes)
    del out
    seconds = []
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        run(q, k, v)
        seconds.append(time.perf_counter() - t0)
    limiter.restore_original_limits()
    base = rss0 if reset else hwm0
    return {"impl": impl, "T": T, "peak_rss_bytes": max(0, hwm1 - base) * 1024,
            "rss_method": "VmHWM after - VmRSS before (peak reset by /proc/self/clear_refs)"
            if reset else "peak RSS after - peak RSS before (no reset available)",
            "traced_peak_bytes": int(traced), "first_s": first, "seconds": seconds,
            "output_bytes": out_bytes}


def check(T, seed=0):
    """Both implementations against the float64 reference at sequence length T.
    Returns {impl: agreement record (harness.compare_arrays, tolerance 1e-3)}."""
    import numpy as np

    from .. import ops
    from ..ops import reference
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(3))
    ref = reference.attention(q, k, v)
    return {ENGINE: harness.compare_arrays(ops.attention(q, k, v), ref, 1e-3, 1e-3),
            NAIVE: harness.compare_arrays(naive_attention(q, k, v), ref, 1e-3, 1e-3)}


def _mib(nbytes):
    return None if nbytes is None else nbytes / 2**20


def run_sizes(Ts, threads, reps, naive_max, seed=0, time_disagreeing=False):
    """Measure every (implementation, T); returns the SUITE record (report.py)."""
    import numpy as np
    Ts = sorted(Ts)
    avail = machine.memory().get("available_gib")
    notes = []
    agreement = check(Ts[0], seed)
    for impl, a in agreement.items():
        a["text"] = f"at T={Ts[0]}: " + a["text"]
        if not a["ok"]:
            log(f"WARNING: {impl} disagrees with the float64 reference at T={Ts[0]}: "
                f"{a['text']}", TAG)
    probe = limits.LimitProbe(threads, gemm=(1024, 1024, 1024), copy_mib=16, reps=3)
    limit_runs = [run_in_process(probe.measure)]
    ticks = stats.cpu_sample()
    records = {}
    for T in Ts:
        for impl in (ENGINE, NAIVE):
            if not agreement[impl]["ok"] and not time_disagreeing:
                continue
            need = B * H * T * T * 4 if impl == NAIVE else 0
            if impl == NAIVE and T > naive_max:
                continue
            if impl == NAIVE and avail and need > 0.5 * avail * 2**30:
                notes.append(f"naive at T={T} skipped: its {need / 2**30:.1f} GiB score matrix "
                             f"exceeds half the {avail:.1f} GiB available")
                continue
            log(f"T={T}: {impl} (fresh process)", TAG)
            try:
                records[(impl, T)] = run_in_process(measure_one, impl, T, threads, reps, seed)
            except (WorkerError, ValueError) as e:
                notes.append(f"{impl} at T={T} failed: {e}")
                log(f"{impl} at T={T} failed: {e}", TAG)
    usage, warning = stats.busy_check(ticks, TAG)
    limit_runs.append(run_in_process(probe.measure))
    lim = limits.limits_summary(limit_runs)
    sgemm = lim.get("sgemm_gflops")

    rows = []
    for T in Ts:
        flops = 4.0 * B * H * T * T * D
        ours = records.get((ENGINE, T))
        for impl in (ENGINE, NAIVE):
            r = records.get((impl, T))
            row = {"case": f"T={T}", "group": "attention B=1 H=8 D=64", "engine": impl,
                   "status": "not timed", "figures": [], "seconds": None, "ratio": None,
                   "fraction_of_limit": None, "limit": None,
                   "agreement": agreement[impl], "note": None}
            if not agreement[impl]["ok"]:
                row["status"] = "disagrees"
            if r is not None:
                secs = r["seconds"] or [r["first_s"]]
                row["status"] = "timed"
                row["seconds"] = stats.summarize(secs)
                med = row["seconds"]["median"]
                row["figures"] = [{"value": flops / med / 1e9, "unit": "GFLOP/s"},
                                  {"value": _mib(r["peak_rss_bytes"]), "unit": "MiB peak RSS"},
                                  {"value": _mib(r["traced_peak_bytes"]),
                                   "unit": "MiB traced peak"}]
                if ours and ours["seconds"]:
                    row["ratio"] = stats.ratio(stats.summarize(ours["seconds"])["median"],
                                                 med)
                if sgemm:
                    row["fraction_of_limit"] = flops / med / 1e9 / sgemm
                    row["limit"] = f"sgemm {sgemm:.0f} GFLOP/s"
                row["memory"] = {k: r[k] for k in ("peak_rss_bytes", "traced_peak_bytes",
                                                   "output_bytes", "rss_method", "first_s")}
            rows.append(row)

    upper = [T for T in Ts if T >= Ts[len(Ts) // 2]] if len(Ts) > 2 else Ts
    slopes = {}
    for impl in (ENGINE, NAIVE):
        for key in ("peak_rss_bytes", "traced_peak_bytes", "time"):
            pts = [(T, records[(impl, T)]) for T in upper if (impl, T) in records]
            y = [stats.summarize(r["seconds"] or [r["first_s"]])["median"] if key == "time"
                 else r[key] for _, r in pts]
            slopes[f"{impl} {WHAT[key]}"] = stats.loglog_slope([T for T, _ in pts], y)
    notes.append(f"growth exponents (T >= {upper[0]}; the (B, H, T, T) matrix: 2.00): "
                 + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}"
                             for k, v in slopes.items()))
    method = next((r["rss_method"] for r in records.values()), "-")
    summary = [
        (f"Non-causal self-attention, B={B}, H={H}, D={D}, float32, "
         f"{stats.plural(threads, 'thread')}; each (implementation, T) in a fresh process. "
         "transformer: ops.attention (tiled, online softmax); naive: NumPy with the full "
         "(B, H, T, T) float32 score matrix, softmax in place. Time: median of "
         f"{stats.plural(reps, 'call')} after the measured one."),
        (f"Memory: peak RSS delta = {method} (every byte touched during the call, including our "
         "C kernel's malloc'd blocks, which tracemalloc does not see); traced peak = tracemalloc "
         "(NumPy allocations only). Growth exponent: log-log slope over the larger half of the "
         "sizes (1: linear, 2: quadratic)."),
    ]
    if sgemm:
        summary.append(f"sgemm limit (this suite, before and after): {sgemm:.1f} GFLOP/s"
                       f"{stats.usage_text(usage)}.")
    return {"title": "Attention memory: tiled against naive (B, H, T, T)", "status": "ok",
            "warnings": [warning] if warning else [], "cpu": usage,
            "summary": summary, "rows": rows,
            "skipped": {}, "notes": notes, "limits": lim,
            "growth_exponents": slopes,
            "measurements": [records[k] for k in sorted(records, key=lambda k: (k[1], k[0]))],
            "config": {"B": B, "H": H, "D": D, "T": Ts, "threads": threads, "reps": reps,
                       "naive_max": naive_max, "numpy": np.__version__}}


def run(cfg):
    """The attention-memory suite for a BenchConfig (sizes level, threads, rounds = timed calls
    per size)."""
    level = LEVELS[cfg.sizes]
    return run_sizes(level["T"], cfg.threads, cfg.rounds or level["reps"], level["naive_max"],
                     cfg.seed, cfg.time_disagreeing)
