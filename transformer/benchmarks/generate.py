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
that introduced generation: >= 1.3x torch, >= 0.8x ctranslate2 at every batch size.

Machine limit, measured in the same run: decoding reads every weight once per step, so at batch 1
it is bound by memory bandwidth. The probe is a read-only stream: float32 matrix-vector product
(BLAS sgemv) over a large matrix (512 MiB; --quick 128 MiB), BLAS pinned to n threads, through
NumPy's matmul and SciPy's sgemv; GB/s counts the matrix bytes read once; the faster is the
limit. A NumPy copy of the same buffer (1 thread, read + write counted) is reported for
reference. Each engine's "fraction of the bandwidth limit" = weight bytes per step * steps/s /
limit, with weight bytes = 4 * all parameters (the LM head is tied to the token embeddings and
counted once: 124.4 M parameters, 498 MB for GPT-2 small) and steps/s = tokens/s / B. The KV-cache
reads, the prefill and the Python overhead are not counted, so 100% is not reachable; at larger
batches the work is closer to compute-bound and the fraction is only indicative.
"""
import json
import os
import statistics

import numpy as np

from . import harness
from .harness import ENGINE, log

TAG = "generate"
PEERS = ("torch", "ctranslate2")
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
GPT2_TINY = dict(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                 bos_token_id=999, eos_token_id=999)
NEAR_TIE = 1e-3             # HF logit gap below which a divergence is a float near-tie
TARGETS = {"torch": 1.3, "ctranslate2": 0.8}
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
    return harness.cached_model(workdir, name, shape, make, TAG)


def make_prompts(batch_sizes, prompt_len, vocab, seed):
    """{B: (B, prompt_len) int64 random ids}, one seeded generator for all batch sizes."""
    rng = np.random.default_rng(seed)
    return {b: rng.integers(0, vocab, (b, prompt_len), dtype=np.int64) for b in batch_sizes}


# ---------------------------------------------------------------------------------------------
# Engines. Each one holds its model and its own form of the prompts (made once, outside the
# timing); run(B) does one generate call on the batch-B prompts and returns ((B, N) int64 new
# tokens, problem): problem is None, or what is wrong with the raw output.
# ---------------------------------------------------------------------------------------------

class Engine:
    """Interface: name, version, notes (list of str), run(B) -> ((B, N) int64, problem)."""
    name = "?"
    version = "?"

    def __init__(self, prompts, new_tokens):
        self.notes = []
        self.prompts = prompts
        self.new_tokens = new_tokens

    def run(self, batch):
        """One generate call on the batch-size-`batch` prompts."""
        raise NotImplementedError

    def prepare(self, batch):
        """harness.compare_engines interface: a zero-argument call."""
        return lambda: self.run(batch)

    def _split(self, batch, out):
        """For engines returning prompt + new tokens: check the shape and the echoed prompt;
        returns (new tokens, problem or None)."""
        ids = self.prompts[batch]
        out = np.asarray(out)
        want = (batch, ids.shape[1] + self.new_tokens)
        if out.shape != want:
            return out[:, ids.shape[1]:].astype(np.int64), \
                f"returned shape {out.shape}, expected {want}"
        if not np.array_equal(out[:, :ids.shape[1]], ids):
            return out[:, ids.shape[1]:].astype(np.int64), \
                "the returned prompt differs from the input prompt"
        return out[:, ids.shape[1]:].astype(np.int64), None


class TransformerEngine(Engine):
    """This project: model.generate(ids, max_new_tokens=N, eos_token_id=[]) (no early stop)."""
    name = ENGINE

    def __init__(self, model_dir, threads, prompts, new_tokens):
        super().__init__(prompts, new_tokens)
        import transformer
        self.version = transformer.__version__
        self.model = transformer.load(model_dir, threads=threads)

    def run(self, batch):
        out = self.model.generate(self.prompts[batch], max_new_tokens=self.new_tokens,
                                  do_sample=False, eos_token_id=[], pad_token_id=0)
        return self._split(batch, out)


class TorchEngine(Engine):
    """Hugging Face transformers GPT2LMHeadModel.generate, PyTorch eager, greedy, KV cache."""
    name = "torch"

    def __init__(self, model_dir, threads, prompts, new_tokens):
        super().__init__(prompts, new_tokens)
        torch, transformers, self.version = harness.load_torch(threads)
        self.torch = torch
        self.model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
        gcfg = self.model.generation_config
        # No early stop: a GenerationConfig passed to generate() is merged with the model's, so
        # the eos has to be removed from the model's own generation config.
        gcfg.eos_token_id = None
        gcfg.bos_token_id = None
        gcfg.pad_token_id = 0
        gcfg.do_sample = False
        gcfg.num_beams = 1
        gcfg.use_cache = True
        self.notes.append(harness.torch_note(torch, self.model))
        self.inputs = {b: (torch.from_numpy(ids), torch.ones_like(torch.from_numpy(ids)))
                       for b, ids in prompts.items()}

    def run(self, batch):
        ids, mask = self.inputs[batch]
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=self.new_tokens,
                                      do_sample=False, use_cache=True)
        return self._split(batch, out.numpy())

    def logit_gap(self, prompt, prefix, token_a, token_b):
        """logit[token_a] - logit[token_b] at the position after prompt + prefix (1-D ids)."""
        ids = np.concatenate([prompt, prefix]).astype(np.int64)[None]
        with self.torch.inference_mode():
            logits = self.model(self.torch.from_numpy(ids)).logits[0, -1]
        return float(logits[int(token_a)] - logits[int(token_b)])


class StandInTokenizer:
    """What CTranslate2's GPT-2 converter asks of a tokenizer, for a model without one: the
    vocabulary "<0>".."<V-2>" plus "<|endoftext|>" as the last id, which is bos, eos and unk."""
    bos_token = eos_token = unk_token = "<|endoftext|>"

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def get_vocab(self):
        """{token string: id}."""
        vocab = {f"<{i}>": i for i in range(self.vocab_size - 1)}
        vocab[self.eos_token] = self.vocab_size - 1
        return vocab


class Ct2Engine(Engine):
    """CTranslate2 Generator (float32) on the converted model; prompts as token strings,
    include_prompt_in_result=False (the prompt is prefilled at once), end_token=[] (no stop)."""
    name = "ctranslate2"

    def __init__(self, model_dir, threads, prompts, new_tokens, vocab_size):
        super().__init__(prompts, new_tokens)
        import ctranslate2
        self.version = f"ctranslate2 {ctranslate2.__version__}"
        out_dir = harness.ct2_convert(model_dir, model_dir.rstrip(os.sep) + "-ctranslate2",
                                      self.notes, TAG, StandInTokenizer(vocab_size))
        with open(os.path.join(out_dir, "vocabulary.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        if len(vocab) != vocab_size:
            raise RuntimeError(f"{out_dir}: vocabulary of {len(vocab)} tokens, expected "
                               f"{vocab_size}")
        self.generator = ctranslate2.Generator(out_dir, device="cpu", compute_type="float32",
                                               intra_threads=threads, inter_threads=1)
        self.inputs = {b: [[vocab[i] for i in row] for row in ids.tolist()]
                       for b, ids in prompts.items()}

    def run(self, batch):
        results = self.generator.generate_batch(
            self.inputs[batch], max_length=self.new_tokens, sampling_topk=1, beam_size=1,
            include_prompt_in_result=False, end_token=[])
        seqs = [r.sequences_ids[0] for r in results]
        lengths = sorted({len(s) for s in seqs})
        if len(seqs) != batch or lengths != [self.new_tokens]:
            width = max(lengths) if lengths else 0
            out = np.full((len(seqs), width), -1, np.int64)
            for i, s in enumerate(seqs):
                out[i, :len(s)] = s
            return out, (f"returned {len(seqs)} sequences of lengths {lengths}, expected "
                         f"{batch} of {self.new_tokens}")
        return np.asarray(seqs, dtype=np.int64), None


def build_engines(model_dir, threads, prompts, new_tokens, vocab_size, peers):
    """Load this engine, the HF torch reference (always tried) and the requested peers. Returns
    (engines in table order, reference engine or None, skipped: {name: reason})."""
    log(f"loading {ENGINE}", TAG)
    engines = [TransformerEngine(model_dir, threads, prompts, new_tokens)]
    loaded, torch_engine, skipped = harness.load_peers(
        {"torch": lambda: TorchEngine(model_dir, threads, prompts, new_tokens),
         "ctranslate2": lambda: Ct2Engine(model_dir, threads, prompts, new_tokens, vocab_size)},
        peers, TAG)
    return engines + loaded, torch_engine, skipped


def token_agreement(out, ref, prompts, batch, reference):
    """Compare an engine's (tokens, problem) with the reference's for one batch size: the
    harness.compare_tokens record, plus the HF logit gap at each first divergence (when the
    reference engine is there), "max_divergence_gap", and "ok": no problem, and every divergence
    a near-tie (gap < NEAR_TIE); without the reference engine any divergence fails."""
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
        if reference is not None:
            a["ok"] = a["max_divergence_gap"] is not None and a["max_divergence_gap"] < NEAR_TIE
            a["text"] += (f" (HF logit gap <= {a['max_divergence_gap']:.1e}: "
                          + ("float near-tie)" if a["ok"] else "a wrong result)"))
        else:
            a["text"] += " (no HF reference to tell a near-tie from a wrong result)"
    return a


# ---------------------------------------------------------------------------------------------
# Machine limit: read-only memory bandwidth (BLAS sgemv over a large matrix).
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

def run_generate(threads, rounds, batch_sizes, new_tokens, prompt_len, peers=PEERS,
                 workdir=os.path.join(".cache", "bench"), seed=0, bw_mib=512, pause=0.25,
                 model=("gpt2-small-random", GPT2_SMALL), time_disagreeing=False):
    """Make/load the model, check every engine, time, return the SUITE record (report.py).
    Raises ValueError for bad sizes; ImportError when the model must be made and torch is
    missing."""
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
    weight_bytes = 4 * n_params
    prompts = make_prompts(batch_sizes, prompt_len, vocab, seed)
    log(f"model {model_dir}; batch sizes {batch_sizes}; prompt {prompt_len} + {new_tokens} new "
        f"tokens; threads {threads}", TAG)
    engines, reference, skipped = build_engines(model_dir, threads, prompts, new_tokens, vocab,
                                                peers)
    skipped, ref_kw, notes = harness.loaded_engines(
        engines, reference, skipped, peers, "tokens are", TAG,
        {"onnxruntime": "not applicable to generate (no generation loop of its own)"})
    notes = [model_note] + notes

    probe = BandwidthProbe(bw_mib, threads)
    log(f"checking, then timing {rounds} rounds x {[e.name for e in engines]}", TAG)
    ticks = harness.cpu_sample()
    rows, probes = harness.compare_engines(
        engines, batch_sizes,
        lambda out, ref, b: token_agreement(out, ref, prompts, b, reference),
        rounds, pause=pause, probe=probe.measure, time_disagreeing=time_disagreeing, tag=TAG,
        case_label=lambda b: f"batch {b}", **ref_kw)
    usage, warning = harness.busy_check(ticks, TAG)
    bw = {k: statistics.median(p[k] for p in probes)
          for k in ("sgemv_numpy", "sgemv_scipy", "copy_1thread")} if probes else {}
    source = max(("sgemv_numpy", "sgemv_scipy"), key=bw.get) if bw else None
    limit = bw.get(source)

    ours = {r["case"]: r["seconds"]["median"] for r in rows
            if r["engine"] == ENGINE and r["seconds"]}
    out_rows, targets = [], []
    for r in rows:
        b = batch_sizes[r["case_index"]]
        row = {"case": r["case"], "group": "generate", "engine": r["engine"],
               "status": r["status"], "figures": [], "seconds": r["seconds"], "ratio": None,
               "fraction_of_limit": None, "limit": None, "agreement": r["agreement"],
               "note": r["note"], "batch": b}
        if r["seconds"]:
            med = r["seconds"]["median"]
            row["figures"] = [{"value": b * new_tokens / med, "unit": "new tokens/s"},
                              {"value": 1e3 * med / new_tokens, "unit": "ms/step"}]
            row["ratio"] = harness.ratio(ours.get(r["case"]), med)
            if limit:
                row["fraction_of_limit"] = weight_bytes * (new_tokens / med) / (limit * 1e9)
                row["limit"] = f"read {limit:.1f} GB/s"
            if r["engine"] in TARGETS and row["ratio"] is not None:
                goal = TARGETS[r["engine"]]
                targets.append(f"target >= {goal}x {r['engine']} at batch {b}: ratio "
                               f"{row['ratio']:.2f} -> "
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
        f"weights), CPU, {harness.plural(threads, 'thread')}: prompts of {prompt_len} random "
        f"tokens, exactly {new_tokens} new tokens per sequence (no early stop), time includes "
        f"the prefill; median of {rounds} interleaved rounds{harness.usage_text(usage)}.",
    ]
    if limit:
        summary.append(
            f"Machine limit (same run, median over rounds): read bandwidth {limit:.1f} GB/s "
            f"(float32 sgemv through {SOURCE_TEXT[source]} over {probe.shape_text}, "
            f"{harness.plural(threads, 'thread')}, "
            f"matrix bytes read once; numpy {bw['sgemv_numpy']:.1f}, scipy "
            f"{bw['sgemv_scipy']:.1f}); copy {bw['copy_1thread']:.1f} GB/s (1 thread, read + "
            f"write). Weights read per decode step: {weight_bytes / 1e6:.0f} MB "
            f"({n_params / 1e6:.1f} M float32 parameters, tied LM head counted once), so "
            f"batch-1 decoding is bound at {limit * 1e9 / weight_bytes:.1f} tokens/s.")
    return {"title": f"Generate: greedy decoding ({name})", "status": "ok", "summary": summary,
            "warnings": [warning] if warning else [],
            "rows": out_rows, "tables": [], "scaling": scaling, "skipped": skipped,
            "notes": targets + notes,
            "limits": {"read_gbs": limit, "read_source": source, "bandwidth": bw,
                       "bandwidth_per_round": probes, "bandwidth_shape": probe.shape_text,
                       **usage},
            "config": {"model_dir": model_dir, "model": name, "shape": shape,
                       "batch_sizes": batch_sizes, "new_tokens": new_tokens,
                       "prompt_len": prompt_len, "rounds": rounds, "threads": threads,
                       "seed": seed, "n_params": n_params, "weight_bytes": weight_bytes,
                       "pause": pause}}


def run(cfg):
    """The generate suite for a BenchConfig (sizes level, threads, peers, rounds, seed)."""
    from . import SuiteSkipped
    level = LEVELS[cfg.sizes]
    name = level["model"][0]
    if not os.path.exists(os.path.join(cfg.workdir, name, "model.safetensors")):
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            raise SuiteSkipped(f"the random {name} model is not cached under {cfg.workdir} and "
                               f"making it needs torch and transformers ({e})") from e
    return run_generate(cfg.threads, cfg.rounds or level["rounds"], level["batch_sizes"],
                        level["new_tokens"], level["prompt_len"], cfg.peers, cfg.workdir,
                        cfg.seed, level["bw_mib"], cfg.pause, level["model"],
                        cfg.time_disagreeing)


def script_main(args):
    """bench/generate.py: the suite with that script's options (argparse namespace: threads,
    rounds, new_tokens, prompt_len, batch_sizes (list), peers (list), json, workdir, seed,
    bw_mib, pause). Prints the Markdown section on stdout; --json writes a results document
    (report.py schema) with this one suite. Returns 0."""
    from . import report
    from .encode import write_script_outputs
    suite = run_generate(args.threads, args.rounds, args.batch_sizes, args.new_tokens,
                         args.prompt_len, args.peers, args.workdir, args.seed, args.bw_mib,
                         args.pause)
    print(report.render_suite("generate", suite))
    write_script_outputs("generate", suite, args.threads, getattr(args, "json", None), None, TAG)
    return 0

