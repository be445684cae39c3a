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


def _api_translations(model, texts, **kw):
    """What `transformer translate` should print for `texts` taken as one batch: the model's
    tokenizer batch, model.generate, each row decoded without its decoder start token; a blank
    text gives a blank line."""
    rows = [t for t in texts if t.strip()]
    if not rows:
        return [""] * len(texts)
    batch = model.tokenizer(rows)
    out = iter(model.generate(batch["input_ids"], batch["attention_mask"], **kw))
    return [model.tokenizer.decode(next(out)[1:]) if t.strip() else "" for t in texts]


def _check_translate_cli(path, texts, tmp_path):
    """Text arguments (one batch) and --input FILE (a corpus job, one line a batch) through the
    CLI print what the Python API gives."""
    import transformer
    model = transformer.load(path, threads=2)
    kw = dict(max_new_tokens=8, num_beams=2)
    p = run("translate", "--model", path, "--num-beams", 2, "--max-new-tokens", 8,
            "--threads", 2, *texts)
    assert p.stdout.split("\n")[:-1] == _api_translations(model, texts, **kw)
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    run("translate", "--model", path, "--num-beams", 2, "--max-new-tokens", 8, "--threads", 2,
        "--batch-size", 1, "--input", src, "--output", out)
    want = [_api_translations(model, [t], **kw)[0] for t in texts]
    assert out.read_text(encoding="utf-8").split("\n")[:-1] == want
    return model


def test_translate_t5_spiece_directory(tmp_path):
    """A tiny random T5 directory with only spiece.model as its tokenizer: text in, text out
    through `transformer translate` (T5Tokenizer), equal to the Python API's; `generate` on it
    says to use translate."""
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers")
    from test_tokenizers import train_t5_spiece
    from transformer.tokenizer import T5Tokenizer

    path = tmp_path / "t5"
    path.mkdir()
    train_t5_spiece(path)
    torch.manual_seed(0)
    cfg = hf.T5Config(vocab_size=250, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1)
    hf.T5ForConditionalGeneration(cfg).eval().save_pretrained(path, safe_serialization=True)
    texts = ["translate English to German: the quick brown fox.", "",
             "summarize: <extra_id_0> lazy dog <extra_id_1>", "東京 café 😀", "hello world"]
    model = _check_translate_cli(path, texts, tmp_path)
    assert isinstance(model.tokenizer, T5Tokenizer)
    p = run("generate", "--model", path, "--prompt", "hello", check=False)
    assert p.returncode != 0 and "transformer translate" in p.stderr, p.stderr


def test_translate_marian_spm_directory(tmp_path):
    """A tiny random Marian directory with source.spm / target.spm / vocab.json and no
    tokenizer.json: `transformer translate` prints what the Python API gives."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_tokenizers import tiny_marian
    from transformer.tokenizer import MarianTokenizer

    path = tmp_path / "marian"
    path.mkdir()
    tiny_marian(path)
    texts = [">>de<< hello world", "", "the lazy fox sleeps", "ein hund, ein fuchs!"]
    model = _check_translate_cli(path, texts, tmp_path)
    assert isinstance(model.tokenizer, MarianTokenizer)


def test_output_flags_write_their_file(shared_models, tmp_path):
    """translate TEXT --output f and generate --prompt ... --output f write f (nothing on
    stdout), as their --input forms do."""
    ct2 = shared_models / "aren-transliteration" / "float32"
    out = tmp_path / "t.txt"
    p = run("translate", "--model", ct2, "آ ت ز م و ن", "", "--output", out)
    assert p.stdout == "" and out.read_text(encoding="utf-8") == "a t z m o n\n\n"
    stories = shared_models / "stories260K" / "stories260K.bin"
    out = tmp_path / "g.jsonl"
    p = run("generate", "--model", stories, "--prompt", "Once upon a time",
            "--max-new-tokens", 8, "--output", out)
    row = json.loads(out.read_text())
    assert p.stdout == "" and row["prompt"] == "Once upon a time"
    assert row["completion"].startswith(", there was a little girl")


def test_outputs_refused_before_the_job(minilm_path, shared_models, tmp_path):
    """--input F --output F, an output that is a directory, a model of the wrong kind: exit 2
    with one line, the input intact, no traceback."""
    src, lines = tmp_path / "in.txt", tmp_path / "in.jsonl"  # .jsonl: a name embed writes
    src.write_text("one\ntwo\n")
    lines.write_text("one\ntwo\n")
    (tmp_path / "dir.npy").mkdir()
    stories = shared_models / "stories260K" / "stories260K.bin"
    ct2 = shared_models / "aren-transliteration" / "float32"
    for args, match in (
            (("embed", "--input", lines, "--output", lines, "--model", minilm_path),
             "is the input file too"),
            (("embed", "x", "--input", lines, "--output", lines, "--model", minilm_path),
             "is the input file too"),
            (("translate", "--input", src, "--output", src, "--model", ct2),
             "is the input file too"),
            (("embed", "--input", src, "--output", tmp_path / "dir.npy", "--model", minilm_path),
             "is a directory"),
            (("embed", "hello", "--output", tmp_path / "dir.npy", "--model", minilm_path),
             "is a directory"),
            (("embed", "hello", "--model", stories), "embed needs an encoder"),
            (("embed", "--input", src, "--model", stories), "embed needs an encoder"),
            (("search", "hello", "--input", src, "--model", stories), "search needs an encoder"),
            (("translate", "hello", "--model", minilm_path), "translate needs an encoder-decoder"),
            (("translate", "--input", src, "--model", minilm_path),
             "translate needs an encoder-decoder"),
            (("translate", "hello", "--model", ct2, "--length-penalty", 2000, "--max-new-tokens",
              8), "length_penalty")):
        p = run(*args, check=False)
        assert p.returncode == 2 and match in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert src.read_text() == lines.read_text() == "one\ntwo\n"
