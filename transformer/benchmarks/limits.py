"""The machine's own limits, measured in the same run as the engines (each measurement in a
process of its own, harness.compare_engines' probe), for the "fraction of limit" figures: float32
GEMM GFLOP/s (a fixed shape, or a model's own mix of dense shapes), copy GB/s on a footprint,
read-only memory bandwidth (decoding), int8 dot-product GOP/s, and on a GPU fp16 GEMM TFLOP/s
and device copy GB/s; plus the run's machine and software description.

The probes allocate their buffers at their first measure(), so that a probe made here can be
sent to a worker process (process.run_in_process(probe.measure)). Only NumPy, SciPy and
threadpoolctl are imported here. GB = 1e9 bytes, GFLOP = 1e9 floating-point operations (a
multiply-add counts 2), GOP = 1e9 integer operations (likewise).
"""
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .stats import calibrate, plural, time_call


def median_seconds(fn, reps, min_seconds):
    """Median seconds per call of fn over `reps` samples of calibrated length."""
    fn()
    inner = calibrate(fn, min_seconds)
    return statistics.median(time_call(fn, inner) for _ in range(reps))


class GemmProbe:
    """float32 GEMM throughput on a mix of (M, K) @ (K, N) shapes (a model's dense layers, or
    one square shape): one pass runs each once, through NumPy's matmul and through SciPy's sgemm
    (the BLAS this engine calls), BLAS pinned to `threads` by threadpoolctl; GFLOP/s = the
    mix's 2 M N K summed / seconds per pass. measure() returns {"numpy", "scipy"} GFLOP/s;
    shape_text describes the mix ("4x (512x384)@(384x384) + ..."). Raises ValueError for an
    empty mix or a non-positive size."""

    def __init__(self, shapes, threads, reps=5, min_seconds=0.02):
        if not shapes or min(min(s) for s in shapes) < 1 or min(threads, reps) < 1:
            raise ValueError("GemmProbe shapes, threads and reps must be positive")
        self.threads, self.reps, self.min_seconds = threads, reps, min_seconds
        self.shapes, self.ops = [tuple(s) for s in shapes], None
        self.flops = sum(2.0 * M * K * N for M, K, N in self.shapes)
        self.shape_text = " + ".join(("" if n == 1 else f"{n}x ") + f"({M}x{K})@({K}x{N})"
                                     for (M, K, N), n in Counter(self.shapes).items())

    def _passes(self):
        import scipy.linalg.blas
        rng, ops = np.random.default_rng(0), {"numpy": [], "scipy": []}
        for M, K, N in self.shapes:
            a = rng.standard_normal((M, K), dtype=np.float32)
            b = rng.standard_normal((K, N), dtype=np.float32)
            c = np.empty((M, N), np.float32)
            af, bf = np.asfortranarray(a), np.asfortranarray(b)
            ops["numpy"].append(lambda a=a, b=b, c=c: np.matmul(a, b, out=c))
            ops["scipy"].append(lambda a=af, b=bf: scipy.linalg.blas.sgemm(1.0, a, b))
        return {k: (lambda fns=fns: [f() for f in fns]) for k, fns in ops.items()}

    def measure(self):
        """GFLOP/s of the whole mix through NumPy's matmul and SciPy's sgemm."""
        from threadpoolctl import threadpool_limits
        self.ops = self.ops or self._passes()
        with threadpool_limits(limits=self.threads, user_api="blas"):
            return {k: self.flops / median_seconds(op, self.reps, self.min_seconds) / 1e9
                    for k, op in self.ops.items()}


class CopyProbe:
    """Copy bandwidth on given footprints, the limit of a kernel that moves that many bytes: for
    a footprint of F bytes, NumPy copyto of an F/2-byte float32 buffer into another (F bytes
    read + written), by 1 thread and by `threads` Python threads each copying a slice (NumPy
    releases the GIL); median of reps samples of at least min_seconds. A footprint that fits a
    cache measures that cache's bandwidth, one beyond the last-level cache memory's.
    measure() returns {F: GB/s, the faster of 1 and n threads}. Raises ValueError for a
    footprint under 8 bytes."""

    def __init__(self, threads, footprints, reps=3, min_seconds=0.01):
        self.footprints = sorted({int(f) for f in footprints})
        if not self.footprints or self.footprints[0] < 8 or threads < 1:
            raise ValueError("CopyProbe footprints must be >= 8 bytes, threads >= 1")
        self.threads, self.reps, self.min_seconds = threads, reps, min_seconds
        self.buffers, self.pool = None, None

    def measure_one(self, footprint):
        """(GB/s by 1 thread, GB/s by `threads` threads) of one footprint."""
        if self.buffers is None:
            self.buffers = {}
            for f in self.footprints:
                src = np.ones(f // 8, np.float32)
                slices = [slice(int(s[0]), int(s[-1]) + 1)
                          for s in np.array_split(np.arange(src.size), self.threads) if len(s)]
                self.buffers[f] = (src, np.empty_like(src), slices)
            self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        src, dst, slices = self.buffers[footprint]

        def threaded():
            if self.pool is None:
                np.copyto(dst, src)
            else:
                list(self.pool.map(lambda s: np.copyto(dst[s], src[s]), slices))
        return tuple(8 * src.size / median_seconds(fn, self.reps, self.min_seconds) / 1e9
                     for fn in (lambda: np.copyto(dst, src), threaded))

    def measure(self):
        """{footprint bytes: GB/s} (see the class docstring)."""
        return {f: max(self.measure_one(f)) for f in self.footprints}

    def close(self):
        """Stop the copy threads."""
        if self.pool is not None:
            self.pool.shutdown()


class LimitProbe:
    """The run's reference limits: sgemm (GemmProbe on one `gemm` = (M, K, N) shape) and copy
    (CopyProbe of a `copy_mib` MiB buffer, 1 and n threads), and the copy bandwidth on each of
    `footprints` (bytes: the kernels' own). measure() returns {"sgemm_numpy", "sgemm_scipy"
    (GFLOP/s), "copy_1thread", "copy_threads", "copy_at_<F>" (GB/s)}."""

    def __init__(self, threads, gemm=(1024, 1024, 1024), copy_mib=64, reps=5, min_seconds=0.02,
                 footprints=()):
        if min(copy_mib, threads, reps) < 1:
            raise ValueError("LimitProbe sizes, threads and reps must be positive")
        self.threads = threads
        self.gemm = GemmProbe([gemm], threads, reps, min_seconds)
        self.copy = CopyProbe(threads, [2 * (copy_mib << 20)], reps, 0)
        self.cache = CopyProbe(threads, footprints, reps, min_seconds) if footprints else None
        self.gemm_text, self.copy_text = f"{self.gemm.shape_text} float32", \
            f"{copy_mib} MiB float32 buffer"

    def measure(self):
        """One measurement of every limit (see the class docstring)."""
        g = self.gemm.measure()
        out = {"sgemm_numpy": g["numpy"], "sgemm_scipy": g["scipy"]}
        out["copy_1thread"], out["copy_threads"] = self.copy.measure_one(self.copy.footprints[0])
        if self.cache is not None:
            out.update({f"copy_at_{f}": v for f, v in self.cache.measure().items()})
        return out

    def describe(self):
        """The probe's shapes, for the report."""
        return {"sgemm": f"{self.gemm_text}, BLAS pinned to {plural(self.threads, 'thread')}, "
                         "NumPy matmul and SciPy sgemm (the faster is the limit)",
                "copy": f"NumPy copyto of a {self.copy_text}, 1 and {self.threads} threads, "
                        "bytes read + written (the faster is the limit)"}

    def reference(self, rounds=2):
        """limits_summary of `rounds` measurements after one warm-up, with "probe" (describe)."""
        self.measure()
        out = limits_summary([self.measure() for _ in range(rounds)])
        out["probe"] = self.describe()
        return out


class BandwidthProbe:
    """Read-only memory bandwidth: y = A @ x over an A of `mib` MiB float32, BLAS pinned to n
    threads, via NumPy's matmul and SciPy's sgemv; GB/s = bytes of A / seconds. Also a NumPy
    copy of A's buffer (1 thread; read + write counted) for reference. measure() returns
    {"sgemv_numpy", "sgemv_scipy", "copy_1thread"} in GB/s."""

    def __init__(self, mib, threads, reps=5):
        self.threads, self.reps, self.ops = threads, reps, None
        self.cols = 8192
        self.rows = max(1, (mib << 20) // (4 * self.cols))
        self.nbytes = 4 * self.rows * self.cols
        self.shape_text = f"({self.rows}x{self.cols}) float32, {self.nbytes / 2**20:.0f} MiB"

    def measure(self):
        """One measurement of each stream (see the class docstring)."""
        import scipy.linalg.blas
        from threadpoolctl import threadpool_limits
        if self.ops is None:
            a = np.full((self.rows, self.cols), 0.5, np.float32)  # C order: A @ x is an sgemv
            x, y, dst = np.ones(self.cols, np.float32), np.empty(self.rows, np.float32), \
                np.empty_like(a)
            # SciPy: a C-ordered (rows, cols) array is the Fortran (cols, rows) transpose
            self.ops = {"sgemv_numpy": lambda: np.matmul(a, x, out=y),
                        "sgemv_scipy": lambda: scipy.linalg.blas.sgemv(1.0, a.T, x, trans=1),
                        "copy_1thread": lambda: np.copyto(dst, a)}
        with threadpool_limits(limits=self.threads, user_api="blas"):
            return {k: self.nbytes * (2 if k.startswith("copy") else 1)
                    / median_seconds(op, self.reps, 0) / 1e9 for k, op in self.ops.items()}


class DeviceProbe:
    """The GPU's limits (CuPy): fp16 GEMM TFLOP/s (cuBLAS through cupy.matmul, n x n x n) and
    device-to-device copy GB/s (read + written) on each footprint; timed with
    synchronisation, median of reps. measure() returns {"hgemm_tflops", "copy_at_<F>"}."""

    def __init__(self, footprints, n=8192, reps=5):
        self.footprints, self.n, self.reps = sorted({int(f) for f in footprints}), n, reps

    def measure(self):
        """One measurement (see the class docstring)."""
        from ..ops.cuda import cupy
        cp = cupy()
        sync = cp.cuda.Device().synchronize

        def seconds(fn):
            return median_seconds(lambda: (fn(), sync()), self.reps, 0.01)
        m = cp.ones((self.n, self.n), cp.float16)
        out = {"hgemm_tflops": 2.0 * self.n ** 3 / seconds(lambda: cp.matmul(m, m)) / 1e12}
        for f in self.footprints:
            src = cp.ones(f // 4, cp.uint16)
            dst = cp.empty_like(src)
            out[f"copy_at_{f}"] = f / seconds(lambda: cp.copyto(dst, src)) / 1e9
        return out


INT8_SHAPE = (512, 1024, 1024)     # (M, K, N): 1.5 MiB of int8 operands, in L2 per thread
# (each thread a row block against all N: 16 panels of 64 outputs, the kernel's unit of work)


class Int8Probe:
    """int8 dot-product throughput on a cache-resident big-K shape: C = A B^T, A (M, K) and
    B (N, K) int8, int32 accumulation; GOP/s = 2 M N K / seconds (median of reps calibrated
    samples).

    The kernel: this project's raw int8 GEMM (int8_kernel: the packed int32 product of the
    variant its int8 models run, VNNI / AVX2 / portable, without dequantization), checked once
    against the exact integer product (source "transformer int8 GEMM (<variant>)").
    measure() returns {"int8_gops"}; .source names the kernel. Raises ValueError for a
    non-positive shape, RuntimeError when our kernel gives a wrong product."""

    def __init__(self, threads, shape=INT8_SHAPE, reps=3, min_seconds=0.02):
        M, K, N = shape
        if min(M, K, N, threads, reps) < 1:
            raise ValueError("Int8Probe shape, threads and reps must be positive")
        self.threads, self.reps, self.min_seconds = threads, reps, min_seconds
        rng = np.random.default_rng(0)
        a = rng.integers(-127, 128, (M, K), dtype=np.int8)
        b = rng.integers(-127, 128, (N, K), dtype=np.int8)
        self.ops = 2.0 * M * N * K
        self.shape_text = f"({M}x{K}) int8 x ({N}x{K})^T int8 -> int32"
        self.fn, variant = int8_kernel()(a, b, threads)
        exact = a.astype(np.int64) @ b.T.astype(np.int64)
        got = np.asarray(self.fn())
        if got.shape != exact.shape or not np.array_equal(got.astype(np.int64), exact):
            raise RuntimeError(f"the int8 GEMM ({variant}) differs from the exact integer "
                               "product: not used as the int8 limit")
        self.source = f"transformer int8 GEMM ({variant})"

    def measure(self):
        """{"int8_gops": GOP/s} of the kernel (see the class docstring)."""
        return {"int8_gops": self.ops / median_seconds(self.fn, self.reps, self.min_seconds)
                / 1e9}

    def describe(self):
        """The limit in words, for the report."""
        return f"int8 dot products, {self.shape_text}, {plural(self.threads, 'thread')}, " \
               f"through {self.source}"


def int8_kernel():
    """This project's raw int8 GEMM as prepare(a, b, threads) -> (fn, variant). a (M, K) and
    b (N, K) int8; fn() -> (M, N) int32 = a b^T exactly. b is
    packed once (transformer.ops.packed.PackedWeight.from_int8), then fn runs
    PackedWeight.int32_product of the variant int8 models use (packed.VARIANT, VNNI /
    AVX2 / portable) on `threads` row blocks at once (one Python thread each; the kernel
    releases the GIL)."""
    from ..ops import packed
    variant = packed.VARIANT["int8"]

    def prepare(a, b, threads):
        M, K = a.shape
        w = packed.PackedWeight.from_int8(np.ascontiguousarray(b), np.ones(len(b), np.float32))
        xq = np.zeros((M, -(-K // 4) * 4), np.int8)          # K padded to 4, as the kernel's
        xq[:, :K] = a
        out = np.empty((M, len(b)), np.int32)
        blocks = [slice(int(r[0]), int(r[-1]) + 1)
                  for r in np.array_split(np.arange(M), threads) if len(r)]
        pool = ThreadPoolExecutor(len(blocks)) if len(blocks) > 1 else None

        def block(s):
            w.int32_product(xq[s], variant, out[s])

        def fn():
            if pool is None:
                block(slice(0, M))
            else:
                list(pool.map(block, blocks))
            return out
        return fn, variant
    return prepare


class DenseLimit:
    """The limit of a model's dense (matmul) work at a compute type, measured once per round:
    float32 and bfloat16: GemmProbe on the model's own shapes (sgemm GFLOP/s; bfloat16 is held
    against float32's); int8: Int8Probe (int8 GOP/s, the same operation count, made at the first
    measure(): in the probe's own process); on "cuda": DeviceProbe's fp16 GEMM. measure() is the
    probe's (int8 and cuda: with "describe", the limit in words); summarize(probes) gives the
    limit."""

    def __init__(self, dtype, shapes, threads, device="cpu"):
        self.dtype, self.threads, self.device, self.int8 = dtype, threads, device, None
        self.probe = DeviceProbe([]) if device == "cuda" else \
            None if dtype == "int8" else GemmProbe(shapes, threads)

    def measure(self):
        """One measurement of the probe."""
        if self.device == "cuda":
            return dict(self.probe.measure(), describe=f"fp16 GEMM {self.probe.n}^3 through "
                                                       "cupy.matmul (cuBLAS)")
        if self.dtype != "int8":
            return self.probe.measure()
        self.int8 = self.int8 or Int8Probe(self.threads)
        return dict(self.int8.measure(), describe=self.int8.describe())

    def summarize(self, probes):
        """From the rounds' measure() results: {"value" (G op/s, None without rounds), "label"
        (for a row: "sgemm 120 GFLOP/s", "int8 300 GOP/s"), "text" (a sentence for the
        summary), "per_round", and the probe's own figures}."""
        out = {"value": None, "label": None, "text": None, "per_round": probes}
        if not probes:
            return out
        if self.device == "cuda":
            v = 1e3 * statistics.median(p["hgemm_tflops"] for p in probes)
            return dict(out, value=v, label=f"fp16 GEMM {v / 1e3:.0f} TFLOP/s",
                        text=f"fp16 GEMM {v / 1e3:.1f} TFLOP/s ({probes[0]['describe']})")
        if self.dtype == "int8":
            v = statistics.median(p["int8_gops"] for p in probes)
            text = probes[0]["describe"]
            out.update(value=v, label=f"int8 {v:.0f} GOP/s", text=f"int8 {v:.1f} GOP/s ({text})",
                       source=text.split("through ")[-1])
            return out
        sgemm = {k: statistics.median(p[k] for p in probes) for k in ("numpy", "scipy")}
        source = max(sgemm, key=sgemm.get)
        v = sgemm[source]
        threads = plural(self.probe.threads, "thread")
        out.update(value=v, label=f"sgemm {v:.0f} GFLOP/s", source=source, sgemm=sgemm,
                   shapes=self.probe.shape_text,
                   text=f"sgemm {v:.1f} GFLOP/s ({source} float32 matmul, "
                        f"{self.probe.shape_text} mix, {threads}; numpy "
                        f"{sgemm['numpy']:.1f}, scipy {sgemm['scipy']:.1f})"
                        + ("; bfloat16 is held against the float32 limit"
                           if self.dtype == "bfloat16" else ""))
        return out


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
        vals = [p[key] for p in probes if isinstance(p.get(key), (int, float))]
        out[key] = statistics.median(vals) if vals else None
    if "sgemm_numpy" in out:
        out["sgemm_gflops"] = max(out["sgemm_numpy"], out["sgemm_scipy"])
    if "copy_1thread" in out and "copy_threads" in out:
        out["copy_gbs"] = max(out["copy_1thread"], out["copy_threads"])
    out["rounds"] = len(probes)
    return out


PEER_DISTRIBUTIONS = ("torch", "transformers", "onnxruntime", "onnx", "ctranslate2",
                      "gguf", "llama_cpp_python", "cupy")


def package_version(name):
    """Installed version of a distribution (importlib.metadata; nothing is imported), or None."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads):
    """The machine (transformer.machine.describe) and the versions of this package, NumPy,
    SciPy, threadpoolctl and every peer (None: not installed), for results.json."""
    import transformer
    from .. import machine
    info = machine.describe(threads)
    info["versions"] = {"transformer": transformer.__version__, "numpy": np.__version__,
                        **{n: package_version(n) for n in ("scipy", "threadpoolctl")
                           + PEER_DISTRIBUTIONS}}
    return info
