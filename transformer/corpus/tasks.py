"""What a corpus job does to each line: a CorpusTask loads a model once per process, tokenizes
lines and runs batches of token lists; EmbedTask, TranslateTask and GenerateTask are the three
jobs of `transformer embed / translate / generate --input`."""
import json
import os

import numpy as np

from .errors import CorpusError

__all__ = ["CorpusTask", "EmbedTask", "TranslateTask", "GenerateTask", "completion",
           "model_files"]


class CorpusTask:
    """What a corpus job does to each line: load a model once per process, tokenize lines, run a
    batch of token lists. Subclasses: EmbedTask, TranslateTask, GenerateTask; a subclass must be
    picklable (it travels to the Dask workers) and importable there.

    model: model path (as transformer.load); device, dtype, threads, tokenizer: as
    transformer.load. threads is not part of the job's identity (resume and outputs ignore it)."""

    kind = "task"
    suffixes = (".txt",)  # output file suffixes this task writes; the first is the default

    def __init__(self, model, device="cpu", dtype=None, threads=None, tokenizer=None):
        self.model = None if model is None else os.fspath(model)
        self.device, self.dtype, self.threads, self.tokenizer = device, dtype, threads, tokenizer

    def identity(self):
        """JSON-able dict naming everything that changes the output (for resume): the task's
        settings and the model's files as they are now (model_files)."""
        d = {k: v for k, v in vars(self).items() if k != "threads"}
        d["kind"] = self.kind
        d["model_files"] = model_files(self.model, self.tokenizer)
        return d

    def with_threads(self, threads):
        """A copy that loads its model with `threads` kernel threads."""
        clone = object.__new__(type(self))
        clone.__dict__.update(vars(self), threads=threads)
        return clone

    def load(self):
        """The model, loaded once per process."""
        import transformer
        kwargs = {"tokenizer": self.tokenizer} if self.tokenizer else {}
        return transformer.load(self.model, device=self.device, dtype=self.dtype,
                                threads=self.threads, **kwargs)

    def encode(self, model, texts):
        """Token ids (list of int) of each text, and whether each one was cut to the model's
        limit: returns (ids lists, truncated flags). Default: model.tokenizer.encode, cut at
        self.limit(model)."""
        limit = self.limit(model)
        ids = [model.tokenizer.encode(t) for t in texts]
        return [x[:limit] for x in ids], [len(x) > limit for x in ids]

    def limit(self, model):
        """Most tokens of one line."""
        return model.config.max_position_embeddings

    def run_batch(self, model, batch, seed):
        """Results (one per token list) of a batch of token lists; seed: int for this batch."""
        raise NotImplementedError

    def blank(self, model):
        """The result of a blank line."""
        return ""

    def width(self, model):
        """The row width of an .npy output (None: a text output): what an input without lines
        gives (0, width)."""
        return None

    def collect(self, results):
        """Results of a shard (list, input order) -> what the driver writes."""
        return results

    def write(self, f, suffix, lines, results):
        """Write a shard's results to the binary file f (suffix: the output's)."""
        for r in results:
            f.write((r.replace("\n", " ") + "\n").encode("utf-8"))


def completion(tokenizer, prompt, new, eos_token_ids):
    """The text of the new tokens `new` after the token list `prompt`, up to the first of
    eos_token_ids: decoded together with the prompt, so that a word joining the two keeps its
    spacing (the decode of the new tokens alone otherwise)."""
    new = [int(t) for t in new]
    eos = set(eos_token_ids)
    new = new[:next((i for i, t in enumerate(new) if t in eos), len(new))]
    head, full = tokenizer.decode(prompt), tokenizer.decode(list(prompt) + new)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(new)


def model_files(model, tokenizer=None):
    """{path: [size, mtime_ns]} of the files a model is loaded from: the file at `model`, or the
    regular files directly inside the directory `model`, and a tokenizer file: a model
    rewritten at the same path changes it (what resume compares, besides the settings). {} for
    None or a path that is not there (the load then says so)."""
    if model is None:
        return {}
    paths = [model]
    if os.path.isdir(model):
        with os.scandir(model) as entries:
            paths = sorted(e.path for e in entries if e.is_file())
    if tokenizer:
        paths.append(os.fspath(tokenizer))
    found = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        found[os.path.abspath(p)] = [st.st_size, st.st_mtime_ns]
    return found


def _hf_encode(tokenizer, texts, limit):
    """Token ids of texts through a transformer.tokenizer.Tokenizer, truncated as the Hugging Face
    tokenizer does (special tokens kept) at `limit`, no padding: (ids lists, truncated flags)."""
    from tokenizers import Tokenizer as HFTokenizer
    raw = HFTokenizer.from_str(tokenizer._tok.to_str())  # a copy: no padding, our truncation
    raw.no_padding()
    raw.enable_truncation(limit)
    enc = raw.encode_batch(list(texts))
    return [e.ids for e in enc], [len(e.overflowing) > 0 for e in enc]


def _padded(batch, pad, left=False):
    """(B, T) int64 ids and mask of token lists, padded right (or left) with `pad`."""
    T = max(map(len, batch))
    ids = np.full((len(batch), T), pad, np.int64)
    mask = np.zeros((len(batch), T), np.int64)
    for b, seq in enumerate(batch):
        cols = slice(T - len(seq), T) if left else slice(0, len(seq))
        ids[b, cols], mask[b, cols] = seq, 1
    return ids, mask


class EmbedTask(CorpusTask):
    """Sentence embeddings (model.embed: pooling "mean" or "cls", L2-normalized when normalize).
    Output .npy: float32 (N, C), a blank line a row of zeros; .jsonl: {"text", "embedding"}
    per line (7 decimals, as `transformer embed`)."""

    kind = "embed"
    suffixes = (".npy", ".jsonl")

    def __init__(self, model, pooling="mean", normalize=True, **load):
        super().__init__(model, **load)
        self.pooling, self.normalize = pooling, normalize

    def load(self):
        model = super().load()
        if model.kind != "encoder":
            raise CorpusError(f"embed needs an encoder (a sentence-embedding model); this is a "
                              f"{model.kind} model")
        return model

    def limit(self, model):
        tok = getattr(model.tokenizer, "max_length", None)
        P = model.config.max_position_embeddings
        return min(tok, P) if tok else P

    def encode(self, model, texts):
        if model.tokenizer is None:
            raise CorpusError("embed needs a model with a tokenizer.json")
        return _hf_encode(model.tokenizer, texts, self.limit(model))

    def run_batch(self, model, batch, seed):
        from ..device import to_numpy
        ids, mask = _padded(batch, 0)
        return list(to_numpy(model.embed(ids, mask, pooling=self.pooling,
                                         normalize=self.normalize)))

    def blank(self, model):
        return np.zeros(model.config.d_model, np.float32)

    def width(self, model):
        return model.config.d_model

    def collect(self, results):
        return np.stack(results).astype(np.float32, copy=False)

    def write(self, f, suffix, lines, results):
        if suffix == ".npy":
            np.save(f, results)
            return
        for text, e in zip(lines, results):
            f.write((json.dumps({"text": text, "embedding": [round(float(x), 7) for x in e]},
                                ensure_ascii=False) + "\n").encode("utf-8"))


class TranslateTask(CorpusTask):
    """Translations with an encoder-decoder (model.generate: beam search with num_beams and
    length_penalty, at most max_new_tokens), one text line per input line (newlines inside a
    translation become spaces)."""

    kind = "translate"
    suffixes = (".txt",)

    def __init__(self, model, num_beams=4, length_penalty=1.0, max_new_tokens=256, **load):
        super().__init__(model, **load)
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.max_new_tokens = max_new_tokens

    def load(self):
        model = super().load()
        if model.kind != "seq2seq":
            raise CorpusError(f"translate needs an encoder-decoder model; this is a {model.kind} "
                              "model")
        return model

    def encode(self, model, texts):
        if hasattr(model.tokenizer, "_tok"):  # a tokenizer.json: its own truncation
            return _hf_encode(model.tokenizer, texts, self.limit(model))
        return super().encode(model, texts)

    def run_batch(self, model, batch, seed):
        from ..device import to_numpy
        ids, mask = _padded(batch, model.config.pad_token_id)
        out = to_numpy(model.generate(ids, mask, max_new_tokens=self.max_new_tokens,
                                      num_beams=self.num_beams,
                                      length_penalty=self.length_penalty))
        return [model.tokenizer.decode(row[1:]) for row in out]


class GenerateTask(CorpusTask):
    """Continuations of prompts with a decoder (greedy by default; sampling with do_sample,
    temperature, top_k, top_p, seed: each batch draws from its own seed, derived from `seed`,
    the shard and the batch, so a job is reproducible on any scheduler; beam search with
    num_beams). Output: JSON lines {"prompt", "completion"} (the new text only, up to the first
    eos). A prompt is cut to the model's positions minus max_new_tokens."""

    kind = "generate"
    suffixes = (".jsonl",)

    def __init__(self, model, max_new_tokens=64, do_sample=False, temperature=1.0, top_k=0,
                 top_p=1.0, num_beams=1, seed=None, **load):
        super().__init__(model, **load)
        self.max_new_tokens, self.do_sample, self.temperature = max_new_tokens, do_sample, \
            temperature
        self.top_k, self.top_p, self.num_beams, self.seed = top_k, top_p, num_beams, seed

    def load(self):
        model = super().load()
        if model.kind != "decoder":
            raise CorpusError("generate needs a decoder-only model")
        if model.tokenizer is None:
            raise CorpusError("the model has no tokenizer (give tokenizer=FILE / --tokenizer)")
        return model

    def limit(self, model):
        n = model.config.max_position_embeddings - self.max_new_tokens
        if n < 1:
            raise CorpusError(f"max_new_tokens must be below the model's "
                              f"{model.config.max_position_embeddings} positions, got "
                              f"{self.max_new_tokens}")
        return n

    def run_batch(self, model, batch, seed):
        from ..device import to_numpy
        cfg, tok = model.config, model.tokenizer
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        ids, mask = _padded(batch, pad, left=True)
        out = to_numpy(model.generate(ids, mask, max_new_tokens=self.max_new_tokens,
                                      do_sample=self.do_sample, temperature=self.temperature,
                                      top_k=self.top_k, top_p=self.top_p,
                                      num_beams=self.num_beams,
                                      seed=None if self.seed is None else seed))
        return [completion(tok, prompt, row[ids.shape[1]:], cfg.eos_token_ids)
                for prompt, row in zip(batch, out)]

    def write(self, f, suffix, lines, results):
        for prompt, c in zip(lines, results):
            f.write((json.dumps({"prompt": prompt, "completion": c}, ensure_ascii=False)
                     + "\n").encode("utf-8"))


