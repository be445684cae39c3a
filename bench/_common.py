"""What the bench/*.py wrappers share: the options they all have and their start.

Imports nothing heavy: a wrapper parses its command line and puts the thread count into the
environment before NumPy, torch or a peer runtime is imported (their OpenMP and BLAS runtimes
read it when they start); only then is the suite of transformer.benchmarks imported and run.
"""
import argparse
import importlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parser(doc, peers, rounds, workdir_holds):
    """An argument parser for a wrapper whose module docstring is `doc` (the first paragraph is
    the description), with the options every wrapper has: --threads (default 2), --rounds
    (default `rounds`), --peers (default all of `peers`), --json, --workdir (a cache for
    `workdir_holds`, default .cache/bench in the repository root), --pause."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"timed interleaved rounds (default {rounds})")
    p.add_argument("--peers", default=",".join(peers),
                   help=f"comma-separated peers to run (default {','.join(peers)}; '' for none)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write results as JSON")
    p.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench"),
                   help=f"cache for {workdir_holds} (default .cache/bench in the repository "
                        "root)")
    p.add_argument("--pause", type=float, default=0.25,
                   help="seconds of idle between engines inside a round (default 0.25)")
    return p


def peer_list(p, args, peers):
    """args.peers (the --peers text) as a list of names; an unknown one is a usage error."""
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = sorted(set(args.peers) - set(peers))
    if unknown:
        p.error(f"unknown peers {unknown}; choose from {list(peers)}")
    return args


def main(args, suite):
    """Run transformer.benchmarks.<suite>.script_main(args) with OMP_NUM_THREADS = --threads
    (the previous value is passed on, for the note harness.script_main writes); this project's
    package from the path, else from the repository root. Returns the exit status."""
    os.environ["TRANSFORMER_BENCH_PREV_OMP"] = os.environ.get("OMP_NUM_THREADS", "")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    try:
        import transformer  # noqa: F401
    except ImportError:
        sys.path.insert(0, REPO)
    from transformer.benchmarks.harness import script_main
    module = importlib.import_module(f"transformer.benchmarks.{suite}")
    return script_main(module.script_main, args, suite)
