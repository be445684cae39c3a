"""Generate suite: greedy generation throughput of this engine against its peers (bench/README.md,
"generate"): a GPT-2-small-shaped model with random weights (made once, cached), B random
prompts continued by exactly N new tokens (no engine stops early), each engine in a fresh process
of its own per round; checked against HF torch float32 first (at float32 a divergence must be a
float near-tie by the HF logit gap; at int8 / bfloat16 / float16 it is the accuracy column);
a fraction of the read-bandwidth limit (every weight read once per decode step).
"""
import dataclasses
import json
import os
import statistics

import numpy as np

from . import harness, limits, peers as peer_setup, stats
from .engines import Setup, run_model_suite
from .stats import log

TAG = "generate"
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
GPT2_TINY = dict(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                 bos_token_id=999, eos_token_id=999)
NEAR_TIE = 1e-3             # HF logit gap below which a divergence is a float near-tie
TARGETS = {"float32": {"torch": 1.3, "ctranslate2": 0.8, "llama.cpp": 1.0},
           "int8": {"ctranslate2": 1.25, "llama.cpp": 1.1}, "int4": {"llama.cpp": 1.0}}
SOURCE_TEXT = {"sgemv_numpy": "NumPy's matmul", "sgemv_scipy": "SciPy's sgemv",
               "device_copy": "a device-to-device copy (CuPy; read + written)"}

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
    per output row, at int4 at 6 bits (4-bit codes, a float32 scale and minimum per 32), at
    bfloat16 at 2 bytes, the rest (biases, norms, position embeddings) at 4 bytes. The KV cache
    is not counted."""
    C, V, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"]
    F = cfg.get("n_inner") or 4 * C
    total = model_params(cfg)
    if dtype == "float32":
        return 4 * total
    matrices = L * (3 * C * C + C * C + C * F + F * C) + V * C
    rows = L * (3 * C + C + F + C) + V                  # output rows: one scale each at int8
    if dtype == "int8":
        return matrices + 4 * rows + 4 * (total - matrices)
    if dtype == "int4":
        return matrices * 3 // 4 + 4 * (total - matrices)
    return 2 * matrices + 4 * (total - matrices)


def make_model(folder, shape):
    """Save a random GPT-2 of `shape` into folder (torch.manual_seed(0), GPT2LMHeadModel); runs in
    a preparation process (peers.cached_model). Returns a note."""
    import torch
    import transformers
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).eval().save_pretrained(folder)
    return (f"torch.manual_seed(0), GPT2LMHeadModel(GPT2Config({shape})), torch "
            f"{torch.__version__}, transformers {transformers.__version__}")


def ensure_model(workdir, name="gpt2-small-random", shape=GPT2_SMALL):
    """The random GPT-2 directory `name` under workdir, made once (make_model) and reused.
    Returns (dir, note). Raises ImportError when it must be made without torch/transformers."""
    return peer_setup.cached_model(workdir, name, shape, make_model, TAG)


def make_prompts(batch_sizes, prompt_len, vocab, seed):
    """{B: (B, prompt_len) int64 random ids}, one seeded generator for all batch sizes."""
    rng = np.random.default_rng(seed)
    return {b: rng.integers(0, vocab, (b, prompt_len), dtype=np.int64) for b in batch_sizes}


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


def next_token_kl(setup, engines, prompts):
    """{engine name: mean KL(p_float32 || p_engine)} in nats of the next-token distributions at
    every position of prompts (B, T), HF torch float32 the reference (Engine.logits), each
    engine in a fresh process of its own; engines without logits are left out."""
    from .engines import REGISTRY, Isolated

    def log_softmax(z):
        z = z.astype(np.float64) - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    reference = Isolated("torch", dataclasses.replace(setup, dtype="float32"))
    ref = log_softmax(reference.once("logits", prompts))
    return {e.name: float((np.exp(ref) * (ref - log_softmax(e.once("logits", prompts))))
                          .sum(-1).mean())
            for e in engines if hasattr(REGISTRY[e.engine], "logits")}


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

def run(cfg):
    """The generate suite for a BenchConfig (sizes level, threads, peers, rounds, seed, dtype,
    device): make/load the model, check every engine at cfg.dtype against HF torch float32,
    time; returns the SUITE record (report.py). Raises SuiteSkipped when the model must be made
    without torch and transformers."""
    from . import require_random_model
    level, dtype, threads, gpu = LEVELS[cfg.sizes], cfg.dtype, cfg.threads, cfg.device == "cuda"
    (name, shape), rounds = level["model"], cfg.rounds or level["rounds"]
    batch_sizes, new_tokens, bw_mib = level["batch_sizes"], level["new_tokens"], level["bw_mib"]
    require_random_model(cfg.workdir, name)
    model_dir, model_note = ensure_model(cfg.workdir, name, shape)
    log(model_note, TAG)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    n_params, nbytes = model_params(config), weight_bytes(config, dtype)
    prompts = make_prompts(batch_sizes, level["prompt_len"], config["vocab_size"], cfg.seed)
    cases = [{"label": f"batch {b}", "batch": b, "prompts": prompts[b],
              "new_tokens": new_tokens} for b in batch_sizes]
    probe = limits.DeviceProbe([bw_mib << 20]) if gpu else limits.BandwidthProbe(bw_mib, threads)
    setup = Setup("generate", model_dir, threads, dtype, cfg.workdir,
                  vocab_size=config["vocab_size"], device=cfg.device)
    got = run_model_suite(
        setup, cfg.peers, cases,
        lambda out, ref, case, reference: token_agreement(out, ref, prompts, case["batch"],
                                                          reference, dtype),
        rounds, probe, cfg.pause, cfg.time_disagreeing, "tokens are")
    probes = got["probes"]
    keys = {"device_copy": f"copy_at_{bw_mib << 20}"} if gpu else \
        {k: k for k in ("sgemv_numpy", "sgemv_scipy", "copy_1thread")}
    bw = {k: statistics.median(p[v] for p in probes) for k, v in keys.items()} if probes else {}
    source = max((k for k in bw if k != "copy_1thread"), key=bw.get) if bw else None
    limit = bw.get(source)

    def figures(r, med):
        b = batch_sizes[r["case_index"]]
        return [{"value": b * new_tokens / med, "unit": "new tokens/s"},
                {"value": 1e3 * med / new_tokens, "unit": "ms/step"}], nbytes * new_tokens / 1e9
    rows = harness.report_rows(got["rows"], got["engines"], "generate", figures,
                               limit and (limit, f"read {limit:.1f} GB/s"),
                               accuracy_text if dtype != "float32" else None)
    for row, r in zip(rows, got["rows"]):
        row["batch"] = batch_sizes[r["case_index"]]
    kl_prompts = make_prompts([4], 32, config["vocab_size"], cfg.seed + 1)[4]
    kl = next_token_kl(setup, got["engines"], kl_prompts)
    got["notes"].append("Quality: mean KL(float32 || engine) of next-token distributions over "
                        "4 random prompts x 32 positions, HF torch float32 the reference: "
                        + ", ".join(f"{n} {v:.2e} nats" for n, v in kl.items()))
    summary = [
        f"Greedy generation, {name} (GPT-2 shape: {shape['n_layer']} layers, C="
        f"{shape['n_embd']}, {shape['n_head']} heads, vocab {shape['vocab_size']}; random "
        f"weights), {cfg.device.upper()}, {dtype}, {stats.plural(threads, 'thread')}: prompts "
        f"of {level['prompt_len']} random tokens, exactly {new_tokens} new tokens per sequence "
        f"(no early stop), time includes the prefill; {got['protocol']}."]
    if limit:
        how = f"{SOURCE_TEXT[source]}, {bw_mib} MiB" if gpu else (
            f"float32 sgemv through {SOURCE_TEXT[source]} over {probe.shape_text}, "
            f"{stats.plural(threads, 'thread')}, matrix bytes read once; numpy "
            f"{bw['sgemv_numpy']:.1f}, scipy {bw['sgemv_scipy']:.1f}); copy "
            f"{bw['copy_1thread']:.1f} GB/s (1 thread, read + write")
        summary.append(
            f"Machine limit (same run, median over rounds): read bandwidth {limit:.1f} GB/s "
            f"({how}). Weights read per decode step at {dtype}: {nbytes / 1e6:.0f} MB "
            f"({n_params / 1e6:.1f} M parameters, tied LM head counted once; weight_bytes), so "
            f"batch-1 decoding is bound at {limit * 1e9 / nbytes:.1f} tokens/s.")
    return {"title": f"Generate: greedy decoding ({name}, {dtype})", "status": "ok",
            "summary": summary, "warnings": got["warnings"], "rows": rows,
            "skipped": got["skipped"], "notes": harness.target_notes(
                rows, TARGETS.get(dtype, {}), dtype) + [model_note] + got["notes"],
            "limits": {"read_gbs": limit, "read_source": source, "bandwidth": bw,
                       "bandwidth_per_round": probes,
                       "bandwidth_shape": getattr(probe, "shape_text", None),
                       **got["usage"]},
            "config": {"model_dir": model_dir, "model": name, "shape": shape,
                       "batch_sizes": batch_sizes, "new_tokens": new_tokens,
                       "prompt_len": level["prompt_len"], "rounds": rounds, "threads": threads,
                       "seed": cfg.seed, "n_params": n_params, "weight_bytes": nbytes,
                       "next_token_kl": kl,
                       "dtype": dtype, "pause": cfg.pause}}
