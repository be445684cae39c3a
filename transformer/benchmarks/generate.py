"""Generate suite: greedy text-generation throughput of this engine against its CPU peers.

What is measured
----------------
A GPT-2-small-shaped model (12 layers, C=768, 12 heads, vocab 50257, 1024 positions) with random
weights (`torch.manual_seed(0)`, `GPT2LMHeadModel(GPT2Config(...))`), saved once by
`save_pretrained` under the work directory (default `.cache/bench/gpt2-small-random/`) and reused
(--sizes tiny: a 2-layer C=64 model, `gpt2-tiny-random/`). For each batch size (default 1 and 8;
--quick: 1 and 4), `B` prompts of `prompt_len` (16) random token ids (NumPy, seeded; the same for
every engine; no padding) are continued greedily by exactly `new_tokens` tokens (default 128;
--quick: 16):

  transformer   `transformer.load(dir, threads=n).generate(ids, max_new_tokens=N,
                eos_token_id=[])` (this project)
  torch         Hugging Face transformers `GPT2LMHeadModel.generate` in PyTorch eager mode (its
                default attention implementation), use_cache=True, greedy, under
                torch.inference_mode, `torch.set_num_threads(n)`
  ctranslate2   the same directory converted by CTranslate2's TransformersConverter (float32), run
                by `Generator(intra_threads=n, inter_threads=1).generate_batch(..., max_length=N,
                sampling_topk=1, include_prompt_in_result=False, end_token=[])`
  llama.cpp     llama-cpp-python (when `llama_cpp` is importable; it is not a dependency) on a
                GGUF written from the same weights by the `gguf` package (peers.write_gpt2_gguf:
                F32 for float32, Q8_0 for int8, BF16 for bfloat16), greedy through
                Llama.generate; batch 1 only (one sequence at a time)

--dtype int8 / bfloat16 runs every engine at that compute type (engines.py): ours through
transformer.load(dtype=...), torch int8 by dynamic quantization of nn.Linear (GPT-2's Conv1D made
nn.Linear first), CTranslate2 compute_type "int8", llama.cpp q8_0. The check is still against HF
torch float32; at int8 its divergences are the quantization's: the identical-token fraction is
the accuracy column, and an engine is never refused timing for it (only for malformed output).

No engine may stop early: the end-of-sequence token is switched off for all of them (ours:
eos_token_id=[]; HF: the model's generation_config gets eos_token_id=None, pad_token_id=0;
CTranslate2: end_token=[]), so GPT-2's <|endoftext|> is an ordinary token. Random weights have no
tokenizer; CTranslate2's converter needs one for its vocabulary, so it is given a stand-in whose
tokens are the strings "<0>".."<V-2>" and "<|endoftext|>" for the last id (bos = eos = unk, as
in GPT-2); prompts go to CTranslate2 as those strings and its results are read back as ids.

Check, before any timing (the call is also each engine's warm-up): every engine must return
exactly B x N new tokens (ours and HF also the prompt unchanged); then its tokens are compared
with HF torch's (the reference, also when torch is not among the timed peers): the fraction of
identical new tokens, the sequences identical throughout, and the first position where a
sequence diverges. Greedy decoding amplifies float rounding: once two engines pick different
tokens at a near tie, the rest of the sequence differs, so a late divergence is expected, not an
error. At each first divergence the HF logit gap between the reference's token and the engine's
is computed (one torch forward on the reference prefix): a gap under 1e-3 is a float near-tie;
a larger one means a wrong result, and the engine is flagged and not timed (as is one with the
wrong number of tokens). Without torch there is no reference and no gap: the engines are compared
with this engine's tokens and any divergence is flagged.

Timing: interleaved rounds; in each round every engine in turn runs one full generate call at
every batch size (the starting engine rotates, with a short pause before each engine); the
bandwidth probe runs once per round. The time of a call includes the prefill of the prompt.
Reported: median seconds per call, its spread, new tokens/s = B * N / median, and the ratio of
this engine's throughput to each peer's (> 1: this engine is faster). The targets of the issue
that introduced generation: >= 1.3x torch, >= 0.8x ctranslate2 at every batch size (float32),
>= 1.0x llama.cpp f32; at int8 >= 1.25x ctranslate2 int8, >= 1.1x llama.cpp q8_0.

Machine limit, measured in the same run: decoding reads every weight once per step, so at batch 1
it is bound by memory bandwidth. The probe is a read-only stream: float32 matrix-vector product
(BLAS sgemv) over a large matrix (512 MiB; --quick 128 MiB), BLAS pinned to n threads, through
NumPy's matmul and SciPy's sgemv; GB/s counts the matrix bytes read once; the faster is the
limit. A NumPy copy of the same buffer (1 thread, read + write counted) is reported for
reference. Each engine's "fraction of the bandwidth limit" = weight bytes per step * steps/s /
limit, with weight bytes = 4 * all parameters at float32 (the LM head is tied to the token
embeddings and counted once: 124.4 M parameters, 498 MB for GPT-2 small; at int8 the matrices
at 1 byte + a float32 scale per row, at bfloat16 at 2 bytes: weight_bytes) and steps/s =
tokens/s / B. The KV-cache reads, the prefill and the Python overhead are not counted, so 100%
is not reachable; at larger batches the work is closer to compute-bound and the fraction is only
indicative.
"""
import json
import os
import statistics

import numpy as np

from . import harness, limits, peers as peer_setup, stats
from .engines import Bound, Setup, load_engines, reference_options
from .harness import ENGINE
from .stats import log

TAG = "generate"
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
GPT2_TINY = dict(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                 bos_token_id=999, eos_token_id=999)
NEAR_TIE = 1e-3             # HF logit gap below which a divergence is a float near-tie
TARGETS = {"float32": {"torch": 1.3, "ctranslate2": 0.8, "llama.cpp": 1.0},
           "int8": {"ctranslate2": 1.25, "llama.cpp": 1.1}}
SOURCE_TEXT = {"sgemv_numpy": "NumPy's matmul", "sgemv_scipy": "SciPy's sgemv"}

# Per size level: model, batch sizes, new tokens, prompt length, rounds, bandwidth probe MiB.
LEVELS = {"tiny": dict(model=("gpt2-tiny-random", GPT2_TINY), batch_sizes=[1, 2], new_tokens=4,
                       prompt_len=4, rounds=2, bw_mib=16),
          "quick": dict(model=("gpt2-small-random", GPT2_SMALL), batch_sizes=[1, 4],
                        new_tokens=16, prompt_len=16, rounds=3, bw_mib=128),
          "full": dict(model=("gpt2-small-random", GPT2_SMALL), batch_sizes=[1, 8],
                       new_tokens=128, prompt_len=16, rounds=3, bw_mib=512)}


# ---------------------------------------------------------------------------------------------
# The model: random weights of a GPT-2 shape, saved once and reused.
# ---------------------------------------------------------------------------------------------

def model_params(cfg):
    """Parameter count of a GPT-2 config dict, the tied LM head counted once: token and position
    embeddings, per layer 2 norms (4C), c_attn (3C*C + 3C), c_proj (C*C + C), c_fc (C*F + F),
    mlp c_proj (F*C + C), and the final norm (2C)."""
    C, V, P, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"]
    F = cfg.get("n_inner") or 4 * C
    per_layer = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C)
    return V * C + P * C + L * per_layer + 2 * C


def weight_bytes(cfg, dtype):
    """Bytes of weights read per decode step at a compute type: every parameter once
    (model_params; the tied LM head once) at 4 bytes in float32; at int8 the matrices (the
    per-layer projections and the LM head = token embedding) at 1 byte plus one float32 scale
    per output row, at bfloat16 at 2 bytes, the rest (biases, norms, position embeddings) at
    4 bytes. The KV cache is not counted."""
    C, V, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"]
    F = cfg.get("n_inner") or 4 * C
    total = model_params(cfg)
    if dtype == "float32":
        return 4 * total
    matrices = L * (3 * C * C + C * C + C * F + F * C) + V * C
    rows = L * (3 * C + C + F + C) + V                  # output rows: one scale each at int8
    if dtype == "int8":
        return matrices + 4 * rows + 4 * (total - matrices)
    return 2 * matrices + 4 * (total - matrices)


def ensure_model(workdir, name="gpt2-small-random", shape=GPT2_SMALL):
    """The random GPT-2 directory `name` under workdir: made once (torch.manual_seed(0),
    GPT2LMHeadModel(GPT2Config(**shape)).save_pretrained, written to a temporary folder, then
    renamed), reused when its config.json has the expected shape. Returns (dir, note). Raises
    ImportError when it must be made and torch/transformers are not installed."""
    def make(folder):
        import torch
        import transformers
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).eval()
        model.save_pretrained(folder)
        return (f"torch.manual_seed(0), GPT2LMHeadModel(GPT2Config({shape})), torch "
                f"{torch.__version__}, transformers {transformers.__version__}")
    return peer_setup.cached_model(workdir, name, shape, make, TAG)


def make_prompts(batch_sizes, prompt_len, vocab, seed):
    """{B: (B, prompt_len) int64 random ids}, one seeded generator for all batch sizes."""
    rng = np.random.default_rng(seed)
    return {b: rng.integers(0, vocab, (b, prompt_len), dtype=np.int64) for b in batch_sizes}


# ---------------------------------------------------------------------------------------------
# Engines. Each one holds its model and its own form of the prompts (made once, outside the
# timing); run(B) does one generate call on the batch-B prompts and returns ((B, N) int64 new

def token_agreement(out, ref, prompts, batch, reference, dtype="float32"):
    """Compare an engine's (tokens, problem) with the float32 reference's for one batch size:
    the harness.compare_tokens record, plus the HF logit gap at each first divergence (when the
    reference engine is there), "max_divergence_gap", and "ok": no problem, and at float32
    every divergence a near-tie (gap < NEAR_TIE; without the reference engine any divergence
    fails). At int8 / bfloat16 divergences are the quantization's: reported (the agreement is
    the accuracy column), never a reason not to time."""
    tokens, problem = out
    if problem:
        return {"ok": False, "is_reference": False, "problem": problem, "text": problem}
    a = harness.compare_tokens(tokens, ref[0])
    gaps = []
    if reference is not None and a.get("first_divergence_per_sequence"):
        for i, pos in enumerate(a["first_divergence_per_sequence"]):
            if pos is not None:
                gaps.append(reference.logit_gap(prompts[batch][i], ref[0][i, :pos],
                                                ref[0][i, pos], tokens[i, pos]))
    a["divergence_gaps"] = gaps
    a["max_divergence_gap"] = max((abs(g) for g in gaps), default=None)
    if a["identical_fraction"] is not None and a["first_divergence"] is not None:
        if dtype != "float32":
            a["ok"] = True
            if a["max_divergence_gap"] is not None:
                a["text"] += f" (HF logit gap <= {a['max_divergence_gap']:.1e})"
            a["text"] += f"; {dtype}: reported, not a reason not to time"
        elif reference is not None:
            a["ok"] = a["max_divergence_gap"] is not None and a["max_divergence_gap"] < NEAR_TIE
            a["text"] += (f" (HF logit gap <= {a['max_divergence_gap']:.1e}: "
                          + ("float near-tie)" if a["ok"] else "a wrong result)"))
        else:
            a["text"] += " (no HF reference to tell a near-tie from a wrong result)"
    return a


def accuracy_text(agreement):
    """The accuracy cell of a generate row: tokens identical to the float32 reference's."""
    if not agreement or agreement.get("identical_fraction") is None:
        return "reference" if agreement and agreement.get("is_reference") else None
    n = len(agreement.get("first_divergence_per_sequence") or [])
    return (f"{100 * agreement['identical_fraction']:.1f}% tokens identical, "
            f"{agreement['identical_sequences']}/{n} sequences whole")


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

def run_generate(threads, rounds, batch_sizes, new_tokens, prompt_len, peers,
                 workdir=os.path.join(".cache", "bench"), seed=0, bw_mib=512, pause=0.25,
                 model=("gpt2-small-random", GPT2_SMALL), time_disagreeing=False,
                 dtype="float32"):
    """Make/load the model, check every engine at `dtype` against HF torch float32, time,
    return the SUITE record (report.py). Raises ValueError for bad sizes; ImportError when the
    model must be made and torch is missing."""
    name, shape = model
    if (threads < 1 or rounds < 1 or new_tokens < 1 or prompt_len < 1 or bw_mib < 1
            or not batch_sizes or min(batch_sizes) < 1):
        raise ValueError("threads, rounds, new tokens, prompt length, bandwidth MiB and the "
                         "batch sizes must be positive")
    if prompt_len + new_tokens > shape["n_positions"]:
        raise ValueError(f"prompt length + new tokens exceeds the model's "
                         f"{shape['n_positions']} positions")
    model_dir, model_note = ensure_model(workdir, name, shape)
    log(model_note, TAG)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    vocab = config["vocab_size"]
    n_params = model_params(config)
    nbytes = weight_bytes(config, dtype)
    prompts = make_prompts(batch_sizes, prompt_len, vocab, seed)
    log(f"model {model_dir}; batch sizes {batch_sizes}; prompt {prompt_len} + {new_tokens} new "
        f"tokens; threads {threads}; dtype {dtype}", TAG)
    engines, reference, skipped = load_engines(
        Setup("generate", model_dir, threads, dtype, workdir, vocab_size=vocab), peers, TAG)

    def prepare(engine, b):
        return engine.generator(prompts[b], new_tokens)
    ref_kw, notes = reference_options(reference, engines, prepare, "tokens are")
    notes = [model_note] + notes

    probe = limits.BandwidthProbe(bw_mib, threads)
    log(f"checking, then timing {rounds} rounds x {[e.name for e in engines]}", TAG)
    ticks = stats.cpu_sample()
    rows, probes = harness.compare_engines(
        [Bound(e, prepare) for e in engines], batch_sizes,
        lambda out, ref, b: token_agreement(out, ref, prompts, b, reference, dtype),
        rounds, pause=pause, probe=probe.measure, time_disagreeing=time_disagreeing, tag=TAG,
        case_label=lambda b: f"batch {b}", **ref_kw)
    usage, warning = stats.busy_check(ticks, TAG)
    bw = {k: statistics.median(p[k] for p in probes)
          for k in ("sgemv_numpy", "sgemv_scipy", "copy_1thread")} if probes else {}
    source = max(("sgemv_numpy", "sgemv_scipy"), key=bw.get) if bw else None
    limit = bw.get(source)

    by_name = {e.name: e for e in engines}
    ours = {r["case"]: r["seconds"]["median"] for r in rows
            if r["engine"] == ENGINE and r["seconds"]}
    out_rows, targets = [], []
    goals = TARGETS.get(dtype, {})
    for r in rows:
        b = batch_sizes[r["case_index"]]
        row = {"case": r["case"], "group": "generate", "engine": r["engine"],
               "compute_type": by_name[r["engine"]].compute_type,
               "status": r["status"], "figures": [], "seconds": r["seconds"], "ratio": None,
               "fraction_of_limit": None, "limit": None, "agreement": r["agreement"],
               "accuracy": accuracy_text(r["agreement"]) if dtype != "float32" else None,
               "note": r["note"], "batch": b}
        if r["seconds"]:
            med = r["seconds"]["median"]
            row["figures"] = [{"value": b * new_tokens / med, "unit": "new tokens/s"},
                              {"value": 1e3 * med / new_tokens, "unit": "ms/step"}]
            row["ratio"] = stats.ratio(ours.get(r["case"]), med)
            if limit:
                row["fraction_of_limit"] = nbytes * (new_tokens / med) / (limit * 1e9)
                row["limit"] = f"read {limit:.1f} GB/s"
            if r["engine"] in goals and row["ratio"] is not None:
                goal = goals[r["engine"]]
                targets.append(f"target >= {goal}x {r['engine']} ({dtype}) at batch {b}: "
                               f"ratio {row['ratio']:.2f} -> "
                               + ("met" if row["ratio"] >= goal else "**not met**"))
        out_rows.append(row)

    names = [e.name for e in engines]
    scaling = [{"name": "batch", "title": "Greedy generation: new tokens/s against batch size",
                "xlabel": "batch size", "ylabel": "new tokens / s", "x": batch_sizes,
                "series": {n: [next((r["figures"][0]["value"] for r in out_rows
                                     if r["engine"] == n and r["batch"] == b and r["figures"]),
                                    None) for b in batch_sizes] for n in names},
                "logx": True, "logy": True}] if len(batch_sizes) > 1 else []
    summary = [
        f"Greedy generation, {name} (GPT-2 shape: {shape['n_layer']} layers, C="
        f"{shape['n_embd']}, {shape['n_head']} heads, vocab {shape['vocab_size']}; random "
        f"weights), CPU, {dtype}, {stats.plural(threads, 'thread')}: prompts of {prompt_len} "
        f"random tokens, exactly {new_tokens} new tokens per sequence (no early stop), time "
        f"includes the prefill; median of {rounds} interleaved rounds"
        f"{stats.usage_text(usage)}.",
    ]
    if limit:
        summary.append(
            f"Machine limit (same run, median over rounds): read bandwidth {limit:.1f} GB/s "
            f"(float32 sgemv through {SOURCE_TEXT[source]} over {probe.shape_text}, "
            f"{stats.plural(threads, 'thread')}, "
            f"matrix bytes read once; numpy {bw['sgemv_numpy']:.1f}, scipy "
            f"{bw['sgemv_scipy']:.1f}); copy {bw['copy_1thread']:.1f} GB/s (1 thread, read + "
            f"write). Weights read per decode step at {dtype}: {nbytes / 1e6:.0f} MB "
            f"({n_params / 1e6:.1f} M parameters, tied LM head counted once; weight_bytes), so "
            f"batch-1 decoding is bound at {limit * 1e9 / nbytes:.1f} tokens/s.")
    return {"title": f"Generate: greedy decoding ({name}, {dtype})", "status": "ok",
            "summary": summary, "warnings": [warning] if warning else [],
            "rows": out_rows, "tables": [], "scaling": scaling, "skipped": skipped,
            "notes": targets + notes,
            "limits": {"read_gbs": limit, "read_source": source, "bandwidth": bw,
                       "bandwidth_per_round": probes, "bandwidth_shape": probe.shape_text,
                       **usage},
            "config": {"model_dir": model_dir, "model": name, "shape": shape,
                       "batch_sizes": batch_sizes, "new_tokens": new_tokens,
                       "prompt_len": prompt_len, "rounds": rounds, "threads": threads,
                       "seed": seed, "n_params": n_params, "weight_bytes": nbytes,
                       "dtype": dtype, "pause": pause}}


def run(cfg):
    """The generate suite for a BenchConfig (sizes level, threads, peers, rounds, seed,
    dtype)."""
    from . import require_random_model
    level = LEVELS[cfg.sizes]
    require_random_model(cfg.workdir, level["model"][0])
    return run_generate(cfg.threads, cfg.rounds or level["rounds"], level["batch_sizes"],
                        level["new_tokens"], level["prompt_len"], cfg.peers, cfg.workdir,
                        cfg.seed, level["bw_mib"], cfg.pause, level["model"],
                        cfg.time_disagreeing, cfg.dtype)
