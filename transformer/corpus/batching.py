"""One shard of a corpus job: its lines tokenized, sorted by length (longest first), cut into
batches by a token budget (rows x longest row, padding included, as CTranslate2's
translate_iterable with batch_type="tokens"), run, and put back in input order."""
import dataclasses

import numpy as np

from ..tokenizer.checks import cut_text
from .errors import CorpusError


@dataclasses.dataclass
class ShardResult:
    """A finished shard: index, results ((n, C) float32 array for embed, else a list of n str,
    input order), warnings (str, for the driver to print)."""
    index: int
    results: object
    warnings: list


def token_batches(lengths, max_batch_tokens, max_batch_lines):
    """Batches (lists of indices into `lengths`), longest first, of at most max_batch_tokens
    (rows x longest row) and max_batch_lines rows (None: no limit); a row longer than the
    budget runs alone."""
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


def batch_seed(seed, shard, batch):
    """The sampling seed (int) of batch `batch` of shard `shard` of a job seeded with `seed`
    (None: 0), the same on every scheduler."""
    return int(np.random.SeedSequence([0 if seed is None else seed, shard, batch])
               .generate_state(1)[0])


def run_shard(task, model, shard, options, progress=None):
    """Run one shard: cut each line to a bound on the bytes of task.limit(model) tokens
    (tokenizer.cut_text), tokenize, sort by length, batch by tokens, run, restore the order.
    options: dict with max_batch_tokens, max_batch_lines, on_bad_line. progress: optional
    callable(lines done in this shard). Returns a ShardResult. Raises CorpusError for a bad
    line under on_bad_line="fail"."""
    fail = options["on_bad_line"] == "fail"
    warnings = []
    todo = [i for i, t in enumerate(shard.lines) if t.strip()]
    # each line cut to a bound derived from the model's positions before any tokenizer sees it
    limit = task.limit(model) if todo else 0
    texts = [cut_text(getattr(model, "tokenizer", None), shard.lines[i], limit) for i in todo]
    ids, cut = task.encode(model, [t for t, _ in texts]) if todo else ([], [])
    cut = [c or was for c, (_, was) in zip(cut, texts)]
    run, seqs = [], []  # rows that run: their index in the shard and their tokens
    for i, seq, was_cut in zip(todo, ids, cut):
        line_no = shard.first + i
        problem = (f"line {line_no} is longer than the model's {limit} tokens"
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
    for b, rows in enumerate(token_batches([len(s) for s in seqs], options["max_batch_tokens"],
                                            options["max_batch_lines"])):
        out = task.run_batch(model, [seqs[r] for r in rows], batch_seed(seed, shard.index, b))
        for r, res in zip(rows, out):
            results[run[r]] = res
        done += len(rows)
        if progress:
            progress(done)
    return ShardResult(shard.index, task.collect(results), warnings)


