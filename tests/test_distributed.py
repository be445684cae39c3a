"""Corpus jobs (transformer.distributed): streaming, token-budget batches in input order, parts
and resume, bad lines, memory; and the same outputs in process, on local:2 and on an external
Dask LocalCluster, also when a worker dies mid-job (those are marked slow)."""
import json
import os
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from transformer import distributed as dist
from transformer.distributed import CorpusError, CorpusTask


class Upper(CorpusTask):
    """A model-free task: a line's tokens are its UTF-8 bytes, the result is the line upper-cased
    (so order and alignment are checkable without a model). Records each batch's shape."""

    kind = "upper"
    shapes = []

    def __init__(self, max_tokens=1000):
        super().__init__(None)
        self.max_tokens = max_tokens

    def load(self):
        return None

    def limit(self, model):
        return self.max_tokens

    def encode(self, model, texts):
        ids = [list(t.encode("utf-8")) for t in texts]
        return [x[:self.max_tokens] for x in ids], [len(x) > self.max_tokens for x in ids]

    def run_batch(self, model, batch, seed):
        Upper.shapes.append((len(batch), max(map(len, batch))))
        return [bytes(x).decode("utf-8", "replace").upper() for x in batch]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def random_lines(rng, n, blank_every=7):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return ["" if i % blank_every == 3 else " ".join(rng.choice(words, rng.integers(1, 30)))
            for i in range(n)]


# -- engine, no model -------------------------------------------------------------------------
def test_order_kept_under_length_sorting_and_budget(rng, tmp_path):
    lines = random_lines(rng, 500)
    src = write_lines(tmp_path / "in.txt", lines)
    Upper.shapes.clear()
    report = dist.run_corpus_job(Upper(), src, tmp_path / "out.txt", shard_lines=64,
                                 max_batch_tokens=600, progress=False)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")[:-1] == \
        [line.upper() for line in lines]
    assert report.lines == 500 and report.shards == 8 and report.bad_lines == 0
    assert not (tmp_path / "out.txt.parts").exists()
    assert all(rows * longest <= 600 or rows == 1 for rows, longest in Upper.shapes)
    # length-sorted: far fewer batches than 64-line shards cut in file order would need
    assert sum(rows for rows, _ in Upper.shapes) == sum(bool(x.strip()) for x in lines)


def test_batches_longest_first_within_budget():
    from transformer.corpus.batching import token_batches
    lengths = [3, 10, 1, 10, 7, 200, 2]
    batches = list(token_batches(lengths, 25, max_batch_lines=2))
    assert batches[0] == [5]  # over the budget: alone
    assert [i for b in batches for i in b] == [5, 1, 3, 4, 0, 6, 2]
    assert all(len(b) * lengths[b[0]] <= 25 and len(b) <= 2 for b in batches[1:])


def test_stdout_streaming_and_blank_lines(tmp_path, capsys):
    lines = ["b", "", "  ", "ccc", "a"]
    src = write_lines(tmp_path / "in.txt", lines)
    dist.run_corpus_job(Upper(), src, shard_lines=2, progress=True)
    out, err = capsys.readouterr()
    assert out.split("\n") == ["B", "", "", "CCC", "A", ""]
    assert "upper: 5/5 lines" in err and "lines/s" in err


def test_bad_lines_truncate_with_warning_or_fail(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(b"fine\nbad \xff\xfe bytes\n" + b"x" * 30 + b"\nend")
    out = tmp_path / "out.txt"
    report = dist.run_corpus_job(Upper(max_tokens=20), src, out, progress=False)
    assert out.read_text(encoding="utf-8").split("\n") == \
        ["FINE", "BAD \ufffd\ufffd BYTES", "X" * 20, "END", ""]
    err = capsys.readouterr().err
    assert report.bad_lines == 2
    assert "line 2 of" in err and "undecodable UTF-8" in err
    assert "line 3 is longer than the model's 20 tokens; cut to fit" in err
    with pytest.raises(CorpusError, match="line 2 of .* undecodable"):
        dist.run_corpus_job(Upper(max_tokens=20), src, out, on_bad_line="fail", progress=False)
    src.write_bytes(b"fine\n" + b"x" * 30 + b"\n")
    with pytest.raises(CorpusError, match="line 2 is longer than the model's 20 tokens"):
        dist.run_corpus_job(Upper(max_tokens=20), src, out, on_bad_line="fail", progress=False)


def test_resume_after_an_interrupted_job(rng, tmp_path):
    lines = random_lines(rng, 300)
    src = write_lines(tmp_path / "in.txt", lines)
    out = tmp_path / "out.txt"

    def interrupt(done, total):  # Ctrl-C inside the 4th shard
        if done > 150:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dist.run_corpus_job(Upper(), src, out, shard_lines=50, progress=interrupt)
    assert not out.exists()
    parts = sorted(p.name for p in (tmp_path / "out.txt.parts").iterdir())
    assert parts == ["manifest.json", "part-000000.txt", "part-000001.txt", "part-000002.txt"]
    (tmp_path / "out.txt.parts" / "part-000003.txt.tmp").write_text("half a shard")  # a crash
    with pytest.raises(CorpusError, match="different job .*max_batch_tokens"):
        dist.run_corpus_job(Upper(), src, out, shard_lines=50, max_batch_tokens=99, resume=True,
                            progress=False)
    report = dist.run_corpus_job(Upper(), src, out, shard_lines=50, resume=True, progress=False)
    assert report.shards == 6 and report.shards_skipped == 3
    assert out.read_text(encoding="utf-8").split("\n")[:-1] == [x.upper() for x in lines]
    assert not (tmp_path / "out.txt.parts").exists()


def test_memory_bounded_on_a_large_input(tmp_path):
    src = tmp_path / "big.txt"
    line = "the quick brown fox jumps over the lazy dog %07d, again and again\n"
    with open(src, "w") as f:
        for start in range(0, 200_000, 10_000):
            f.write("".join(line % i for i in range(start, start + 10_000)))
    size = src.stat().st_size
    assert size > 12e6
    tracemalloc.start()
    try:
        report = dist.run_corpus_job(Upper(), src, tmp_path / "out.txt", shard_lines=1000,
                                     max_batch_tokens=8192, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.lines == 200_000
    print(f"tracemalloc peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB input")
    assert peak < size / 3, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB input"
    assert (tmp_path / "out.txt").stat().st_size == size


def test_argument_errors(tmp_path, monkeypatch):
    src = write_lines(tmp_path / "in.txt", ["a"])
    with pytest.raises(CorpusError, match="scheduler must be 'local'"):
        dist.run_corpus_job(Upper(), src, scheduler="cluster", progress=False)
    with pytest.raises(CorpusError, match="local:N.*got 'local:0'"):
        dist.run_corpus_job(Upper(), src, scheduler="local:0", progress=False)
    with pytest.raises(CorpusError, match="max_batch_tokens must be a positive integer"):
        dist.run_corpus_job(Upper(), src, max_batch_tokens=0, progress=False)
    with pytest.raises(CorpusError, match="on_bad_line must be one of"):
        dist.run_corpus_job(Upper(), src, on_bad_line="skip", progress=False)
    with pytest.raises(CorpusError, match="output for embed must end in .npy or .jsonl"):
        dist.embed_file(src, tmp_path / "x.csv", model=tmp_path)
    with pytest.raises(CorpusError, match="resume needs an input file and an output file"):
        dist.run_corpus_job(Upper(), src, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="input file not found"):
        dist.run_corpus_job(Upper(), tmp_path / "missing.txt", progress=False)
    (tmp_path / "o.txt.parts").mkdir()
    with pytest.raises(CorpusError, match="not the partial output of a corpus job"):
        dist.run_corpus_job(Upper(), src, tmp_path / "o.txt", progress=False)
    monkeypatch.setitem(sys.modules, "distributed", None)  # dask.distributed not installed
    with pytest.raises(dist.DistributedUnavailable, match=r"pip install 'transformer\[dist"):
        dist.run_corpus_job(Upper(), src, scheduler="local:2", progress=False)


class Longest(Upper):
    """Upper that records the longest text its encode was given."""

    seen = 0

    def encode(self, model, texts):
        Longest.seen = max([Longest.seen] + [len(t.encode("utf-8")) for t in texts])
        return super().encode(model, texts)


def test_a_long_line_is_cut_before_it_is_tokenized(tmp_path, capsys):
    """One 4 MB line: the tokenizer sees at most limit x BYTES_PER_TOKEN bytes of it (the line
    is cut first, with the warning naming it), not the whole line."""
    from transformer.tokenizer.checks import BYTES_PER_TOKEN
    src = write_lines(tmp_path / "in.txt", ["short", "é" * (2 << 20), "last"])
    report = dist.run_corpus_job(Longest(max_tokens=100), src, tmp_path / "out.txt",
                                 progress=False)
    assert report.bad_lines == 1 and "line 2 is longer than the model's 100 tokens" in \
        capsys.readouterr().err
    assert 0 < Longest.seen <= 100 * BYTES_PER_TOKEN
    out = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    assert out[0] == "SHORT" and out[2] == "LAST" and len(out[1]) == 50  # 100 bytes: 50 "É"


def test_outputs_checked_before_the_job(tmp_path):
    """--input F --output F, the same file through a link, or an output that is a directory:
    refused before any work, the input intact and nothing left behind."""
    src = write_lines(tmp_path / "in.txt", ["a", "b"])
    (tmp_path / "link.txt").symlink_to(src)
    for out in (src, tmp_path / "link.txt"):
        with pytest.raises(CorpusError, match="is the input file too"):
            dist.run_corpus_job(Upper(), src, out, progress=False)
        assert src.read_text() == "a\nb\n"
    (tmp_path / "x.npy").mkdir()
    with pytest.raises(CorpusError, match="x.npy is a directory"):
        dist.embed_file(src, tmp_path / "x.npy", model=tmp_path / "no-model")
    with pytest.raises(CorpusError, match="does not exist"):
        dist.run_corpus_job(Upper(), src, tmp_path / "no" / "out.txt", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "link.txt", "x.npy"]


def test_resume_checks_the_model_and_the_manifest(tmp_path):
    """A manifest records the model's files: resume after the model at that path changed is
    refused naming them; a corrupt or non-object manifest is one clear error."""
    src = write_lines(tmp_path / "in.txt", [f"line {i}" for i in range(30)])
    out = tmp_path / "out.txt"
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"v1")
    task = Upper()
    task.model = str(weights)

    def interrupt(done, total):
        if done > 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dist.run_corpus_job(task, src, out, shard_lines=10, progress=interrupt)
    weights.write_bytes(b"v2, retrained")
    with pytest.raises(CorpusError, match="different job .*task.model_files"):
        dist.run_corpus_job(task, src, out, shard_lines=10, resume=True, progress=False)
    manifest = tmp_path / "out.txt.parts" / "manifest.json"
    for bad, match in (("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")):
        manifest.write_text(bad)
        with pytest.raises(CorpusError, match=match + ".*remove"):
            dist.run_corpus_job(task, src, out, shard_lines=10, resume=True, progress=False)


def test_embed_an_empty_file(minilm_path, tmp_path):
    """A 0-byte input: (0, C) float32, not (0, 0)."""
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    dist.embed_file(src, tmp_path / "e.npy", model=minilm_path, progress=False)
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (0, 384) and emb.dtype == np.float32


def test_generate_cuts_a_long_prompt_line(shared_models, tmp_path, capsys):
    """A 5 KB prompt line is cut to the model's positions with a warning naming it (the
    documented default), not the end of the job."""
    model = shared_models / "stories260K" / "stories260K.bin"
    if not model.is_file():
        pytest.skip("stories260K not found")
    src = write_lines(tmp_path / "p.txt", ["Once upon a time", "Lily " * 1000, "Tom"])
    report = dist.generate_file(src, tmp_path / "o.jsonl", model=model, max_new_tokens=4,
                                progress=False)
    assert report.lines == 3 and report.bad_lines == 1
    assert "line 2 is longer than the model's" in capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Once upon a time", "Lily " * 1000, "Tom"]


# -- real models, in process ------------------------------------------------------------------
def test_embed_file_matches_embed_texts(minilm_path, minilm, rng, tmp_path):
    lines = random_lines(rng, 120) + ["word " * 400]  # the last one: over the 256 tokens
    src = write_lines(tmp_path / "in.txt", lines)
    report = dist.embed_file(src, tmp_path / "e.npy", model=minilm_path, threads=2,
                             shard_lines=50, max_batch_tokens=512, progress=False)
    assert report.bad_lines == 1
    emb = np.load(tmp_path / "e.npy")
    keep = [i for i, t in enumerate(lines) if t.strip()]
    np.testing.assert_allclose(emb[keep], minilm.embed_texts([lines[i] for i in keep]),
                               atol=1e-5)
    assert not emb[[i for i, t in enumerate(lines) if not t.strip()]].any()  # blank: zeros
    dist.embed_file(src, tmp_path / "e.jsonl", model=minilm_path, threads=2, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == lines
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), emb, atol=1e-6)


# -- on Dask clusters -------------------------------------------------------------------------
def _jobs(shared_models, minilm_path, rng):
    """(name, job function(src, out, scheduler), input lines, suffix) of the three tasks."""
    aren = shared_models / "aren-transliteration" / "float32"
    stories = shared_models / "stories260K" / "stories260K.bin"
    letters = "آ ب ت ث ج ح د ر ز س ش ص ع ف ق ك ل م ن ه و ي".split()
    names = ["" if i % 9 == 4 else " ".join(rng.choice(letters, rng.integers(2, 9)))
             for i in range(60)]
    prompts = ["" if i % 9 == 4 else " ".join(rng.choice(["Once", "upon", "a", "time", "Lily",
                                                          "Tom", "the", "park"],
                                                         rng.integers(1, 6)))
               for i in range(40)]
    opts = {"shard_lines": 10, "progress": False}

    def embed(src, out, scheduler, **kw):
        return dist.embed_file(src, out, model=minilm_path, threads=2, scheduler=scheduler,
                               max_batch_tokens=256, **{**opts, **kw})

    def translate(src, out, scheduler, **kw):
        return dist.translate_file(src, out, model=aren, num_beams=2, threads=2,
                                   scheduler=scheduler, **{**opts, **kw})

    def generate(src, out, scheduler, **kw):  # greedy
        return dist.generate_file(src, out, model=stories, max_new_tokens=12, threads=2,
                                  scheduler=scheduler, **{**opts, **kw})

    return {"embed": (embed, random_lines(rng, 100), ".npy"),
            "translate": (translate, names, ".txt"),
            "generate": (generate, prompts, ".jsonl")}


def _assert_same(a, b):
    if str(a).endswith(".npy"):
        x, y = np.load(a), np.load(b)
        assert x.shape == y.shape and np.abs(x - y).max() <= 1e-5
    else:
        assert a.read_text(encoding="utf-8") == b.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def external_cluster():
    distributed = pytest.importorskip("distributed")
    import logging
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["embed", "translate", "generate"])
def test_local_local2_and_external_cluster_agree(kind, shared_models, minilm_path, rng,
                                                 tmp_path, external_cluster):
    job, lines, suffix = _jobs(shared_models, minilm_path, rng)[kind]
    src = write_lines(tmp_path / "in.txt", lines)
    outs = {}
    for scheduler in ("local", "local:2", external_cluster.scheduler_address):
        outs[scheduler] = tmp_path / f"out-{len(outs)}{suffix}"
        report = job(src, outs[scheduler], scheduler)
        assert report.lines == len(lines) and report.shards == -(-len(lines) // 10)
    first, *others = outs.values()
    for other in others:
        _assert_same(first, other)
    if kind == "translate":
        text = first.read_text(encoding="utf-8").split("\n")
        assert [t == "" for t in text[:-1]] == [not x for x in lines]


@pytest.mark.slow
def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(shared_models, minilm_path, rng,
                                                              tmp_path):
    distributed = pytest.importorskip("distributed")
    import logging
    job, lines, suffix = _jobs(shared_models, minilm_path, rng)["translate"]
    src = write_lines(tmp_path / "in.txt", lines)
    job(src, tmp_path / "want.txt", "local")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster:
        with distributed.Client(cluster) as client:
            pids = list(client.run(os.getpid).values())
        killed = []

        def kill_one(done, total):
            if not killed and done > 0:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(done)

        report = job(src, tmp_path / "got.txt", cluster.scheduler_address, progress=kill_one)
        with distributed.Client(cluster) as client:
            assert pids[0] not in client.run(os.getpid).values()  # it died and was replaced
    assert killed and killed[0] < len(lines), "the worker was not killed mid-job"
    assert report.lines == len(lines)
    _assert_same(tmp_path / "want.txt", tmp_path / "got.txt")


def test_cli_corpus_jobs(shared_models, minilm_path, tmp_path):
    from test_cli import ROOT, run
    src = write_lines(tmp_path / "in.txt", ["آ ت ز م و ن", "", "آ ت ش ي س و ن"])
    p = run("translate", "--model", shared_models / "aren-transliteration" / "float32",
            "--input", src, "--output", tmp_path / "out.txt", "--shard-lines", 2)
    assert (tmp_path / "out.txt").read_text().split("\n") == ["a t z m o n", "", "a c h i s o n",
                                                              ""]
    assert "translate: 3/3 lines" in p.stderr
    p = subprocess.run([sys.executable, "-m", "transformer", "translate", "--model",
                        shared_models / "aren-transliteration" / "float32", "--input", "-"],
                       input="آ ت ز م و ن\n\n", capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert p.returncode == 0 and p.stdout == "a t z m o n\n\n"  # stdin streamed, blank kept
    src = write_lines(tmp_path / "p.txt", ["Once upon a time", "", "Lily"])
    p = run("generate", "--model", shared_models / "stories260K" / "stories260K.bin",
            "--input", src, "--max-new-tokens", 10)
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["Once upon a time", "", "Lily"]
    assert rows[0]["completion"].startswith(", there was a little girl") and \
        rows[1]["completion"] == ""
    p = run("embed", "--input", src, "--model", minilm_path, "--scheduler", "nowhere",
            check=False)
    assert p.returncode == 2 and "scheduler must be" in p.stderr
    long = write_lines(tmp_path / "long.txt", ["آ " * 1100])
    p = run("translate", "--model", shared_models / "aren-transliteration" / "float32",
            "--input", long, "--on-bad-line", "fail", check=False)
    assert p.returncode == 2 and "line 1 is longer than the model's 1024 tokens" in p.stderr
    p = run("generate", "--model", "x", check=False)
    assert p.returncode != 0 and "either --prompt TEXT or --input FILE" in p.stderr
