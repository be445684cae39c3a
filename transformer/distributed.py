"""Corpus jobs: embed, translate or generate over a file of lines, in this process or on a Dask
cluster (the optional extra `transformer[distributed]`).

    from transformer.distributed import embed_file, translate_file, generate_file
    embed_file("corpus.txt", "emb.npy", model="all-MiniLM-L6-v2/", scheduler="local:2")
    translate_file("src.txt", "out.txt", model="aren/float32", resume=True)

The public name of the API of the package transformer.corpus, which implements it and says how
a job runs (streaming, shards, token-budget batches, bad lines, parts and resume, schedulers).
"""
from .corpus import (SCHEDULER_HELP, CorpusError, CorpusTask, DistributedUnavailable,
                     EmbedTask, GenerateTask, JobReport, TranslateTask, embed_file,
                     generate_file, run_corpus_job, translate_file)

__all__ = ["CorpusError", "DistributedUnavailable", "JobReport", "CorpusTask", "EmbedTask",
           "TranslateTask", "GenerateTask", "run_corpus_job", "embed_file", "translate_file",
           "generate_file", "SCHEDULER_HELP"]
