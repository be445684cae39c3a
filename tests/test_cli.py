"""The `transformer` command, run as a user would (python -m transformer)."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "transformer", *map(str, args)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr}")
    return p


def test_info():
    out = json.loads(run("info", "--json", "--threads", "3").stdout)
    assert out["threads"] == 3 and out["openmp"] is True
    assert "-O3" in out["build_flags"] and out["simd"] and out["blas"]


def test_embed_json_lines_match_api(minilm_path, minilm):
    p = run("embed", "Hello world", "A second sentence.", "--model", minilm_path,
            "--threads", "1")
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["Hello world", "A second sentence."]
    want = minilm.embed_texts(["Hello world", "A second sentence."])
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), want, atol=1e-6)


def test_embed_file_to_npy(minilm_path, tmp_path, minilm):
    src = tmp_path / "in.txt"
    src.write_text("first line\n\nsecond line\nthird\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    p = run("embed", "--input", src, "--output", out, "--model", minilm_path, "--batch-size", 2)
    assert "embed: 4/4 lines" in p.stderr  # progress on stderr
    emb = np.load(out)  # a corpus job (transformer.distributed): the blank line a row of zeros
    np.testing.assert_allclose(emb[[0, 2, 3]],
                               minilm.embed_texts(["first line", "second line", "third"]),
                               atol=1e-5)
    assert emb.shape == (4, 384) and not emb[1].any()


def test_search_finds_the_topic(minilm_path):
    p = run("search", "how do I bake bread", "--input", ROOT / "examples" / "corpus.txt",
            "--top-k", 3, "--json", "--model", minilm_path)
    hits = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(hits) == 3
    assert "bread" in hits[0]["text"].lower()
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_cli_errors(tmp_path):
    p = run("embed", "--model", tmp_path / "missing", "hi", check=False)
    assert p.returncode == 2 and "model directory not found" in p.stderr
    p = run("embed", "--output", tmp_path / "x.csv", "hi", check=False)
    assert p.returncode != 0 and "--output must end in .npy or .jsonl" in p.stderr
    p = run("bogus", check=False)
    assert p.returncode == 2


def test_device_errors_are_clear(tmp_path):
    from transformer.ops import cuda
    if cuda.available():
        pytest.skip("a GPU is present: --device cuda would run")
    for cmd in (["generate", "--prompt", "Hi"], ["translate", "hi"], ["embed", "hi"]):
        p = run(*cmd, "--model", tmp_path, "--device", "cuda", "--dtype", "float16", check=False)
        assert p.returncode != 0 and "error: device='cuda'" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    p = run("embed", "hi", "--model", tmp_path, "--dtype", "float16", check=False)
    assert p.returncode == 2 and "dtype on device='cpu' must be one of" in p.stderr
    assert "Traceback" not in p.stderr
    p = run("embed", "hi", "--device", "tpu", check=False)
    assert p.returncode == 2 and "invalid choice: 'tpu'" in p.stderr


def test_generate_streams_the_golden(tmp_path):
    shared = pathlib.Path(os.environ.get("TRANSFORMER_SHARED_MODELS",
                                         ROOT.parent / "shared" / "models")) / "stories260K"
    if not (shared / "stories260K.bin").is_file():
        pytest.skip("stories260K not found")
    p = run("generate", "--model", shared / "stories260K.bin", "--prompt", "Once upon a time",
            "--max-new-tokens", 60)
    assert p.stdout.startswith("Once upon a time, there was a little girl named Lily.")
    assert p.stdout.rstrip("\n").endswith("but it was too high.\nLily")
    p = run("generate", "--model", shared / "stories260K.bin", "--prompt", "Lily", "--top-k", 5,
            "--seed", 1, "--max-new-tokens", 20)
    q = run("generate", "--model", shared / "stories260K.bin", "--prompt", "Lily", "--top-k", 5,
            "--seed", 1, "--max-new-tokens", 20)
    assert p.stdout == q.stdout and p.stdout.startswith("Lily")


def test_translate_vocabulary_model():
    path = pathlib.Path(os.environ.get("TRANSFORMER_SHARED_MODELS",
                                       ROOT.parent / "shared" / "models")) / "aren-transliteration"
    if not (path / "float32" / "model.bin").is_file():
        pytest.skip("aren-transliteration not found")
    p = run("translate", "--model", path / "float32", "آ ت ز م و ن", "آ ت ش ي س و ن")
    assert p.stdout.splitlines() == ["a t z m o n", "a c h i s o n"]
    p = run("translate", "--model", path / "int8", "--num-beams", 1, "آ ت ز م و ن")
    assert p.stdout.splitlines() == ["a t z m o n"]
    p = run("translate", "--model", path / "float32", check=False)
    assert p.returncode != 0 and "nothing to translate" in p.stderr


def test_translate_processor_flags():
    """--no-repeat-ngram-size / --repetition-penalty / --min-new-tokens reach generate."""
    path = pathlib.Path(os.environ.get("TRANSFORMER_SHARED_MODELS", ROOT.parent / "shared" /
                                       "models")) / "aren-transliteration" / "float32"
    if not (path / "model.bin").is_file():
        pytest.skip("aren-transliteration not found")
    p = run("translate", "--model", path, "--num-beams", 1, "--no-repeat-ngram-size", 1,
            "م ح م د")
    assert p.stdout.split("\n")[0] == "m a h i d"  # greedy gives "m a h m a d"
    p = run("translate", "--model", path, "--num-beams", 1, "--min-new-tokens", 9, "ع ل ي")
    assert len(p.stdout.split()) == 9
