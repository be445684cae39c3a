"""Regression tests of issue 13: every hostile input gets a clear error, never a crash, a hang,
a wrong answer or a half-written file (numbers: the issue's findings)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

import transformer
from transformer import cli, ops
from transformer.ops import reference as ref
from transformer.weights import WeightsError

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))
from test_bad_input import tiny_dir  # noqa: E402,F401  (the tiny BERT directory fixture)


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _qkv(rng, B=2, H=2, S=5, D=4):
    q = rng.standard_normal((B, H, D)).astype(np.float32)
    k = rng.standard_normal((B, S, H, D)).astype(np.float32)
    v = rng.standard_normal((B, S, H, D)).astype(np.float32)
    return q, k, v


# 1 ---------------------------------------------------------------------------------------------
def test_decode_attention_v_cache_and_chunk(rng):
    q, k, v = _qkv(rng)
    lengths = np.array([5, 3])
    with pytest.raises(ValueError, match="k_cache and v_cache must have the same shape"):
        ops.decode_attention(q, k, v[:, :2], lengths)
    for chunk in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="chunk"):
            ops.decode_attention(q, k, v, lengths, chunk=chunk)
    got = ops.decode_attention(q, k, v, lengths, chunk=10 ** 12)  # clamped, not allocated
    np.testing.assert_allclose(got, ref.decode_attention(q, k, v, lengths), rtol=1e-5,
                               atol=1e-6)


# 2 ---------------------------------------------------------------------------------------------
def test_attention_odd_strides_match_the_reference(rng):
    q = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    k = rng.standard_normal((2, 2, 5, 4)).astype(np.float32)
    views = [(q[:, :, ::-1], k[:, :, ::-1], k), (q, np.broadcast_to(k[:, :, :1], k.shape), k),
             (q[::-1], k[::-1], k[::-1])]
    for qq, kk, vv in views:
        np.testing.assert_allclose(ops.attention(qq, kk, vv), ref.attention(qq, kk, vv),
                                   rtol=1e-5, atol=1e-5)
    x = rng.standard_normal((6, 2, 4)).astype(np.float32)
    cu = np.array([0, 2, 6])
    for view in (x[::-1], np.broadcast_to(x[:1], x.shape)):
        np.testing.assert_allclose(ops.attention_varlen(view, view, view, cu, causal=True),
                                   ref.attention_varlen(view, view, view, cu, True),
                                   rtol=1e-5, atol=1e-5)


# 3 ---------------------------------------------------------------------------------------------
def test_threads_upper_bound(monkeypatch):
    from transformer._threads import MAX_THREADS, resolve_threads
    x = np.ones((2, 3), np.float32)
    for n in (20000, 100000, MAX_THREADS + 1):
        with pytest.raises(ValueError, match="threads must be at most"):
            ops.softmax(x, threads=n)
    assert resolve_threads(MAX_THREADS) == MAX_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "100000")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        resolve_threads()


# 4 ---------------------------------------------------------------------------------------------
def test_huge_layer_count_is_refused_before_any_work(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=10 ** 6)))
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match="1000000 layers"):
        transformer.load(d)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 5 and peak < 50 << 20


def test_huge_max_positions_allocates_lazily():
    from transformer.models.decoder import DecoderConfig, DecoderModel, decoder_shapes
    cfg = DecoderConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=1, d_ff=12,
                        max_position_embeddings=10 ** 8, norm="rms_norm", activation="swiglu",
                        positions="rotary", bias=False)
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal(s).astype(np.float32) for n, s in decoder_shapes(cfg).items()}
    tracemalloc.start()
    model = DecoderModel(cfg, w, threads=1)
    out = model(np.array([[1, 2, 3]]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (1, 3, 11) and np.isfinite(out).all()
    assert peak < 20 << 20, peak


# 5 ---------------------------------------------------------------------------------------------
def test_integer_tensor_for_a_float_weight(tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file
    d = _copy(tiny_dir, tmp_path)
    t = load_file(str(d / "model.safetensors"))
    name = "encoder.layer.0.output.dense.weight"
    t[name] = t[name].view(np.int32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(WeightsError, match=f"model.safetensors(.|\n)*{name}: expected a floating"):
        transformer.load(d)


# 6 ---------------------------------------------------------------------------------------------
def test_index_shards_must_stay_inside_the_directory(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.move(d / "model.safetensors", outside)
    index = d / "model.safetensors.index.json"
    for shard in ("../outside.safetensors", str(outside)):
        index.write_text(json.dumps({"weight_map": {"a": shard}}))
        with pytest.raises(WeightsError, match="outside the model directory"):
            transformer.load(d)
    (d / "link.safetensors").symlink_to(outside)
    index.write_text(json.dumps({"weight_map": {"a": "link.safetensors"}}))
    with pytest.raises(WeightsError, match="outside the model directory"):
        transformer.load(d)
    shutil.copy(outside, d / "shard.safetensors")
    index.write_text(json.dumps({"weight_map": {"a": "shard.safetensors"}}))
    assert transformer.load(d, threads=1)(np.array([[1, 2]])).shape == (1, 2, 16)
    for bad in ("[1, 2]", '{"weight_map": [1]}', '{"weight_map": {"a": 3}}'):
        index.write_text(bad)
        with pytest.raises(ValueError, match="model.safetensors.index.json"):
            transformer.load(d)


# 7 ---------------------------------------------------------------------------------------------
def test_llama2c_tokenizer_is_not_quadratic(stories):
    from transformer.tokenizer import Llama2cTokenizer
    tok = stories.tokenizer
    unbounded = Llama2cTokenizer(ROOT.parent / "shared" / "models" / "stories260K" / "tok512.bin",
                                 512)
    text = "Once upon a time there was a little girl named Lily. " * 620  # ~33k characters
    t0 = time.perf_counter()
    ids = unbounded.encode(text)
    assert time.perf_counter() - t0 < 3
    assert unbounded.decode(ids).strip() == text.strip()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="needs at least .* tokens"):
        tok.encode("x" * 1_000_000)
    assert time.perf_counter() - t0 < 1


# 8 ---------------------------------------------------------------------------------------------
class _FakeModel:
    """An encoder whose embed_texts writes nothing and fails or is interrupted on demand."""

    kind = "encoder"

    def __init__(self, error=None):
        self.error = error

    def embed_texts(self, texts, batch_size=32, progress=None):
        if self.error:
            raise self.error
        return np.ones((len(texts), 3), np.float32)


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_cli_outputs_are_never_half_written(tmp_path, monkeypatch, capsys, suffix):
    out = tmp_path / ("emb" + suffix)
    out.write_text("previous")
    monkeypatch.setattr(cli, "_load", lambda args: _FakeModel())
    real_replace = os.replace

    def failing_replace(src, dst):  # the disk fills up just before the rename
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    assert cli.main(["embed", "a", "b", "--output", str(out)]) == 2
    assert out.read_text() == "previous" and os.listdir(tmp_path) == [out.name]
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(cli, "_load", lambda args: _FakeModel(KeyboardInterrupt()))
    capsys.readouterr()
    assert cli.main(["embed", "a", "--output", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted"
    assert out.read_text() == "previous" and os.listdir(tmp_path) == [out.name]
    monkeypatch.setattr(cli, "_load", lambda args: _FakeModel())
    assert cli.main(["embed", "a", "b", "--output", str(out)]) == 0
    assert os.listdir(tmp_path) == [out.name]
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(out), np.ones((2, 3), np.float32))
    else:
        assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["a", "b"]


# 9 ---------------------------------------------------------------------------------------------
def test_translate_keeps_blank_lines(shared_models, tmp_path):
    path = shared_models / "aren-transliteration" / "float32"
    if not (path / "model.bin").is_file():
        pytest.skip("aren-transliteration not found")
    src = tmp_path / "in.txt"
    src.write_text("آ ت ز م و ن\n\n   \nآ ت ش ي س و ن\n", encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "transformer", "translate", "--model", str(path),
                        "--input", str(src), "--batch-size", "2"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:-1] == ["a t z m o n", "", "", "a c h i s o n"]


# 10 --------------------------------------------------------------------------------------------
def test_generation_arguments_are_checked(stories):
    ids = np.array([[1, 400, 32]])
    V = stories.config.vocab_size
    for bad in (-1, V, 2 ** 40):
        with pytest.raises(IndexError, match="forced_bos_token_id"):
            stories.generate(ids, max_new_tokens=2, forced_bos_token_id=bad)
        with pytest.raises(IndexError, match="forced_eos_token_id"):
            stories.generate(ids, max_new_tokens=2, forced_eos_token_id=bad)
    for bad in (float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="length_penalty"):
            stories.generate(ids, max_new_tokens=2, num_beams=2, length_penalty=bad)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            stories.generate(ids, max_new_tokens=2, do_sample=True, temperature=bad)
    greedy = stories.generate(ids, max_new_tokens=6)
    for tiny in (1e-320, 1e-300):  # the limit of sampling is greedy, not token 0
        np.testing.assert_array_equal(
            stories.generate(ids, max_new_tokens=6, do_sample=True, temperature=tiny, seed=1),
            greedy)


def test_cli_negative_temperature(shared_models):
    path = shared_models / "stories260K" / "stories260K.bin"
    p = subprocess.run([sys.executable, "-m", "transformer", "generate", "--model", str(path),
                        "--prompt", "Once", "--temperature", "-1"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert p.returncode != 0 and "--temperature must be >= 0" in p.stderr


def test_nan_and_inf_scores_give_nan_not_zeros(rng):
    q = rng.standard_normal((1, 1, 2, 4)).astype(np.float32)
    k = rng.standard_normal((1, 1, 3, 4)).astype(np.float32)
    q[0, 0, 0, 0] = np.nan
    k2 = k.copy()
    k2[0, 0, 1] = np.inf  # +inf scores for every query
    q2 = np.abs(np.nan_to_num(q)) + 1
    for qq, kk in ((q, k), (q2, k2)):
        got = ops.attention(qq, kk, k)
        assert np.isnan(got[0, 0, 0]).all() and np.isnan(ref.attention(qq, kk, k)[0, 0, 0]).all()
        np.testing.assert_allclose(got, ref.attention(qq, kk, k), rtol=1e-5, equal_nan=True)
    d = ops.decode_attention(q[0].transpose(1, 0, 2)[:1], k.transpose(0, 2, 1, 3),
                             k.transpose(0, 2, 1, 3), np.array([3]))
    assert np.isnan(d).all()
    x = np.array([[np.nan, np.nan], [1.0, np.inf], [-np.inf, -np.inf]], np.float32)
    s = ops.softmax(x)
    assert np.isnan(s[:2]).all() and (s[2] == 0).all()
    mask = np.array([-np.inf, 0], np.float32)
    np.testing.assert_array_equal(ops.softmax(x, mask), ref.softmax(x, mask).astype(np.float32))


def test_indices_at_and_above_2_to_the_32_do_not_wrap(rng):
    q, k, v = _qkv(rng)
    lengths = np.array([5, 3])
    with pytest.raises(IndexError, match="kv_index"):
        ops.decode_attention(q, k, v, lengths, kv_index=np.array([0, 2 ** 32]))
    rows = np.zeros((2, 5), np.int64)
    rows[1, 2] = 2 ** 32 + 1
    with pytest.raises(IndexError, match="kv_rows"):
        ops.decode_attention(q, k, v, lengths, kv_rows=rows)
    with pytest.raises(TypeError, match="kv_index"):
        ops.decode_attention(q, k, v, lengths, kv_index=np.array([0.0, 1.0]))


def test_tokenizer_decode_out_of_range(stories, minilm_path):
    for tok, V in ((stories.tokenizer, 512),
                   (transformer.load(minilm_path, threads=1).tokenizer, 30522)):
        for bad in ([-1], [V], [2 ** 40]):
            with pytest.raises(IndexError, match="ids must lie in"):
                tok.decode(bad)


# 11 --------------------------------------------------------------------------------------------
def test_unclear_errors_made_clear(tiny_dir, tmp_path, rng):
    model = transformer.load(tiny_dir, threads=1)
    with pytest.raises(ValueError, match="B >= 1"):
        model(np.zeros((0, 3), np.int64))
    for x in (np.zeros((3, 0), np.float32), np.zeros((0,), np.float32)):
        with pytest.raises(ValueError, match="non-empty last axis"):
            ops.layer_norm(x, np.ones(0, np.float32), np.zeros(0, np.float32))
        with pytest.raises(ValueError, match="non-empty last axis"):
            ops.softmax(x)
    d = _copy(tiny_dir, tmp_path)
    for text, match in (("[1, 2]", "expected a JSON object.*got a JSON list"),
                        (b"{\"a\": \"\xff\"}", "not valid UTF-8"),
                        ("{not json", "not valid JSON"),
                        ('{"architectures": 5}', "architectures must be a list")):
        (d / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ValueError, match=match) as e:
            transformer.load(d)
        assert "config.json" in str(e.value)


def test_bad_vocabularies_and_tokenizers(shared_models, tmp_path):
    src = shared_models / "aren-transliteration" / "float32"
    if not (src / "model.bin").is_file():
        pytest.skip("aren-transliteration not found")
    d = tmp_path / "ct2"
    shutil.copytree(src, d)
    lines = (d / "target_vocabulary.txt").read_text(encoding="utf-8").splitlines()
    (d / "target_vocabulary.txt").write_text("\n".join(t for t in lines if t != "<s>") + "\n",
                                             encoding="utf-8")
    with pytest.raises(ValueError, match="target_vocabulary.txt: no <s> token"):
        transformer.load(d)
    (d / "target_vocabulary.txt").write_bytes(b"\xff\xfe\n")
    with pytest.raises(ValueError, match="target_vocabulary.txt: not valid UTF-8"):
        transformer.load(d)
    from transformer.tokenizer import Llama2cTokenizer
    data = (shared_models / "stories260K" / "tok512.bin").read_bytes()
    out, pos = bytearray(data[:4]), 4  # the same vocabulary with the " " token renamed
    while pos < len(data):
        n = int.from_bytes(data[pos + 4:pos + 8], "little")
        piece = data[pos + 8:pos + 8 + n]
        out += data[pos:pos + 8] + (b"~" if piece == b" " else piece)
        pos += 8 + n
    (tmp_path / "tok.bin").write_bytes(bytes(out))
    with pytest.raises(ValueError, match="tok.bin: no ' ' token"):
        Llama2cTokenizer(tmp_path / "tok.bin", 512)


def test_cli_binary_stdin(tmp_path):
    """Undecodable stdin: a warning naming the line and U+FFFD in its place (the corpus job's
    default --on-bad-line truncate), or with --on-bad-line fail exit 2 naming the line; never a
    traceback."""
    cmd = [sys.executable, "-m", "transformer", "embed", "--input", "-"]
    p = subprocess.run(cmd, input=b"\xff\xfe\x00binary", capture_output=True, timeout=300,
                       cwd=ROOT)
    assert p.returncode == 0 and b"line 1" in p.stderr and b"undecodable" in p.stderr
    assert b"Traceback" not in p.stderr
    p = subprocess.run(cmd + ["--on-bad-line", "fail"], input=b"\xff\xfe\x00binary",
                       capture_output=True, timeout=300, cwd=ROOT)
    assert p.returncode == 2 and b"line 1" in p.stderr and b"Traceback" not in p.stderr


# -- issue 24: silent wrong answers, unbounded work from small files, lost output ----------------
def _hf_tiny(path, kind, **overrides):
    """A tiny random HF model of `kind` saved in `path` (safetensors); returns the HF model."""
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers")
    from conftest import perturb
    torch.manual_seed(0)
    if kind == "gpt2":
        model = hf.GPT2LMHeadModel(hf.GPT2Config(**dict(
            dict(vocab_size=97, n_embd=32, n_head=4, n_layer=1, n_positions=64, bos_token_id=1,
                 eos_token_id=2), **overrides)))
    elif kind == "bloom":
        model = hf.BloomForCausalLM(hf.BloomConfig(**dict(
            dict(vocab_size=97, hidden_size=32, n_head=4, n_layer=1, bos_token_id=1,
                 eos_token_id=2), **overrides)))
    elif kind == "llama":
        model = hf.LlamaForCausalLM(hf.LlamaConfig(**dict(
            dict(vocab_size=97, hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                 intermediate_size=40, max_position_embeddings=64, bos_token_id=1,
                 eos_token_id=2), **overrides)))
    elif kind == "t5":
        model = hf.T5ForConditionalGeneration(hf.T5Config(**dict(
            dict(vocab_size=67, d_model=32, d_kv=8, d_ff=40, num_layers=1,
                 num_decoder_layers=1, num_heads=4, decoder_start_token_id=0, eos_token_id=1,
                 pad_token_id=0, dropout_rate=0.0), **overrides)))
    elif kind == "mpnet":
        model = hf.MPNetModel(hf.MPNetConfig(**dict(
            dict(vocab_size=97, hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                 intermediate_size=40, max_position_embeddings=64), **overrides)),
            add_pooling_layer=False)
    elif kind == "xlm-roberta":
        model = hf.XLMRobertaModel(hf.XLMRobertaConfig(**dict(
            dict(vocab_size=97, hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                 intermediate_size=40, max_position_embeddings=64), **overrides)),
            add_pooling_layer=False)
    elif kind == "marian":
        model = hf.MarianMTModel(hf.MarianConfig(**dict(
            dict(vocab_size=67, d_model=32, encoder_layers=1, decoder_layers=1,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=40,
                 decoder_ffn_dim=40, max_position_embeddings=64, pad_token_id=1,
                 eos_token_id=2, decoder_start_token_id=3), **overrides)))
    else:
        model = hf.BartForConditionalGeneration(hf.BartConfig(**dict(
            dict(vocab_size=67, d_model=32, encoder_layers=1, decoder_layers=1,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=40,
                 decoder_ffn_dim=40, max_position_embeddings=64), **overrides)))
    perturb(model, 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return model


def _edit_config(path, file="config.json", **changes):
    """Rewrite path/file with `changes` (a value None drops nothing: it writes null)."""
    cfg = json.loads((path / file).read_text())
    cfg.update(changes)
    (path / file).write_text(json.dumps(cfg))


def _hf_logits(model, ids):
    import torch
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("kind", ["gpt2", "bloom", "llama"])
def test_stored_untied_lm_head_is_used(tmp_path, rng, kind):
    """GPT-2 / BLOOM saved with tie_word_embeddings false, and a Llama whose config says tied
    but whose file holds its own head: HF uses the stored head, so do we."""
    import torch
    from safetensors.torch import load_file, save_file
    model = _hf_tiny(tmp_path, kind, tie_word_embeddings=kind == "llama")
    if kind == "llama":  # tied in the config, yet its own head in the file
        t = load_file(str(tmp_path / "model.safetensors"))
        t["lm_head.weight"] = torch.randn_like(t["model.embed_tokens.weight"])
        save_file(t, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
        model = type(model).from_pretrained(tmp_path)
    ids = rng.integers(3, 97, (2, 7))
    want = _hf_logits(model, ids)
    got = transformer.load(tmp_path, threads=1)(ids)
    assert np.abs(got - want).max() <= 1e-4


def test_untied_head_missing_from_the_file_is_an_error(tmp_path):
    from safetensors.numpy import load_file, save_file
    _hf_tiny(tmp_path, "gpt2", tie_word_embeddings=False)
    t = load_file(str(tmp_path / "model.safetensors"))
    del t["lm_head.weight"]
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="missing.*lm_head.weight"):
        transformer.load(tmp_path)


def test_dtype_round_trips_start_from_the_loaded_weights(tmp_path, rng):
    """int8 then float32 gives the float32 logits back (not the dequantized int8 weights);
    bfloat16 then int8 gives what int8 from float32 gives (not the rounded weights
    quantized)."""
    _hf_tiny(tmp_path, "t5")
    src, tgt = rng.integers(2, 67, (2, 6)), rng.integers(2, 67, (2, 4))
    model = transformer.load(tmp_path, threads=1)
    want = model(src, None, tgt)
    model.to("cpu", "int8").to("cpu", "float32")
    assert model.dtype == "float32"
    np.testing.assert_array_equal(model(src, None, tgt), want)
    int8 = transformer.load(tmp_path, threads=1, dtype="int8")(src, None, tgt)
    np.testing.assert_array_equal(model.to("cpu", "bfloat16").to("cpu", "int8")(src, None, tgt),
                                  int8)


def test_t5_relative_attention_max_distance(tmp_path, rng):
    """Below the exact buckets (HF's formula divides by log(max_distance / max_exact)): one
    error naming the field; 10 ** 8: no table sized by it (the distances stop at the model's
    positions), the logits those of HF's."""
    model = _hf_tiny(tmp_path, "t5")
    for bad in (4, 16, 0, "128"):
        d = tmp_path / f"bad{bad}"
        shutil.copytree(tmp_path, d, ignore=shutil.ignore_patterns("bad*"))
        _edit_config(d, relative_attention_max_distance=bad)
        with pytest.raises(ValueError, match="relative_attention_max_distance"):
            transformer.load(d)
    import torch
    hf = pytest.importorskip("transformers")
    _edit_config(tmp_path, relative_attention_max_distance=10 ** 8, n_positions=512)
    model = hf.T5ForConditionalGeneration.from_pretrained(tmp_path)
    src, tgt = rng.integers(2, 67, (2, 40)), rng.integers(2, 67, (2, 9))
    tracemalloc.start()
    ours = transformer.load(tmp_path, threads=1)
    got = ours(src, None, tgt)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    with torch.no_grad():
        want = model(input_ids=torch.tensor(src), decoder_input_ids=torch.tensor(tgt)).logits
    assert np.abs(got - want.numpy()).max() <= 1e-4
    assert peak < 50 << 20, peak


@pytest.mark.parametrize("kind", ["t5", "mpnet"])
def test_relative_positions_refuse_a_mask_with_a_hole(tmp_path, rng, kind):
    """A mask (1, 0, 1) on T5's encoder or MPNet: HF measures relative distances over columns,
    the packed kernels over real tokens; one error naming attention_mask, not other values.
    Padding (pad ids) on either side still matches HF."""
    import torch
    model = _hf_tiny(tmp_path, kind)
    ours = transformer.load(tmp_path, threads=1)
    ids = rng.integers(3, 60, (2, 6))
    args = (lambda m: (ids, m, ids[:, :3])) if kind == "t5" else (lambda m: (ids, m))
    hole = np.array([[1, 1, 0, 1, 1, 1], [1] * 6])
    with pytest.raises(ValueError, match="attention_mask row 0 has a hole"):
        ours(*args(hole))
    padded = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    ids = np.where(padded == 1, ids, 1 if kind == "mpnet" else 0)  # the pad ids in the padding
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(padded))
    if kind == "t5":
        kw["decoder_input_ids"] = torch.tensor(ids[:, :3])
    with torch.no_grad():
        out = model(**kw)
    want = (out.logits if kind == "t5" else out.last_hidden_state).numpy()
    got = ours(*args(padded))
    real = slice(None) if kind == "t5" else padded.astype(bool)
    assert np.abs(got[real] - want[real]).max() <= 1e-4


def test_null_decoder_start_token_id(tmp_path):
    """A null decoder_start_token_id: bos_token_id starts the decoder (HF's
    _get_decoder_start_token_id); neither: one error naming it."""
    _hf_tiny(tmp_path, "bart")
    (tmp_path / "generation_config.json").unlink()
    _edit_config(tmp_path, decoder_start_token_id=None, bos_token_id=4)
    assert transformer.load(tmp_path).generate(np.array([[5, 6, 7]]), max_new_tokens=2)[0, 0] \
        == 4
    _edit_config(tmp_path, bos_token_id=None)
    model = transformer.load(tmp_path)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model.generate(np.array([[5, 6, 7]]), max_new_tokens=2)
    out = model.generate(np.array([[5, 6, 7]]), max_new_tokens=2, decoder_start_token_id=2)
    assert out[0, 0] == 2
    # not a token id (the config fuzz's finds): named before the decoder prefix is made of it
    for bad in ({}, [None], 2 ** 70, -1, True, 10 ** 6):
        with pytest.raises(ValueError, match="decoder_start_token_id must be a token id"):
            model.generate(np.array([[5, 6, 7]]), max_new_tokens=2, decoder_start_token_id=bad)


def test_generation_work_is_bounded_before_allocation(tmp_path):
    """max_new_tokens 10 ** 9 (or max_length in generation_config.json) is refused before
    anything B x (T + N) is allocated: fast, small, naming the option."""
    _hf_tiny(tmp_path, "gpt2")
    model = transformer.load(tmp_path, threads=1)
    ids = np.array([[5, 6, 7]] * 4)
    for kw in (dict(max_new_tokens=10 ** 9), dict(max_new_tokens=10 ** 9, num_beams=3)):
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match="max_new_tokens=1000000000 exceeds the model's 64"):
            model.generate(ids, **kw)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert time.perf_counter() - t0 < 2 and peak < 10 << 20, peak
    _edit_config(tmp_path, "generation_config.json", max_length=10 ** 9)
    model = transformer.load(tmp_path, threads=1)
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        model.generate(ids)
    assert model.generate(ids, max_new_tokens=3).shape == (4, 6)
    # a billion beams or samples (the config fuzz's find: 2 x 10^9 rows took 23 GB, killed)
    for kw, name in ((dict(num_beams=10 ** 9), "num_beams"),
                     (dict(do_sample=True, num_return_sequences=2 ** 31 - 1),
                      "num_return_sequences")):
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=f"{name}=.* search rows of"):
            model.generate(ids, max_new_tokens=2, **kw)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert time.perf_counter() - t0 < 2 and peak < 10 << 20, peak
    _edit_config(tmp_path, "generation_config.json", max_length=20, num_beams=10 ** 9)
    with pytest.raises(ValueError, match="num_beams=1000000000 for 4 prompts"):
        transformer.load(tmp_path, threads=1).generate(ids)


def test_length_penalty_that_overflows_is_named(tmp_path):
    _hf_tiny(tmp_path, "bart")
    model = transformer.load(tmp_path, threads=1)
    with pytest.raises(ValueError, match="length_penalty"):
        model.generate(np.array([[5, 6, 7]]), num_beams=2, max_new_tokens=8, length_penalty=2000)
    model.generate(np.array([[5, 6, 7]]), num_beams=2, max_new_tokens=8, length_penalty=30)


def test_score_target_mask_and_eos_list(tmp_path, rng):
    _hf_tiny(tmp_path, "t5")
    model = transformer.load(tmp_path, threads=1)
    src, tgt = rng.integers(2, 67, (2, 5)), rng.integers(2, 67, (2, 4))
    for bad in (0.5, 2, -1):
        mask = np.ones((2, 4)) * bad if bad == 0.5 else np.full((2, 4), bad)
        with pytest.raises(ValueError, match="target_mask"):
            model.score(src, None, tgt, mask)
    with pytest.raises(ValueError, match="target_mask"):
        model.score(src, None, tgt, np.array([[1, 0, 1, 1], [1, 1, 1, 1]]))
    good = model.score(src, None, tgt, np.array([[1, 1, 0, 0], [1, 1, 1, 1]]))
    assert [len(r) for r in good] == [3, 5]
    # an eos_token_id list in an encoder-decoder config.json (HF runs it): every eos ends a row
    (tmp_path / "generation_config.json").unlink()
    _edit_config(tmp_path, eos_token_id=[1, 5])
    model = transformer.load(tmp_path, threads=1)
    assert model.config.eos_token_ids == (1, 5)
    out = model.generate(src, max_new_tokens=6)
    assert out.shape[0] == 2
    assert len(model.score(src, None, tgt)[0]) == 5


def test_t5_extra_ids_bounded_by_the_vocabulary(tmp_path):
    """extra_ids 10 ** 6 in tokenizer_config.json: refused at once (the model's vocabulary
    cannot hold them), not seconds and gigabytes of sentinels."""
    pytest.importorskip("sentencepiece")
    from test_tokenizers import train_t5_spiece
    _hf_tiny(tmp_path, "t5", vocab_size=250)
    train_t5_spiece(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 10 ** 6}))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="extra_ids=1000000 .* exceed the model's vocab_size=250"):
        transformer.load(tmp_path)
    assert time.perf_counter() - t0 < 5
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 100}))
    assert transformer.load(tmp_path).tokenizer.vocab_size == 250


def test_t5_without_n_positions_is_bounded(tmp_path):
    """A transformers-5 T5 config.json has no n_positions: 512 positions (T5's), so one long
    line is cut or refused, not run for hours."""
    _hf_tiny(tmp_path, "t5")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("n_positions", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = transformer.load(tmp_path)
    assert model.config.max_position_embeddings == 512
    from transformer.corpus import TranslateTask
    assert TranslateTask(tmp_path).limit(model) == 512  # a corpus line's tokens at most


@pytest.mark.parametrize("kind,changes,match", [
    ("gpt2", dict(n_head=0), "n_heads must be a positive integer"),
    ("t5", dict(d_model=0), "d_model must be a positive integer"),
    ("llama", dict(rope_parameters=[1, 2]), "rope_parameters"),
    ("llama", dict(num_key_value_heads=3), "multiple of n_kv_heads"),
    ("mpnet", dict(relative_attention_num_buckets=2), "relative_attention_num_buckets"),
    ("xlm-roberta", dict(pad_token_id=None), "pad_token_id"),
    ("gpt2", dict(layer_norm_epsilon="1e-5"), "eps"),
    ("t5", dict(layer_norm_epsilon=float("inf")), "eps"),
    ("bart", dict(scale_embedding="false"), "scale_embedding"),
    ("gpt2", dict(tie_word_embeddings="no"), "tie_word_embeddings"),
    ("bart", dict(eos_token_id=-2), "eos_token_id"),
])
def test_config_fields_get_one_clear_error(tmp_path, kind, changes, match):
    """Each bad config.json field: one ValueError naming it, at load, never a
    ZeroDivisionError / TypeError / AttributeError from deep inside."""
    _hf_tiny(tmp_path, kind)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=match):
        transformer.load(tmp_path)


def test_bad_generation_config_and_sentence_bert_config(tmp_path, minilm_path):
    _hf_tiny(tmp_path / "g", "gpt2")
    (tmp_path / "g" / "generation_config.json").write_bytes(b'{"max_length": "\xff\xfe"}')
    with pytest.raises(ValueError, match="generation_config.json: not valid UTF-8"):
        transformer.load(tmp_path / "g")
    d = _copy(minilm_path, tmp_path)
    for bad in ("-1", "Infinity", "0", "\"128\"", "1e3"):
        (d / "sentence_bert_config.json").write_text('{"max_seq_length": %s}' % bad)
        with pytest.raises(ValueError, match="sentence_bert_config.json: max_seq_length"):
            transformer.load(d)
