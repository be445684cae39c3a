"""Corpus-job throughput: `transformer embed --input` (transformer.distributed) against
sentence-transformers `encode` (PyTorch) with the same model and threads, and 1 vs 2 workers.

Run (from the repository root, nothing else heavy running on the machine):

  PYTHONPATH=. .venv-test/bin/python bench/corpus.py --lines 20000 --threads 2

The input: --lines lines drawn (seeded) from transformer/benchmarks/data/sentences.txt.
Timed, one run each:
  transformer embed --input F --output F.npy --threads T (the command as a user runs it: wall
    time, model load and Python start included) with --scheduler local, local:1 and local:2
    (local:N: N worker processes sharing the T threads, cluster start included);
  sentence-transformers SentenceTransformer(model).encode(lines, batch_size=32) with
    torch.set_num_threads(T) (model load excluded).
Prints lines/s of each and the max |diff| of the embeddings against sentence-transformers.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=20000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=None, help="default: the installed all-MiniLM-L6-v2")
    p.add_argument("--schedulers", default="local,local:1,local:2")
    args = p.parse_args(argv)
    from transformer.benchmarks.encode import default_model_dir, default_sentences, read_sentences
    model = args.model or default_model_dir()
    pool = read_sentences(default_sentences())
    rng = np.random.default_rng(0)
    lines = [pool[i] for i in rng.integers(0, len(pool), args.lines)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.txt")
        with open(src, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(args.threads)
        st = SentenceTransformer(model, device="cpu")
        t = time.perf_counter()
        want = st.encode(lines, batch_size=32, convert_to_numpy=True)
        rows.append(("sentence-transformers encode (torch)", args.lines /
                     (time.perf_counter() - t), 0.0))
        del st

        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for scheduler in args.schedulers.split(","):
            out = os.path.join(tmp, "out.npy")
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "transformer", "embed", "--input", src,
                            "--output", out, "--model", model, "--threads", str(args.threads),
                            "--scheduler", scheduler], check=True, env=env,
                           stderr=subprocess.DEVNULL)
            dt = time.perf_counter() - t
            rows.append((f"transformer embed --input --scheduler {scheduler}", args.lines / dt,
                         float(np.abs(np.load(out) - want).max())))
    print(f"| {args.lines} lines, {args.threads} threads | lines/s | max abs diff vs ST |")
    print("|---|---:|---:|")
    for name, rate, diff in rows:
        print(f"| {name} | {rate:.0f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
