"""Beam-search translation throughput: this engine vs its CPU peers, on one machine, in one run.

A thin wrapper, kept for its command line: the suite lives in
`transformer/benchmarks/translate.py` (its docstring says exactly what is measured and how:
CTranslate2's protocol, target tokens/s at batch 32 and beam 4 on a random Marian-shaped model,
HF torch as the reference of the token check, the sgemm roofline on the decoder's shapes) and
also runs as `transformer bench translate` (with the other suites, results.json, report.md and
plots).

Run (from the repository root, nothing else heavy running on the machine):

  OMP_NUM_THREADS=2 PYTHONPATH=. .venv-bench/bin/python bench/translate.py
  ... bench/translate.py --threads 2 --rounds 3 --batch-size 32 --beams 4 \\
      --peers torch,ctranslate2 --json bench/results/translate.json
  ... bench/translate.py --max-sentences 32 --rounds 1        (a short check)

A peer whose package is not installed (or whose conversion fails) is skipped with a note, never
an error. The Markdown table goes to stdout, progress to stderr; --json writes a results
document in the `transformer bench` schema (transformer/benchmarks/report.py) holding this one
suite.
"""
import os
import sys

import _common

PEERS = ("torch", "ctranslate2")


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = _common.parser(__doc__, PEERS, rounds=3,
                       workdir_holds="the random model and the CTranslate2 conversion")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--beams", type=int, default=4, help="beam size (default 4)")
    p.add_argument("--sentences",
                   default=os.path.join(_common.REPO, "bench", "data", "sentences.txt"),
                   help="one sentence per line; their token lengths make the sources "
                        "(default bench/data/sentences.txt)")
    p.add_argument("--max-sentences", type=int, default=0,
                   help="use only the first N sentences (default 0: all)")
    p.add_argument("--target-factor", type=float, default=1.0,
                   help="per batch max_new_tokens = ceil(factor x longest source, eos included) "
                        "(default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="a fixed max_new_tokens for every batch instead (default 0: off)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="(default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="NumPy seed of the source ids (default 0)")
    args = p.parse_args(argv)
    if (args.threads < 1 or args.rounds < 1 or args.batch_size < 1 or args.beams < 1
            or args.max_sentences < 0 or args.max_new_tokens < 0 or args.target_factor <= 0):
        p.error("--threads, --rounds, --batch-size, --beams and --target-factor must be "
                "positive; --max-sentences and --max-new-tokens non-negative")
    return _common.peer_list(p, args, PEERS)


if __name__ == "__main__":
    sys.exit(_common.main(parse_args(), "translate"))
