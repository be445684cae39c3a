"""Statistics and timing of the benchmark suite: progress lines, the summary of timing samples
(median, min, max, quartiles), calibrated samples, and who else
used the CPUs while timing (other processes, hypervisor steal).

Only NumPy is imported here. Conventions: times are seconds (float); rates are per second.
"""
import gc
import math
import os
import statistics
import sys
import time

import numpy as np

def plural(n, word):
    """"1 thread", "2 threads"."""
    return f"{n} {word}" + ("" if n == 1 else "s")


_T0 = time.perf_counter()


def log(msg, tag="bench"):
    """One progress line on stderr, prefixed with [tag, seconds since the harness was loaded]."""
    print(f"[{tag} {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def summarize(samples):
    """Statistics of timing samples (seconds, one per round).

    Returns a dict: median, min, max, mean, q1 and q3 (quartiles, linear interpolation between
    order statistics as numpy.percentile; equal to the median for one sample), iqr (q3 - q1),
    spread (max - min, relative to the median; 0 for one sample), n and all (the samples, in
    round order). Raises ValueError for no samples or a negative or non-finite one."""
    x = [float(s) for s in samples]
    if not x:
        raise ValueError("summarize needs at least one sample")
    if any(not math.isfinite(s) or s < 0 for s in x):
        raise ValueError(f"timing samples must be finite and >= 0, got {x}")
    q1, med, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    return {"median": med, "min": min(x), "max": max(x), "mean": statistics.fmean(x),
            "q1": q1, "q3": q3, "iqr": q3 - q1,
            "spread": (max(x) - min(x)) / med if med > 0 else 0.0, "n": len(x), "all": x}


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def cpu_sample():
    """A reading for cpu_usage(): /proc/stat's all-CPU jiffies (steal, busy, total) and this
    process's own CPU seconds (with its finished children), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    v += [0] * (8 - len(v))
    t = os.times()
    # user nice system idle iowait irq softirq steal
    return (v[7], v[0] + v[1] + v[2] + v[5] + v[6], sum(v[:8]),
            t.user + t.system + t.children_user + t.children_system)


def cpu_usage(before, after):
    """Who else used the CPUs between two cpu_sample() readings: {"cpu_steal": the fraction of
    all CPU time the hypervisor gave to other VMs, "cpu_others": the fraction used by other
    processes of this machine (busy time minus this process's own)}; {} when unknown. Either
    one above a few percent means the timings were disturbed: threads that wait for each other
    stall when a core is taken."""
    if before is None or after is None or after[2] <= before[2]:
        return {}
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = (after[2] - before[2]) / hz
    others = (after[1] - before[1]) / hz - (after[3] - before[3])
    return {"cpu_steal": (after[0] - before[0]) / hz / total,
            "cpu_others": min(1.0, max(0.0, others / total))}


def usage_text(usage):
    """"; CPU used by other processes 3%, stolen by the hypervisor 1% while timing" from a
    cpu_usage() result ("" when unknown)."""
    parts = []
    if usage.get("cpu_others") is not None:
        parts.append(f"used by other processes {100 * usage['cpu_others']:.0f}%")
    if usage.get("cpu_steal") is not None:
        parts.append(f"stolen by the hypervisor {100 * usage['cpu_steal']:.0f}%")
    return "; CPU " + ", ".join(parts) + " while timing" if parts else ""


def busy_warning(usage, what="timing"):
    """A warning line when other VMs or processes took more than 10% of the CPU (None
    otherwise); usage: a cpu_usage() result."""
    steal, others = usage.get("cpu_steal"), usage.get("cpu_others")
    parts = []
    if others is not None and others > 0.10:
        parts.append(f"other processes used {100 * others:.0f}% of the CPU")
    if steal is not None and steal > 0.10:
        parts.append(f"the hypervisor stole {100 * steal:.0f}%")
    if not parts:
        return None
    return (f"WARNING: while {what}, " + " and ".join(parts) + ": these numbers are disturbed "
            "(a busy core stalls threads that wait for each other); run again on an idle "
            "machine")


def time_call(fn, inner=1):
    """Seconds per call of fn() over `inner` back-to-back calls (garbage collected before,
    collector disabled during)."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner
    finally:
        gc.enable()


def calibrate(fn, min_seconds, max_inner=1 << 16):
    """Calls per timing sample so that one sample lasts at least min_seconds (doubling from 1; 1
    when min_seconds <= 0). Short kernels are timed over many calls, so the clock's resolution
    and the loop's overhead do not dominate."""
    inner = 1
    if min_seconds <= 0:
        return inner
    while inner < max_inner:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if time.perf_counter() - t0 >= min_seconds:
            break
        inner *= 2
    return inner


def busy_check(ticks, tag="bench"):
    """Who else used the CPUs since the cpu_sample() `ticks` (cpu_usage) and the warning when
    the timings were disturbed (busy_warning, also logged). Returns (usage, warning or None)."""
    usage = cpu_usage(ticks, cpu_sample())
    warning = busy_warning(usage)
    if warning:
        log(warning, tag)
    return usage, warning

