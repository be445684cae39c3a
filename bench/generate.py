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
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("torch", "ctranslate2")
MODEL_NAME = "gpt2-small-random"
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
EOT = 50256                 # GPT-2's <|endoftext|>
NEAR_TIE = 1e-3             # HF logit gap below which a divergence is a float near-tie


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (default 3)")
    p.add_argument("--new-tokens", type=int, default=128,
                   help="new tokens per sequence, exactly (default 128)")
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per sequence (16)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated peers to run (default {','.join(PEERS)}; '' for none)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write results as JSON")
    p.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench"),
                   help="cache for the random model and the CTranslate2 conversion "
                        "(default .cache/bench in the repository root)")
    p.add_argument("--seed", type=int, default=0, help="NumPy seed of the prompts (default 0)")
    p.add_argument("--bw-mib", type=int, default=512,
                   help="MiB of the bandwidth probe's matrix (default 512, about the weights)")
    p.add_argument("--pause", type=float, default=0.25,
                   help="seconds of idle between engines inside a round (default 0.25)")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if (args.threads < 1 or args.rounds < 1 or args.new_tokens < 1 or args.prompt_len < 1
            or args.bw_mib < 1 or not args.batch_sizes or min(args.batch_sizes) < 1):
        p.error("--threads, --rounds, --new-tokens, --prompt-len, --bw-mib and the batch sizes "
                "must be positive")
    if args.prompt_len + args.new_tokens > GPT2_SMALL["n_positions"]:
        p.error(f"--prompt-len + --new-tokens exceeds the model's {GPT2_SMALL['n_positions']} "
                "positions")
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
    from transformer.benchmarks.generate import script_main as suite_main
    sys.exit(script_main(suite_main, ARGS, "generate"))
