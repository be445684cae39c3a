"""The engine registry shared by the model suites: one class per runtime, each implementing the
tasks it can run (encode, generate, translate) at the compute types it has.

  transformer   this project: `transformer.load(dir, dtype=dtype, threads=n)`
  torch         Hugging Face transformers in PyTorch eager mode (also the float32 reference of
                every check); int8: torch.ao.quantization.quantize_dynamic; bfloat16: .to()
  onnxruntime   the encoder exported to ONNX (int8: onnxruntime.quantization.quantize_dynamic)
  ctranslate2   the model converted by CTranslate2's TransformersConverter, loaded with
                compute_type = the dtype (CTranslate2 quantizes at load); not for MPNet (no
                converter: skipped, "n/a" with the reason)
  llama.cpp     llama-cpp-python on a GGUF written from the same weights (f32 / q8_0 / bf16),
                generate only, one sequence at a time

A suite makes a Setup (task, model directory, threads, dtype, work directory and the task's
token ids) and calls load_engines(setup, peers): this engine first, HF torch float32 as the
reference (always tried, timed only when asked for at float32), then the requested peers. A
peer that is not installed, or has no such task or compute type, is skipped with the reason.

Each engine turns the suite's shared inputs into its own form once, outside the timing, and
returns a zero-argument pass:
  embedder(batches) -> fn() -> (N, C) float32 L2-normalised mean-pooled embeddings; batches: a
      list of {"input_ids", "attention_mask", "token_type_ids"} (B, T) int64 dicts
  generator(prompts, new_tokens) -> fn() -> ((B, N) int64 new tokens, problem or None);
      prompts: (B, P) int64, no padding; exactly N greedy tokens, no early stop
  translator(batches, beams, length_penalty) -> fn() -> (target ids per sentence, problem or
      None, engine name); batches: {"input_ids", "attention_mask" (B, S) int64, "lengths",
      "max_new_tokens"}; target ids: the best hypothesis up to and including eos
"""
import dataclasses
import json
import os
import traceback

import numpy as np

from . import peers as peer_setup
from .harness import ENGINE
from .stats import log

TASKS = ("encode", "generate", "translate")
DTYPES = ("float32", "int8", "bfloat16")
REGISTRY = {}          # name -> Engine subclass, in registration (table) order


class Unsupported(Exception):
    """Raised by an engine's constructor for a task or compute type it does not have: the peer
    is skipped with the message, not reported as an error."""


def register(cls):
    """Class decorator: add an Engine subclass to REGISTRY under cls.name."""
    REGISTRY[cls.name] = cls
    return cls


def peer_names():
    """Every registered peer (all engines but this one), in table order."""
    return tuple(n for n in REGISTRY if n != ENGINE)


@dataclasses.dataclass
class Setup:
    """What an engine needs to load for a suite. task: one of TASKS; model_dir: HF directory;
    threads: for every engine; dtype: one of DTYPES; workdir: cache of conversions;
    vocab_size, eos, unk, pad: the token ids of a random model (generate, translate)."""
    task: str
    model_dir: str
    threads: int
    dtype: str = "float32"
    workdir: str = os.path.join(".cache", "bench")
    vocab_size: int = None
    eos: int = None
    unk: int = None
    pad: int = None

    @property
    def cache(self):
        """This model's folder for the peers' conversions (peers.cache_dir)."""
        return peer_setup.cache_dir(self.workdir, self.model_dir)


def mean_pool_normalize(hidden, mask):
    """Mean over the positions where mask == 1, then L2 normalisation (sentence-transformers:
    token count clamped at 1e-9, norm at 1e-12). hidden: (B, T, C) float; mask: (B, T).
    Returns (B, C) float32."""
    hidden = np.asarray(hidden, dtype=np.float32)
    m = mask[:, :hidden.shape[1]].astype(np.float32)[:, :, None]
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


def target_tokens(row, pad, eos):
    """Generated ids (after the start token) up to and including the first eos; without eos, the
    ids before the padding."""
    row = [int(t) for t in row]
    if eos in row:
        return row[:row.index(eos) + 1]
    while row and row[-1] == pad:
        row.pop()
    return row


class Engine:
    """Interface (see the module docstring). name; tasks: the tasks it implements; version;
    notes: list of str for the report; dtype; compute_type: what it runs, in words;
    last: the target ids of the latest translate pass."""
    name = "?"
    tasks = ()

    def __init__(self, setup):
        if setup.task not in self.tasks:
            raise Unsupported(f"not applicable to {setup.task}")
        self.setup, self.dtype = setup, setup.dtype
        self.version, self.notes, self.compute_type = "?", [], setup.dtype
        self.last = None

    # --- generate: engines whose output echoes the prompt
    @staticmethod
    def split_prompt(prompts, new_tokens, out):
        """(new tokens, problem or None) of (B, P + N) ids that start with the prompt."""
        out = np.asarray(out)
        B, P = prompts.shape
        new = out[:, P:].astype(np.int64)
        if out.shape != (B, P + new_tokens):
            return new, f"returned shape {out.shape}, expected {(B, P + new_tokens)}"
        if not np.array_equal(out[:, :P], prompts):
            return new, "the returned prompt differs from the input prompt"
        return new, None

    # --- translate: one pass over the batches, each through translate_batch
    def translator(self, batches, beams, length_penalty):
        """The pass over every batch (translate_batch per batch); an exception in a batch is
        raised again as a RuntimeError naming the batch, with the traceback."""
        self.beams, self.length_penalty = beams, length_penalty
        self.translate_inputs(batches)

        def one_pass():
            out, problem = [], None
            for i, b in enumerate(batches):
                try:
                    rows, p = self.translate_batch(i, b)
                except Exception as e:
                    raise RuntimeError(f"raised in batch {i}:\n{traceback.format_exc()}") from e
                out += rows
                problem = problem or p
            self.last = out
            return out, problem, self.name
        return one_pass

    def translate_inputs(self, batches):
        """Untimed conversion of the batches to the engine's own form (default: none)."""

    def start_rows(self, i, batch, out):
        """(target ids per row, problem) of (B, 1 + n) ids that begin with the decoder start
        token (pad)."""
        out = np.asarray(out)
        pad, eos = self.setup.pad, self.setup.eos
        B, n_new = batch["input_ids"].shape[0], batch["max_new_tokens"]
        problem = None
        if out.ndim != 2 or out.shape[0] != B or not 2 <= out.shape[1] <= 1 + n_new:
            problem = f"batch {i}: returned shape {out.shape}, expected ({B}, 2..{1 + n_new})"
        elif not (out[:, 0] == pad).all():
            problem = (f"batch {i}: first column is not the decoder start token {pad}: "
                       f"{sorted(set(out[:, 0].tolist()))}")
        return [target_tokens(r[1:], pad, eos) for r in out], problem


class FailedEngine:
    """Stands for this engine when it failed to load: its check raises the load error, so its
    row reports it (status "error") and it is not timed."""
    version = None
    notes = ()
    last = None

    def __init__(self, name, dtype, error):
        self.name, self.dtype, self.compute_type, self.error = name, dtype, dtype, error

    def fail(self, *args, **kwargs):
        """Raise the load error (its last line: the traceback went to the log)."""
        raise RuntimeError(f"failed to load: {self.error.strip().splitlines()[-1]}")

    embedder = generator = translator = fail


def packed_variant(dtype):
    """", kernel variant avx512" for an int8 / bfloat16 model (transformer.ops.packed), else
    ""."""
    try:
        from ..ops import packed
        return f", kernel variant {packed.VARIANT[dtype]}" if dtype in packed.VARIANT else ""
    except (ImportError, AttributeError):
        return ""


@register
class TransformerEngine(Engine):
    """This project: transformer.load(dir, dtype=dtype, threads=n)."""
    name = ENGINE
    tasks = TASKS

    def __init__(self, setup):
        super().__init__(setup)
        import transformer
        self.version = transformer.__version__
        self.model = transformer.load(setup.model_dir, dtype=setup.dtype,
                                      threads=setup.threads)
        self.notes.append(f"loaded as {type(self.model).__module__}.{type(self.model).__name__}"
                          f", dtype {setup.dtype}" + packed_variant(setup.dtype))

    def embedder(self, batches):
        return lambda: np.concatenate([self.model.embed(**b) for b in batches])

    def generator(self, prompts, new_tokens):
        def fn():
            out = self.model.generate(prompts, max_new_tokens=new_tokens, do_sample=False,
                                      eos_token_id=[], pad_token_id=0)
            return self.split_prompt(prompts, new_tokens, out)
        return fn

    def translate_batch(self, i, batch):
        out = self.model.generate(batch["input_ids"], batch["attention_mask"],
                                  max_new_tokens=batch["max_new_tokens"], num_beams=self.beams,
                                  length_penalty=self.length_penalty)
        return self.start_rows(i, batch, out)


@register
class TorchEngine(Engine):
    """Hugging Face transformers in PyTorch eager (its default attention implementation):
    AutoModel (encode; last_hidden_state pooled in NumPy), GPT2LMHeadModel.generate (greedy, KV
    cache, no eos), MarianMTModel.generate (beam search); at int8 / bfloat16 through
    peers.torch_at_dtype. `base`: a float32 TorchEngine whose model is reused (the
    reference), so the weights are read once."""
    name = "torch"
    tasks = TASKS

    def __init__(self, setup, base=None):
        super().__init__(setup)
        torch, transformers, self.version = peer_setup.load_torch(setup.threads)
        self.torch = torch
        if base is not None:
            model = base.float_model
        elif setup.task == "encode":
            model = transformers.AutoModel.from_pretrained(setup.model_dir)
        elif setup.task == "generate":
            model = transformers.GPT2LMHeadModel.from_pretrained(setup.model_dir)
        else:
            model = transformers.MarianMTModel.from_pretrained(setup.model_dir)
        self.float_model = model.eval()
        if setup.task == "generate":
            g = model.generation_config
            # No early stop: a GenerationConfig passed to generate() is merged with the model's,
            # so the eos has to be removed from the model's own generation config.
            g.eos_token_id = g.bos_token_id = None
            g.pad_token_id, g.do_sample, g.num_beams, g.use_cache = 0, False, 1, True
        elif setup.task == "translate":
            g = model.generation_config
            g.do_sample, g.early_stopping, g.num_return_sequences, g.use_cache = \
                False, False, 1, True
            g.max_length = g.forced_eos_token_id = g.forced_bos_token_id = None
            g.bad_words_ids, g.min_length = None, 0
        self.model = peer_setup.torch_at_dtype(torch, model, setup.dtype, self.notes)
        self.notes.append(peer_setup.torch_note(torch, model))

    def embedder(self, batches):
        wanted = peer_setup.model_inputs(self.float_model)  # MPNet: no token_type_ids
        inputs = [({k: self.torch.from_numpy(v) for k, v in b.items() if k in wanted},
                   b["attention_mask"]) for b in batches]

        def fn():
            out = []
            with self.torch.inference_mode():
                for inp, mask in inputs:
                    h = self.model(**inp).last_hidden_state.float().numpy()
                    out.append(mean_pool_normalize(h, mask))
            return np.concatenate(out)
        return fn

    def generator(self, prompts, new_tokens):
        ids = self.torch.from_numpy(prompts)
        mask = self.torch.ones_like(ids)

        def fn():
            with self.torch.inference_mode():
                out = self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                          do_sample=False, use_cache=True)
            return self.split_prompt(prompts, new_tokens, out.numpy())
        return fn

    def translate_inputs(self, batches):
        self.batches = batches
        self.inputs = [(self.torch.from_numpy(b["input_ids"]),
                        self.torch.from_numpy(b["attention_mask"])) for b in batches]

    def translate_batch(self, i, batch):
        ids, mask = self.inputs[i]
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, num_beams=self.beams,
                                      length_penalty=self.length_penalty, do_sample=False,
                                      max_new_tokens=batch["max_new_tokens"])
        return self.start_rows(i, batch, out.numpy())

    # --- the reference's tools (float32 model)
    def logit_gap(self, prompt, prefix, token_a, token_b):
        """logit[token_a] - logit[token_b] at the position after prompt + prefix (1-D ids), by
        the float32 model."""
        ids = np.concatenate([prompt, prefix]).astype(np.int64)[None]
        with self.torch.inference_mode():
            logits = self.float_model(self.torch.from_numpy(ids)).logits[0, -1]
        return float(logits[int(token_a)] - logits[int(token_b)])

    def scores(self, batch_index, row, hyps):
        """HF's beam score (sum of log-probabilities / length ** length_penalty, length counting
        the eos) of each target-id list in hyps, for source `row` of batch `batch_index` of the
        latest translator(), by the float32 model."""
        torch, pad = self.torch, self.setup.pad
        b = self.batches[batch_index]
        n = int(b["lengths"][row])
        src = torch.from_numpy(b["input_ids"][row:row + 1, :n]).repeat(len(hyps), 1)
        T = max(len(h) for h in hyps)
        dec = np.full((len(hyps), T), pad, np.int64)
        for k, h in enumerate(hyps):
            dec[k, 1:len(h)] = h[:-1]
        with torch.inference_mode():
            logits = self.float_model(input_ids=src,
                                      decoder_input_ids=torch.from_numpy(dec)).logits
            lp = torch.log_softmax(logits.double(), -1).numpy()
        return [float(sum(lp[k, t, tok] for t, tok in enumerate(h))
                      / max(len(h), 1) ** self.length_penalty) for k, h in enumerate(hyps)]


@register
class OrtEngine(Engine):
    """ONNX Runtime CPU session (ORT_ENABLE_ALL, intra_op n, inter_op 1, sequential) on the
    exported encoder (int8: quantize_dynamic on it, peers.onnx_model); pooling in NumPy."""
    name = "onnxruntime"
    tasks = ("encode",)

    def __init__(self, setup):
        super().__init__(setup)
        import onnxruntime as ort
        self.version = f"onnxruntime {ort.__version__}"
        try:
            path = peer_setup.onnx_model(setup.model_dir, setup.cache, setup.dtype, self.notes,
                                         setup.task)
        except ValueError as e:
            raise Unsupported(str(e)) from e
        so = ort.SessionOptions()
        so.intra_op_num_threads = setup.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def embedder(self, batches):
        wanted = {i.name for i in self.session.get_inputs()}
        inputs = [({k: v for k, v in b.items() if k in wanted}, b["attention_mask"])
                  for b in batches]

        def fn():
            return np.concatenate([
                mean_pool_normalize(self.session.run(["last_hidden_state"], feed)[0], mask)
                for feed, mask in inputs])
        return fn


CT2_COMPUTE = {"float32": "float32", "int8": "int8", "bfloat16": "bfloat16"}


@register
class Ct2Engine(Engine):
    """CTranslate2 on the float32 conversion (peers.ct2_convert, cached), loaded with
    compute_type = CT2_COMPUTE[dtype] (skipped when CTranslate2 has no such type on this CPU):
    Encoder.forward_batch on unpadded id lists (pooled in NumPy over the real tokens; an
    architecture its converter has not, such as MPNet, is Unsupported: skipped with "n/a"),
    Generator.generate_batch (sampling_topk=1, end_token=[], prompt as stand-in token strings),
    Translator.translate_batch (beam search, return_end_token=True)."""
    name = "ctranslate2"
    tasks = TASKS

    def __init__(self, setup):
        super().__init__(setup)
        import ctranslate2
        self.ct2 = ctranslate2
        self.version = f"ctranslate2 {ctranslate2.__version__}"
        compute = CT2_COMPUTE[setup.dtype]
        supported = ctranslate2.get_supported_compute_types("cpu")
        if compute not in supported:
            raise Unsupported(f"no {compute} on this CPU (CTranslate2 runs "
                              f"{', '.join(sorted(supported))} here)")
        self.compute_type = compute
        tokenizer = None
        if setup.task == "generate":
            tokenizer = peer_setup.StandInGPT2Tokenizer(setup.vocab_size)
        elif setup.task == "translate":
            tokenizer = peer_setup.StandInMarianTokenizer(setup.vocab_size, setup.eos,
                                                          setup.unk)
        try:
            self.dir = peer_setup.ct2_convert(setup.model_dir,
                                              os.path.join(setup.cache, "ctranslate2"),
                                              self.notes, setup.task, tokenizer)
        except ValueError as e:  # an architecture its converter does not know (MPNet)
            if "No conversion is registered" not in str(e):
                raise
            kind = str(e).split("configuration ")[-1].split(" ")[0]
            raise Unsupported(f"n/a: {self.version} cannot convert this model "
                              f"(TransformersConverter has no conversion for {kind})") from e
        kw = dict(device="cpu", compute_type=compute, intra_threads=setup.threads,
                  inter_threads=1)
        if setup.task == "encode":
            self.encoder = ctranslate2.Encoder(self.dir, **kw)
        elif setup.task == "generate":
            self.vocab = self.read_vocab(("vocabulary.json",), setup.vocab_size)
            self.runner = ctranslate2.Generator(self.dir, **kw)
        else:
            self.vocab = self.read_vocab(("shared_vocabulary.json", "target_vocabulary.json",
                                          "shared_vocabulary.txt", "target_vocabulary.txt"),
                                         setup.vocab_size - 1)
            if self.vocab[setup.eos] != "</s>":
                raise RuntimeError(f"{self.dir}: eos {setup.eos} is {self.vocab[setup.eos]!r}")
            self.ids = {t: i for i, t in enumerate(self.vocab)}
            self.runner = ctranslate2.Translator(self.dir, **kw)
        if setup.dtype != "float32":
            self.notes.append(f"compute_type={compute!r}: CTranslate2 quantizes the float32 "
                              "conversion at load")

    def read_vocab(self, names, size):
        """The conversion's vocabulary (the first of `names` present), checked to hold `size`
        tokens."""
        for name in names:
            p = os.path.join(self.dir, name)
            if os.path.exists(p):
                with open(p, encoding="utf-8") as f:
                    vocab = json.load(f) if name.endswith(".json") else f.read().splitlines()
                if len(vocab) != size:
                    raise RuntimeError(f"{p}: {len(vocab)} tokens, expected {size}")
                return vocab
        raise RuntimeError(f"{self.dir}: no vocabulary file ({', '.join(names)})")

    def embedder(self, batches):
        inputs = []
        for b in batches:
            lengths = b["attention_mask"].sum(axis=1)
            inputs.append(([row[:n].tolist() for row, n in zip(b["input_ids"], lengths)],
                           lengths))
        if any(b["token_type_ids"].any() for b in batches):
            self.notes.append("WARNING: non-zero token_type_ids not passed to CTranslate2")

        def fn():
            out = []
            for ids, lengths in inputs:
                h = np.array(self.encoder.forward_batch(ids).last_hidden_state)
                mask = np.arange(h.shape[1])[None, :] < lengths[:, None]
                out.append(mean_pool_normalize(h, mask))
            return np.concatenate(out)
        return fn

    def generator(self, prompts, new_tokens):
        tokens = [[self.vocab[i] for i in row] for row in prompts.tolist()]
        B = len(tokens)

        def fn():
            results = self.runner.generate_batch(
                tokens, max_length=new_tokens, sampling_topk=1, beam_size=1,
                include_prompt_in_result=False, end_token=[])
            seqs = [r.sequences_ids[0] for r in results]
            lengths = sorted({len(s) for s in seqs})
            if len(seqs) != B or lengths != [new_tokens]:
                out = np.full((len(seqs), max(lengths, default=0)), -1, np.int64)
                for i, s in enumerate(seqs):
                    out[i, :len(s)] = s
                return out, (f"returned {len(seqs)} sequences of lengths {lengths}, expected "
                             f"{B} of {new_tokens}")
            return np.asarray(seqs, dtype=np.int64), None
        return fn

    def translate_inputs(self, batches):
        self.inputs = [[[self.vocab[t] for t in row[:n]] for row, n in
                        zip(b["input_ids"].tolist(), b["lengths"])] for b in batches]

    def translate_batch(self, i, batch):
        results = self.runner.translate_batch(
            self.inputs[i], beam_size=self.beams, num_hypotheses=1,
            length_penalty=self.length_penalty, max_decoding_length=batch["max_new_tokens"],
            min_decoding_length=0, return_end_token=True, max_input_length=0)
        rows = [[self.ids[t] for t in r.hypotheses[0]] for r in results]
        problem = None
        if len(rows) != len(self.inputs[i]):
            problem = f"batch {i}: {len(rows)} results for {len(self.inputs[i])} sources"
        return [target_tokens(r, self.setup.pad, self.setup.eos) for r in rows], problem


@register
class LlamaCppEngine(Engine):
    """llama-cpp-python (`llama_cpp.Llama`, n_threads = n_threads_batch = n) on a GGUF written
    from the same GPT-2 weights (peers.write_gpt2_gguf: F32 for float32, Q8_0 for int8, BF16
    for bfloat16; cached); greedy (top_k=1, temp=0) through Llama.generate, which does not stop
    at eos, prompt ids in, new ids out. One sequence at a time: batch 1 only."""
    name = "llama.cpp"
    tasks = ("generate",)

    def __init__(self, setup):
        super().__init__(setup)
        import llama_cpp
        self.version = f"llama-cpp-python {llama_cpp.__version__}"
        kind = peer_setup.GGUF_TYPES[setup.dtype]
        self.compute_type = kind
        path = os.path.join(setup.cache, f"model-{kind.lower()}.gguf")
        if os.path.exists(path):
            self.notes.append(f"reused cached GGUF {path}")
        else:
            log(f"writing the {kind} GGUF for llama.cpp (once; cached)", setup.task)
            self.notes.append(peer_setup.write_gpt2_gguf(setup.model_dir, path, setup.dtype))
        with open(os.path.join(setup.model_dir, "config.json"), encoding="utf-8") as f:
            n_ctx = json.load(f)["n_positions"]
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=512,
                                   n_threads=setup.threads, n_threads_batch=setup.threads,
                                   seed=0, verbose=False)

    def generator(self, prompts, new_tokens):
        from .harness import NotApplicable
        if prompts.shape[0] != 1:
            raise NotApplicable("llama-cpp-python's Llama runs one sequence at a time: "
                                "batch 1 only")
        prompt = prompts[0].tolist()

        def fn():
            out = []
            self.llm.reset()            # no KV-cache reuse of the previous call's prompt
            for tok in self.llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0,
                                         repeat_penalty=1.0, reset=True):
                out.append(tok)
                if len(out) == new_tokens:
                    break
            return np.asarray([out], dtype=np.int64), None
        return fn


def load_engines(setup, peers, tag="bench"):
    """Load this engine at setup.dtype, HF torch float32 as the reference (always tried: it is
    the reference of the checks), and the requested peers at setup.dtype.

    This engine failing to load is a FailedEngine in the list (its row reports the error); a
    peer that cannot be loaded is skipped with the reason ("not installed (...)" for an
    ImportError, the Unsupported text for a task or compute type it has not, "setup failed:
    ..." for anything else). Returns (engines in table order: this one, then the peers in
    registry order; the float32 torch reference or None; {peer: reason skipped} for the peers
    asked for)."""
    engines, skipped = [], {}
    log(f"loading {ENGINE} ({setup.dtype})", tag)
    try:
        engines.append(TransformerEngine(setup))
    except Exception:  # noqa: BLE001 - reported in its row; the peers go on
        engines.append(FailedEngine(ENGINE, setup.dtype, traceback.format_exc()))
        log(f"ERROR: {ENGINE} failed to load:\n{engines[0].error}", tag)

    def attempt(name, make, dtype=setup.dtype):
        log(f"loading {name} ({dtype})", tag)
        try:
            return make()
        except ImportError as e:
            skipped[name] = f"not installed ({e})"
        except Unsupported as e:
            skipped[name] = str(e)
        except Exception as e:  # noqa: BLE001 - a peer that cannot be set up is skipped, noted
            skipped[name] = f"setup failed: {type(e).__name__}: {e}"
        return None

    reference = attempt("torch", lambda: TorchEngine(dataclasses.replace(setup,
                                                                         dtype="float32")),
                        "float32, the reference")
    for name in peer_names():
        if name not in peers:
            continue
        if name == "torch":
            if reference is not None and setup.dtype != "float32":
                engine = attempt(name, lambda: TorchEngine(setup, base=reference))
            else:
                engine = reference
        else:
            engine = attempt(name, lambda: REGISTRY[name](setup))
        if engine is not None:
            engines.append(engine)
    skipped = {k: v for k, v in skipped.items() if k in peers}
    for p, why in skipped.items():
        log(f"skipping {p}: {why}", tag)
    return engines, reference, skipped


def reference_options(reference, engines, prepare, what):
    """How compare_engines gets its reference: HF torch float32's outputs (`reference`, or None
    when torch is missing), whether or not torch is timed; prepare(engine, case) -> fn is the
    suite's. Returns (keyword arguments for compare_engines, notes for the report: the
    reference's, then each engine's own "name (version, compute type): note"); `what` says what
    is compared without torch."""
    if reference is None:
        kw, notes = {"reference_engine": ENGINE}, [
            f"HF torch is not available: {what} compared with {ENGINE}'s instead"]
    elif reference in engines:
        kw, notes = {"reference_engine": reference.name}, []
    else:
        kw = {"reference": lambda case: prepare(reference, case)()}
        notes = ["HF torch float32 is the reference of the check"
                 + (" but not timed (not in --peers)" if engines[0].dtype == "float32" else "")]
    for e in engines:
        notes += [f"{e.name} ({e.version}, {e.compute_type}): {n}" for n in e.notes]
    return kw, notes


class Bound:
    """An engine with the suite's prepare(engine, case) -> fn bound to it: the interface of
    harness.compare_engines (.name, .prepare(case))."""

    def __init__(self, engine, prepare):
        self.engine, self.name, self._prepare = engine, engine.name, prepare

    def prepare(self, case):
        """The engine's zero-argument run of `case`."""
        return self._prepare(self.engine, case)
