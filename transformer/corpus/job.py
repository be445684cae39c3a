"""The driver of a corpus job: run_corpus_job checks the arguments, streams the shards to the
scheduler, writes each finished shard (a part file, or stdout in input order), reports bad lines
and progress on stderr; embed_file, translate_file and generate_file are its shortcuts."""
import dataclasses
import os
import sys
import time

from .._io import Progress, atomic_output, check_output
from .._paths import INSTALL_HINT, default_model_path
from .batching import run_shard
from .errors import CorpusError
from .parts import Parts
from .reader import count_lines, read_shards
from .schedulers import parse_scheduler, run_on_cluster
from .tasks import EmbedTask, GenerateTask, TranslateTask

ON_BAD_LINE = ("truncate", "fail")
MAX_WARNINGS_SHOWN = 20


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


def run_corpus_job(task, input, output=None, *, scheduler="local", shard_lines=4096,
                   max_batch_tokens=4096, max_batch_lines=None, resume=False,
                   on_bad_line="truncate", progress=True, stdout=None):
    """Run `task` (a CorpusTask) over every line of `input` (a path; '-' for stdin) into
    `output` (a path whose suffix is one of task.suffixes; None: results stream to `stdout`,
    default sys.stdout, in order). See transformer.corpus for what happens.

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
    mode, where = parse_scheduler(scheduler)
    input = os.fspath(input)
    if input != "-" and not os.path.isfile(input):
        raise FileNotFoundError(f"input file not found: {input}")
    if output is not None:
        output = os.fspath(output)
        if not output.endswith(task.suffixes):
            raise CorpusError(f"output for {task.kind} must end in "
                              f"{' or '.join(task.suffixes)}, got {output}")
        try:
            check_output(output, "output", (input,))
        except ValueError as e:
            raise CorpusError(str(e)) from None
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

    total = count_lines(input)
    if progress is True:
        show = Progress(task.kind, total)
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
        parts = Parts(output, manifest, resume)
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
            with atomic_output(parts.path(result.index), "wb") as f:
                task.write(f, suffix, lines, result.results)
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
        for shard in read_shards(input, shard_lines, on_bad_line, warn):
            report.shards += 1
            report.lines += len(shard.lines)
            if parts is not None and resume and parts.done(shard):
                report.shards_skipped += 1
                state["done"] += len(shard.lines)
                continue
            lines_of[shard.index] = shard.lines
            yield shard

    model = None
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
            run_on_cluster(task, mode, where, shards(), options, finish,
                           backlog=lambda: len(pending))
    except KeyboardInterrupt:
        if parts is not None:
            print(f"\ninterrupted: the finished shards are in {parts.dir}; run again with "
                  "resume (--resume) to continue", file=sys.stderr, flush=True)
        raise
    if report.bad_lines > MAX_WARNINGS_SHOWN:
        print(f"warning: {report.bad_lines} bad lines in all", file=sys.stderr, flush=True)
    if parts is not None:
        width = None
        if report.shards == 0 and output.endswith(".npy"):  # no lines: (0, width), not (0, 0)
            width = task.width(model if model is not None else task.load())
        parts.join(report.shards, width)
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
        model = default_model_path()
        if model is None:
            raise CorpusError("model: no model given and the default model is not installed "
                              f"({INSTALL_HINT})")
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
