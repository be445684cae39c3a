"""The measuring part of the benchmark suite, shared by every suite: timing (warm-up, then
interleaved rounds), statistics (median, min, max, quartiles), agreement checks (an engine whose
output disagrees with the reference is flagged and not timed), and the machine's own limits
measured in the same run (sgemm GFLOP/s, memory copy GB/s, hypervisor CPU steal).

Only NumPy, SciPy and threadpoolctl are imported here (no peer runtime): every suite may use it.
The peer set-up helpers (torch, CTranslate2 conversions, cached random models) import their
runtime when called.

Conventions: times are seconds (float); rates are per second; GB = 1e9 bytes, GFLOP = 1e9
floating-point operations (a multiply-add counts 2). "Ours" is the engine named ENGINE.
"""
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ENGINE = "transformer"


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


def ratio(ours_seconds, their_seconds):
    """Throughput of ours over theirs for the same work: their_seconds / ours_seconds (> 1: ours is
    faster). None when either is missing or zero."""
    if not ours_seconds or not their_seconds:
        return None
    return their_seconds / ours_seconds


def loglog_slope(x, y):
    """Growth exponent: the least-squares slope of log(y) against log(x) (2 for quadratic growth,
    1 for linear). Points with x <= 0 or y <= 0 are dropped; None with fewer than 2 left."""
    pts = [(a, b) for a, b in zip(x, y) if a and b and a > 0 and b > 0]
    if len(pts) < 2:
        return None
    lx = np.log([a for a, _ in pts])
    ly = np.log([b for _, b in pts])
    return float(np.polyfit(lx, ly, 1)[0])


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def cpu_ticks():
    """(steal, total) jiffies of all CPUs from /proc/stat, or None off Linux. Steal is the time the
    hypervisor gave this VM's CPUs to someone else: on a shared VM it is the main noise."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice (already in user/nice)]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_fraction(before, after):
    """Fraction of CPU time stolen between two cpu_ticks() readings (None if unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


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


def round_order(items, r, group=None):
    """The items of round r: rotated to start at item r mod k; with group(key) given, whole
    groups are rotated instead (group r mod g first), each group's items in their order."""
    if group is None:
        k = len(items)
        return [items[(r + i) % k] for i in range(k)]
    names = []
    for key, _, _ in items:
        if group(key) not in names:
            names.append(group(key))
    g = len(names)
    order = [names[(r + i) % g] for i in range(g)]
    return [it for name in order for it in items if group(it[0]) == name]


def interleaved_rounds(items, rounds, pause=0.0, probe=None, on_round=None, group=None,
                       errors=None):
    """Interleaved timing: in round r every item runs one sample, the order rotated to start at
    item r mod k (so no engine always runs first, or right after another one), with `pause`
    seconds of idle before each (so the spinning worker threads of one runtime, OpenMP or BLAS,
    go to sleep instead of eating into the next one's time); then probe() runs, if given (a
    machine-limit measurement in the same conditions).

    items: list of (key, fn, inner): fn() is one call, inner the calls per sample.
    group(key): when given, the items of one group (an engine) run back to back and whole
    groups are rotated from round to round; the pause then comes only before each group.
    on_round(r, times, probe_result) is called after each round (progress).
    errors: None (an exception propagates), or a dict that receives {key: "round r: traceback"}
    for an item that raises; that item is left out of the later rounds, the others go on.
    Returns ({key: [seconds per call, one per round]}, [probe results, each a dict with
    cpu_usage() of that round added: "cpu_steal", "cpu_others"])."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    times = {key: [] for key, _, _ in items}
    probes = []
    for r in range(rounds):
        ticks = cpu_sample()
        previous = object()
        for key, fn, inner in round_order(items, r, group):
            if errors is not None and key in errors:
                continue
            current = key if group is None else group(key)
            if pause and current != previous:
                time.sleep(pause)
            previous = current
            if errors is None:
                times[key].append(time_call(fn, inner))
                continue
            try:
                times[key].append(time_call(fn, inner))
            except Exception:  # noqa: BLE001 - reported by the caller, the others go on
                errors[key] = f"round {r + 1}: {traceback.format_exc()}"
        result = None
        if probe is not None:
            if pause:
                time.sleep(pause)
            result = dict(probe())
            result.update({"cpu_steal": None, "cpu_others": None},
                          **cpu_usage(ticks, cpu_sample()))
            probes.append(result)
        if on_round is not None:
            on_round(r, times, result)
    return times, probes


# ---------------------------------------------------------------------------------------------
# Agreement: every engine's output against the reference, before any timing
# ---------------------------------------------------------------------------------------------

def reference_agreement():
    """The agreement record of the reference itself."""
    return {"ok": True, "is_reference": True, "max_abs_diff": 0.0, "text": "reference"}


def compare_arrays(out, ref, rtol=1e-4, atol=1e-4):
    """Elementwise check of an engine's array against the reference (float64 math).

    out, ref: arrays of the same shape (any float dtype). Passes when every element has
    |out - ref| <= atol * scale + rtol * |ref| with scale = max(1, max |ref|), and out has no NaN
    or inf where ref is finite. Returns {"ok", "is_reference": False, "max_abs_diff",
    "max_rel_err" (max |out - ref| / (atol * scale + rtol * |ref|): <= 1 passes), "text"}; a
    shape mismatch gives ok False with the shapes in the text."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return {"ok": False, "is_reference": False, "max_abs_diff": None, "max_rel_err": None,
                "text": f"shape {out.shape}, reference {ref.shape}"}
    if out.size == 0:
        return {"ok": True, "is_reference": False, "max_abs_diff": 0.0, "max_rel_err": 0.0,
                "text": "empty"}
    finite = np.isfinite(ref)
    bad = ~np.isfinite(out) & finite
    diff = np.abs(out - ref)
    diff[~finite] = 0.0
    scale = max(1.0, float(np.abs(ref[finite]).max()) if finite.any() else 1.0)
    bound = atol * scale + rtol * np.abs(np.where(finite, ref, 0.0))
    max_abs = float(diff.max()) if not bad.any() else float("inf")
    rel = float((diff / bound).max()) if not bad.any() else float("inf")
    ok = bool(rel <= 1.0)
    text = f"max|diff| {max_abs:.2e}" + ("" if ok else f" (tolerance {atol:g}*{scale:.3g} + "
                                                       f"{rtol:g}*|ref|)")
    if bad.any():
        text = f"{int(bad.sum())} non-finite values"
    return {"ok": ok, "is_reference": False, "max_abs_diff": max_abs, "max_rel_err": rel,
            "text": text}


def compare_embeddings(emb, ref, min_cosine=0.999):
    """Row-wise check of (N, C) embeddings against the reference's: max |diff| and the smallest
    cosine similarity of matching rows; ok when that cosine is >= min_cosine. Returns {"ok",
    "is_reference": False, "max_abs_diff", "min_cosine", "text"}."""
    emb = np.asarray(emb, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if emb.shape != ref.shape:
        return {"ok": False, "is_reference": False, "max_abs_diff": None, "min_cosine": None,
                "text": f"shape {emb.shape}, reference {ref.shape}"}
    norms = np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1)
    cos = (emb * ref).sum(1) / np.maximum(norms, 1e-300)
    cos_min = float(np.nan_to_num(cos, nan=-1.0).min()) if len(cos) else 1.0
    diff = float(np.abs(emb - ref).max()) if emb.size else 0.0
    ok = cos_min >= min_cosine
    return {"ok": ok, "is_reference": False, "max_abs_diff": diff, "min_cosine": cos_min,
            "text": f"max|diff| {diff:.2e}, min cosine {cos_min:.6f}"
                    + ("" if ok else f" (< {min_cosine})")}


def compare_tokens(tokens, ref):
    """Token-by-token check of (B, N) integer outputs against the reference's: the fraction of
    identical tokens, the sequences identical throughout, and the first position where each
    sequence diverges (None where it does not). ok when the shapes match and every token is
    equal (a caller that can tell a float near-tie from a wrong result may relax it).
    Returns {"ok", "is_reference": False, "equal", "identical_fraction", "identical_sequences",
    "first_divergence" (min over sequences, or None), "first_divergence_per_sequence", "text"}."""
    tokens = np.asarray(tokens)
    ref = np.asarray(ref)
    if tokens.shape != ref.shape:
        return {"ok": False, "is_reference": False, "equal": False, "identical_fraction": None,
                "identical_sequences": 0, "first_divergence": None,
                "first_divergence_per_sequence": [],
                "text": f"shape {tokens.shape}, reference {ref.shape}"}
    same = tokens == ref
    if same.ndim == 1:
        same = same[None]
    first = [None if row.all() else int(np.argmin(row)) for row in same]
    divergent = [p for p in first if p is not None]
    frac = float(same.mean()) if same.size else 1.0
    n_same = sum(p is None for p in first)
    text = f"{100 * frac:.1f}% tokens identical ({n_same}/{len(first)} sequences)"
    if divergent:
        text += f", first divergence at {min(divergent)}"
    return {"ok": not divergent, "is_reference": False, "equal": not divergent,
            "identical_fraction": frac, "identical_sequences": n_same,
            "first_divergence": min(divergent) if divergent else None,
            "first_divergence_per_sequence": first, "text": text}


class NotApplicable(Exception):
    """Raised by an engine's prepare(case) for a case it does not implement (the row is reported
    as "n/a" with the message, not as an error)."""


def reference_choice(reference, engines, engine_name, what):
    """How compare_engines gets its reference: HF torch's outputs (`reference`, an engine object
    or None when torch is missing) whether or not torch is timed. Returns (keyword arguments for
    compare_engines, notes for the report); `what` says what is compared without torch."""
    if reference is None:
        return ({"reference_engine": engine_name},
                [f"HF torch is not available: {what} compared with {engine_name}'s instead"])
    if reference in engines:
        return {"reference_engine": reference.name}, []
    return ({"reference": lambda case: reference.run(case)},
            ["HF torch is the reference of the check but not timed (not in --peers)"])


def load_peers(makers, peers, tag="bench"):
    """Load HF torch (always tried: it is the reference of the checks) and the requested peers.
    makers: {peer: zero-argument constructor}; peers: the names asked for. A peer that cannot
    be loaded is skipped with the reason: "not installed (...)" for an ImportError, "setup
    failed: ..." for anything else. Returns (the loaded peers asked for, torch first, then in
    the order of `peers`; the torch engine or None; skipped {peer: reason})."""
    skipped, loaded = {}, {}
    for name in ["torch"] + [p for p in peers if p != "torch"]:
        if name not in makers:
            continue
        log(f"loading {name}", tag)
        try:
            loaded[name] = makers[name]()
        except ImportError as e:
            skipped[name] = f"not installed ({e})"
        except Exception as e:  # noqa: BLE001 - a peer that cannot be set up is skipped, noted
            skipped[name] = f"setup failed: {type(e).__name__}: {e}"
    order = ["torch"] + [p for p in peers if p != "torch"]
    return [loaded[p] for p in order if p in loaded and p in peers], loaded.get("torch"), skipped


def busy_check(ticks, tag="bench"):
    """Who else used the CPUs since the cpu_sample() `ticks` (cpu_usage) and the warning when
    the timings were disturbed (busy_warning, also logged). Returns (usage, warning or None)."""
    usage = cpu_usage(ticks, cpu_sample())
    warning = busy_warning(usage)
    if warning:
        log(warning, tag)
    return usage, warning


def loaded_engines(engines, reference, skipped, peers, what, tag="bench", not_applicable=None):
    """What a model suite reports once its engines are loaded: the skipped peers among those
    asked for (`skipped`: {peer: reason}; plus not_applicable {peer: why} for those asked for),
    each logged; compare_engines' keyword arguments for the reference (reference_choice, `what`
    says what is compared without torch); and the notes: the reference's, then each engine's
    own ("name (version): note"). Returns (skipped, reference keyword arguments, notes)."""
    skipped = {k: v for k, v in skipped.items() if k in peers}
    skipped.update({k: v for k, v in (not_applicable or {}).items() if k in peers})
    for p, why in skipped.items():
        log(f"skipping {p}: {why}", tag)
    ref_kw, notes = reference_choice(reference, engines, ENGINE, what)
    for e in engines:
        notes += [f"{e.name} ({e.version}): {n}" for n in e.notes]
    return skipped, ref_kw, notes


def script_main(main, args, tag):
    """Entry of a bench/*.py wrapper: note a changed OMP_NUM_THREADS (the wrapper sets it to
    --threads before any runtime starts), then run the suite's `main(args)`."""
    previous = os.environ.get("TRANSFORMER_BENCH_PREV_OMP")
    if previous not in (None, "", str(args.threads)):
        log(f"note: OMP_NUM_THREADS was {previous}; set to {args.threads} for this run", tag)
    return main(args)


def compare_engines(engines, cases, compare, rounds, reference=None, reference_engine=None,
                    min_seconds=0.0, pause=0.0, probe=None, time_disagreeing=False,
                    tag="bench", case_label=str):
    """Check every engine against the reference, then time the ones that agree.

    engines: objects with .name and .prepare(case) -> fn, a zero-argument callable running the
    case once and returning its output (prepare does the untimed set-up: converting inputs to
    the engine's own form; it may raise NotApplicable). cases: list of case objects (opaque
    here; `case_label(case)` names one). compare(output, expected, case) -> agreement dict
    with at least "ok" and "text" (e.g. compare_arrays). The expected output of a case comes
    from reference(case) when given, else from the engine named reference_engine (whose row is
    marked as the reference); with neither, from the first engine.

    Phase 1, per case: expected output; each engine's fn() once (its warm-up; the output is
    checked). An engine that raises is reported with the error, one that disagrees is flagged
    and, unless time_disagreeing, not timed. Then the calls per sample are calibrated to
    min_seconds, engine by engine.
    Phase 2: `rounds` interleaved rounds over every (case, engine) that passed: in each round
    every engine runs all its cases back to back, the engines' order rotating from round to
    round, with `pause` seconds of idle before each engine (its predecessor's spinning threads
    go to sleep); probe() after each round (see interleaved_rounds).

    An engine that raises while timed gets status "error" with the traceback in its note (its
    samples before that are kept); the others go on.

    Returns (rows, probes): rows in case-then-engine order, each {"case": case_label(case),
    "case_index", "engine", "status" ("timed", "disagrees", "n/a", "error"), "agreement",
    "seconds" (summarize() of the samples, or None), "inner", "note"}; probes as
    interleaved_rounds returns them."""
    rows, items = [], []
    for ci, case in enumerate(cases):
        label = case_label(case)
        fns, outputs = {}, {}
        for e in engines:
            row = {"case": label, "case_index": ci, "engine": e.name, "status": "n/a",
                   "agreement": None, "seconds": None, "inner": None, "note": None}
            rows.append(row)
            try:
                fns[e.name] = e.prepare(case)
                outputs[e.name] = fns[e.name]()
            except NotApplicable as exc:
                row["note"] = str(exc)
                fns.pop(e.name, None)
            except Exception as exc:  # noqa: BLE001 - a failing engine is reported, not fatal
                row.update(status="error", note=f"{type(exc).__name__}: {exc}")
                fns.pop(e.name, None)
                log(f"{e.name} failed on {label}: {type(exc).__name__}: {exc}", tag)
        case_rows = rows[-len(engines):] if engines else []
        if reference is not None:
            expected, ref_name = reference(case), None
        else:
            ref_name = reference_engine if reference_engine in outputs else \
                next(iter(outputs), None)
            expected = outputs.get(ref_name)
        for row in case_rows:
            name = row["engine"]
            if name not in fns:
                continue
            if name == ref_name:
                agree = reference_agreement()
            else:
                agree = compare(outputs[name], expected, case)
            row["agreement"] = agree
            if agree["ok"] or time_disagreeing:
                row["status"] = "timed"
                items.append(((ci, name), fns[name], None))
            else:
                row["status"] = "disagrees"
                log(f"WARNING: {name} disagrees with the reference on {label}: "
                    f"{agree['text']}; not timed", tag)
            if not agree["ok"] and time_disagreeing:
                row["note"] = "timed although it disagrees (--time-disagreeing)"
        outputs.clear()
    if not items:
        return rows, []
    # Calls per sample, engine by engine (after a pause, as in the timed rounds).
    order = [e.name for e in engines]
    items.sort(key=lambda it: (order.index(it[0][1]), it[0][0]))
    inner = {}
    for i, (key, fn, _) in enumerate(items):
        if pause and (i == 0 or items[i - 1][0][1] != key[1]):
            time.sleep(pause)
        inner[key] = calibrate(fn, min_seconds)
    items = [(key, fn, inner[key]) for key, fn, _ in items]
    for row in rows:
        row["inner"] = inner.get((row["case_index"], row["engine"]))

    def progress(r, times, probe_result):
        log(f"round {r + 1}/{rounds} done ({len(items)} timings)", tag)

    errors = {}
    times, probes = interleaved_rounds(items, rounds, pause=pause, probe=probe,
                                       on_round=progress, group=lambda key: key[1],
                                       errors=errors)
    for row in rows:
        key = (row["case_index"], row["engine"])
        if times.get(key):
            row["seconds"] = summarize(times[key])
        if key in errors:
            row.update(status="error", note=f"raised while timed, {errors[key]}")
            log(f"ERROR: {row['engine']} raised while timed on {row['case']} "
                f"({errors[key].strip().splitlines()[-1]})", tag)
    return rows, probes


# ---------------------------------------------------------------------------------------------
# Machine limits, measured in the same run
# ---------------------------------------------------------------------------------------------

def _median_seconds(fn, reps, min_seconds):
    """Median seconds per call of fn over `reps` samples of calibrated length."""
    fn()
    inner = calibrate(fn, min_seconds)
    return statistics.median(time_call(fn, inner) for _ in range(reps))


class LimitProbe:
    """The machine's own limits, for "fraction of limit" figures.

    sgemm: float32 (M, K) @ (K, N) through NumPy's matmul and through SciPy's sgemm (the BLAS our
    kernels call), BLAS pinned to `threads` by threadpoolctl; GFLOP/s = 2 M N K / seconds.
    copy: NumPy copyto of a `copy_mib` MiB float32 buffer, by 1 thread and by `threads` Python
    threads each copying a slice (NumPy releases the GIL); GB/s counts bytes read + written.
    measure() returns {"sgemm_numpy", "sgemm_scipy" (GFLOP/s), "copy_1thread", "copy_threads"
    (GB/s)}. Raises ValueError for non-positive sizes."""

    def __init__(self, threads, gemm=(1024, 1024, 1024), copy_mib=64, reps=5, min_seconds=0.02):
        import scipy.linalg.blas
        from threadpoolctl import threadpool_limits
        M, K, N = gemm
        if min(M, K, N, copy_mib, threads, reps) < 1:
            raise ValueError("LimitProbe sizes, threads and reps must be positive")
        self.limits = threadpool_limits
        self.threads, self.reps, self.min_seconds = threads, reps, min_seconds
        rng = np.random.default_rng(0)
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32)
        c = np.empty((M, N), np.float32)
        af, bf = np.asfortranarray(a), np.asfortranarray(b)
        self.gemm_ops = {"sgemm_numpy": lambda: np.matmul(a, b, out=c),
                         "sgemm_scipy": lambda: scipy.linalg.blas.sgemm(1.0, af, bf)}
        self.flops = 2.0 * M * N * K
        self.gemm_text = f"({M}x{K})@({K}x{N}) float32"
        n = (copy_mib << 20) // 4
        self.src = np.ones(n, np.float32)
        self.dst = np.empty_like(self.src)
        self.nbytes = 4 * n
        self.slices = [slice(int(s[0]), int(s[-1]) + 1)
                       for s in np.array_split(np.arange(n), threads) if len(s)]
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self.copy_text = f"{copy_mib} MiB float32 buffer"

    def _copy_threads(self):
        if self.pool is None:
            np.copyto(self.dst, self.src)
        else:
            list(self.pool.map(lambda s: np.copyto(self.dst[s], self.src[s]), self.slices))

    def measure(self):
        """One measurement of every limit (see the class docstring)."""
        with self.limits(limits=self.threads, user_api="blas"):
            out = {k: self.flops / _median_seconds(op, self.reps, self.min_seconds) / 1e9
                   for k, op in self.gemm_ops.items()}
        out["copy_1thread"] = 2 * self.nbytes / _median_seconds(
            lambda: np.copyto(self.dst, self.src), self.reps, 0) / 1e9
        out["copy_threads"] = 2 * self.nbytes / _median_seconds(
            self._copy_threads, self.reps, 0) / 1e9
        return out

    def describe(self):
        """The probe's shapes, for the report."""
        return {"sgemm": f"{self.gemm_text}, BLAS pinned to {plural(self.threads, 'thread')}, "
                         "NumPy matmul and SciPy sgemm (the faster is the limit)",
                "copy": f"NumPy copyto of a {self.copy_text}, 1 and {self.threads} threads, "
                        "bytes read + written (the faster is the limit)"}

    def close(self):
        """Stop the copy threads."""
        if self.pool is not None:
            self.pool.shutdown()


class GemmProbe:
    """float32 GEMM throughput on a model's own mix of dense shapes, the roofline of its dense
    layers: one pass runs every (M, K) @ (K, N) of `shapes` (list of (M, K, N)) once, through
    NumPy's matmul and through SciPy's sgemm (the BLAS this engine calls), BLAS pinned to
    `threads` by threadpoolctl; GFLOP/s = the mix's 2 M N K summed / seconds per pass (median of
    `reps` calibrated samples). measure() returns {"numpy", "scipy"} GFLOP/s (the faster is the
    roofline); shape_text describes the mix ("4x (512x384)@(384x384) + ...")."""

    def __init__(self, shapes, threads, reps=5, min_seconds=0.02):
        import scipy.linalg.blas
        from threadpoolctl import threadpool_limits
        if not shapes or min(min(s) for s in shapes) < 1 or min(threads, reps) < 1:
            raise ValueError("GemmProbe shapes, threads and reps must be positive")
        self.limits = threadpool_limits
        self.threads, self.reps, self.min_seconds = threads, reps, min_seconds
        self.shapes = list(shapes)
        rng = np.random.default_rng(0)
        self.ops = {"numpy": [], "scipy": []}
        self.flops = 0.0
        for (M, K, N) in self.shapes:
            a = rng.standard_normal((M, K), dtype=np.float32)
            b = rng.standard_normal((K, N), dtype=np.float32)
            c = np.empty((M, N), np.float32)
            af, bf = np.asfortranarray(a), np.asfortranarray(b)
            self.ops["numpy"].append(lambda a=a, b=b, c=c: np.matmul(a, b, out=c))
            self.ops["scipy"].append(lambda a=af, b=bf: scipy.linalg.blas.sgemm(1.0, a, b))
            self.flops += 2.0 * M * K * N
        runs = []                                   # consecutive equal shapes: [shape, count]
        for shape in self.shapes:
            if runs and runs[-1][0] == shape:
                runs[-1][1] += 1
            else:
                runs.append([shape, 1])
        self.shape_text = " + ".join(("" if n == 1 else f"{n}x ") + f"({M}x{K})@({K}x{N})"
                                     for (M, K, N), n in runs)

    @staticmethod
    def roofline(probes):
        """From the measure() results of the rounds: ({"numpy", "scipy"} median GFLOP/s, the
        faster one's name, its GFLOP/s); ({}, None, None) for no rounds."""
        if not probes:
            return {}, None, None
        sgemm = {k: statistics.median(p[k] for p in probes) for k in ("numpy", "scipy")}
        source = max(sgemm, key=sgemm.get)
        return sgemm, source, sgemm[source]

    def measure(self):
        """GFLOP/s of the whole mix through NumPy's matmul and SciPy's sgemm."""
        def mix(ops):
            def one_pass():
                for op in ops:
                    op()
            return one_pass
        with self.limits(limits=self.threads, user_api="blas"):
            return {k: self.flops / _median_seconds(mix(ops), self.reps, self.min_seconds) / 1e9
                    for k, ops in self.ops.items()}


def limits_summary(probes):
    """Median over rounds of LimitProbe.measure() results, plus the limits themselves:
    "sgemm_gflops" (the faster of NumPy and SciPy), "copy_gbs" (the faster of 1 and n threads),
    "cpu_steal" and "cpu_others" (median fractions, None if unknown). Keys missing from the
    probes are left
    out. Returns {} for no probes."""
    if not probes:
        return {}
    out = {}
    for key in probes[0]:
        vals = [p[key] for p in probes if p.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
    if "sgemm_numpy" in out:
        out["sgemm_gflops"] = max(out["sgemm_numpy"], out["sgemm_scipy"])
    if "copy_1thread" in out and "copy_threads" in out:
        out["copy_gbs"] = max(out["copy_1thread"], out["copy_threads"])
    out["rounds"] = len(probes)
    return out


# ---------------------------------------------------------------------------------------------
# Peer set-up shared by the model suites (each peer runtime is imported inside, when called)
# ---------------------------------------------------------------------------------------------

def load_torch(threads):
    """torch and transformers ready for a timed peer: transformers' warnings off, torch pinned
    to `threads` intra-op threads and 1 inter-op thread. Returns (torch, transformers, version
    text). Raises ImportError when either is not installed."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (interop pool started)
        pass
    return torch, transformers, (f"torch {torch.__version__}, transformers "
                                 f"{transformers.__version__}")


def torch_note(torch, model):
    """The note of an HF model in PyTorch: its attention implementation and torch's threads."""
    attn = getattr(model.config, "_attn_implementation", None)
    return (f"attention implementation: {attn}; torch threads: intra-op "
            f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")


def cached_model(workdir, name, expected, make, tag="bench"):
    """The model directory `name` under workdir, made once and reused: reused when it has a
    model.safetensors and its config.json has every key of `expected` with that value; else
    make(folder) -> note writes it into a temporary folder, which is then renamed (a run cut
    short leaves no half-written model). Returns (dir, note)."""
    path = os.path.join(workdir, name)
    cfg_path = os.path.join(path, "config.json")
    if os.path.exists(cfg_path) and os.path.exists(os.path.join(path, "model.safetensors")):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        if all(cfg.get(k) == v for k, v in expected.items()):
            return path, f"reused cached model {path}"
        log(f"cached model {path} has another configuration; making it again", tag)
    log(f"making the random model {name} (once; cached in {path})", tag)
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    note = make(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path, f"made {path}: {note}"


def ct2_convert(model_dir, out_dir, notes, tag="bench", tokenizer=None):
    """The CTranslate2 conversion of model_dir in out_dir (TransformersConverter, float32, no
    quantization), made once (into a temporary folder, then renamed) and reused. tokenizer:
    None (the converter loads the model's own), or a stand-in object it gets instead (a random
    model has none; it supplies the vocabulary). Appends what was done to notes; returns
    out_dir. Raises ImportError without ctranslate2."""
    from ctranslate2.converters import TransformersConverter
    if os.path.exists(os.path.join(out_dir, "model.bin")):
        notes.append(f"reused cached CTranslate2 conversion {out_dir}")
        return out_dir

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            if tokenizer is None:
                return super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            return tokenizer

    log("converting the model with CTranslate2's TransformersConverter (once; cached)", tag)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Converter(model_dir).convert(tmp, force=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    notes.append("converted with ctranslate2.converters.TransformersConverter (no quantization"
                 + ("" if tokenizer is None else "; stand-in tokenizer for the vocabulary")
                 + ")")
    return out_dir


# ---------------------------------------------------------------------------------------------
# The machine and the versions
# ---------------------------------------------------------------------------------------------

def cpu_name():
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def available_cores():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_info():
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


def package_version(name):
    """Installed version of a distribution (importlib.metadata; nothing is imported), or None."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


PEER_DISTRIBUTIONS = ("torch", "transformers", "onnxruntime", "onnx", "ctranslate2", "matplotlib")


def machine_info(threads):
    """Machine and software description for results.json: CPU, cores, memory, OS, Python,
    versions of this package and its dependencies and of every peer (None: not installed),
    the BLAS libraries loaded, and the thread count of the run."""
    import transformer
    info = {"cpu": cpu_name(), "cores": available_cores(), "threads": threads,
            "memory": memory_info(), "platform": platform.platform(),
            "machine": platform.machine(), "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    versions = {"transformer": transformer.__version__, "numpy": np.__version__}
    for name in ("scipy", "threadpoolctl") + PEER_DISTRIBUTIONS:
        versions[name] = package_version(name)
    info["versions"] = versions
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS so threadpoolctl sees it)
        from threadpoolctl import threadpool_info
        info["blas"] = sorted({f"{i.get('internal_api')} {i.get('version')} "
                               f"({i.get('architecture', '?')}, "
                               f"{os.path.basename(i.get('filepath', ''))})"
                               for i in threadpool_info() if i.get("user_api") == "blas"})
    except Exception:  # noqa: BLE001 - descriptive only
        info["blas"] = []
    return info
