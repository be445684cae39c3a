"""Translate suite: beam-search translation throughput of this engine against its CPU peers
(bench/README.md, "translate"), CTranslate2's benchmark protocol (target tokens/s, batch 32,
beam 4) on a Marian-shaped model with random weights (made once, cached; the output projection
untied and its pad row zeroed, so that outputs depend on the source and no engine emits pad);
sources of realistic lengths (those of data/sentences.txt under the MiniLM WordPiece tokenizer)
with random ids; each engine in a fresh process of its own per round; hypotheses compared with
HF torch float32's (divergences scored by HF, reported, never fatal); a fraction of the sgemm
limit on the decoder's dense shapes (int8: our int8 GEMM's GOP/s).
"""
import json
import math
import os
import re

import numpy as np

from . import harness, limits, peers as peer_setup, stats
from .engines import Setup, run_model_suite
from .stats import log

TAG = "translate"
EOS, UNK = 0, 1             # Marian's; pad = decoder start = the last id
MARIAN = dict(vocab_size=32000, d_model=512, encoder_layers=6, decoder_layers=6,
              encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
              decoder_ffn_dim=2048, activation_function="swish", max_position_embeddings=512,
              scale_embedding=True, share_encoder_decoder_embeddings=True,
              tie_word_embeddings=False, pad_token_id=31999, eos_token_id=EOS,
              decoder_start_token_id=31999, forced_eos_token_id=None)
MARIAN_TINY = dict(MARIAN, vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2,
                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                   decoder_ffn_dim=128, pad_token_id=999, decoder_start_token_id=999)
NEAR_TIE = 1e-3             # HF score gap below which a divergence is a float near-tie
TARGETS = {"float32": {"torch": 2.0, "ctranslate2": 0.8}, "int8": {"ctranslate2": 1.25}}
MAX_SCORED = 64             # divergent sentences scored by HF per engine (time bound)
BATCH_SIZE, BEAMS = 32, 4   # CTranslate2's benchmark protocol

# Per size level: model, sentences used (0: all), rounds.
LEVELS = {"tiny": dict(model=("marian-tiny-random", MARIAN_TINY), max_sentences=4, rounds=3),
          "quick": dict(model=("marian-random", MARIAN), max_sentences=16, rounds=3),
          "full": dict(model=("marian-random", MARIAN), max_sentences=0, rounds=3)}


# ---------------------------------------------------------------------------------------------
# The model (Marian shape, random weights, saved once) and the source batches.
# ---------------------------------------------------------------------------------------------

def make_model(folder, shape):
    """Save a random Marian of `shape` into folder (torch.manual_seed(0), MarianMTModel, pad row
    of lm_head zeroed); runs in a preparation process (peers.cached_model). Returns a note."""
    import torch
    import transformers
    torch.manual_seed(0)
    model = transformers.MarianMTModel(transformers.MarianConfig(**shape)).eval()
    pad = shape["pad_token_id"]
    with torch.no_grad():
        model.lm_head.weight[pad].zero_()
    if model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr():
        raise RuntimeError("lm_head is still tied to the embeddings")
    model.save_pretrained(folder)
    return (f"torch.manual_seed(0), MarianMTModel(MarianConfig({shape})), lm_head row "
            f"{pad} (pad) zeroed; torch {torch.__version__}, transformers "
            f"{transformers.__version__}")


def ensure_model(workdir, name="marian-random", shape=MARIAN):
    """The random Marian directory `name` under workdir, made once (make_model) and reused.
    Returns (dir, note). Raises ImportError when it must be made without torch/transformers."""
    return peer_setup.cached_model(workdir, name, shape, make_model, TAG)


def sentence_lengths(path):
    """Token counts (without special tokens) of the non-empty lines of `path` under the
    all-MiniLM-L6-v2 tokenizer.json (`tokenizers`, padding and truncation off). Falls back to a
    word/punctuation count x 1.15 if that tokenizer is not installed. Returns (lengths, note)."""
    from .encode import default_model_dir, read_sentences
    sentences = read_sentences(path)
    try:
        import tokenizers
        tok_path = os.path.join(default_model_dir(), "tokenizer.json")
        tok = tokenizers.Tokenizer.from_file(tok_path)
        tok.no_padding()
        tok.no_truncation()
        lengths = [len(e.ids) for e in tok.encode_batch(sentences, add_special_tokens=False)]
        return np.array(lengths, np.int64), f"lengths from the WordPiece tokenizer {tok_path}"
    except ImportError as e:
        lengths = [max(1, round(1.15 * len(re.findall(r"\w+|[^\w\s]", s)))) for s in sentences]
        return np.array(lengths, np.int64), (f"all-MiniLM-L6-v2 tokenizer unavailable ({e}); "
                                             "lengths = 1.15 x words and punctuation")


def make_batches(lengths, batch_size, seed, factor, fixed, vocab):
    """Random source ids of the given lengths (+ eos), drawn from 2..vocab-2, in batches of
    batch_size in order, right-padded with pad (vocab - 1). Returns [{"input_ids",
    "attention_mask" (B, S) int64, "lengths" (B,), "max_new_tokens": int}]: max_new_tokens =
    `fixed` when non-zero, else ceil(factor x the batch's longest source)."""
    rng = np.random.default_rng(seed)
    pad = vocab - 1
    batches = []
    for i in range(0, len(lengths), batch_size):
        lens = lengths[i:i + batch_size] + 1
        S = int(lens.max())
        ids = np.full((len(lens), S), pad, np.int64)
        mask = np.zeros((len(lens), S), np.int64)
        for r, n in enumerate(lens):
            ids[r, :n - 1] = rng.integers(2, pad, n - 1)
            ids[r, n - 1] = EOS
            mask[r, :n] = 1
        n_new = fixed or int(math.ceil(factor * S))
        batches.append({"input_ids": ids, "attention_mask": mask, "lengths": lens,
                        "max_new_tokens": n_new})
    return batches


# ---------------------------------------------------------------------------------------------
# The check: hypotheses against HF torch's, divergences scored by HF.
# ---------------------------------------------------------------------------------------------

def agreement(hyps, ref, batches, scorer):
    """Compare per-sentence target ids with the reference's: sequences identical, identical
    tokens (position by position over the longer of each pair), first divergences, and where HF
    torch (`scorer`, a TorchEngine, or None) is there its score gap (reference hypothesis minus
    this engine's) at up to MAX_SCORED divergent sentences."""
    where = [(bi, r) for bi, b in enumerate(batches) for r in range(len(b["lengths"]))]
    same_tokens = total = 0
    divergences = []
    for k, (h, g) in enumerate(zip(hyps, ref)):
        n = max(len(h), len(g))
        eq = [a == b for a, b in zip(h, g)]
        same_tokens += sum(eq)
        total += n
        if h != g:
            pos = eq.index(False) if not all(eq) else min(len(h), len(g))
            bi, r = where[k]
            divergences.append({"sentence": k, "batch": bi, "position": pos,
                                "reference_token": g[pos] if pos < len(g) else None,
                                "engine_token": h[pos] if pos < len(h) else None,
                                "reference_length": len(g), "engine_length": len(h)})
    for d in divergences[:MAX_SCORED]:
        if scorer is None:
            break
        k = d["sentence"]
        s_ref, s_eng = scorer.scores(d["batch"], where[k][1], [ref[k], hyps[k]])
        d["score_reference"], d["score_engine"], d["score_gap"] = s_ref, s_eng, s_ref - s_eng
    gaps = [abs(d["score_gap"]) for d in divergences if "score_gap" in d]
    return {"identical_sequences": len(hyps) - len(divergences), "n_sequences": len(hyps),
            "identical_token_fraction": same_tokens / max(total, 1),
            "first_divergence": min((d["position"] for d in divergences), default=None),
            "max_score_gap": max(gaps, default=None),
            "near_ties": sum(g < NEAR_TIE for g in gaps), "scored": len(gaps),
            "divergences": divergences}


def fmt_agreement(a):
    """Agreement cell: sequences identical, token fraction, first divergence, score gap."""
    if a is None:
        return "-"
    if a.get("is_reference"):
        return "reference"
    if a.get("problem"):
        return a["problem"]
    text = f"{a['identical_sequences']}/{a['n_sequences']} seq, " \
           f"{100 * a['identical_token_fraction']:.2f}% tokens"
    if a["first_divergence"] is not None:
        text += f", first diverges at {a['first_divergence']}"
        if a["max_score_gap"] is not None:
            text += f" (score gap <= {a['max_score_gap']:.1e}; {a['near_ties']}/{a['scored']} " \
                    "near-ties)"
    return text


def check(out, ref, batches, scorer):
    """harness.compare_engines' check of one engine's (hyps, problem, name) against the
    reference's:
    the agreement() record with "ok" (no problem: divergences are reported, never fatal),
    "is_reference" and "text"; the first divergences are logged."""
    hyps, problem, name = out
    if problem:
        return {"ok": False, "is_reference": False, "problem": problem, "text": problem}
    a = agreement(hyps, ref[0], batches, scorer)
    a.update(ok=True, is_reference=False)
    a["text"] = fmt_agreement(a)
    log(f"{name} vs the reference: {a['text']}", TAG)
    for d in a["divergences"][:5]:
        log(f"  {name}: sentence {d['sentence']} (batch {d['batch']}) diverges at "
            f"{d['position']}: reference {d['reference_token']} vs {d['engine_token']} "
            f"(lengths {d['reference_length']} / {d['engine_length']})"
            + ("" if "score_gap" not in d else f"; HF score gap {d['score_gap']:.2e}"), TAG)
    return a


def dense_flops(config, src_lengths, tgt_counts, beams):
    """Dense-layer FLOPs of one pass (see the module docstring): encoder and cross K/V per real
    source token, decoder layers and output projection per target token per beam."""
    C, F, V = config["d_model"], config["encoder_ffn_dim"], config["vocab_size"]
    Fd, Le, Ld = config["decoder_ffn_dim"], config["encoder_layers"], config["decoder_layers"]
    src = float(np.sum(src_lengths))
    tgt = float(np.sum(tgt_counts)) * beams
    return (src * Le * 2 * (4 * C * C + 2 * C * F) + src * Ld * 2 * 2 * C * C
            + tgt * (Ld * 2 * (6 * C * C + 2 * C * Fd) + 2 * C * V))


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

def run(cfg):
    """The translate suite for a BenchConfig (sizes level, threads, peers, rounds, seed, dtype,
    sentences: the file whose lengths make the sources): make/load the model, build the
    batches (batch 32, beam 4, length penalty 1, decoding capped at the batch's longest
    source), check every engine at cfg.dtype against HF torch float32, time; returns the SUITE
    record (report.py). Raises SuiteSkipped when the model must be made without torch."""
    from . import require_random_model
    from .encode import default_sentences
    level, dtype, threads = LEVELS[cfg.sizes], cfg.dtype, cfg.threads
    (name, shape), rounds = level["model"], cfg.rounds or level["rounds"]
    batch_size, beams, length_penalty = BATCH_SIZE, BEAMS, 1.0
    sentences = cfg.sentences or default_sentences()
    require_random_model(cfg.workdir, name)
    model_dir, model_note = ensure_model(cfg.workdir, name, shape)
    log(model_note, TAG)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    lengths, length_note = sentence_lengths(sentences)
    lengths = lengths[:level["max_sentences"]] if level["max_sentences"] else lengths
    batches = make_batches(lengths, batch_size, cfg.seed, 1.0, 0, config["vocab_size"])
    src_lengths = np.concatenate([b["lengths"] for b in batches])
    n_new = [b["max_new_tokens"] for b in batches]
    log(f"model {model_dir}; {len(src_lengths)} sources ({length_note}; {src_lengths.min()}-"
        f"{src_lengths.max()} tokens with eos); max_new_tokens per batch {n_new}", TAG)
    C, V = config["d_model"], config["vocab_size"]
    M, F = batch_size * beams, config["decoder_ffn_dim"]
    limit = limits.DenseLimit(dtype, [(M, C, C)] * 6 + [(M, C, F), (M, F, C), (M, C, V)],
                              threads)
    case = {"label": f"batch {batch_size}, beam {beams}", "batches": batches, "beams": beams,
            "length_penalty": length_penalty}
    got = run_model_suite(
        Setup("translate", model_dir, threads, dtype, cfg.workdir, vocab_size=V, eos=EOS,
              unk=UNK, pad=config["pad_token_id"]), cfg.peers, [case],
        lambda out, ref, case, reference: check(out, ref, batches, reference), rounds, limit,
        cfg.pause, cfg.time_disagreeing, "hypotheses are")
    lim = limit.summarize(got["probes"])
    last = {r["engine"]: r["output"][0] for r in got["rows"] if r["output"] is not None}
    counts = {n: [len(h) for h in hyps] for n, hyps in last.items()}

    def figures(r, med):
        flops = dense_flops(config, src_lengths, counts[r["engine"]], beams)
        return [{"value": sum(counts[r["engine"]]) / med, "unit": "target tokens/s"},
                {"value": flops / med / 1e9, "unit": "GFLOP/s"}], flops / 1e9
    rows = harness.report_rows(got["rows"], got["engines"], "translate", figures,
                               (lim["value"], lim["label"]))
    for row in rows:
        hyps = last.get(row["engine"])
        row.update(target_tokens=None if hyps is None else int(sum(counts[row["engine"]])),
                   eos_ended=None if hyps is None else
                   int(sum(1 for h in hyps if h and h[-1] == EOS)))
        if row["figures"]:
            row["figures"].insert(1, {"value": row["target_tokens"], "unit": "target tokens"})
    # errors in a line each; divergences: the check cell, the log and results.json's agreement
    problems = [f"{r['engine']}: {r['note'].strip().splitlines()[0]}" for r in rows
                if r["status"] == "error" and r["note"]]
    summary = [
        f"CPU, {dtype}, {stats.plural(threads, 'thread')}: {len(src_lengths)} sources "
        f"({int(src_lengths.sum())} tokens with eos, lengths of {os.path.basename(sentences)}) "
        f"in batches of {batch_size}, beam {beams}, length penalty {length_penalty}, "
        f"max_new_tokens the batch's longest source ({n_new}); {got['protocol']}."]
    if lim["value"]:
        summary.append(f"Machine limit (same run, median over rounds): {lim['text']}.")
    return {"title": f"Translate: beam-search translation, {name} (Marian shape, random "
                     f"weights, {dtype})", "status": "ok", "summary": summary,
            "warnings": got["warnings"], "rows": rows,
            "skipped": got["skipped"], "notes": harness.target_notes(
                rows, TARGETS.get(dtype, {}), dtype) + problems + [model_note, length_note]
            + got["notes"], "limits": {"dense": lim, **got["usage"]},
            "config": {"model_dir": model_dir, "model": name,
                       "shape": {k: config.get(k) for k in shape}, "threads": threads,
                       "rounds": rounds, "batch_size": batch_size, "beams": beams,
                       "length_penalty": length_penalty, "seed": cfg.seed,
                       "sentences": sentences, "n_source_tokens": int(src_lengths.sum()),
                       "source_lengths": src_lengths.tolist(), "max_new_tokens": n_new,
                       "pause": cfg.pause, "dtype": dtype}}
