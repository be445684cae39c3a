"""Kernel lab: each op of transformer.ops against PyTorch eager at several
sizes, each engine in a fresh process of its own per round (engines.Isolated), checked against
the float64 reference (transformer/ops/reference.py) first. Row kernels and memory-bound cases
are given in GB/s as a fraction of the copy bandwidth on the same footprint, linear and
attention in GFLOP/s as a fraction of sgemm, both measured in the same run (limits.LimitProbe).
With --device cuda: attention (float16, bfloat16; D 64 and 128) in TFLOP/s against torch SDPA
(FlashAttention), and row kernels in GB/s against a device copy (limits.DeviceProbe).
bench/README.md says what each case counts.
"""
import math

import numpy as np

from ..dtypes import DTYPES
from ..machine import llc_bytes
from . import harness, stats
from .limits import DeviceProbe, LimitProbe, limits_summary
from .engines import ACTIVATIONS, Setup, load_engines
from .process import run_in_process
from .stats import log

TAG = "kernels"

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
# --device cuda: attention (T, causal) at B = 16384 / T, H = 2048 / D; row kernels (N, C)
GPU_SIZES = {"tiny": dict(T=[128], D=[64], rows=[(256, 512)]),
             "quick": dict(T=[512, 2048], D=[64, 128], rows=[(16384, 4096)]),
             "full": dict(T=[512, 1024, 2048, 4096, 8192], D=[64, 128], rows=[(16384, 4096)])}
GPU_TOL = {"float32": (1e-3, 1e-3), "float16": (1e-2, 1e-2), "bfloat16": (3e-2, 3e-2)}
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
    """One op at one size: its inputs, the work it does, its limit kind.

    op: key of the op; group: report group; label: row name; shapes: {input name:
    (shape, scale)}, the inputs being seeded standard-normal float32 arrays times scale, made
    at first use of .inputs in each process (a case is sent to an engine's process without
    them; an engine on a GPU uploads them in `dtype`); params: dict of scalars and small
    arrays; nbytes: bytes moved per call or None; flops: per call or None; limit: "copy"
    (report GB/s) or "sgemm" (report GFLOP/s); tol: (rtol, atol) of the check; check: None, or
    (b, h) when only that batch row and head is checked against the float64 reference (big
    attention cases)."""

    def __init__(self, op, group, label, shapes, params, nbytes, flops, limit, tol=(1e-4, 1e-4),
                 check=None, dtype="float32", seed=0):
        self.op, self.group, self.label, self.dtype = op, group, label, dtype
        self.shapes, self.params, self.seed, self._inputs = shapes, params, seed, None
        self.nbytes, self.flops, self.limit, self.tol, self.check = \
            nbytes, flops, limit, tol, check

    @property
    def inputs(self):
        """{name: float32 array}, made once per process."""
        if self._inputs is None:
            rng = np.random.default_rng(self.seed)
            self._inputs = {k: rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
                            for k, (shape, scale) in self.shapes.items()}
        return self._inputs

    def __getstate__(self):
        return dict(self.__dict__, _inputs=None)


def make_cases(level, seed=0):
    """The cases of a size level ("tiny", "quick", "full"), case i's inputs seeded seed + i.
    Raises ValueError for an unknown level."""
    if level not in SIZES:
        raise ValueError(f"unknown size level {level!r}; choose from {list(SIZES)}")
    sz, cases = SIZES[level], []

    def add(op, group, label, shapes, params, *work, **kw):
        cases.append(Case(op, group, label, shapes, params, *work, seed=seed + len(cases), **kw))
    for N, S in sz["softmax"]:
        add("softmax", "softmax", f"softmax {N}x{S}", {"x": ((N, S), 3)}, {}, 4 * 2 * N * S,
            None, "copy")
    for N, C in sz["layer_norm"]:
        add("layer_norm", "layer_norm", f"layer_norm {N}x{C}",
            {"x": ((N, C), 2), "w": ((C,), 1), "b": ((C,), 1)}, {"eps": 1e-5},
            4 * (2 * N * C + 2 * C), None, "copy")
    for act in ACTIVATIONS:
        for N, F in sz["act"]:
            add(act, "activations", f"{act} {N}x{F}", {"x": ((N, F), 2)}, {}, 4 * 2 * N * F,
                None, "copy")
    for M, K, O in sz["linear"]:
        skinny = M <= 16
        add("linear", "linear", f"linear M={M} K={K} O={O}",
            {"x": ((M, K), 1), "w": ((O, K), 1 / math.sqrt(K)), "b": ((O,), 1)}, {},
            4 * (O * K + M * K + M * O + O) if skinny else None, 2.0 * M * K * O,
            "copy" if skinny else "sgemm")
    for B, H, T, D, causal in sz["attention"]:
        pairs = T * (T + 1) / 2 if causal else T * T
        add("attention", "attention",
            f"attention B={B} H={H} T={T} D={D}" + (" causal" if causal else ""),
            {n: ((B, H, T, D), 1) for n in "qkv"}, {"causal": causal}, None,
            4.0 * B * H * D * pairs, "sgemm", tol=(1e-3, 1e-3),
            check=(0, 0) if 8 * B * H * T * T > REF_LIMIT_BYTES else None)
    for B, H, D, S in sz["decode"]:
        add("decode_attention", "decode attention", f"decode attention B={B} H={H} S={S} D={D}",
            {"q": ((B, H, D), 1), "k_cache": ((B, S, H, D), 1), "v_cache": ((B, S, H, D), 1)},
            {"lengths": np.full(B, S, np.int64)}, 4 * (2 * B * S * H * D + 2 * B * H * D),
            4.0 * B * H * D * S, "copy", tol=(1e-3, 1e-3))
    return cases


def gpu_cases(level, seed=0):
    """The --device cuda cases of a size level: attention at the 16-bit GPU dtypes (checked on
    batch row 0, head 0) and the row kernels layer_norm, rms_norm, softmax and gelu at every GPU
    dtype (transformer.dtypes.DTYPES["cuda"]; bytes = element size x 2 N C)."""
    sz, cases = GPU_SIZES[level], []
    for dtype in DTYPES["cuda"][1:]:
        for D in sz["D"]:
            for T in sz["T"]:
                B, H = max(1, 16384 // T), 2048 // D
                for causal in (False, True):
                    cases.append(Case(
                        "attention", "attention", f"attention {dtype} B={B} H={H} T={T} D={D}"
                        + (" causal" if causal else ""), {n: ((B, H, T, D), 1) for n in "qkv"},
                        {"causal": causal}, None, 4.0 * B * H * T * T * D / (2 if causal else 1),
                        "sgemm", GPU_TOL[dtype], (0, 0), dtype, seed + len(cases)))
    for dtype in DTYPES["cuda"]:
        for N, C in sz["rows"]:
            nbytes = 2 * N * C * (2 if "16" in dtype else 4)
            for op in ("layer_norm", "rms_norm", "softmax", "gelu"):
                shapes = {"x": ((N, C), 1), "w": ((C,), 1), "b": ((C,), 1)}
                cases.append(Case(op, "row kernels", f"{op} {dtype} {N}x{C}", shapes,
                                  {"eps": 1e-5}, nbytes, None, "copy", GPU_TOL[dtype],
                                  dtype=dtype, seed=seed + len(cases)))
    return cases


def reference(case):
    """float64 reference output of a case (transformer/ops/reference.py); for a case with
    case.check = (b, h), only that batch row and head."""
    from ..ops import reference as ref
    i, p = case.inputs, case.params
    case._inputs = None                         # made again where the engines run
    if case.op in ACTIVATIONS:
        return ref.bias_act(i["x"], None, case.op)
    if case.op == "attention" and case.check is not None:
        b, h = case.check
        i = {n: i[n][b:b + 1, h:h + 1] for n in "qkv"}
    run = {"softmax": lambda: ref.softmax(i["x"]),
           "layer_norm": lambda: ref.layer_norm(i["x"], i["w"], i["b"], p["eps"]),
           "rms_norm": lambda: ref.rms_norm(i["x"], i["w"]),
           "linear": lambda: ref.linear(i["x"], i["w"], i["b"]),
           "attention": lambda: ref.attention(i["q"], i["k"], i["v"], causal=p["causal"]),
           "decode_attention": lambda: ref.decode_attention(i["q"], i["k_cache"], i["v_cache"],
                                                            p["lengths"])}.get(case.op)
    if run is None:
        raise ValueError(f"unknown op {case.op!r}")
    return run()


def compare(out, expected, case):
    """harness.compare_arrays with the case's tolerance (the engines' host() keeps only the
    checked slice)."""
    rtol, atol = case.tol
    return harness.compare_arrays(out, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

def footprint_text(nbytes, llc):
    """"256 KiB, in cache" / "48 MiB, beyond the last-level cache" (llc: bytes or None)."""
    size = f"{nbytes / 2**20:.3g} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.3g} KiB"
    if llc is None:
        return size
    return size + (", in cache" if nbytes <= llc else ", beyond the last-level cache")


def _figures(case, seconds, limits, llc=None, gpu=False):
    """(figures, fraction_of_limit, limit text) of a case timed at `seconds` per call; a
    memory-bound case is held against the copy bandwidth on its own footprint (on a GPU: the
    device copy), a compute-bound one against sgemm (on a GPU: the fp16 GEMM)."""
    figs, frac, limit = [], None, None
    if case.limit == "copy" and case.nbytes:
        gbs = case.nbytes / seconds / 1e9
        figs.append({"value": gbs, "unit": "GB/s"})
        copy = limits.get(f"copy_at_{int(case.nbytes)}")       # LimitProbe's, DeviceProbe's
        if copy:
            frac = gbs / copy
            limit = f"{'device ' if gpu else ''}copy {copy:.1f} GB/s on " \
                f"{footprint_text(case.nbytes, llc)}"
    if case.flops:
        gf = case.flops / seconds / 1e9
        figs.append({"value": gf, "unit": "GFLOP/s"})
        if case.limit == "sgemm" and limits.get("sgemm_gflops"):
            frac = gf / limits["sgemm_gflops"]
            limit = f"fp16 GEMM {limits['hgemm_tflops']:.0f} TFLOP/s" if gpu else \
                f"sgemm {limits['sgemm_gflops']:.0f} GFLOP/s"
    return figs, frac, limit


def run(cfg):
    """Run the kernel suite for a BenchConfig (device, threads, sizes level, rounds, peers,
    time_disagreeing); returns its SUITE record (see report.py)."""
    level, n, gpu = cfg.sizes, cfg.threads, cfg.device == "cuda"
    rounds = cfg.rounds or ROUNDS[level]
    cases = gpu_cases(level, cfg.seed) if gpu else make_cases(level, cfg.seed)
    setup = Setup("kernels", threads=n, device=cfg.device)
    peers = [p for p in cfg.peers if p == "torch"]
    engines, _, skipped = load_engines(setup, peers, TAG)
    skipped.update({p: "not applicable to kernels (no op-level API)" for p in cfg.peers
                    if p != "torch"})
    if "torch" not in cfg.peers:
        skipped["torch"] = "not requested (--peers)"
    # The limit of each memory-bound case: copy bandwidth on its own footprint.
    footprints = {c.nbytes for c in cases if c.limit == "copy" and c.nbytes}
    probe = DeviceProbe(footprints) if gpu else \
        LimitProbe(n, **PROBE[level], footprints=footprints)
    llc = None if gpu else llc_bytes()
    log(f"{len(cases)} cases x {[e.name for e in engines]}; {rounds} rounds; threads {n}", TAG)
    ticks = stats.cpu_sample()
    rows, probes = harness.compare_engines(
        engines, cases, compare, rounds, reference=reference, min_seconds=MIN_SECONDS[level],
        pause=PAUSE[level], probe=lambda: run_in_process(probe.measure),
        time_disagreeing=cfg.time_disagreeing, tag=TAG, case_label=lambda c: c.label)
    usage, warning = stats.busy_check(ticks, TAG)
    limits = limits_summary(probes)
    if gpu and limits:
        limits["sgemm_gflops"] = 1e3 * limits["hgemm_tflops"]
    skipped.update({e.name: e.skipped for e in engines if e.skipped})

    out_rows = harness.report_rows(
        rows, engines, lambda r: cases[r["case_index"]].group,
        lambda r, med: _figures(cases[r["case_index"]], med, limits, llc, gpu))
    for row in out_rows:
        row["compute_type"] = None                  # the case's dtype is in its label

    where = "on the GPU" if gpu else f"{stats.plural(n, 'thread')} each (BLAS pinned to {n})"
    summary = [
        ("Each op through transformer.ops and "
         f"PyTorch eager on the same inputs, {where}, each engine in a fresh process of its own "
         f"per round. Checked against the float64 reference first; median of {rounds} "
         f"interleaved rounds, each sample at least {MIN_SECONDS[level] * 1e3:g} ms of "
         "back-to-back calls. Row kernels and memory-bound cases: GB/s (bytes read + written) "
         "as a fraction of the copy bandwidth on the same footprint"
         + (f" (in cache or beyond the last-level cache, {llc / 2**20:.3g} MiB)" if llc else "")
         + "; linear and attention: FLOP/s as a fraction of "
         + ("cuBLAS fp16 GEMM" if gpu else "sgemm") + " (both measured once per round)."),
    ]
    if limits and not gpu:
        summary.append(f"Limits in this suite (median of {limits['rounds']} rounds): sgemm "
                       f"{limits['sgemm_gflops']:.1f} GFLOP/s ({probe.gemm_text}), copy "
                       f"{limits['copy_gbs']:.1f} GB/s ({probe.copy_text}); copy on each "
                       f"memory-bound case's footprint: its limit column"
                       f"{stats.usage_text(usage)}.")
    elif limits:
        summary.append(f"GPU limits (median of {limits['rounds']} rounds): fp16 GEMM "
                       f"{limits['hgemm_tflops']:.1f} TFLOP/s; device copy: the limit column.")
    notes = [f"{e.name} ({e.version}): {x}" for e in engines if not e.skipped for x in e.notes]
    return {"title": "Kernels: transformer.ops against PyTorch"
                     + (" (GPU)" if gpu else ""), "status": "ok",
            "warnings": [warning] if warning else [], "cpu": usage,
            "summary": summary, "rows": out_rows,
            "skipped": skipped, "notes": notes, "limits": limits,
            "config": {"level": level, "rounds": rounds, "min_seconds": MIN_SECONDS[level],
                       "threads": n, "device": cfg.device}}

