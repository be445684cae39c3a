"""The one engine registry of the suites and the kernel lab: one class per runtime, each
implementing the tasks it has (kernels, encode, generate, translate) on the devices and at the
compute types it has (bench/README.md lists what each runs and how).

  transformer   this project: transformer.ops (kernels), transformer.load(dir, device, dtype)
  torch         PyTorch eager ops and HF transformers models (also the float32 reference)
  onnxruntime   encode: the exported encoder (int8: quantize_dynamic on it)
  ctranslate2   the CTranslate2 conversion at compute_type = the dtype (no MPNet)
  llama.cpp     generate: llama-cpp-python on a GGUF of the same weights (llama_batch API)

A suite gets its engines from load_engines(setup, peers): each an Isolated, which
builds the engine in a fresh process of its own for the check round and for every timed round
(process.Worker): that process imports only its own runtime. Preparation (a CTranslate2
conversion, the ONNX export, the GGUF file) runs before, once per run, in a preparation process
of its own (Engine.prepare_files) and is cached on disk.

An engine's prepare(case) -> fn() runs one case; per task, the case is a dict:
  encode     {"batches": [{"input_ids", "attention_mask", "token_type_ids"} (B, T) int64]}
             -> (N, C) float32 L2-normalised mean-pooled embeddings
  generate   {"prompts": (B, P) int64, "new_tokens": N} -> ((B, N) int64 new tokens, problem)
  translate  {"batches": [{"input_ids", "attention_mask", "lengths", "max_new_tokens"}],
             "beams", "length_penalty"} -> (target ids per sentence, problem, engine name)
  kernels    a kernels.Case -> the op's output (on the device; host() brings it back)
"""
import dataclasses
import json
import os
import traceback

import numpy as np

from . import peers as peer_setup
from .harness import Unsupported, compare_engines, run_cases, skip_reason
from .process import Worker, run_in_process
from .stats import busy_check, cpu_sample, log, usage_text

ENGINE = "transformer"
TASKS = ("kernels", "encode", "generate", "translate")
REGISTRY = {}          # name -> Engine subclass, in registration (table) order
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")


def register(cls):
    """Class decorator: add an Engine subclass to REGISTRY under cls.name."""
    REGISTRY[cls.name] = cls
    return cls


def peer_names():
    """Every registered peer (not this engine, not the NumPy baseline), in table order."""
    return tuple(n for n, c in REGISTRY.items() if c.peer)


def make(name, setup):
    """The registry's engine `name` built for `setup` (what a worker process runs)."""
    return REGISTRY[name](setup)


@dataclasses.dataclass
class Setup:
    """What an engine needs to load. task: one of TASKS; model_dir: HF directory (None for
    kernels); threads; dtype: a compute type of `device` (transformer.dtypes.DTYPES); workdir:
    cache of conversions; vocab_size, eos, unk, pad: a random model's token ids."""
    task: str
    model_dir: str = None
    threads: int = 1
    dtype: str = "float32"
    workdir: str = os.path.join(".cache", "bench")
    vocab_size: int = None
    eos: int = None
    unk: int = None
    pad: int = None
    device: str = "cpu"

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
    """One runtime (see the module docstring). name; tasks; devices; peer: on the --peers list;
    version, notes (list of str for the report), compute_type (what it runs, in words)."""
    name = "?"
    tasks = ()
    devices = ("cpu",)
    peer = True

    def __init__(self, setup):
        if setup.task not in self.tasks:
            raise Unsupported(f"not applicable to {setup.task}")
        if setup.device not in self.devices:
            raise Unsupported(f"runs on {', '.join(self.devices)} only in this benchmark")
        self.setup, self.dtype = setup, setup.dtype
        self.version, self.notes, self.compute_type = "?", [], setup.dtype
        self.notes += self.prepare_files(setup)

    @classmethod
    def prepare_files(cls, setup):
        """Make what the engine loads (a conversion, an export), cached on disk; returns notes.
        Run once per run in a preparation process before the rounds (load_engines)."""
        return []

    def prepare(self, case):
        """The zero-argument run of one case of this engine's task (the module docstring)."""
        if self.setup.task == "kernels":
            return self.kernel(case)
        if self.setup.task == "encode":
            return self.embedder(case["batches"])
        if self.setup.task == "generate":
            return self.generator(case["prompts"], case["new_tokens"])
        return self.translator(case["batches"], case["beams"], case["length_penalty"])

    def host(self, out, case):
        """A kernel's output as NumPy (device arrays copied back), the checked slice only when
        the case checks one (case.check = (b, h)); other tasks' outputs as they are."""
        if self.setup.task != "kernels":
            return out
        out = self.to_numpy(out)
        return out if case.check is None else out[case.check[0]:case.check[0] + 1,
                                                  case.check[1]:case.check[1] + 1]

    @staticmethod
    def to_numpy(out):
        """out as a NumPy array."""
        return np.asarray(out)

    def run_cases(self, *args):
        """harness.run_cases on this engine, in this process (what an Isolated's worker calls)."""
        return run_cases(self, *args)

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


class Isolated:
    """An engine of the registry in a fresh process of its own per run_cases call (a
    process.Worker building make(engine, setup)). name: the row's name (default the engine's);
    version, notes, compute_type: the engine's, once it ran; skipped: why it could not load.
    With keep, the check process stays alive: call(method, *args), and the reference's tools
    logit_gap and scores, run in it, until close()."""

    def __init__(self, engine, setup, name=None):
        self.engine, self.setup, self.name = engine, setup, name or engine
        self.version, self.notes, self.compute_type = None, [], setup.dtype
        self.skipped, self.worker = None, None

    def run_cases(self, cases, inner, min_seconds, check, keep=False):
        """harness.run_cases in a fresh process (see harness.compare_engines)."""
        w = Worker()
        try:
            w.request("new", make, (self.engine, self.setup))
            out = w.request("call", "run_cases", (cases, inner, min_seconds, check))
        except BaseException:
            w.close()
            raise
        if keep:
            self.worker = w
        else:
            w.close()
        return out

    def imported(self):
        """The modules a fresh process of this engine has imported once loaded (sys.modules)."""
        return self.once(None)

    def once(self, method, *args):
        """engine.method(*args) in a fresh process of its own (method None: its sys.modules)."""
        with Worker() as w:
            w.request("new", make, (self.engine, self.setup))
            return w.request("call", method, args) if method else w.request("modules")

    def call(self, method, *args):
        """engine.method(*args) in the kept process."""
        return self.worker.request("call", method, args)

    def logit_gap(self, *args):
        """TorchEngine.logit_gap in the kept process."""
        return self.call("logit_gap", *args)

    def scores(self, *args):
        """TorchEngine.scores in the kept process."""
        return self.call("scores", *args)

    def close(self):
        """End the kept process."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None


@register
class TransformerEngine(Engine):
    """This project: transformer.ops (kernels; on "cuda" the inputs uploaded in case.dtype) and
    transformer.load(dir, device, dtype, threads) (the model tasks)."""
    name = ENGINE
    tasks = TASKS
    devices = ("cpu", "cuda")
    peer = False

    def __init__(self, setup):
        super().__init__(setup)
        import transformer
        from .. import ops
        from ..device import to_numpy
        from ..ops import packed
        self.ops, self.version, self.to_numpy = ops, transformer.__version__, to_numpy
        if setup.task == "kernels":
            return
        self.model = transformer.load(setup.model_dir, device=setup.device, dtype=setup.dtype,
                                      threads=setup.threads)
        variant = packed.VARIANT.get(setup.dtype)
        self.notes.append(f"loaded as {type(self.model).__module__}.{type(self.model).__name__}"
                          f", {setup.device} {setup.dtype}"
                          + (f", kernel variant {variant}" if variant else ""))

    def kernel(self, case):
        """The op through transformer.ops (see kernels.py for the ops and their layouts)."""
        ops, n, p = self.ops, self.setup.threads, case.params
        i, sync = case.inputs, (lambda: None)
        if self.setup.device == "cuda":
            from ..ops.cuda import cupy
            place = ops.backend("cuda", case.dtype, n).place
            i = {k: place(v) if v.dtype.kind == "f" else v for k, v in i.items()}
            sync = cupy().cuda.Device().synchronize
        call = {"softmax": lambda: ops.softmax(i["x"], threads=n),
                "layer_norm": lambda: ops.layer_norm(i["x"], i["w"], i["b"], p["eps"],
                                                     threads=n),
                "rms_norm": lambda: ops.rms_norm(i["x"], i["w"], threads=n),
                "linear": lambda: ops.linear(i["x"], i["w"], i["b"], threads=n),
                "attention": lambda: ops.attention(i["q"], i["k"], i["v"], causal=p["causal"],
                                                   threads=n),
                "decode_attention": lambda: ops.decode_attention(
                    i["q"], i["k_cache"], i["v_cache"], p["lengths"], threads=n)}
        for act in ACTIVATIONS:
            call[act] = lambda f=getattr(ops, act): f(i["x"], threads=n)
        fn = call[case.op]
        return lambda: (fn(), sync())[0]

    def embedder(self, batches):
        return lambda: np.concatenate([self.to_numpy(self.model.embed(**b)) for b in batches])

    def generator(self, prompts, new_tokens):
        def fn():
            out = self.model.generate(prompts, max_new_tokens=new_tokens, do_sample=False,
                                      eos_token_id=[], pad_token_id=0)
            return self.split_prompt(prompts, new_tokens, self.to_numpy(out))
        return fn

    def translate_batch(self, i, batch):
        out = self.model.generate(batch["input_ids"], batch["attention_mask"],
                                  max_new_tokens=batch["max_new_tokens"], num_beams=self.beams,
                                  length_penalty=self.length_penalty)
        return self.start_rows(i, batch, self.to_numpy(out))

    def logits(self, prompts):
        """Next-token logits (B, T, V) float32 at every position of prompts (B, T)."""
        return np.asarray(self.to_numpy(self.model(prompts)), np.float32)


@register
class TorchEngine(Engine):
    """PyTorch eager: its ops (kernels; scaled_dot_product_attention, on "cuda" the FlashAttention
    backend) and HF transformers models (AutoModel for encode, GPT2LMHeadModel.generate: greedy,
    KV cache, no eos; MarianMTModel.generate: beam search), at int8 / bfloat16 / float16
    through peers.torch_at_dtype, on the setup's device."""
    name = "torch"
    tasks = TASKS
    devices = ("cpu", "cuda")

    def __init__(self, setup):
        super().__init__(setup)
        torch, transformers, self.version = peer_setup.load_torch(setup.threads)
        self.torch, self.dev = torch, setup.device
        if setup.task == "kernels":
            return
        if setup.task == "encode":
            model = transformers.AutoModel.from_pretrained(setup.model_dir)
        elif setup.task == "generate":
            model = transformers.GPT2LMHeadModel.from_pretrained(setup.model_dir)
            g = model.generation_config
            # No early stop: a GenerationConfig passed to generate() is merged with the model's,
            # so the eos has to be removed from the model's own generation config.
            g.eos_token_id = g.bos_token_id = None
            g.pad_token_id, g.do_sample, g.num_beams, g.use_cache = 0, False, 1, True
        else:
            model = transformers.MarianMTModel.from_pretrained(setup.model_dir)
            g = model.generation_config
            g.do_sample, g.early_stopping, g.num_return_sequences, g.use_cache = \
                False, False, 1, True
            g.max_length = g.forced_eos_token_id = g.forced_bos_token_id = None
            g.bad_words_ids, g.min_length = None, 0
        self.float_model = model.eval()
        self.model = peer_setup.torch_at_dtype(torch, model, setup.dtype, self.notes).to(self.dev)
        self.notes.append(peer_setup.torch_note(torch, model))

    def tensor(self, a):
        """A NumPy array as a tensor on the device (sharing memory on the CPU)."""
        return self.torch.from_numpy(a).to(self.dev)

    @staticmethod
    def to_numpy(out):
        return out.float().cpu().numpy() if hasattr(out, "cpu") else np.asarray(out)

    def kernel(self, case):
        """The op as a closure over tensors made here (outside the timing); the decode cache is
        transposed to (B, H, S, D)."""
        torch, F, p = self.torch, self.torch.nn.functional, case.params
        dt = getattr(torch, case.dtype)
        t = {k: self.tensor(v).to(dt) if v.dtype.kind == "f" else self.tensor(v)
             for k, v in case.inputs.items()}
        sync = torch.cuda.synchronize if self.dev == "cuda" else (lambda: None)
        x = t.get("x")
        if case.op == "decode_attention":
            q = t["q"][:, :, None, :]
            k, v = (t[c].permute(0, 2, 1, 3).contiguous() for c in ("k_cache", "v_cache"))
            fn = lambda: F.scaled_dot_product_attention(q, k, v)[:, :, 0]  # noqa: E731
        elif case.op == "attention":
            import contextlib

            import torch.nn.attention as backends
            flash = (lambda: backends.sdpa_kernel(backends.SDPBackend.FLASH_ATTENTION)) \
                if self.dev == "cuda" else contextlib.nullcontext

            def fn():   # T == S here, so torch's top-left causal mask is ours
                with flash():
                    return F.scaled_dot_product_attention(t["q"], t["k"], t["v"],
                                                          is_causal=p["causal"])
        else:
            fn = {"softmax": lambda: torch.softmax(x, -1),
                  "layer_norm": lambda: F.layer_norm(x, x.shape[-1:], t["w"], t["b"], p["eps"]),
                  "rms_norm": lambda: F.rms_norm(x, x.shape[-1:], t["w"], 1e-6),
                  "gelu": lambda: F.gelu(x), "gelu_tanh": lambda: F.gelu(x, approximate="tanh"),
                  "silu": lambda: F.silu(x), "relu": lambda: torch.relu(x),
                  "linear": lambda: F.linear(x, t["w"], t["b"])}[case.op]
        return lambda: (fn(), sync())[0]

    def embedder(self, batches):
        wanted = peer_setup.model_inputs(self.float_model)  # MPNet: no token_type_ids
        inputs = [({k: self.tensor(v) for k, v in b.items() if k in wanted},
                   b["attention_mask"]) for b in batches]

        def fn():
            out = []
            with self.torch.inference_mode():
                for inp, mask in inputs:
                    h = self.model(**inp).last_hidden_state.float().cpu().numpy()
                    out.append(mean_pool_normalize(h, mask))
            return np.concatenate(out)
        return fn

    def generator(self, prompts, new_tokens):
        ids = self.tensor(prompts)
        mask = self.torch.ones_like(ids)

        def fn():
            with self.torch.inference_mode():
                out = self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                          do_sample=False, use_cache=True)
            return self.split_prompt(prompts, new_tokens, out.cpu().numpy())
        return fn

    def translate_inputs(self, batches):
        self.batches = batches
        self.inputs = [(self.tensor(b["input_ids"]), self.tensor(b["attention_mask"]))
                       for b in batches]

    def translate_batch(self, i, batch):
        ids, mask = self.inputs[i]
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, num_beams=self.beams,
                                      length_penalty=self.length_penalty, do_sample=False,
                                      max_new_tokens=batch["max_new_tokens"])
        return self.start_rows(i, batch, out.cpu().numpy())

    # --- the reference's tools (the float32 model)
    def logits(self, prompts):
        """Next-token logits (B, T, V) float32 of the float32 model at every position."""
        with self.torch.inference_mode():
            return self.float_model(self.tensor(prompts)).logits.float().cpu().numpy()

    def logit_gap(self, prompt, prefix, token_a, token_b):
        """logit[token_a] - logit[token_b] at the position after prompt + prefix (1-D ids), by
        the float32 model."""
        ids = np.concatenate([prompt, prefix]).astype(np.int64)[None]
        with self.torch.inference_mode():
            logits = self.float_model(self.tensor(ids)).logits[0, -1]
        return float(logits[int(token_a)] - logits[int(token_b)])

    def scores(self, batch_index, row, hyps):
        """HF's beam score (sum of log-probabilities / length ** length_penalty, length counting
        the eos) of each target-id list in hyps, for source `row` of batch `batch_index` of the
        latest translator(), by the float32 model."""
        torch, pad = self.torch, self.setup.pad
        b = self.batches[batch_index]
        n = int(b["lengths"][row])
        src = self.tensor(b["input_ids"][row:row + 1, :n]).repeat(len(hyps), 1)
        T = max(len(h) for h in hyps)
        dec = np.full((len(hyps), T), pad, np.int64)
        for k, h in enumerate(hyps):
            dec[k, 1:len(h)] = h[:-1]
        with torch.inference_mode():
            logits = self.float_model(input_ids=src, decoder_input_ids=self.tensor(dec)).logits
            lp = torch.log_softmax(logits.double(), -1).cpu().numpy()
        return [float(sum(lp[k, t, tok] for t, tok in enumerate(h))
                      / max(len(h), 1) ** self.length_penalty) for k, h in enumerate(hyps)]


@register
class OrtEngine(Engine):
    """ONNX Runtime CPU session (ORT_ENABLE_ALL, intra_op n, inter_op 1, sequential) on the
    exported encoder (int8: quantize_dynamic on it, peers.onnx_model); pooling in NumPy."""
    name = "onnxruntime"
    tasks = ("encode",)

    @classmethod
    def prepare_files(cls, setup):
        """The ONNX export (and its int8 quantization) of the encoder, cached."""
        import onnxruntime  # noqa: F401 - no export without the peer that runs it
        notes = []
        try:
            peer_setup.onnx_model(setup.model_dir, setup.cache, setup.dtype, notes, setup.task)
        except ValueError as e:
            raise Unsupported(str(e)) from e
        return notes

    def __init__(self, setup):
        super().__init__(setup)
        import onnxruntime as ort
        self.version = f"onnxruntime {ort.__version__}"
        path = peer_setup.onnx_model(setup.model_dir, setup.cache, setup.dtype, [], setup.task)
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


@register
class Ct2Engine(Engine):
    """CTranslate2 on the float32 conversion (peers.ct2_convert, cached), loaded with
    compute_type = dtype (the same names; skipped when CTranslate2 has no such type on this CPU):
    Encoder.forward_batch on unpadded id lists (pooled in NumPy over the real tokens; an
    architecture its converter has not, such as MPNet, is Unsupported: skipped with "n/a"),
    Generator.generate_batch (sampling_topk=1, end_token=[], prompt as stand-in token strings),
    Translator.translate_batch (beam search, return_end_token=True)."""
    name = "ctranslate2"
    tasks = TASKS

    @classmethod
    def prepare_files(cls, setup):
        """The float32 conversion (peers.ct2_convert, cached); Unsupported for a compute type
        this CPU has not or an architecture the converter does not know (MPNet)."""
        import ctranslate2
        compute = setup.dtype
        supported = ctranslate2.get_supported_compute_types("cpu")
        if compute not in supported:
            raise Unsupported(f"no {compute} on this CPU (CTranslate2 runs "
                              f"{', '.join(sorted(supported))} here)")
        tokenizer, notes = None, []
        if setup.task == "generate":
            tokenizer = peer_setup.StandInGPT2Tokenizer(setup.vocab_size)
        elif setup.task == "translate":
            tokenizer = peer_setup.StandInMarianTokenizer(setup.vocab_size, setup.eos,
                                                          setup.unk)
        try:
            peer_setup.ct2_convert(setup.model_dir, os.path.join(setup.cache, "ctranslate2"),
                                   notes, setup.task, tokenizer)
        except ValueError as e:  # an architecture its converter does not know (MPNet)
            if "No conversion is registered" not in str(e):
                raise
            kind = str(e).split("configuration ")[-1].split(" ")[0]
            raise Unsupported(f"n/a: ctranslate2 {ctranslate2.__version__} cannot convert this "
                              f"model (TransformersConverter has no conversion for {kind})") from e
        return notes

    def __init__(self, setup):
        super().__init__(setup)
        import ctranslate2
        self.version = f"ctranslate2 {ctranslate2.__version__}"
        compute = self.compute_type = setup.dtype
        self.dir = os.path.join(setup.cache, "ctranslate2")
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
    """llama-cpp-python on a GGUF written from the same GPT-2 weights (peers.write_gpt2_gguf: F32
    for float32, Q8_0 for int8, Q4_0 for int4, BF16 for bfloat16; cached), through its low-level
    API: a context of B sequences (n_threads = n_threads_batch = n), all of them in one
    llama_batch per llama_decode (the B prompts together, then one token of each per step),
    greedy (argmax of llama_get_logits_ith), prompt ids in, new ids out, no stop at eos."""
    name = "llama.cpp"
    tasks = ("generate",)

    @classmethod
    def prepare_files(cls, setup):
        """The GGUF file of the dtype (peers.write_gpt2_gguf), cached."""
        import llama_cpp  # noqa: F401 - no GGUF without the peer that reads it
        path = cls.gguf_path(setup)
        if os.path.exists(path):
            return [f"reused cached GGUF {path}"]
        log(f"writing the {peer_setup.GGUF_TYPES[setup.dtype]} GGUF for llama.cpp (once; "
            "cached)", setup.task)
        return [peer_setup.write_gpt2_gguf(setup.model_dir, path, setup.dtype)]

    @staticmethod
    def gguf_path(setup):
        """The cached GGUF of setup.dtype."""
        return os.path.join(setup.cache, f"model-{peer_setup.GGUF_TYPES[setup.dtype].lower()}"
                                         ".gguf")

    def __init__(self, setup):
        super().__init__(setup)
        import llama_cpp
        self.lc, self.contexts = llama_cpp, {}
        self.version = f"llama-cpp-python {llama_cpp.__version__}"
        self.compute_type = peer_setup.GGUF_TYPES[setup.dtype]
        self.llm = llama_cpp.Llama(model_path=self.gguf_path(setup), n_ctx=256, seed=0,
                                   verbose=False)  # the model; contexts are made per batch

    def context(self, B, T):
        """A cleared context for B sequences of up to T tokens each (cached per shape)."""
        lc = self.lc
        if (B, T) not in self.contexts:
            p = lc.llama_context_default_params()
            p.n_ctx, p.n_seq_max = B * -(-T // 256) * 256, B
            p.n_batch = p.n_ubatch = max(512, B * T)
            p.n_threads = p.n_threads_batch = self.setup.threads
            self.contexts[(B, T)] = lc.llama_init_from_model(self.llm._model.model, p)
        ctx = self.contexts[(B, T)]
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        return ctx

    def decode(self, ctx, tokens, start, every=False):
        """llama_decode of one llama_batch: tokens (B, n) of B sequences at positions start..
        start + n - 1; returns the logits (B, n, V) float32 of every position (every) or
        (B, 1, V) of the last."""
        lc, (B, n) = self.lc, tokens.shape
        b = lc.llama_batch_init(B * n, 0, 1)
        try:
            b.n_tokens = B * n
            for i, tok in enumerate(tokens.ravel().tolist()):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, start + i % n, 1
                b.seq_id[i][0], b.logits[i] = i // n, every or i % n == n - 1
            if lc.llama_decode(ctx, b) != 0:
                raise RuntimeError("llama_decode failed")
        finally:
            lc.llama_batch_free(b)
        V = self.llm.n_vocab()
        rows = range(B * n) if every else range(n - 1, B * n, n)
        return np.stack([np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), (V,))
                         for i in rows]).reshape(B, -1, V)

    def generator(self, prompts, new_tokens):
        B, P = prompts.shape
        self.context(B, P + new_tokens)  # made here, outside the timed runs

        def fn():
            ctx, out, tokens = self.context(B, P + new_tokens), [], prompts
            for step in range(new_tokens):
                start = P + step - 1 if step else 0
                tokens = self.decode(ctx, tokens, start)[:, -1].argmax(axis=1)[:, None]
                out.append(tokens)
            return np.concatenate(out, axis=1).astype(np.int64), None
        return fn

    def logits(self, prompts):
        """Next-token logits (B, T, V) float32 at every position of prompts (B, T)."""
        return self.decode(self.context(*prompts.shape), prompts, 0, every=True).copy()


def load_engines(setup, peers, tag="bench"):
    """This engine at setup.dtype, HF torch float32 as the reference of the checks (always
    tried), and the requested peers at setup.dtype, in table order, each an Isolated (a fresh
    process per round). Each peer's files are prepared first in a preparation process of its
    own (prepare_files); a peer that has not the task or device, or whose preparation fails, is
    skipped with the reason (harness.skip_reason); one that cannot load is found out in the
    check round (harness.compare_engines). Returns (engines, reference: the torch float32
    engine, which is in engines when torch is timed at float32, or None when it could not be
    prepared; {peer: reason skipped})."""
    engines, skipped = [], {}
    names = [ENGINE] + [n for n in peer_names() if n in peers]

    def attempt(name, s):
        log(f"preparing {name} ({s.dtype})", tag)
        cls, e = REGISTRY[name], Isolated(name, s)
        try:
            if s.task not in cls.tasks or s.device not in cls.devices:
                raise Unsupported(f"not applicable to {s.task} on {s.device}")
            if cls.prepare_files.__func__ is not Engine.prepare_files.__func__:
                e.notes = run_in_process(cls.prepare_files, s)
            return e
        except Exception as exc:  # noqa: BLE001 - a peer that cannot be set up is skipped, noted
            if name == ENGINE:
                return e          # its rows report why it cannot run
            skipped[name] = skip_reason(exc)
        return None

    timed_reference = setup.task != "kernels" and "torch" in peers and setup.dtype == "float32"
    reference = None
    if setup.task != "kernels" and not timed_reference:
        reference = attempt("torch", dataclasses.replace(setup, dtype="float32"))
        if reference is not None:
            reference.name = "torch (float32 reference)"
    for name in names:
        e = attempt(name, setup)
        if e is not None:
            engines.append(e)
            if timed_reference and name == "torch":
                reference = e
    skipped = {k: v for k, v in skipped.items() if k in peers}
    for p, why in skipped.items():
        log(f"skipping {p}: {why}", tag)
    return engines, reference, skipped


def run_model_suite(setup, peers, cases, compare, rounds, probe, pause=0.25,
                    time_disagreeing=False, what="outputs are"):
    """The protocol of the model suites (encode, generate, translate): load_engines, then
    harness.compare_engines on `cases` (dicts, each named by its "label") against HF torch
    float32, `probe`.measure() in a process of its own after each round, and who else used the
    CPUs meanwhile. compare(out, ref, case, reference): the suite's check, reference being the
    live torch float32 engine (its logit_gap, scores) or None. what: "embeddings are", ...
    (engine_notes). Returns {"engines" (those that ran), "rows", "probes", "usage",
    "warnings", "skipped", "notes", "protocol" (the summary's words on the protocol)}."""
    tag = setup.task
    engines, reference, skipped = load_engines(setup, peers, tag)

    def check(out, ref, case):
        live = None if reference is None or reference.skipped else reference
        return compare(out, ref, case, live)
    log(f"checking, then timing {rounds} rounds x {[e.name for e in engines]}", tag)
    ticks = cpu_sample()
    rows, probes = compare_engines(
        engines, cases, check, rounds, pause=pause, probe=lambda: run_in_process(probe.measure),
        time_disagreeing=time_disagreeing, tag=tag, case_label=lambda c: c["label"],
        **reference_options(reference, engines))
    usage, warning = busy_check(ticks, tag)
    notes = engine_notes(reference, engines, skipped, what, setup.dtype)
    return {"engines": [e for e in engines if not e.skipped], "rows": rows, "probes": probes,
            "usage": usage, "warnings": [warning] if warning else [], "skipped": skipped,
            "notes": notes, "protocol": f"median of {rounds} interleaved rounds, each engine in "
            f"a fresh process of its own per round{usage_text(usage)}"}


def reference_options(reference, engines):
    """compare_engines' keyword arguments for the reference: its row when it is among the
    engines (torch timed at float32), else the engine itself (its own process, not timed), or,
    without it, this engine's outputs."""
    if reference is None:
        return {"reference_engine": ENGINE}
    if reference in engines:
        return {"reference_engine": reference.name}
    return {"reference": reference}


def engine_notes(reference, engines, skipped, what, dtype):
    """The report's notes on the reference (`what`: what is compared) and each engine's own
    "name (version, compute type): note"; adds to skipped the engines that could not load in
    their process (their .skipped)."""
    for e in engines:
        if getattr(e, "skipped", None):
            skipped[e.name] = e.skipped
    if reference is None or getattr(reference, "skipped", None):
        notes = [f"HF torch is not available: {what} compared with {ENGINE}'s instead"]
    elif reference in engines:
        notes = []
    else:
        notes = ["HF torch float32 is the reference of the check"
                 + (" but not timed (not in --peers)" if dtype == "float32" else "")]
    for e in engines:
        if not getattr(e, "skipped", None):
            notes += [f"{e.name} ({e.version}, {e.compute_type}): {n}" for n in e.notes or ()]
    return notes
