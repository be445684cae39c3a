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
- With an output file, each finished shard is written to OUTPUT.parts/part-NNNNNN.EXT, atomically
  (transformer._io.atomic_output: a temporary file in the same folder, fsync, os.replace; removed
  on an error); when all are there they are joined in order into OUTPUT (atomically too) and
  OUTPUT.parts is removed. resume=True keeps the parts of an interrupted run of the same job
  (OUTPUT.parts/manifest.json says which job) and runs only the missing shards. Without an
  output file, results stream to stdout in order.
- scheduler: "local" (this process, default); "local:N" (a Dask LocalCluster of N worker
  processes, the threads split between them); "tcp://HOST:PORT" (any running Dask scheduler).
  Each worker loads the model once (a Dask worker plugin) and runs one shard at a time; a
  worker that dies has its shards rerun elsewhere by the scheduler; shards are keyed by index,
  so none is lost or written twice. Dask is the optional extra `transformer[distributed]`.

The modules, one job each: tasks (what a job does to a line: EmbedTask, TranslateTask,
GenerateTask), reader (input lines -> shards), batching (one shard: sort, token-budget batches,
input order back), parts (the part files, the manifest, resume, the join), schedulers (in
process, LocalCluster or a scheduler address; the Dask worker plugin), job (run_corpus_job and
its shortcuts). transformer.distributed is the public name of this package's API.
"""
from .errors import CorpusError, DistributedUnavailable
from .job import JobReport, embed_file, generate_file, run_corpus_job, translate_file
from .schedulers import SCHEDULER_HELP
from .tasks import CorpusTask, EmbedTask, GenerateTask, TranslateTask

__all__ = ["CorpusError", "DistributedUnavailable", "JobReport", "CorpusTask", "EmbedTask",
           "TranslateTask", "GenerateTask", "run_corpus_job", "embed_file", "translate_file",
           "generate_file", "SCHEDULER_HELP"]
