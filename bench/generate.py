"""Greedy text-generation throughput: this engine against its CPU peers, on one machine, in one run.

A thin wrapper, kept for its command line: the suite lives in
`transformer/benchmarks/generate.py` (its docstring says exactly what is measured and how) and
also runs as `transformer bench generate` (with the other suites, results.json, report.md and
plots).

Run (from the repository root, nothing else heavy running on the machine):

  OMP_NUM_THREADS=2 PYTHONPATH=. .venv-bench/bin/python bench/generate.py
  ... bench/generate.py --threads 2 --rounds 5 --batch-sizes 1,8 --peers torch,ctranslate2 \\
      --json bench/results/generate.json

The Markdown table goes to stdout, progress to stderr; --json writes a results document in the
`transformer bench` schema (transformer/benchmarks/report.py) holding this one suite.
"""
import sys

import _common

PEERS = ("torch", "ctranslate2")
N_POSITIONS = 1024          # GPT-2 small's


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = _common.parser(__doc__, PEERS, rounds=3,
                       workdir_holds="the random model and the CTranslate2 conversion")
    p.add_argument("--new-tokens", type=int, default=128,
                   help="new tokens per sequence, exactly (default 128)")
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per sequence (16)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--seed", type=int, default=0, help="NumPy seed of the prompts (default 0)")
    p.add_argument("--bw-mib", type=int, default=512,
                   help="MiB of the bandwidth probe's matrix (default 512, about the weights)")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if (args.threads < 1 or args.rounds < 1 or args.new_tokens < 1 or args.prompt_len < 1
            or args.bw_mib < 1 or not args.batch_sizes or min(args.batch_sizes) < 1):
        p.error("--threads, --rounds, --new-tokens, --prompt-len, --bw-mib and the batch sizes "
                "must be positive")
    if args.prompt_len + args.new_tokens > N_POSITIONS:
        p.error(f"--prompt-len + --new-tokens exceeds the model's {N_POSITIONS} positions")
    return _common.peer_list(p, args, PEERS)


if __name__ == "__main__":
    sys.exit(_common.main(parse_args(), "generate"))
