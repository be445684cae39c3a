"""Kernel suite: each op of transformer.ops against NumPy (float32) and PyTorch (CPU, eager), at
several sizes, checked against the float64 reference (transformer/ops/reference.py) first.

Ops and what is counted (B batch, H heads, T queries, S keys, D head_dim, N rows, C/F width):

  softmax (N, S)          row kernel: bytes = 4 (N S read + N S written)
  layer_norm (N, C)       row kernel: bytes = 4 (2 N C + 2 C)
  gelu, gelu_tanh, silu, relu (N, F)   row kernels: bytes = 4 (2 N F)
  linear (M, K) x (O, K)^T + b         GFLOP = 2 M K O / 1e9; for M <= 16 (a decode step: bound by
                          reading the weights once) bytes = 4 (O K + M K + M O + O) as well
  attention (B, H, T, D), non-causal and causal   GFLOP = 4 B H D x (query, key) pairs / 1e9
                          (T S, or T (T + 1) / 2 causal with T = S)
  decode attention q (B, H, D) against a cache of S keys   bytes = 4 (2 B S H D + 2 B H D)

Row kernels and memory-bound cases are reported in GB/s as a fraction of the copy bandwidth
on the same footprint, measured in the same run (limits.CopyProbe: NumPy copyto moving the
case's bytes, read + written, once per round): a case that stays in a cache is held against
that cache's bandwidth, one beyond the last-level cache against memory's, and the limit column
says which. Linear and attention in GFLOP/s as a fraction of the sgemm GFLOP/s measured in the
same run (limits.LimitProbe, once per round). The ops are float32 (--dtype does not apply).

Engines: transformer (transformer.ops with threads=n), numpy (float32 NumPy/SciPy, the same math
written directly; BLAS pinned to n threads by threadpoolctl), torch (torch.softmax, F.layer_norm,
F.gelu, F.silu, torch.relu, F.linear, F.scaled_dot_product_attention; torch.set_num_threads(n)).
Every engine gets its preferred layout, made outside the timing: the decode-attention cache is
(B, S, H, D) for transformer (its KV-cache layout) and (B, H, S, D) for numpy and torch.
An engine whose output is not within the tolerance of the float64 reference (1e-4 relative to
the output's scale, 1e-3 for attention) is flagged and not timed.

Timing: in each round every engine runs all its cases back to back (one sample each, at least
20 ms of back-to-back calls; 50 ms in full), the engines' order rotating from round to round,
with 0.25 s of idle before each engine so that the previous runtime's spinning threads are
asleep (OpenBLAS workers busy-wait for a while after a call). Median over the rounds.

Thread scaling: transformer on the largest case of each op at 1 .. n threads (speedup over 1;
median of two rounds more than the comparison).
"""
import math

import numpy as np

from . import harness, limits as machine, stats
from .harness import ENGINE, NotApplicable
from .stats import log

TAG = "kernels"
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")

# Sizes per level. softmax/layer_norm/activations: (N, C); linear: (M, K, O);
# attention: (B, H, T, D, causal); decode: (B, H, D, S).
SIZES = {
    "tiny": {"softmax": [(4, 64)], "layer_norm": [(4, 64)], "act": [(4, 64)],
             "linear": [(2, 32, 48), (24, 32, 48)],
             "attention": [(1, 2, 16, 8, False), (1, 2, 16, 8, True)],
             "decode": [(2, 2, 8, 16)]},
    "quick": {"softmax": [(256, 1024), (64, 16384)],
              "layer_norm": [(512, 768), (2048, 1024)],
              "act": [(512, 3072)],
              "linear": [(1, 768, 768), (8, 768, 3072), (256, 768, 3072)],
              "attention": [(1, 8, 128, 64, False), (1, 12, 512, 64, False),
                            (1, 8, 1024, 64, True)],
              "decode": [(1, 12, 64, 1024), (8, 12, 64, 1024)]},
    "full": {"softmax": [(4096, 128), (1024, 1024), (256, 16384), (64, 65536)],
             "layer_norm": [(128, 384), (2048, 768), (8192, 1024)],
             "act": [(128, 1536), (2048, 3072), (8192, 4096)],
             "linear": [(1, 768, 3072), (8, 768, 3072), (128, 768, 3072), (512, 1024, 4096)],
             "attention": [(1, 12, 128, 64, False), (8, 12, 128, 64, False),
                           (1, 12, 512, 64, False), (1, 12, 2048, 64, False),
                           (1, 12, 2048, 64, True)],
             "decode": [(1, 12, 64, 1024), (8, 12, 64, 1024), (1, 32, 128, 4096)]},
}
ROUNDS = {"tiny": 2, "quick": 3, "full": 7}
MIN_SECONDS = {"tiny": 0.002, "quick": 0.02, "full": 0.05}
# Idle seconds before each engine's turn in a round: the previous engine's spinning worker
# threads (OpenMP, and OpenBLAS's, which busy-wait for a while after a call) go to sleep instead
# of competing with the next engine for the cores.
PAUSE = {"tiny": 0.0, "quick": 0.25, "full": 0.25}
PROBE = {"tiny": dict(gemm=(128, 128, 128), copy_mib=4, reps=3, min_seconds=0.002),
         "quick": dict(gemm=(512, 512, 512), copy_mib=64, reps=3, min_seconds=0.01),
         "full": dict(gemm=(1024, 1024, 1024), copy_mib=256, reps=5, min_seconds=0.05)}
REF_LIMIT_BYTES = 1 << 28   # float64 attention references bigger than this check one head only


class Case:
    """One op at one size: inputs (float32 NumPy arrays), the work it does, its limit kind.

    op: key of the op; group: plot/report group; label: row name; inputs: dict of arrays;
    params: dict of scalars; nbytes: bytes moved per call or None; flops: per call or None;
    limit: "copy" (report GB/s) or "sgemm" (report GFLOP/s); tol: (rtol, atol) of the check;
    check: None, or (b, h) when only that batch row and head is checked against the float64
    reference (big attention cases)."""

    def __init__(self, op, group, label, inputs, params, nbytes, flops, limit, tol=(1e-4, 1e-4),
                 check=None):
        self.op, self.group, self.label = op, group, label
        self.inputs, self.params = inputs, params
        self.nbytes, self.flops, self.limit, self.tol, self.check = \
            nbytes, flops, limit, tol, check


def make_cases(level, seed=0):
    """The cases of a size level ("tiny", "quick", "full"), inputs drawn from one seeded
    generator. Raises ValueError for an unknown level."""
    if level not in SIZES:
        raise ValueError(f"unknown size level {level!r}; choose from {list(SIZES)}")
    rng = np.random.default_rng(seed)
    sz = SIZES[level]

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    cases = []
    for N, S in sz["softmax"]:
        cases.append(Case("softmax", "softmax", f"softmax {N}x{S}", {"x": randn(N, S, scale=3)},
                          {}, 4 * 2 * N * S, None, "copy"))
    for N, C in sz["layer_norm"]:
        cases.append(Case("layer_norm", "layer_norm", f"layer_norm {N}x{C}",
                          {"x": randn(N, C, scale=2), "w": randn(C), "b": randn(C)},
                          {"eps": 1e-5}, 4 * (2 * N * C + 2 * C), None, "copy"))
    for act in ACTIVATIONS:
        for N, F in sz["act"]:
            cases.append(Case(act, "activations", f"{act} {N}x{F}", {"x": randn(N, F, scale=2)},
                              {}, 4 * 2 * N * F, None, "copy"))
    for M, K, O in sz["linear"]:
        skinny = M <= 16
        cases.append(Case("linear", "linear", f"linear M={M} K={K} O={O}",
                          {"x": randn(M, K), "w": randn(O, K, scale=1 / math.sqrt(K)),
                           "b": randn(O)}, {},
                          4 * (O * K + M * K + M * O + O) if skinny else None,
                          2.0 * M * K * O, "copy" if skinny else "sgemm"))
    for B, H, T, D, causal in sz["attention"]:
        pairs = T * (T + 1) / 2 if causal else T * T
        big = 8 * B * H * T * T > REF_LIMIT_BYTES
        cases.append(Case("attention", "attention",
                          f"attention B={B} H={H} T={T} D={D}" + (" causal" if causal else ""),
                          {"q": randn(B, H, T, D), "k": randn(B, H, T, D),
                           "v": randn(B, H, T, D)}, {"causal": causal}, None,
                          4.0 * B * H * D * pairs, "sgemm", tol=(1e-3, 1e-3),
                          check=(0, 0) if big else None))
    for B, H, D, S in sz["decode"]:
        cases.append(Case("decode_attention", "decode attention",
                          f"decode attention B={B} H={H} S={S} D={D}",
                          {"q": randn(B, H, D), "k_cache": randn(B, S, H, D),
                           "v_cache": randn(B, S, H, D)}, {"lengths": np.full(B, S, np.int64)},
                          4 * (2 * B * S * H * D + 2 * B * H * D), 4.0 * B * H * D * S, "copy",
                          tol=(1e-3, 1e-3)))
    return cases


def reference(case):
    """float64 reference output of a case (transformer/ops/reference.py); for a case with
    case.check = (b, h), only that batch row and head."""
    from ..ops import reference as ref
    i, p = case.inputs, case.params
    if case.op == "softmax":
        return ref.softmax(i["x"])
    if case.op == "layer_norm":
        return ref.layer_norm(i["x"], i["w"], i["b"], p["eps"])
    if case.op in ACTIVATIONS:
        return ref.bias_act(i["x"], None, case.op)
    if case.op == "linear":
        return ref.linear(i["x"], i["w"], i["b"])
    if case.op == "attention":
        q, k, v = i["q"], i["k"], i["v"]
        if case.check is not None:
            b, h = case.check
            q, k, v = (a[b:b + 1, h:h + 1] for a in (q, k, v))
        return ref.attention(q, k, v, causal=p["causal"])
    if case.op == "decode_attention":
        return ref.decode_attention(i["q"], i["k_cache"], i["v_cache"], p["lengths"])
    raise ValueError(f"unknown op {case.op!r}")


def compare(out, expected, case):
    """harness.compare_arrays with the case's tolerance (on the checked slice)."""
    out = np.asarray(out)
    if case.check is not None:
        b, h = case.check
        out = out[b:b + 1, h:h + 1]
    rtol, atol = case.tol
    return harness.compare_arrays(out, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Engines: prepare(case) -> a zero-argument function running the op once, returning NumPy
# ---------------------------------------------------------------------------------------------

class OursEngine:
    """transformer.ops with threads=n."""
    name = ENGINE

    def __init__(self, threads):
        from .. import ops
        self.ops, self.threads = ops, threads

    def prepare(self, case):
        """The op as a closure over the case's inputs (see the module docstring)."""
        ops, n, i, p = self.ops, self.threads, case.inputs, case.params
        if case.op == "softmax":
            return lambda: ops.softmax(i["x"], threads=n)
        if case.op == "layer_norm":
            return lambda: ops.layer_norm(i["x"], i["w"], i["b"], p["eps"], threads=n)
        if case.op in ACTIVATIONS:
            fn = getattr(ops, case.op)
            return lambda: fn(i["x"], threads=n)
        if case.op == "linear":
            return lambda: ops.linear(i["x"], i["w"], i["b"], threads=n)
        if case.op == "attention":
            return lambda: ops.attention(i["q"], i["k"], i["v"], causal=p["causal"], threads=n)
        if case.op == "decode_attention":
            return lambda: ops.decode_attention(i["q"], i["k_cache"], i["v_cache"],
                                                p["lengths"], threads=n)
        raise NotApplicable(f"no {case.op}")


def _np_softmax(x):
    """float32 softmax over the last axis, in place on a fresh array."""
    e = x - x.max(-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(-1, keepdims=True)
    return e


class NumpyEngine:
    """float32 NumPy (and scipy.special.erf for GELU): the straightforward array code."""
    name = "numpy"

    def __init__(self, threads):
        from scipy.special import erf
        self.erf = erf
        self.threads = threads

    def prepare(self, case):
        """The op as a closure; the decode cache is transposed to (B, H, S, D) here."""
        i, p, erf = case.inputs, case.params, self.erf
        f32 = np.float32
        if case.op == "softmax":
            return lambda: _np_softmax(i["x"])
        if case.op == "layer_norm":
            x, w, b, eps = i["x"], i["w"], i["b"], f32(p["eps"])

            def layer_norm():
                xc = x - x.mean(-1, keepdims=True)
                var = np.mean(xc * xc, axis=-1, keepdims=True)
                xc *= 1 / np.sqrt(var + eps)
                xc *= w
                xc += b
                return xc
            return layer_norm
        if case.op == "gelu":
            x, c = i["x"], f32(1 / math.sqrt(2))
            return lambda: f32(0.5) * x * (f32(1) + erf(x * c))
        if case.op == "gelu_tanh":
            x, c = i["x"], f32(math.sqrt(2 / math.pi))
            return lambda: f32(0.5) * x * (f32(1) + np.tanh(c * (x + f32(0.044715) * x * x * x)))
        if case.op == "silu":
            x = i["x"]
            return lambda: x / (f32(1) + np.exp(-x))
        if case.op == "relu":
            x = i["x"]
            return lambda: np.maximum(x, f32(0))
        if case.op == "linear":
            x, w, b = i["x"], i["w"], i["b"]
            return lambda: x @ w.T + b
        if case.op == "attention":
            q, k, v, causal = i["q"], i["k"], i["v"], p["causal"]
            scale = f32(1 / math.sqrt(q.shape[-1]))
            T, S = q.shape[2], k.shape[2]
            mask = np.where(np.arange(S)[None] <= np.arange(T)[:, None] + S - T, 0,
                            -np.inf).astype(np.float32) if causal else None

            def attention():
                s = q @ k.swapaxes(-1, -2)
                s *= scale
                if mask is not None:
                    s += mask
                return _np_softmax(s) @ v
            return attention
        if case.op == "decode_attention":
            q = i["q"]
            k = np.ascontiguousarray(i["k_cache"].transpose(0, 2, 1, 3))   # (B, H, S, D)
            v = np.ascontiguousarray(i["v_cache"].transpose(0, 2, 1, 3))
            scale = f32(1 / math.sqrt(q.shape[-1]))

            def decode():
                s = (q[:, :, None, :] @ k.swapaxes(-1, -2))                # (B, H, 1, S)
                s *= scale
                return (_np_softmax(s) @ v)[:, :, 0]
            return decode
        raise NotApplicable(f"no {case.op}")


class TorchEngine:
    """PyTorch CPU eager ops, torch.set_num_threads(n); inputs are torch tensors sharing the
    NumPy memory (made outside the timing), outputs read back as NumPy views."""
    name = "torch"

    def __init__(self, threads):
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(threads)
        self.torch, self.F = torch, F
        self.version = torch.__version__

    def prepare(self, case):
        """The op as a closure; the decode cache is transposed to (B, H, S, D) here."""
        torch, F = self.torch, self.F
        t = {k: torch.from_numpy(v) for k, v in case.inputs.items()}
        p = case.params
        if case.op == "softmax":
            return lambda: torch.softmax(t["x"], -1).numpy()
        if case.op == "layer_norm":
            C = t["x"].shape[-1]
            return lambda: F.layer_norm(t["x"], (C,), t["w"], t["b"], p["eps"]).numpy()
        if case.op == "gelu":
            return lambda: F.gelu(t["x"]).numpy()
        if case.op == "gelu_tanh":
            return lambda: F.gelu(t["x"], approximate="tanh").numpy()
        if case.op == "silu":
            return lambda: F.silu(t["x"]).numpy()
        if case.op == "relu":
            return lambda: torch.relu(t["x"]).numpy()
        if case.op == "linear":
            return lambda: F.linear(t["x"], t["w"], t["b"]).numpy()
        if case.op == "attention":
            causal = p["causal"]   # T == S here, so torch's top-left causal mask is ours
            return lambda: F.scaled_dot_product_attention(t["q"], t["k"], t["v"],
                                                          is_causal=causal).numpy()
        if case.op == "decode_attention":
            q = t["q"][:, :, None, :]
            k = t["k_cache"].permute(0, 2, 1, 3).contiguous()
            v = t["v_cache"].permute(0, 2, 1, 3).contiguous()
            return lambda: F.scaled_dot_product_attention(q, k, v)[:, :, 0].numpy()
        raise NotApplicable(f"no {case.op}")


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

def footprint_key(nbytes):
    """The limits key of the copy bandwidth on a footprint of nbytes."""
    return f"copy_at_{int(nbytes)}"


def footprint_text(nbytes, llc):
    """"256 KiB, in cache" / "48 MiB, beyond the last-level cache" (llc: bytes or None)."""
    size = f"{nbytes / 2**20:.3g} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.3g} KiB"
    if llc is None:
        return size
    return size + (", in cache" if nbytes <= llc else ", beyond the last-level cache")


def _figures(case, seconds, limits, llc=None):
    """(figures, fraction_of_limit, limit text) of a case timed at `seconds` per call; a
    memory-bound case is held against the copy bandwidth on its own footprint."""
    figs, frac, limit = [], None, None
    if case.limit == "copy" and case.nbytes:
        gbs = case.nbytes / seconds / 1e9
        figs.append({"value": gbs, "unit": "GB/s"})
        copy = limits.get(footprint_key(case.nbytes))
        if copy:
            frac = gbs / copy
            limit = f"copy {copy:.1f} GB/s on {footprint_text(case.nbytes, llc)}"
    if case.flops:
        gf = case.flops / seconds / 1e9
        figs.append({"value": gf, "unit": "GFLOP/s"})
        if case.limit == "sgemm" and limits.get("sgemm_gflops"):
            frac = gf / limits["sgemm_gflops"]
            limit = f"sgemm {limits['sgemm_gflops']:.0f} GFLOP/s"
    return figs, frac, limit


def thread_counts(threads, level):
    """Thread counts of the scaling run: 1, 2, 4, ... up to `threads` and `threads` itself
    (only 1 and `threads` below the full level); [] for one thread."""
    if threads < 2:
        return []
    if level != "full":
        return [1, threads]
    counts, t = [], 1
    while t < threads:
        counts.append(t)
        t *= 2
    return counts + [threads]


def run(cfg):
    """Run the kernel suite; returns its SUITE record (see report.py).

    cfg: a BenchConfig (threads, sizes level, rounds or None, peers, time_disagreeing)."""
    from threadpoolctl import threadpool_limits

    level, n = cfg.sizes, cfg.threads
    rounds = cfg.rounds or ROUNDS[level]
    cases = make_cases(level, cfg.seed)
    engines, skipped, notes = [OursEngine(n), NumpyEngine(n)], {}, []
    if "torch" in cfg.peers:
        try:
            engines.append(TorchEngine(n))
        except ImportError as e:
            skipped["torch"] = f"not installed ({e})"
        except Exception as e:  # noqa: BLE001 - a peer that cannot start is skipped, noted
            skipped["torch"] = f"setup failed: {type(e).__name__}: {e}"
    else:
        skipped["torch"] = "not requested (--peers)"
    for p in cfg.peers:
        if p in ("onnxruntime", "ctranslate2"):
            skipped[p] = "not applicable to kernels (no op-level API)"
    for p, why in skipped.items():
        log(f"skipping {p}: {why}", TAG)

    probe = machine.LimitProbe(n, **PROBE[level])
    # The limit of each memory-bound case: copy bandwidth on its own footprint.
    cache = machine.CopyProbe(n, {c.nbytes for c in cases if c.limit == "copy" and c.nbytes},
                              PROBE[level]["reps"], MIN_SECONDS[level])
    llc = machine.llc_bytes()

    def measure():
        out = probe.measure()
        out.update({footprint_key(f): v for f, v in cache.measure().items()})
        return out
    log(f"{len(cases)} cases x {[e.name for e in engines]}; {rounds} rounds; threads {n}", TAG)
    ticks = stats.cpu_sample()
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            rows, probes = harness.compare_engines(
                engines, cases, compare, rounds, reference=reference,
                min_seconds=MIN_SECONDS[level], pause=PAUSE[level], probe=measure,
                time_disagreeing=cfg.time_disagreeing, tag=TAG, case_label=lambda c: c.label)
            scaling_rows, scaling = thread_scaling(cases, rows, n, level, rounds)
    finally:
        probe.close()
        cache.close()
    usage, warning = stats.busy_check(ticks, TAG)
    limits = machine.limits_summary(probes)

    out_rows = []
    ours = {r["case_index"]: r["seconds"]["median"] for r in rows
            if r["engine"] == ENGINE and r["seconds"]}
    for r in rows:
        case = cases[r["case_index"]]
        row = {"case": r["case"], "group": case.group, "engine": r["engine"],
               "status": r["status"], "figures": [], "seconds": r["seconds"], "ratio": None,
               "fraction_of_limit": None, "limit": None, "agreement": r["agreement"],
               "note": r["note"], "inner": r["inner"]}
        if r["seconds"]:
            med = r["seconds"]["median"]
            row["figures"], row["fraction_of_limit"], row["limit"] = \
                _figures(case, med, limits, llc)
            row["ratio"] = stats.ratio(ours.get(r["case_index"]), med)
        out_rows.append(row)

    summary = [
        ("Each op through transformer.ops, NumPy float32 and PyTorch eager on the same float32 "
         f"inputs, {stats.plural(n, 'thread')} each (BLAS pinned to {n} by threadpoolctl). "
         f"Checked against the float64 reference first; median of {rounds} interleaved rounds, "
         f"each sample at least {MIN_SECONDS[level] * 1e3:g} ms of back-to-back calls. Row "
         "kernels and memory-bound cases: GB/s (bytes read + written) as a fraction of the copy "
         "bandwidth on the same footprint (in cache or beyond the last-level cache"
         + (f", {llc / 2**20:.3g} MiB" if llc else "") + "); linear and attention: GFLOP/s as "
         "a fraction of sgemm (both measured once per round in this run)."),
    ]
    if limits:
        summary.append(f"Limits in this suite (median of {limits['rounds']} rounds): sgemm "
                       f"{limits['sgemm_gflops']:.1f} GFLOP/s ({probe.gemm_text}), copy "
                       f"{limits['copy_gbs']:.1f} GB/s ({probe.copy_text}); copy on each "
                       f"memory-bound case's footprint: its limit column"
                       f"{stats.usage_text(usage)}.")
    tables = []
    if scaling_rows:
        counts = thread_counts(n, level)
        tables.append({"title": "transformer: time per call and speedup by thread count",
                       "header": ["case"] + [f"{t} thr" for t in counts]
                       + [f"speedup at {counts[-1]}"],
                       "rows": scaling_rows})
    if torch_note(engines):
        notes.append(torch_note(engines))
    return {"title": "Kernels: transformer.ops against NumPy and PyTorch", "status": "ok",
            "warnings": [warning] if warning else [], "cpu": usage,
            "summary": summary, "rows": out_rows, "tables": tables, "scaling": scaling,
            "skipped": skipped, "notes": notes, "limits": limits,
            "config": {"level": level, "rounds": rounds, "min_seconds": MIN_SECONDS[level],
                       "threads": n}}


def torch_note(engines):
    """A note with torch's version and thread count, when torch ran."""
    for e in engines:
        if e.name == "torch":
            return (f"torch {e.version}: intra-op threads {e.torch.get_num_threads()}; "
                    "scaled_dot_product_attention picks its own CPU kernel")
    return None


def thread_scaling(cases, rows, threads, level, rounds):
    """transformer on the largest case of each group at each thread count of thread_counts().
    Returns (table rows [case, seconds per count..., speedup], [SCALING record]); ([], []) for
    one thread."""
    counts = thread_counts(threads, level)
    if not counts:
        return [], []
    timed = {r["case_index"] for r in rows if r["engine"] == ENGINE and r["seconds"]}
    pick = {}
    for ci, c in enumerate(cases):
        if ci in timed:
            pick[c.group] = ci          # the last (largest) timed case of each group
    ours_by_t = {t: OursEngine(t) for t in counts}
    items = []
    for ci in pick.values():
        for t in counts:
            fn = ours_by_t[t].prepare(cases[ci])
            fn()
            items.append(((ci, t), fn, stats.calibrate(fn, MIN_SECONDS[level])))
    log(f"thread scaling: {len(pick)} cases x threads {counts}", TAG)
    # Two rounds more than the comparison: a multi-threaded sample is the one that suffers
    # when another process takes a core for a moment.
    times, _ = stats.interleaved_rounds(items, rounds + 2)
    med = {k: stats.summarize(v)["median"] for k, v in times.items()}
    table_rows, series = [], {}
    for ci in pick.values():
        base = med[(ci, counts[0])]
        table_rows.append([cases[ci].label] + [_fmt_s(med[(ci, t)]) for t in counts]
                          + [f"{base / med[(ci, counts[-1])]:.2f}x"])
        series[cases[ci].label] = [base / med[(ci, t)] for t in counts]
    series["ideal"] = [t / counts[0] for t in counts]
    return table_rows, [{"name": "threads", "title": "transformer: speedup over 1 thread",
                         "xlabel": "threads", "ylabel": "speedup", "x": counts,
                         "series": series, "logx": False, "logy": False}]


def _fmt_s(s):
    """Seconds as text (report.fmt_seconds)."""
    from .report import fmt_seconds
    return fmt_seconds(s)
