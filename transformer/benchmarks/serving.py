"""Serving suite (bench/README.md, "serving"; issue 19 point 4): concurrent requests. A seeded
workload (prompts, new-token counts, Poisson arrival times) is fed by a load generator (client
threads: closed loops of N clients, open loops of Poisson arrivals) inside each engine's own
fresh process, once the engine is warm. Engines: `transformer` (transformer.serving.Engine),
`transformer (one at a time)` (the same requests through model.generate one after another; for
embeddings one caller sending batches of 32), `ctranslate2 (async)` (generate_batch /
translate_batch with asynchronous=True and max_batch_size, every waiting request sent as one
batch whenever the previous one ended: CTranslate2 does not merge separate calls) and
`llama.cpp` (llama-cpp-python on the GGUF of the same weights, one at a time). Reported per
engine and load: throughput, time to first token and inter-token latency p50 / p99, and the
issue's target ratios at 32 clients (TARGETS).

`transformer bench serve` (run_serve; issue 20 point 5) sends the same loads over HTTP, from
the same load generator in a fresh process, to servers each started in a process of its own
(server_argv): `transformer serve` against llama-cpp-python's OpenAI server (the GGUF of the
same weights: Q8_0 for int8, F32 for float32) for streamed /v1/completions (gpt2, prompts as
text), and against Infinity (its torch engine) and sentence-transformers behind a minimal
FastAPI app (st_app) for /v1/embeddings (minilm; the peers float32); HTTP_TARGETS.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from importlib.util import find_spec

import numpy as np

from . import stats
from .engines import ENGINE, REGISTRY, Setup, make, target_tokens
from .harness import skip_reason
from .process import run_in_process
from .stats import log, summarize

TAG = "serving"
FAMILIES = ("gpt2", "marian", "minilm")
SEQUENTIAL, CT2, LLAMA = "transformer (one at a time)", "ctranslate2 (async)", "llama.cpp"
ONE_CALLER = "transformer (one caller, batches of 32)"
ENGINES = {"gpt2": (ENGINE, SEQUENTIAL, CT2, LLAMA), "marian": (ENGINE, SEQUENTIAL, CT2),
           "minilm": (ENGINE, ONE_CALLER)}
TARGET_LOAD = "32 clients"
OURS_HTTP, LLAMA_HTTP = "transformer serve", "llama-cpp-python server"
INFINITY, ST_APP = "infinity-emb (torch)", "sentence-transformers (FastAPI)"
SERVERS = {"gpt2": (OURS_HTTP, LLAMA_HTTP), "minilm": (OURS_HTTP, INFINITY, ST_APP)}
# the modules a server needs (found, not imported), its distribution
NEEDS = {OURS_HTTP: (("transformer.server", "starlette", "uvicorn"), "transformer", "[server]"),
         LLAMA: (("llama_cpp",), "llama-cpp-python", ""),
         LLAMA_HTTP: (("llama_cpp", "sse_starlette", "starlette_context"), "llama-cpp-python",
                      "[server]"),
         INFINITY: (("infinity_emb",), "infinity-emb", "[server,torch]"),
         ST_APP: (("sentence_transformers", "fastapi", "uvicorn"), "sentence-transformers",
                  " fastapi uvicorn")}
# a server's own Python (infinity-emb pins numpy<2 and transformers<5: a venv of its own)
PYTHONS = {INFINITY: os.environ.get("TRANSFORMER_BENCH_INFINITY_PYTHON")}
# ours over theirs at 32 clients >= goal; with a figure: ours / theirs of it < goal
HTTP_TARGETS = [("gpt2", LLAMA_HTTP, 4.0), ("gpt2", LLAMA_HTTP, 1.0, "ttft_p99"),
                ("minilm", INFINITY, 2.0)]
# (family, peer or None for the static decode step, goal): ours / peer >= goal, or our p99
# inter-token latency / the static batch's median decode step <= goal
TARGETS = [("gpt2", SEQUENTIAL, 4.0), ("gpt2", CT2, 2.0), ("gpt2", None, 1.5),
           ("marian", CT2, 1.5), ("minilm", ONE_CALLER, 0.9)]
BEAMS, EMBED_BATCH, MAX_BATCH = 4, 32, 64
# closed loops: max(min_requests, per_client x clients) requests (minilm: `sentences`);
# models: the generate / translate suites' LEVELS at the same size
LEVELS = {"tiny": dict(prompt=(4, 12), new=(2, 6), clients=[1, 4], per_client=1,
                       min_requests=4, rates=[20.0], open_n=6, sentences=8, rounds=1,
                       static_steps=3),
          "quick": dict(prompt=(16, 128), new=(16, 64), clients=[1, 8, 32], per_client=1,
                        min_requests=4, rates=[2.0], open_n=16, sentences=64, rounds=1,
                        static_steps=8),
          "full": dict(prompt=(16, 512), new=(64, 256), clients=[1, 8, 32, 64], per_client=2,
                       min_requests=8, rates=[0.5, 1.0, 2.0], open_n=64, sentences=256,
                       rounds=3, static_steps=16)}


def make_requests(n, family, level, vocab, seed, rate=None, lengths=None, sentences=None):
    """n seeded requests: [{"ids": (P,) int64, "new": max_new_tokens, "at": arrival seconds
    (cumulative exponential gaps at `rate` per second; 0 without a rate)}]. gpt2: P and new
    uniform in level["prompt"] / level["new"], ids in 0..vocab-2; marian: a source of a length
    drawn from `lengths` (random ids 2..vocab-2, then eos 0), new = its length; minilm:
    {"text": a sentence drawn from `sentences`}. The same arguments give the same requests."""
    rng = np.random.default_rng(seed)
    out, at = [], 0.0
    for _ in range(n):
        at += rng.exponential(1.0 / rate) if rate else 0.0
        if family == "minilm":
            out.append({"text": sentences[int(rng.integers(len(sentences)))], "at": at})
            continue
        if family == "marian":
            size = int(lengths[int(rng.integers(len(lengths)))]) + 1
            ids, new = np.append(rng.integers(2, vocab - 1, size - 1), 0), size
        else:
            ids = rng.integers(0, vocab - 1, int(rng.integers(*level["prompt"], endpoint=True)))
            new = int(rng.integers(*level["new"], endpoint=True))
        out.append({"ids": ids.astype(np.int64), "new": new, "at": at})
    return out


def make_loads(family, level, vocab, seed, lengths=None, sentences=None):
    """The loads of a run: closed loops ({"label": "N clients", "clients": N, "requests"}:
    max(min_requests, per_client x N) requests, level["sentences"] for minilm) then open loops ({"label": "Poisson r/s",
    "clients": 0, ...}); each load its own seed (seed + 1000 k)."""
    kw = dict(family=family, level=level, vocab=vocab, lengths=lengths, sentences=sentences)
    loads = [{"label": f"{c} client" + "s" * (c > 1), "clients": c, "requests": make_requests(
        level["sentences"] if family == "minilm" else max(level["min_requests"],
                                                          level["per_client"] * c),
        seed=seed + 1000 * k, **kw)}
        for k, c in enumerate(level["clients"])]
    k = len(loads)
    return loads + [{"label": f"Poisson {r:g}/s", "clients": 0, "requests": make_requests(
        level["open_n"], seed=seed + 1000 * (k + j), rate=r, **kw)}
        for j, r in enumerate(level["rates"])]


def _call(serve, request, start):
    try:
        return dict(serve(request), start=start)
    except Exception as e:  # noqa: BLE001 - a failed request is counted, not fatal
        return {"start": start, "error": f"{type(e).__name__}: {e}"}


def closed_loop(serve, requests, clients):
    """`clients` threads, each sending the next unsent request as soon as its last one ended.
    serve(request) -> {"times": [perf_counter when each unit became visible], "n": units,
    "tokens", "streamed"}. Returns (records in request order, each with "start"; wall seconds
    from the start to the last end)."""
    records, order, lock = [None] * len(requests), iter(range(len(requests))), threading.Lock()

    def client():
        while True:
            with lock:
                i = next(order, None)
            if i is None:
                return
            records[i] = _call(serve, requests[i], time.perf_counter())
    threads = [threading.Thread(target=client, name=f"client-{c}") for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - t0


def open_loop(serve, requests):
    """Each request sent by a thread of its own at its arrival time request["at"] (seconds
    after the start), whatever is running; its start is that scheduled time (a late dispatch
    counts as waiting). Returns (records in request order, wall seconds)."""
    records, threads = [None] * len(requests), []
    t0 = time.perf_counter()

    def one(i, due):
        records[i] = _call(serve, requests[i], due)
    for i, r in enumerate(requests):
        time.sleep(max(0.0, t0 + r["at"] - time.perf_counter()))
        threads.append(threading.Thread(target=one, args=(i, t0 + r["at"])))
        threads[-1].start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - t0


def run_loads(serve, loads, unit):
    """Each load of make_loads through serve (closed_loop, or open_loop for "clients": 0):
    [summarize_load + "label" + "tokens" (each request's, None where it failed)]."""
    out = []
    for load in loads:
        records, wall = closed_loop(serve, load["requests"], load["clients"]) \
            if load["clients"] else open_loop(serve, load["requests"])
        out.append(dict(summarize_load(records, wall, unit), label=load["label"],
                        tokens=[None if r is None or "error" in r else r["tokens"]
                                for r in records]))
    return out


def _pct(x, q):
    return float(np.percentile(x, q)) if len(x) else None


def summarize_load(records, wall, unit):
    """Figures of one load: requests, failed, units (new tokens or sentences), wall_s,
    throughput (units / wall), time to first token p50 / p99 (first visible unit - start) and
    inter-token latency p50 / p99 (gaps between a streamed request's successive units),
    seconds; None where nothing was measured."""
    ok = [r for r in records if r is not None and "error" not in r]
    ttft = [r["times"][0] - r["start"] for r in ok]
    itl = np.concatenate([np.diff(r["times"]) for r in ok if r["streamed"]] or [[]])
    units = sum(r["n"] for r in ok)
    return {"requests": len(records), "failed": len(records) - len(ok), "units": units,
            "unit": unit, "wall_s": wall, "throughput": units / wall if wall > 0 else None,
            "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99),
            "itl_p50": _pct(itl, 50), "itl_p99": _pct(itl, 99)}


class Client:
    """One engine of a family serving requests: serve(request) -> the record of
    closed_loop. Built in the worker from the registry's engines (engines.make)."""

    def __init__(self, name, setup, family):
        self.name, self.family, self.setup = name, family, setup
        self.unit = "sentences/s" if family == "minilm" else "new tokens/s"
        self.lock = threading.Lock()
        base = make({SEQUENTIAL: ENGINE, CT2: "ctranslate2"}.get(name, name), setup)
        self.base, self.version = base, base.version
        self.gen = dict(max_new_tokens=1, num_beams=BEAMS) if family == "marian" else \
            dict(max_new_tokens=1, do_sample=False, eos_token_id=[], pad_token_id=0)
        if name == ENGINE:
            from ..serving import Engine
            self.engine = Engine(base.model)
        elif name == CT2:
            self.waiting, self.cond = [], threading.Condition()
            threading.Thread(target=self._dispatch, daemon=True).start()

    def _record(self, times, tokens, streamed=True):
        return {"times": times, "n": len(tokens), "tokens": np.asarray(tokens, np.int64),
                "streamed": streamed and self.family == "gpt2"}

    def serve(self, req):
        """One request through this engine, blocking until it ended."""
        kw = dict(self.gen, max_new_tokens=req.get("new", 1))
        if self.family == "minilm":
            enc = self.base.model.tokenizer([req["text"]])
            h = self.engine.embed(np.asarray(enc["input_ids"]), np.asarray(enc["attention_mask"]))
            h.result()
            return {"times": [time.perf_counter()], "n": 1, "tokens": np.zeros(0, np.int64),
                    "streamed": False}
        if self.name == CT2:
            job = {"req": req, "times": [], "done": threading.Event()}
            with self.cond:
                self.waiting.append(job)
                self.cond.notify()
            job["done"].wait()
            if "error" in job:
                raise RuntimeError(f"CTranslate2's batch failed: {job['error']}")
            return self._record(job["times"] or [time.perf_counter()], job["tokens"],
                                self.family == "gpt2")
        times, ids = [], req["ids"]
        if self.name == ENGINE:
            h = self.engine.submit(ids, **kw)
            times += [time.perf_counter() for _ in h]
            out = h.result()
        elif self.name == LLAMA:
            with self.lock:
                self.base.llm.reset()
                out = []
                for tok in self.base.llm.generate(ids.tolist(), top_k=1, top_p=1.0, temp=0.0,
                                                  repeat_penalty=1.0, reset=True):
                    times.append(time.perf_counter())
                    out.append(tok)
                    if len(out) == req["new"]:
                        break
            return self._record(times, out)
        else:
            with self.lock:  # one request at a time, each client thread's workers released
                out = self.base.model.generate(ids[None], streamer=lambda c: times.append(
                    time.perf_counter()), **kw)
                self.base.model.kernels.release_threads()
        out = np.asarray(out)[0]
        if self.family == "marian":
            return self._record([time.perf_counter()], target_tokens(
                out[1:], self.setup.pad, self.setup.eos), streamed=False)
        return self._record(times, out[len(ids):])

    def _dispatch(self):
        """CTranslate2's side: whenever the previous batch ended, every waiting request (up to
        MAX_BATCH) as one asynchronous generate_batch / translate_batch."""
        vocab = self.base.vocab
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.waiting)
                jobs, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
            try:
                self._run_batch(jobs, [[vocab[i] for i in j["req"]["ids"]] for j in jobs])
            except Exception as e:  # noqa: BLE001 - every client of the batch gets the error
                for j in jobs:
                    j["error"] = f"{type(e).__name__}: {e}"
            for j in jobs:
                j["done"].set()

    def _run_batch(self, jobs, tokens):
        """One CTranslate2 batch (asynchronous=True): each job's "tokens" (cut to its own
        max_new_tokens; greedy rows stopped there by the callback) and token "times"."""
        longest = max(j["req"]["new"] for j in jobs)
        if self.family == "marian":
            results = self.base.runner.translate_batch(
                tokens, asynchronous=True, max_batch_size=MAX_BATCH, beam_size=BEAMS,
                max_decoding_length=longest, return_end_token=True, max_input_length=0)
            for j, r in zip(jobs, results):
                ids = [self.base.ids[t] for t in r.result().hypotheses[0]]
                j["tokens"] = target_tokens(ids, self.setup.pad, self.setup.eos)[:j["req"]["new"]]
            return

        def step(s):  # each row's token times; True stops a row at its own count
            times = jobs[s.batch_id]["times"]
            times.append(time.perf_counter())
            return len(times) >= jobs[s.batch_id]["req"]["new"]
        results = self.base.runner.generate_batch(
            tokens, asynchronous=True, max_batch_size=MAX_BATCH, max_length=longest,
            sampling_topk=1, end_token=[], include_prompt_in_result=False, callback=step)
        for j, r in zip(jobs, results):
            j["tokens"] = r.result().sequences_ids[0][:j["req"]["new"]]


def static_step(model, requests, steps):
    """Median seconds of one decode step of a static batch of these requests' prompts (left
    padded, greedy, `steps` new tokens, timed between streamed columns)."""
    width = max(len(r["ids"]) for r in requests)
    ids = np.zeros((len(requests), width), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(requests):
        ids[i, width - len(r["ids"]):], mask[i, width - len(r["ids"]):] = r["ids"], 1
    times = []
    model.generate(ids, mask, max_new_tokens=steps + 1, do_sample=False, eos_token_id=[],
                   pad_token_id=0, streamer=lambda c: times.append(time.perf_counter()))
    return float(np.median(np.diff(times)))


def serve_engine(name, setup, family, loads, static_steps=0):
    """In a fresh process: build engine `name`, warm it with one request, run each load
    (closed_loop or open_loop; embeddings one caller: batches of EMBED_BATCH) and return
    {"version", "loads": [summarize_load + "tokens" per request], "static_step" (ours,
    gpt2: the static batch of the TARGET_LOAD's requests, after the loads)}; an HTTP server
    of SERVERS: serve_http."""
    if name in NEEDS and name != LLAMA:
        return serve_http(name, setup, family, loads)
    if name == ONE_CALLER:
        base = make(ENGINE, setup)
        model = base.model
        texts = [r["text"] for r in loads[0]["requests"]]
        batches = [model.tokenizer(texts[i:i + EMBED_BATCH])
                   for i in range(0, len(texts), EMBED_BATCH)]
        model.embed(**batches[0])                                      # the warm-up
        records, t0 = [], time.perf_counter()
        for b in batches:              # each sentence's latency: its batch's
            start = time.perf_counter()
            model.embed(**b)
            records += [{"start": start, "times": [time.perf_counter()], "n": 1,
                         "streamed": False}] * len(b["input_ids"])
        return {"version": base.version, "loads": [dict(
            summarize_load(records, time.perf_counter() - t0, "sentences/s"),
            label=f"batches of {EMBED_BATCH}", tokens=[])]}
    client = Client(name, setup, family)
    if name == SEQUENTIAL:  # the main thread loaded the model; the client threads compute
        client.base.model.kernels.release_threads()
    first = loads[0]["requests"][0]
    # the warm-up in a client thread as the loads' own requests: with libgomp, OpenMP regions
    # run from a thread other than the one that ran them first are several times slower
    warm = threading.Thread(target=client.serve, args=(dict(first, new=min(first.get("new", 1),
                                                                           4)),))
    warm.start()
    warm.join()
    out = run_loads(client.serve, loads, client.unit)
    step = None
    target = next((ld for ld in loads if ld["label"] == TARGET_LOAD), None)
    if name == ENGINE and family == "gpt2" and static_steps and target:
        step = static_step(client.base.model, target["requests"], static_steps)
    if name == ENGINE:
        client.engine.shutdown()
    return {"version": client.version, "loads": out, "static_step": step}


FIGURES = ("throughput", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99")


def combine(rounds):
    """One engine's per-round results ([serve_engine's "loads"]) -> {load label: the median
    over rounds of each figure, "wall" (stats.summarize of the wall seconds), "requests",
    "failed" (summed)}."""
    out = {}
    for label in dict.fromkeys(ld["label"] for r in rounds for ld in r):
        got = [ld for r in rounds for ld in r if ld["label"] == label]
        med = {k: (float(np.median([g[k] for g in got if g[k] is not None]))
                   if any(g[k] is not None for g in got) else None) for k in FIGURES}
        out[label] = dict(med, unit=got[0]["unit"], requests=got[0]["requests"],
                          failed=sum(g["failed"] for g in got),
                          wall=summarize([g["wall_s"] for g in got]))
    return out


def target_ratios(family, results, static=None, load=TARGET_LOAD, targets=TARGETS,
                  ours_name=ENGINE):
    """The issue's targets of `family` (TARGETS, or HTTP_TARGETS with ours_name OURS_HTTP)
    whose numbers are there: results {engine: combine()'s dict}; static: the static batch's
    median decode step (seconds). Our throughput over the peer's at `load` (or at the peer's
    only load: batches of 32), met when >= the goal; a target naming a figure (ttft_p99): ours
    over the peer's, met when < the goal; our p99 inter-token latency over `static`, met when
    <= the goal. Returns [{"text", "ratio", "goal", "met"}]."""
    ours, out = results.get(ours_name, {}).get(load), []
    for fam, peer, goal, *figure in targets:
        theirs = results.get(peer, {})
        theirs = theirs.get(load) or (list(theirs.values())[0] if len(theirs) == 1 else None)
        if fam != family or ours is None or (peer is None and not (static and ours["itl_p99"])) \
                or (peer and not (theirs and theirs["throughput"] and ours["throughput"])):
            continue
        if peer is None:
            ratio, what, met = ours["itl_p99"] / static, "p99 inter-token latency at " \
                f"{load} / median static-batch decode step", ours["itl_p99"] / static <= goal
        elif figure:
            if not (ours[figure[0]] and theirs[figure[0]]):
                continue
            ratio = ours[figure[0]] / theirs[figure[0]]
            what, met = f"{figure[0]} at {load}, {ours_name} / {peer}", ratio < goal
        else:
            ratio = ours["throughput"] / theirs["throughput"]
            what, met = f"throughput at {load}, {ours_name} / {peer}", ratio >= goal
        out.append({"ratio": ratio, "goal": goal, "met": met, "text": f"{family}: {what} = "
                    f"{ratio:.2f} (target {'<=' if peer is None else '<' if figure else '>='} "
                    f"{goal}) -> "
                    + ("met" if met else "**not met**")})
    return out


def _ms(v):
    return "-" if v is None else f"{1e3 * v:.1f}"


def table_rows(family, results, identical):
    """Table cells per engine and load: family, engine, load, requests (failed), throughput,
    TTFT and ITL p50 / p99 in ms, requests identical to one at a time."""
    return [[family, engine, label, f"{f['requests']}" + (f" ({f['failed']} failed)" if
                                                          f["failed"] else ""),
             "-" if f["throughput"] is None else f"{f['throughput']:.1f} {f['unit']}"]
            + [_ms(f[k]) for k in FIGURES[1:]] + ["-" if (engine, label) not in identical else
                                                  "%d/%d" % identical[(engine, label)]]
            for engine, loads in results.items() for label, f in loads.items()]


def family_setup(family, cfg):
    """(Setup, vocab, notes, lengths, sentences) of a family: the generate / translate suites'
    random models at cfg.sizes (made once, cached), the encode suite's MiniLM."""
    from . import encode, generate, translate
    text = cfg.sentences or encode.default_sentences()
    if family == "minilm":
        return (Setup("encode", encode.default_model_dir(), cfg.threads, cfg.dtype,
                      cfg.workdir), None, [], None, encode.read_sentences(text))
    mod = generate if family == "gpt2" else translate
    name, shape = mod.LEVELS[cfg.sizes]["model"]
    model_dir, note = mod.ensure_model(cfg.workdir, name, shape)
    V = shape["vocab_size"]
    if family == "gpt2":
        return Setup("generate", model_dir, cfg.threads, cfg.dtype, cfg.workdir,
                     vocab_size=V), V, [note], None, None
    lengths, length_note = translate.sentence_lengths(text)
    return (Setup("translate", model_dir, cfg.threads, cfg.dtype, cfg.workdir, vocab_size=V,
                  eos=translate.EOS, unk=translate.UNK, pad=V - 1), V, [note, length_note],
            lengths, None)


def run_family(family, cfg, level, rounds, names=None):
    """Every engine of `family` (or those of `names`) on the same loads, `rounds` interleaved
    rounds, each engine in a fresh process per round. Returns (results {engine: combine()},
    skipped {engine: why}, identical {(engine, load): (same, total)}, static step or None,
    versions, notes)."""
    setup, vocab, notes, lengths, sentences = family_setup(family, cfg)
    loads = make_loads(family, level, vocab, cfg.seed, lengths, sentences)
    engines, skipped = [], {}
    for name in names or ENGINES[family]:
        peer = {CT2: "ctranslate2", LLAMA: "llama.cpp", LLAMA_HTTP: "llama.cpp"}.get(name)
        if peer and peer not in cfg.peers:
            continue
        modules, dist, extra = NEEDS.get(name, ((), None, None))
        missing = [] if PYTHONS.get(name) else [m for m in modules if find_spec(m) is None]
        if missing:
            skipped[name] = f"n/a: {', '.join(missing)} not importable (pip install " \
                f"'{dist}{extra}')"
            continue
        try:
            if peer:
                notes += run_in_process(REGISTRY[peer].prepare_files, setup)
            engines.append(name)
        except Exception as e:  # noqa: BLE001 - a peer that cannot be prepared is skipped
            skipped[name] = skip_reason(e)
    per, static, versions = {}, [], {}
    for r in range(rounds):
        for name in engines[r % len(engines):] + engines[:r % len(engines)]:
            if name in skipped:
                continue
            log(f"{family}: round {r + 1}/{rounds}, {name}", TAG)
            try:
                got = run_in_process(serve_engine, name, setup, family, loads,
                                     level["static_steps"])
            except Exception as e:  # noqa: BLE001 - its process failed: reported
                skipped[name] = skip_reason(e)
                per.pop(name, None)
                continue
            per.setdefault(name, []).append(got["loads"])
            versions[name] = got["version"]
            if got.get("static_step"):
                static.append(got["static_step"])
    identical = {}
    ref = {ld["label"]: ld["tokens"] for ld in per.get(SEQUENTIAL, [[]])[0]}
    for name, rnds in per.items():
        for ld in rnds[0]:
            if ref.get(ld["label"]) and name != SEQUENTIAL and family != "minilm":
                pairs = list(zip(ld["tokens"], ref[ld["label"]]))
                identical[(name, ld["label"])] = (sum(
                    a is not None and b is not None and np.array_equal(a, b) for a, b in pairs),
                    len(pairs))
    results = {name: combine(rnds) for name, rnds in per.items()}
    return (results, skipped, identical, float(np.median(static)) if static else None,
            versions, notes)


def run(cfg, http=False):
    """The serving suite for a BenchConfig (sizes, threads, dtype float32 / int8, rounds,
    peers, seed, family: one of FAMILIES or "all"); http: `transformer bench serve` (the
    SERVERS of gpt2 and minilm). Returns the SUITE record (report.py)."""
    from . import SuiteSkipped
    families = tuple(SERVERS) if http else FAMILIES
    if cfg.family not in families + ("all",):
        raise SuiteSkipped(f"--family {cfg.family}: `bench serve` runs {families}")
    level = LEVELS[cfg.sizes]
    rounds = cfg.rounds or level["rounds"]
    ticks = stats.cpu_sample()
    cells, rows, notes, skipped, config = [], [], [], {}, {}
    for family in families if cfg.family == "all" else (cfg.family,):
        log(f"=== {family} ===", TAG)
        try:
            results, skip, same, static, versions, more = run_family(
                family, cfg, level, rounds, SERVERS[family] if http else None)
        except Exception as e:  # noqa: BLE001 - one family failing must not lose the others
            log(f"{family} failed: {traceback.format_exc()}", TAG)
            skipped[family] = skip_reason(e)
            continue
        skipped.update({f"{family}: {k}": v for k, v in skip.items()})
        cells += table_rows(family, results, same)
        notes += [t["text"] for t in (target_ratios(family, results, targets=HTTP_TARGETS,
                                                    ours_name=OURS_HTTP) if http
                                      else target_ratios(family, results, static))]
        notes += [f"{family}: {n}" for n in more + [f"{k}: {v}" for k, v in versions.items()]]
        if static:
            notes.append(f"{family}: median decode step of a static batch of the "
                         f"{TARGET_LOAD}' prompts: {1e3 * static:.1f} ms")
        for engine, loads in results.items():           # ROWs: the summary's ratios
            for label, f in loads.items():
                ours = results.get(OURS_HTTP if http else ENGINE, {}).get(label) or {}
                rows.append(dict(case=f"{family} {label}", group=family, engine=engine,
                                 status="timed", seconds=f["wall"], figures=[
                                     {"value": f["throughput"], "unit": f["unit"]}],
                                 ratio=ours["throughput"] / f["throughput"]
                                 if f["throughput"] and ours.get("throughput") else None,
                                 fraction_of_limit=None,
                                 limit=None, agreement=None, note=None,
                                 **{k: f[k] for k in FIGURES}))
        config[family] = {"static_step_s": static, "engines": list(results)}
    if not cells:
        raise SuiteSkipped("; ".join(skipped.values()) or "nothing ran")
    usage, warning = stats.busy_check(ticks, TAG)
    summary = [
        f"CPU, {cfg.dtype}, {stats.plural(cfg.threads, 'thread')}, sizes {cfg.sizes}: closed "
        f"loops of {level['clients']} clients, open loops at {level['rates']} requests/s "
        f"({level['open_n']} requests); gpt2 prompts {level['prompt']} tokens, {level['new']} "
        f"new tokens, greedy (eos off); marian beam {BEAMS}, max_new_tokens = the source's "
        f"length; minilm one sentence a request; median of {rounds} rounds, each engine in a "
        f"fresh process per round, timed from a warm engine{stats.usage_text(usage)}."
        + (" Over HTTP: each server a process of its own, the load generator (threads, "
           "one httpx client) another; gpt2 streamed /v1/completions, minilm /v1/embeddings."
           if http else "")]
    header = ["family", "engine", "load", "requests", "throughput", "TTFT p50 ms",
              "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms", "identical to one at a time"]
    return {"title": f"Serving{' over HTTP' if http else ''}: concurrent requests "
                     f"({cfg.dtype})", "status": "ok",
            "summary": summary, "warnings": [warning] if warning else [], "rows": rows,
            "skipped": skipped, "notes": notes,
            "tables": [{"title": None, "header": header, "rows": cells,
                        "align": ["l"] * 4 + ["r"] * 6}], "limits": usage,
            "config": dict(config, dtype=cfg.dtype, sizes=cfg.sizes, rounds=rounds,
                           seed=cfg.seed, threads=cfg.threads, level=level)}


def run_serve(cfg):
    """`transformer bench serve`: run(cfg, http=True)."""
    return run(cfg, http=True)


def _served_dir(setup):
    """The model directory `transformer serve` gets: setup.model_dir, or for a random GPT-2
    without a tokenizer a folder in setup.cache of hard links to its files plus a tokenizer.json
    of the GGUF's stand-in vocabulary (peers.gguf_vocabulary, byte-level BPE), made once."""
    if setup.vocab_size is None or os.path.exists(os.path.join(setup.model_dir,
                                                               "tokenizer.json")):
        return setup.model_dir
    path = os.path.join(setup.cache, "served")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from .peers import gguf_vocabulary
        from .._io import atomic_path
        os.makedirs(path, exist_ok=True)
        for f in os.listdir(setup.model_dir):
            if not os.path.exists(os.path.join(path, f)):
                try:
                    os.link(os.path.join(setup.model_dir, f), os.path.join(path, f))
                except OSError:
                    shutil.copy2(os.path.join(setup.model_dir, f), path)
        vocab = {t: i for i, t in enumerate(gguf_vocabulary(setup.vocab_size))}
        tok = Tokenizer(models.BPE(vocab, []))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        with atomic_path(os.path.join(path, "tokenizer.json")) as tmp:
            tok.save(tmp)
    return path


def server_argv(name, setup, port, host="127.0.0.1"):
    """The command line of server `name` (SERVERS) on setup's model at host:port, with
    setup.threads threads (Infinity and sentence-transformers: OMP_NUM_THREADS, which
    `transformer bench` sets) and, for ours and llama.cpp, setup.dtype; run by PYTHONS[name]
    ($TRANSFORMER_BENCH_INFINITY_PYTHON), else this Python."""
    py, at, t = PYTHONS.get(name) or sys.executable, ["--host", host, "--port", str(port)], \
        str(setup.threads)
    if name == OURS_HTTP:
        return [py, "-m", "transformer", "serve", "--model", _served_dir(setup), "--dtype",
                setup.dtype, "--threads", t] + at
    if name == LLAMA_HTTP:
        from .engines import LlamaCppEngine
        return [py, "-m", "llama_cpp.server", "--model", LlamaCppEngine.gguf_path(setup),
                "--n_threads", t, "--n_threads_batch", t, "--n_ctx", "2048",
                "--interrupt_requests", "False"] + at  # default: a new request cuts the stream
    if name == INFINITY:
        return [py, "-m", "infinity_emb.cli", "v2", "--model-id", setup.model_dir, "--engine",
                "torch", "--device", "cpu", "--url-prefix", "/v1"] + at
    return [py, "-c", "import sys, uvicorn; from transformer.benchmarks.serving import st_app; "
            "uvicorn.run(st_app(sys.argv[1]), host=sys.argv[2], port=int(sys.argv[3]), "
            "log_level='warning')", setup.model_dir, host, str(port)]


def st_app(model_dir):
    """The sentence-transformers peer: SentenceTransformer(model_dir) on the CPU behind a
    minimal FastAPI app: GET /v1/models, POST /v1/embeddings (OpenAI's: input a string or a
    list of strings; each request encoded on its own, in FastAPI's thread pool)."""
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer
    model, app = SentenceTransformer(model_dir, device="cpu"), FastAPI()
    app.get("/v1/models")(lambda: {"object": "list", "data": [{"id": "st", "object": "model"}]})

    @app.post("/v1/embeddings")
    def embeddings(body: dict):
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        return {"object": "list", "model": "st", "data": [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(model.encode(texts, batch_size=EMBED_BATCH))]}
    return app


def http_request(client, family, model, req):
    """One request of a load over HTTP (an httpx.Client): minilm POST /v1/embeddings of the
    sentence; else POST /v1/completions streamed (server-sent events), greedy, max_tokens =
    req["new"], each event with text one unit; the prompt is text (llama-cpp-python's server
    takes no token ids): the ids as printable ASCII bytes, one token each in the stand-in
    byte-level vocabulary both servers read (_served_dir, peers.gguf_vocabulary). Returns
    closed_loop's record. Raises httpx.HTTPStatusError for an error status."""
    if family == "minilm":
        client.post("/v1/embeddings", json={"model": model, "input": [req["text"]]}
                    ).raise_for_status()
        return {"times": [time.perf_counter()], "n": 1, "tokens": np.zeros(0, np.int64),
                "streamed": False}
    times = []
    with client.stream("POST", "/v1/completions", json={
            "model": model, "prompt": bytes((33 + req["ids"] % 94).astype(np.uint8)).decode(),
            "max_tokens": req["new"],
            "temperature": 0.0, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]" and any(
                    c.get("text") for c in json.loads(line[5:])["choices"]):
                times.append(time.perf_counter())
    return {"times": times or [time.perf_counter()], "n": len(times),  # eos at once: no text
            "tokens": np.zeros(0, np.int64), "streamed": True}


def serve_http(name, setup, family, loads, ready_s=600):
    """Server `name` started in a process of its own on a free localhost port, ready when GET
    /v1/models answers (its first model id is the requests' "model"), warmed by one request,
    then every load from this process (closed_loop / open_loop over one httpx client), then
    stopped (SIGTERM, killed after 30 s). Returns serve_engine's dict. Raises RuntimeError
    with the end of the server's log when it exits or is not ready within ready_s seconds."""
    import tempfile
    import httpx
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url, logf = f"http://127.0.0.1:{port}", tempfile.TemporaryFile()
    proc = subprocess.Popen(server_argv(name, setup, port), stdout=logf, stderr=logf)
    try:
        model, deadline = None, time.monotonic() + ready_s
        while model is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                    model = json.load(r)["data"][0]["id"]
            except OSError:
                time.sleep(0.25)
        if model is None:
            logf.seek(0)
            raise RuntimeError(f"{name} did not start (status {proc.poll()}): "
                               f"{logf.read()[-800:].decode(errors='replace')}")
        client = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(
            max_connections=256, max_keepalive_connections=256))
        serve = lambda req: http_request(client, family, model, req)  # noqa: E731
        first = loads[0]["requests"][0]
        serve(dict(first, new=min(first.get("new", 1), 4)))
        out = run_loads(serve, loads, "sentences/s" if family == "minilm" else "new tokens/s")
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()
    from .limits import package_version
    dist, py = NEEDS[name][1], PYTHONS.get(name)
    version = subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version("
                              f"{dist!r}))"], capture_output=True, text=True).stdout.strip() \
        if py else package_version(dist)
    return {"version": f"{dist} {version}", "loads": out, "static_step": None}
