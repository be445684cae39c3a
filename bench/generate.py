"""Greedy text-generation throughput: this engine against its CPU peers, on one machine, in one run.

What is measured
----------------
A GPT-2-small-shaped model (12 layers, C=768, 12 heads, vocab 50257, 1024 positions) with random
weights (`torch.manual_seed(0)`, `GPT2LMHeadModel(GPT2Config(...))`), saved once by
`save_pretrained` under `--workdir` (default `.cache/bench/gpt2-small-random/`) and reused. For
each batch size in `--batch-sizes` (default 1 and 8), `B` prompts of `--prompt-len` (16) random
token ids (NumPy, seeded; the same for every engine; no padding) are continued greedily by exactly
`--new-tokens` (128) tokens:

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
CTranslate2: end_token=[]), so GPT-2's <|endoftext|> (50256) is an ordinary token that can be
generated and continued. Random weights have no tokenizer; CTranslate2's converter needs one for
its vocabulary, so it is given a stand-in whose tokens are the strings "<0>".."<50255>" and
"<|endoftext|>" for id 50256 (bos = eos = unk, as in GPT-2); prompts go to CTranslate2 as those
strings and its results are read back as ids (`sequences_ids`).

Check, before any timing (the pass is also each engine's warm-up): every engine must return
exactly B x N new tokens (ours and HF also the prompt unchanged); then its tokens are compared
with HF torch's (the reference, also when torch is not among the timed peers): the fraction of
identical new tokens, the number of sequences identical throughout, and the first position where
a sequence diverges. Greedy decoding amplifies float rounding: once two engines pick different
tokens at a near tie, the rest of the sequence differs, so a late divergence is expected and
reported, not an error. At each first divergence the HF logit gap between the reference's token
and the engine's token is computed (one torch forward on the reference prefix): a tiny gap
(< 1e-3) means a float near-tie, a large one means a wrong result. An engine with the wrong number
of tokens is flagged and not timed.

Timing: `--rounds` interleaved rounds (default 3); in each round, for each batch size, every engine
in turn runs one full generate call (the starting engine rotates from round to round, with a short
`--pause` between engines); the bandwidth probe runs once per round. The time of a call includes
the prefill of the prompt (as a user experiences it). Reported: median seconds per call, its
min-max spread, new tokens/s = B * N / median, and the ratio of this engine's throughput to each
peer's (> 1: this engine is faster). The issue's targets: >= 1.3x torch, >= 0.8x ctranslate2 at
every batch size.

Machine limit, measured in the same run: decoding reads every weight once per step, so at batch 1
it is bound by memory bandwidth. The probe is a read-only stream: float32 matrix-vector product
(BLAS sgemv) over a 512 MiB matrix, BLAS pinned to n threads by threadpoolctl, through NumPy's
matmul and SciPy's sgemv; GB/s counts the matrix bytes read once; the faster is the limit. A NumPy
copy of the same buffer (1 thread, read + write counted) is reported for reference. Each engine's
"fraction of the bandwidth limit" = weight bytes per step * steps/s / limit, with weight bytes =
4 * all parameters (token and position embeddings, every layer, final norm; the LM head is tied to
the token embeddings and counted once: 124.4 M parameters, 498 MB for GPT-2 small) and steps/s =
tokens/s / B (one step reads the weights once for all B sequences). The KV-cache reads (a few
percent at these lengths), the prefill and the Python overhead are not counted, so 100% is not
reachable; at batch 8 the work is closer to compute-bound and the fraction is only indicative.

Run (from the repository root, nothing else heavy running on the machine):

  OMP_NUM_THREADS=2 PYTHONPATH=. .venv-bench/bin/python bench/generate.py
  ... bench/generate.py --threads 2 --rounds 5 --batch-sizes 1,8 --peers torch,ctranslate2 \\
      --json bench/results/generate.json

A peer whose package is not installed (or whose conversion fails) is skipped with a note on
stderr and in the JSON, never an error. The Markdown table goes to stdout; progress to stderr.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("torch", "ctranslate2")
ENGINE = "transformer"
MODEL_NAME = "gpt2-small-random"
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
EOT = 50256                 # GPT-2's <|endoftext|>
NEAR_TIE = 1e-3             # HF logit gap below which a divergence is a float near-tie


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (default 3)")
    p.add_argument("--new-tokens", type=int, default=128,
                   help="new tokens per sequence, exactly (default 128)")
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per sequence (16)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated peers to run (default {','.join(PEERS)}; '' for none)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write results as JSON")
    p.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench"),
                   help="cache for the random model and the CTranslate2 conversion "
                        "(default .cache/bench in the repository root)")
    p.add_argument("--seed", type=int, default=0, help="NumPy seed of the prompts (default 0)")
    p.add_argument("--bw-mib", type=int, default=512,
                   help="MiB of the bandwidth probe's matrix (default 512, about the weights)")
    p.add_argument("--pause", type=float, default=0.25,
                   help="seconds of idle between engines inside a round (default 0.25)")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if (args.threads < 1 or args.rounds < 1 or args.new_tokens < 1 or args.prompt_len < 1
            or args.bw_mib < 1 or not args.batch_sizes or min(args.batch_sizes) < 1):
        p.error("--threads, --rounds, --new-tokens, --prompt-len, --bw-mib and the batch sizes "
                "must be positive")
    if args.prompt_len + args.new_tokens > GPT2_SMALL["n_positions"]:
        p.error(f"--prompt-len + --new-tokens exceeds the model's {GPT2_SMALL['n_positions']} "
                "positions")
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        p.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    return args


_PREV_OMP = os.environ.get("OMP_NUM_THREADS")
if __name__ == "__main__":
    # Thread count into the environment before NumPy, torch or CTranslate2 is imported: the
    # OpenMP and BLAS runtimes read it when they start.
    ARGS = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def log(msg):
    """Progress line on stderr."""
    print(f"[generate] {msg}", file=sys.stderr, flush=True)


def import_engine():
    """Import this project's package: from the path, else from the repository root."""
    try:
        import transformer
    except ImportError:
        sys.path.insert(0, REPO)
        import transformer
    return transformer


# ---------------------------------------------------------------------------------------------
# The model: GPT-2 small shape, random weights, saved once and reused.
# ---------------------------------------------------------------------------------------------

def model_params(cfg):
    """Parameter count of a GPT-2 config dict, the tied LM head counted once: token and position
    embeddings, per layer 2 norms (4C), c_attn (3C*C + 3C), c_proj (C*C + C), c_fc (C*F + F),
    mlp c_proj (F*C + C), and the final norm (2C)."""
    C, V, P, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"]
    F = cfg.get("n_inner") or 4 * C
    per_layer = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C)
    return V * C + P * C + L * per_layer + 2 * C


def ensure_model(workdir):
    """The random GPT-2-small directory under workdir: made once (torch.manual_seed(0),
    GPT2LMHeadModel(GPT2Config(...)).save_pretrained, written to a temporary folder, then
    renamed), reused when its config.json has the expected shape. Returns (dir, note)."""
    path = os.path.join(workdir, MODEL_NAME)
    cfg_path = os.path.join(path, "config.json")
    if os.path.exists(cfg_path) and os.path.exists(os.path.join(path, "model.safetensors")):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        if all(cfg.get(k) == v for k, v in GPT2_SMALL.items()):
            return path, f"reused cached model {path}"
        log(f"cached model {path} has another shape; making it again")
    log(f"making the random GPT-2-small model (once; cached in {path})")
    import torch
    import transformers
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_SMALL)).eval()
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path, (f"made {path}: torch.manual_seed(0), GPT2LMHeadModel(GPT2Config({GPT2_SMALL})), "
                  f"torch {torch.__version__}, transformers {transformers.__version__}")


def make_prompts(batch_sizes, prompt_len, vocab, seed):
    """{B: (B, prompt_len) int64 random ids}, one seeded generator for all batch sizes."""
    rng = np.random.default_rng(seed)
    return {b: rng.integers(0, vocab, (b, prompt_len), dtype=np.int64) for b in batch_sizes}


# ---------------------------------------------------------------------------------------------
# Engines. Each one holds its model and its own form of the prompts (made once, outside the
# timing); run(B) does one generate call on the batch-B prompts and returns (B, N) int64 new
# tokens; check(B, out) says what is wrong with the raw output shape, or None.
# ---------------------------------------------------------------------------------------------

class Engine:
    """Interface: name, version, notes (list of str), run(B) -> (B, new_tokens) int64."""
    name = "?"
    version = "?"

    def __init__(self, prompts, new_tokens):
        self.notes = []
        self.prompts = prompts
        self.new_tokens = new_tokens
        self.problems = {}

    def run(self, batch):
        """One generate call on the batch-size-`batch` prompts; returns the new tokens."""
        raise NotImplementedError

    def _split(self, batch, out):
        """For engines returning prompt + new tokens: check the shape and the echoed prompt,
        record a problem (per batch size) if any, return the new tokens."""
        ids = self.prompts[batch]
        out = np.asarray(out)
        want = (batch, ids.shape[1] + self.new_tokens)
        if out.shape != want:
            self.problems[batch] = f"returned shape {out.shape}, expected {want}"
        elif not np.array_equal(out[:, :ids.shape[1]], ids):
            self.problems[batch] = "the returned prompt differs from the input prompt"
        return out[:, ids.shape[1]:].astype(np.int64)


class TransformerEngine(Engine):
    """This project: model.generate(ids, max_new_tokens=N, eos_token_id=[]) (no early stop)."""
    name = ENGINE

    def __init__(self, model_dir, threads, prompts, new_tokens):
        super().__init__(prompts, new_tokens)
        transformer = import_engine()
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
        import torch
        import transformers
        transformers.logging.set_verbosity_error()
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (interop pool started)
            pass
        self.torch = torch
        self.version = f"torch {torch.__version__}, transformers {transformers.__version__}"
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
        attn = getattr(self.model.config, "_attn_implementation", None)
        self.notes.append(f"attention implementation: {attn}; torch threads: intra-op "
                          f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")
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
        vocab = {f"<{i}>": i for i in range(self.vocab_size - 1)}
        vocab[self.eos_token] = self.vocab_size - 1
        return vocab


def convert_ct2(model_dir, out_dir, vocab_size):
    """Convert with ctranslate2.converters.TransformersConverter (float32), the stand-in
    tokenizer supplying the vocabulary; written to a temporary folder, then renamed."""
    import warnings
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return StandInTokenizer(vocab_size)

    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Converter(model_dir).convert(tmp, force=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


class Ct2Engine(Engine):
    """CTranslate2 Generator (float32) on the converted model; prompts as token strings,
    include_prompt_in_result=False (the prompt is prefilled at once), end_token=[] (no stop)."""
    name = "ctranslate2"

    def __init__(self, model_dir, threads, prompts, new_tokens, workdir, vocab_size):
        super().__init__(prompts, new_tokens)
        import ctranslate2
        self.version = f"ctranslate2 {ctranslate2.__version__}"
        out_dir = os.path.join(workdir, MODEL_NAME + "-ctranslate2")
        if os.path.exists(os.path.join(out_dir, "model.bin")):
            self.notes.append(f"reused cached CTranslate2 conversion {out_dir}")
        else:
            log("converting the model with CTranslate2's TransformersConverter (once; cached)")
            convert_ct2(model_dir, out_dir, vocab_size)
            self.notes.append("converted with ctranslate2.converters.TransformersConverter "
                              "(no quantization; stand-in tokenizer for the vocabulary)")
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
            self.problems[batch] = (f"returned {len(seqs)} sequences of lengths {lengths}, "
                                    f"expected {batch} of {self.new_tokens}")
            width = max(lengths) if lengths else 0
            out = np.full((len(seqs), width), -1, np.int64)
            for i, s in enumerate(seqs):
                out[i, :len(s)] = s
            return out
        return np.asarray(seqs, dtype=np.int64)


def build_engines(args, model_dir, prompts, vocab_size):
    """Load this engine, the HF torch reference (always tried) and the requested peers. Returns
    (engines in table order, reference engine or None, skipped: {name: reason})."""
    skipped = {}
    log(f"loading {ENGINE}")
    engines = [TransformerEngine(model_dir, args.threads, prompts, args.new_tokens)]
    torch_engine = None
    try:
        log("loading torch (HF transformers)")
        torch_engine = TorchEngine(model_dir, args.threads, prompts, args.new_tokens)
    except ImportError as e:
        skipped["torch"] = f"not installed ({e})"
    if torch_engine is not None and "torch" in args.peers:
        engines.append(torch_engine)
    if "ctranslate2" in args.peers:
        try:
            log("loading ctranslate2")
            engines.append(Ct2Engine(model_dir, args.threads, prompts, args.new_tokens,
                                     args.workdir, vocab_size))
        except ImportError as e:
            skipped["ctranslate2"] = f"not installed ({e})"
        except Exception as e:  # noqa: BLE001 - a peer that cannot be set up is skipped, noted
            skipped["ctranslate2"] = f"setup failed: {type(e).__name__}: {e}"
    for name, why in skipped.items():
        if name in args.peers:
            log(f"skipping {name}: {why}")
    return engines, torch_engine, skipped


def agreement(new, ref, prompt, reference):
    """Compare (B, N) new tokens with the reference's: identical fraction, sequences identical
    throughout, first divergence per sequence (None if none) and, where the reference engine is
    there, the HF logit gap (reference token minus this engine's) at each first divergence."""
    if new.shape != ref.shape:
        return {"identical_fraction": None, "identical_sequences": 0,
                "first_divergence": None, "divergence_gaps": [],
                "error": f"shape {new.shape} vs reference {ref.shape}"}
    same = new == ref
    first = [None if row.all() else int(np.argmin(row)) for row in same]
    gaps = []
    for i, pos in enumerate(first):
        if pos is not None and reference is not None:
            gaps.append(reference.logit_gap(prompt[i], ref[i, :pos], ref[i, pos], new[i, pos]))
    divergent = [p for p in first if p is not None]
    return {"identical_fraction": float(same.mean()),
            "identical_sequences": int(sum(p is None for p in first)),
            "first_divergence": min(divergent) if divergent else None,
            "first_divergence_per_sequence": first, "divergence_gaps": gaps,
            "max_divergence_gap": max((abs(g) for g in gaps), default=None)}


# ---------------------------------------------------------------------------------------------
# Machine limit: read-only memory bandwidth (BLAS sgemv over a large matrix).
# ---------------------------------------------------------------------------------------------

class BandwidthProbe:
    """Read-only memory bandwidth: y = A @ x over an A of `mib` MiB float32, BLAS pinned to n
    threads, via NumPy's matmul and SciPy's sgemv; GB/s = bytes of A / seconds. Also a NumPy
    copy of A's buffer (1 thread; read + write counted) for reference. measure() returns
    {"sgemv_numpy", "sgemv_scipy", "copy_1thread"} in GB/s."""

    def __init__(self, mib, threads, reps=5):
        import scipy.linalg.blas
        from threadpoolctl import threadpool_limits
        self.limits = threadpool_limits
        self.threads, self.reps = threads, reps
        cols = 8192
        rows = max(1, (mib << 20) // (4 * cols))
        self.nbytes = 4 * rows * cols
        self.a = np.full((rows, cols), 0.5, np.float32)          # C order: A @ x is an sgemv
        self.x = np.ones(cols, np.float32)
        self.y = np.empty(rows, np.float32)
        self.dst = np.empty_like(self.a)
        sgemv = scipy.linalg.blas.sgemv
        # SciPy: a C-ordered (rows, cols) array is the Fortran (cols, rows) transpose; trans=1.
        self.ops = {"sgemv_numpy": lambda: np.matmul(self.a, self.x, out=self.y),
                    "sgemv_scipy": lambda: sgemv(1.0, self.a.T, self.x, trans=1)}
        self.shape_text = f"({rows}x{cols}) float32, {self.nbytes / 2**20:.0f} MiB"

    def _seconds(self, op):
        op()
        times = []
        for _ in range(self.reps):
            t0 = time.perf_counter()
            op()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def measure(self):
        with self.limits(limits=self.threads, user_api="blas"):
            out = {k: self.nbytes / self._seconds(op) / 1e9 for k, op in self.ops.items()}
        out["copy_1thread"] = 2 * self.nbytes / self._seconds(
            lambda: np.copyto(self.dst, self.a)) / 1e9
        return out


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


def time_call(engine, batch):
    """Seconds for one generate call (garbage collected before, disabled during)."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        engine.run(batch)
        return time.perf_counter() - t0
    finally:
        gc.enable()


def run_rounds(timed, probe, rounds, pause):
    """Interleaved rounds: in round r, for each batch size, each of its engines runs one call,
    starting from engine r mod k; then the bandwidth probe runs. timed: {B: [engines]}.
    Returns ({(name, B): [seconds per round]}, [probe results per round])."""
    times = {(e.name, b): [] for b, es in timed.items() for e in es}
    probes = []
    for r in range(rounds):
        ticks = cpu_ticks()
        for b, es in timed.items():
            k = len(es)
            for e in [es[(r + i) % k] for i in range(k)] if k else []:
                time.sleep(pause)
                times[(e.name, b)].append(time_call(e, b))
                log(f"round {r + 1}/{rounds}, batch {b}: {e.name} "
                    f"{times[(e.name, b)][-1]:.2f} s")
        time.sleep(pause)
        probes.append(probe.measure())
        probes[-1]["cpu_steal"] = steal_fraction(ticks, cpu_ticks())
        log(f"round {r + 1}/{rounds}: bandwidth sgemv numpy {probes[-1]['sgemv_numpy']:.1f} / "
            f"scipy {probes[-1]['sgemv_scipy']:.1f} GB/s, copy {probes[-1]['copy_1thread']:.1f} "
            "GB/s" + ("" if probes[-1]["cpu_steal"] is None else
                      f"; CPU steal {100 * probes[-1]['cpu_steal']:.0f}%"))
    return times, probes


def fmt_row(cells):
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def fmt_agreement(a):
    """Agreement cell: identical %, sequences identical, first divergence and its logit gap."""
    if a is None:
        return "-"
    if a.get("is_reference"):
        return "reference"
    if a["identical_fraction"] is None:
        return a.get("error", "-")
    text = f"{100 * a['identical_fraction']:.1f}% ({a['identical_sequences']}/" \
           f"{len(a['first_divergence_per_sequence'])} seq)"
    if a["first_divergence"] is not None:
        text += f", first diverges at {a['first_divergence']}"
        if a["max_divergence_gap"] is not None:
            text += f" (gap <= {a['max_divergence_gap']:.1e})"
    return text


def markdown(results, meta):
    """The Markdown report: a header with the setup and the machine limit, then the table."""
    bw = meta["bandwidth_gbs"]
    lines = [
        f"### Greedy generation, {meta['model_name']} (GPT-2 small shape, random weights), CPU, "
        f"{meta['threads']} threads",
        "",
        f"Prompts of {meta['prompt_len']} random tokens, exactly {meta['new_tokens']} new tokens "
        f"per sequence (no early stop), time includes the prefill; median of {meta['rounds']} "
        f"interleaved rounds; machine: {meta['cpu']}, {meta['cores']} cores"
        + ("." if meta["cpu_steal_fraction"] is None else
           f"; hypervisor CPU steal while timing: {100 * meta['cpu_steal_fraction']:.0f}%."),
        f"Machine limit (same run, median over rounds): read bandwidth "
        f"{meta['bandwidth_limit_gbs']:.1f} GB/s (float32 sgemv through "
        f"{SOURCE_TEXT[meta['bandwidth_source']]} over {meta['bandwidth_shape']}, "
        f"{meta['threads']} threads, matrix bytes read once; numpy {bw['sgemv_numpy']:.1f}, "
        f"scipy {bw['sgemv_scipy']:.1f}); copy {bw['copy_1thread']:.1f} GB/s (1 thread, read + "
        f"write). Weights read per decode step: {meta['weight_bytes'] / 1e6:.0f} MB "
        f"({meta['n_params'] / 1e6:.1f} M float32 parameters, tied LM head counted once), "
        f"so batch-1 decoding is bound at {meta['bound_tokens_per_s']:.1f} tokens/s.",
        "",
        fmt_row(["engine", "batch", "new tokens/s", "time s median (min-max)", "ms per token step",
                 "ratio (transformer / engine)", "fraction of bandwidth limit",
                 "tokens identical to HF torch"]),
        fmt_row(["---", "---:"] + ["---:"] * 5 + ["---"]),
    ]
    for r in results:
        name = r["engine"] + ("" if r["ok"] else " **(wrong output)**")
        if r.get("seconds") is None:
            timing = ["not timed"] * 5
        else:
            timing = [f"{r['tokens_per_s']:.1f}",
                      f"{r['seconds']:.2f} ({r['seconds_min']:.2f}-{r['seconds_max']:.2f})",
                      f"{1e3 * r['seconds'] / meta['new_tokens']:.1f}",
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                      f"{100 * r['bandwidth_fraction']:.1f}%"]
        lines.append(fmt_row([name, str(r["batch"])] + timing + [fmt_agreement(r["agreement"])]))
    if meta["targets"]:
        lines.append("")
        lines += [f"- target {t['text']}: ratio {t['ratio']:.2f} -> "
                  f"{'met' if t['met'] else '**not met**'}" for t in meta["targets"]]
    problems = [f"- {r['engine']} at batch {r['batch']}: {r['problem']}"
                for r in results if r.get("problem")]
    if problems:
        lines += [""] + problems
    if meta["skipped"]:
        lines.append("")
        lines += [f"- skipped {name}: {why}" for name, why in meta["skipped"].items()]
    return "\n".join(lines)


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


TARGETS = {"torch": 1.3, "ctranslate2": 0.8}
SOURCE_TEXT = {"sgemv_numpy": "NumPy's matmul", "sgemv_scipy": "SciPy's sgemv"}


def main(args):
    """Make/load the model, check every engine, time, report."""
    if _PREV_OMP not in (None, str(args.threads)):
        log(f"note: OMP_NUM_THREADS was {_PREV_OMP}; set to {args.threads} for this run")
    os.makedirs(args.workdir, exist_ok=True)
    model_dir, model_note = ensure_model(args.workdir)
    log(model_note)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    vocab = config["vocab_size"]
    n_params = model_params(config)
    weight_bytes = 4 * n_params
    prompts = make_prompts(args.batch_sizes, args.prompt_len, vocab, args.seed)
    log(f"model {model_dir}; batch sizes {args.batch_sizes}; prompt {args.prompt_len} + "
        f"{args.new_tokens} new tokens; threads {args.threads}")

    engines, reference, skipped = build_engines(args, model_dir, prompts, vocab)
    for e in engines:
        for note in e.notes:
            log(f"{e.name}: {note}")

    # Check (this call is also each engine's warm-up), then time the engines that passed.
    results, timed = [], {}
    for b in args.batch_sizes:
        ref = None
        if reference is not None:
            log(f"reference call: HF torch, batch {b}")
            ref = reference.run(b)
        timed[b] = []
        for e in engines:
            log(f"warm-up + check: {e.name}, batch {b}")
            new = ref if e is reference else e.run(b)
            problem = e.problems.get(b)
            if problem is None and e is not reference and ref is not None:
                agree = agreement(new, ref, prompts[b], reference)
            elif problem is None and e is reference:
                agree = {"is_reference": True}
            else:
                agree = None
            if problem:
                log(f"WARNING: {e.name} at batch {b}: {problem}; not timed")
            elif agree and not agree.get("is_reference"):
                log(f"{e.name} vs HF torch at batch {b}: {fmt_agreement(agree)}")
                gaps = agree["max_divergence_gap"]
                if gaps is not None and gaps >= NEAR_TIE:
                    log(f"WARNING: {e.name} at batch {b} diverges where HF's logits are not a "
                        f"near-tie (gap {gaps:.2e}): a wrong result, not rounding")
            results.append({"engine": e.name, "version": e.version, "notes": e.notes,
                            "batch": b, "ok": problem is None, "problem": problem,
                            "agreement": agree})
            if problem is None:
                timed[b].append(e)

    probe = BandwidthProbe(args.bw_mib, args.threads)
    log(f"timing: {args.rounds} rounds x " +
        "; ".join(f"batch {b}: {[e.name for e in es]}" for b, es in timed.items()))
    ticks = cpu_ticks()
    times, probes = run_rounds(timed, probe, args.rounds, args.pause)
    steal = steal_fraction(ticks, cpu_ticks())
    if steal is not None and steal > 0.05:
        log(f"WARNING: {100 * steal:.0f}% of CPU time was stolen by the hypervisor while "
            "timing; expect noisy numbers (compare the min-max spreads)")
    bw = {k: statistics.median(p[k] for p in probes)
          for k in ("sgemv_numpy", "sgemv_scipy", "copy_1thread")}
    source = max(("sgemv_numpy", "sgemv_scipy"), key=bw.get)
    limit = bw[source]

    rates = {}
    for r in results:
        t = times.get((r["engine"], r["batch"]))
        if t:
            rates[(r["engine"], r["batch"])] = r["batch"] * args.new_tokens / statistics.median(t)
    targets = []
    for r in results:
        b = r["batch"]
        t = times.get((r["engine"], b))
        if not t:
            r["seconds"] = None
            continue
        med = statistics.median(t)
        rate = rates[(r["engine"], b)]
        ours = rates.get((ENGINE, b))
        steps_per_s = args.new_tokens / med
        r.update(seconds=med, seconds_min=min(t), seconds_max=max(t), seconds_all=t,
                 tokens_per_s=rate, ms_per_step=1e3 * med / args.new_tokens,
                 ratio=None if ours is None else ours / rate,
                 bandwidth_fraction=weight_bytes * steps_per_s / (limit * 1e9))
        if r["engine"] in TARGETS and r["ratio"] is not None:
            goal = TARGETS[r["engine"]]
            targets.append({"text": f">= {goal}x {r['engine']} at batch {b}", "peer": r["engine"],
                            "batch": b, "goal": goal, "ratio": r["ratio"],
                            "met": r["ratio"] >= goal})

    meta = {
        "model_dir": model_dir, "model_name": MODEL_NAME, "model_note": model_note,
        "config": {k: config.get(k) for k in GPT2_SMALL},
        "threads": args.threads, "rounds": args.rounds, "batch_sizes": args.batch_sizes,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "seed": args.seed,
        "n_params": n_params, "weight_bytes": weight_bytes,
        "bandwidth_gbs": bw, "bandwidth_limit_gbs": limit, "bandwidth_source": source,
        "bandwidth_shape": probe.shape_text, "bandwidth_per_round": probes,
        "bound_tokens_per_s": limit * 1e9 / weight_bytes,
        "targets": targets, "cpu": cpu_name(),
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
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
