"""The serving benchmark (transformer/benchmarks/serving.py): the seeded workload, the closed and
open load generators against transformer.serving.Engine on a tiny model, the summary's
percentiles and the target ratios on synthetic numbers, the refusal of bad options."""
import json
import pathlib
import sys

import numpy as np
import pytest

from transformer.benchmarks import parse_config, serving
from transformer.benchmarks.engines import Setup

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "serving"))

TINY = serving.LEVELS["tiny"]


def test_workload_is_seeded_and_reproducible():
    a = serving.make_requests(20, "gpt2", TINY, 1000, seed=3, rate=5.0)
    b = serving.make_requests(20, "gpt2", TINY, 1000, seed=3, rate=5.0)
    c = serving.make_requests(20, "gpt2", TINY, 1000, seed=4, rate=5.0)
    assert all(np.array_equal(x["ids"], y["ids"]) and x["new"] == y["new"] and x["at"] == y["at"]
               for x, y in zip(a, b))
    assert any(not np.array_equal(x["ids"], y["ids"]) for x, y in zip(a, c))
    for r in a:
        assert TINY["prompt"][0] <= len(r["ids"]) <= TINY["prompt"][1]
        assert TINY["new"][0] <= r["new"] <= TINY["new"][1]
        assert r["ids"].dtype == np.int64 and 0 <= r["ids"].min() and r["ids"].max() < 999
    at = [r["at"] for r in a]
    assert at == sorted(at) and at[0] > 0
    closed = serving.make_requests(5, "gpt2", TINY, 1000, seed=3)
    assert [r["at"] for r in closed] == [0.0] * 5
    src = serving.make_requests(6, "marian", TINY, 1000, seed=1, lengths=np.array([3, 9]))
    assert all(r["ids"][-1] == 0 and len(r["ids"]) in (4, 10) and r["new"] == len(r["ids"])
               for r in src)
    loads = serving.make_loads("gpt2", TINY, 1000, 0)
    assert [ld["label"] for ld in loads] == ["1 client", "4 clients", "Poisson 20/s"]
    assert [len(ld["requests"]) for ld in loads] == [4, 4, TINY["open_n"]]
    again = serving.make_loads("gpt2", TINY, 1000, 0)
    assert all(np.array_equal(x["ids"], y["ids"]) for la, lb in zip(loads, again)
               for x, y in zip(la["requests"], lb["requests"]))


@pytest.fixture(scope="module")
def tiny_gpt2():
    import serving_helpers
    serving_helpers.generation_model("gpt2")          # writes the directory once
    path = serving_helpers._root() / "gpt2"
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    return Setup("generate", str(path), threads=1, dtype="float32", vocab_size=vocab), vocab


@pytest.mark.parametrize("name", [serving.ENGINE, serving.SEQUENTIAL])
def test_closed_and_open_loops_count_every_request(tiny_gpt2, name):
    setup, vocab = tiny_gpt2
    loads = serving.make_loads("gpt2", dict(TINY, clients=[1, 3], rates=[50.0], open_n=5),
                               vocab, seed=1)
    got = serving.serve_engine(name, setup, "gpt2", loads)
    assert [ld["label"] for ld in got["loads"]] == [ld["label"] for ld in loads]
    for ld, want in zip(got["loads"], loads):
        reqs = want["requests"]
        assert ld["requests"] == len(reqs) and ld["failed"] == 0
        assert ld["units"] == sum(r["new"] for r in reqs)       # eos off: every new token
        assert [len(t) for t in ld["tokens"]] == [r["new"] for r in reqs]
        assert ld["throughput"] > 0 and 0 <= ld["ttft_p50"] <= ld["ttft_p99"]
        assert 0 <= ld["itl_p50"] <= ld["itl_p99"]
    import serving_helpers
    assert serving_helpers.serving_threads() == []               # the engine shut down


def test_embeddings_engine_and_one_caller_count_every_sentence(minilm_path):
    setup = Setup("encode", str(minilm_path), threads=1, dtype="int8")
    sentences = ["A man is playing a guitar.", "The cat sleeps.", "Rain again today."]
    loads = serving.make_loads("minilm", dict(TINY, clients=[3], rates=[50.0], open_n=4),
                               None, seed=0, sentences=sentences)
    ours = serving.serve_engine(serving.ENGINE, setup, "minilm", loads)["loads"]
    assert [(ld["requests"], ld["units"], ld["failed"]) for ld in ours] == [(8, 8, 0), (4, 4, 0)]
    (one,) = serving.serve_engine(serving.ONE_CALLER, setup, "minilm", loads)["loads"]
    assert one["label"] == "batches of 32" and one["units"] == 8 and one["throughput"] > 0


def test_engine_static_step_and_failures_counted(tiny_gpt2):
    setup, vocab = tiny_gpt2
    loads = serving.make_loads("gpt2", dict(TINY, clients=[32], rates=[]), vocab, seed=2)
    got = serving.serve_engine(serving.ENGINE, setup, "gpt2", loads, static_steps=3)
    assert got["static_step"] > 0 and got["loads"][0]["requests"] == 32

    def serve(req):
        if req["new"] % 2:
            raise RuntimeError("odd")
        return {"times": [1.0], "n": 1, "tokens": np.zeros(0), "streamed": False}
    reqs = loads[0]["requests"]
    records, wall = serving.closed_loop(serve, reqs, 5)
    s = serving.summarize_load(records, wall, "x/s")
    assert s["requests"] == 32 and s["failed"] == sum(r["new"] % 2 for r in reqs)
    records, _ = serving.open_loop(serve, [dict(r, at=0.001 * i) for i, r in enumerate(reqs)])
    assert sum("error" in r for r in records) == s["failed"] and None not in records


def test_summary_percentiles_and_ratios_on_synthetic_numbers():
    recs = [{"start": 0.0, "times": [1.0 + i, 1.5 + i, 3.0 + i], "n": 3, "streamed": True}
            for i in range(3)] + [{"start": 0.0, "error": "boom"}]
    s = serving.summarize_load(recs, 6.0, "new tokens/s")
    assert s["units"] == 9 and s["failed"] == 1 and s["throughput"] == 1.5
    assert s["ttft_p50"] == 2.0 and s["ttft_p99"] == pytest.approx(np.percentile([1, 2, 3], 99))
    gaps = [0.5, 1.5] * 3
    assert s["itl_p50"] == np.percentile(gaps, 50) and s["itl_p99"] == np.percentile(gaps, 99)

    def load(label, tput, itl99=None):
        return {"label": label, "unit": "u", "requests": 4, "failed": 0, "wall_s": 1.0,
                "throughput": tput, "ttft_p50": 0.1, "ttft_p99": 0.2, "itl_p50": 0.01,
                "itl_p99": itl99}
    ours = serving.combine([[load("32 clients", 800.0, 0.03)], [load("32 clients", 1000.0,
                                                                     0.05)]])
    assert ours["32 clients"]["throughput"] == 900.0 and ours["32 clients"]["itl_p99"] == 0.04
    assert ours["32 clients"]["wall"]["n"] == 2
    results = {serving.ENGINE: ours,
               serving.SEQUENTIAL: serving.combine([[load("32 clients", 200.0)]]),
               serving.CT2: serving.combine([[load("32 clients", 600.0)]])}
    got = serving.target_ratios("gpt2", results, static=0.02)
    assert [(round(t["ratio"], 6), t["goal"], t["met"]) for t in got] == [
        (4.5, 4.0, True), (1.5, 2.0, False), (2.0, 1.5, False)]
    assert "not met" in got[1]["text"] and "met" in got[0]["text"]
    emb = {serving.ENGINE: serving.combine([[load("32 clients", 95.0)]]),
           serving.ONE_CALLER: serving.combine([[load("batches of 32", 100.0)]])}
    (t,) = serving.target_ratios("minilm", emb)
    assert t["ratio"] == pytest.approx(0.95) and t["met"]
    assert serving.target_ratios("marian", {}) == []


@pytest.mark.parametrize("argv, message", [
    (["serving", "--dtype", "bfloat16"], "serving suite runs float32 or int8"),
    (["serving", "--family", "bert"], "invalid choice"),
    (["serving", "--rounds", "0"], "positive integer"),
    (["serve", "--dtype", "bfloat16"], "serving suite runs float32 or int8"),
])
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_options_reach_the_config():
    cfg = parse_config(["serving", "--quick", "--dtype", "int8", "--family", "marian",
                        "--threads", "1"])
    assert cfg.suites == ["serving"] and cfg.family == "marian" and cfg.dtype == "int8"
    assert not {"serving", "serve"} & set(parse_config(["all", "--threads", "1"]).suites)
    from transformer.benchmarks import SuiteSkipped
    with pytest.raises(SuiteSkipped, match="gpt2"):         # no marian server to compare
        serving.run_serve(parse_config(["serve", "--family", "marian", "--threads", "1"]))


def test_ctranslate2_batches_count_every_request(tiny_gpt2, tmp_path):
    pytest.importorskip("ctranslate2")
    import dataclasses
    from transformer.benchmarks.engines import Ct2Engine
    setup = dataclasses.replace(tiny_gpt2[0], workdir=str(tmp_path))
    Ct2Engine.prepare_files(setup)
    loads = serving.make_loads("gpt2", dict(TINY, clients=[3], rates=[50.0], open_n=4),
                               tiny_gpt2[1], seed=5)
    got = serving.serve_engine(serving.CT2, setup, "gpt2", loads)
    for ld, want in zip(got["loads"], loads):
        assert ld["failed"] == 0 and ld["units"] == sum(r["new"] for r in want["requests"])
        assert [len(t) for t in ld["tokens"]] == [r["new"] for r in want["requests"]]
        assert ld["itl_p50"] is not None                 # greedy tokens streamed (callback)


# -- `transformer bench serve`: the same loads over HTTP ---------------------------------------

# An OpenAI-style server of the standard library standing in for a real one (argv: host, port):
# GET /v1/models; POST /v1/embeddings; POST /v1/completions streamed as server-sent events in
# chunks, a role-only event first, then max_tokens events of text, then [DONE]. It checks the
# fields the load generator must send.
STUB = r'''
import json, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if req.get("model") != "stub-model":
            return self._json({"error": {"message": "unknown model"}}, 404)
        if self.path == "/v1/embeddings" and isinstance(req["input"], list):
            return self._json({"data": [{"embedding": [0.5] * 4, "index": i}
                                        for i, _ in enumerate(req["input"])]})
        if not (self.path == "/v1/completions" and req["stream"] is True
                and req["prompt"].isprintable() and req["temperature"] == 0):
            return self._json({"error": {"message": "bad request"}}, 400)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(req["max_tokens"] + 1):
            text = f" t{i}" if i else ""
            event = ("data: " + json.dumps({"choices": [{"index": 0, "text": text}]})
                     + "\n\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            time.sleep(0.002)
        self.wfile.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")

ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
'''


def _stub_argv(code):
    return lambda name, setup, port, host="127.0.0.1": [sys.executable, "-c", code, host,
                                                        str(port)]


@pytest.mark.parametrize("family", ["gpt2", "minilm"])
def test_http_loads_against_a_stub_server_count_every_unit(monkeypatch, family):
    """serve_http end to end: the server process started, found ready, warmed, every load's
    requests and units counted from the stream, the server stopped."""
    pytest.importorskip("httpx")
    monkeypatch.setattr(serving, "server_argv", _stub_argv(STUB))
    level = dict(TINY, clients=[1, 5], rates=[40.0], open_n=6)
    loads = serving.make_loads(family, level, 1000, seed=7, sentences=["a b", "c", "d e f"])
    name = serving.LLAMA_HTTP if family == "gpt2" else serving.ST_APP
    got = serving.serve_http(name, Setup("generate" if family == "gpt2" else "encode"), family,
                             loads)
    assert [ld["label"] for ld in got["loads"]] == ["1 client", "5 clients", "Poisson 40/s"]
    for ld, want in zip(got["loads"], loads):
        reqs = want["requests"]
        assert ld["requests"] == len(reqs) and ld["failed"] == 0
        assert ld["units"] == (len(reqs) if family == "minilm" else sum(r["new"] for r in reqs))
        assert ld["throughput"] > 0 and 0 < ld["ttft_p50"] <= ld["ttft_p99"]
        assert (ld["itl_p50"] is None) == (family == "minilm")


def test_http_server_that_does_not_start_is_reported(monkeypatch):
    monkeypatch.setattr(serving, "server_argv", _stub_argv(
        "import sys; print('no such model', file=sys.stderr); sys.exit(3)"))
    loads = serving.make_loads("gpt2", TINY, 1000, seed=0)
    with pytest.raises(RuntimeError, match=r"did not start \(status 3\).*no such model"):
        serving.serve_http(serving.OURS_HTTP, Setup("generate"), "gpt2", loads)


def test_http_targets_on_synthetic_numbers():
    def load(tput, ttft99):
        return [[{"label": "32 clients", "unit": "u", "requests": 32, "failed": 0, "wall_s": 1.0,
                  "throughput": tput, "ttft_p50": 0.1, "ttft_p99": ttft99, "itl_p50": None,
                  "itl_p99": None}]]
    results = {serving.OURS_HTTP: serving.combine(load(500.0, 0.4)),
               serving.LLAMA_HTTP: serving.combine(load(100.0, 0.5))}
    got = serving.target_ratios("gpt2", results, targets=serving.HTTP_TARGETS,
                                ours_name=serving.OURS_HTTP)
    assert [(t["ratio"], t["goal"], t["met"]) for t in got] == [(5.0, 4.0, True),
                                                               (0.8, 1.0, True)]
    assert "ttft_p99 at 32 clients" in got[1]["text"] and "(target < 1.0)" in got[1]["text"]
    results[serving.LLAMA_HTTP] = serving.combine(load(200.0, 0.3))
    got = serving.target_ratios("gpt2", results, targets=serving.HTTP_TARGETS,
                                ours_name=serving.OURS_HTTP)
    assert [t["met"] for t in got] == [False, False]
    assert serving.target_ratios("minilm", results, targets=serving.HTTP_TARGETS,
                                 ours_name=serving.OURS_HTTP) == []


def test_bench_serve_end_to_end_tiny(tmp_path):
    """`transformer bench serve --sizes tiny --family gpt2`: every server present runs the loads
    (llama-cpp-python's server on the GGUF of the same random weights; `transformer serve`
    where transformer.server exists), each absent one is a skip naming what is missing."""
    from importlib.util import find_spec
    present = [n for n in serving.SERVERS["gpt2"]
               if all(find_spec(m) for m in serving.NEEDS[n][0])]
    if not present:
        pytest.skip("no completions server here: pip install 'llama-cpp-python[server]' (or "
                    "transformer's [server] extra)")
    pytest.importorskip("httpx")
    pytest.importorskip("torch")            # the random GPT-2 is made once with transformers
    from transformer.benchmarks import run
    cfg = parse_config(["serve", "--sizes", "tiny", "--family", "gpt2", "--threads", "1",
                        "--workdir", str(tmp_path / "work"), "--output", str(tmp_path / "out")])
    suite = run(cfg)["suites"]["serve"]
    assert suite["status"] == "ok", suite
    ran = {row["engine"] for row in suite["rows"]}
    assert ran == set(present), suite["skipped"]
    for row in suite["rows"]:
        assert row["figures"][0]["value"] > 0 and row["ttft_p99"] >= row["ttft_p50"] > 0
    cells = suite["tables"][0]["rows"]
    assert all("failed" not in c[3] for c in cells)
    for name in set(serving.SERVERS["gpt2"]) - set(present):
        assert "not importable" in suite["skipped"][f"gpt2: {name}"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Serving over HTTP" in report
