"""Models on the GPU (device="cuda").

On a GPU (marked `gpu`, skipped without CuPy and a device visible to CuPy and PyTorch): the real
all-MiniLM-L6-v2 against HF transformers in PyTorch on CUDA, fp32 and fp16 (and bf16 against
fp32 HF), a tiny pre-LN encoder against our CPU run; tiny random GPT-2 and Llama (logits, greedy
and beam tokens) and Marian / BART (logits, beam tokens) against HF on CUDA; the stories260K and
aren-transliteration goldens. Tokens are compared exactly in float32; in float16 / bfloat16, where
a near tie may legitimately flip, each greedy token must be within a tolerance of the reference's
best logit at its step.

Without a GPU: device="cuda" fails with a clear error, and the same model code paths (KV cache
and encoder output on the device, host index arrays, beam reorder by gathering rows, bfloat16
storage, device outputs) run on the NumPy stand-in of tests/fake_gpu.py (fixture fake_gpu) and
must match our CPU run.
"""
import numpy as np
import pytest

import transformer
from transformer import ops
from transformer.device import to_numpy
from transformer.ops import cuda

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")

from test_decoder import (GPT2_CONFIGS, LLAMA_CONFIGS, _hf_generate, _hf_logits,  # noqa: E402
                          _prompts, _save, check_stories_golden)
from test_seq2seq import TINY, _source, check_aren_goldens  # noqa: E402
from test_seq2seq import _hf_generate as _hf_seq2seq_generate  # noqa: E402
from test_seq2seq import _hf_logits as _hf_seq2seq_logits  # noqa: E402
from test_seq2seq import _save as _save_seq2seq  # noqa: E402

DTYPES = ["float32", "float16", "bfloat16"]
HALF_TOL = {"float16": 2e-2, "bfloat16": 8e-2}  # of max(1, |logits|)

SENTENCES = ["Hello world", "The quick brown fox jumps over the lazy dog.", "Ok",
             "Sentence embeddings map text to vectors so that similar meanings land close."]


def test_cuda_without_gpu_is_a_clear_error(minilm_path):
    if cuda.available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        transformer.load(minilm_path, device="cuda")
    with pytest.raises(ValueError, match="dtype on device='cpu' must be one of"):
        transformer.load(minilm_path, dtype="float16")


@pytest.fixture(scope="module")
def gpu():
    if not cuda.available() or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU visible to CuPy and PyTorch")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2), ("bfloat16", 8e-2)])
def test_minilm_on_gpu_matches_hf(gpu, minilm_path, dtype, tol):
    ours = transformer.load(minilm_path, device="cuda", dtype=dtype)
    batch = ours.tokenizer(SENTENCES)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.float32}[dtype]
    model = hf.BertModel.from_pretrained(str(minilm_path), torch_dtype=torch_dtype).cuda().eval()
    with torch.no_grad():
        want = model(input_ids=torch.tensor(batch["input_ids"]).cuda(),
                     attention_mask=torch.tensor(batch["attention_mask"]).cuda(),
                     token_type_ids=torch.tensor(batch["token_type_ids"]).cuda())
    want = want.last_hidden_state.float().cpu().numpy()
    got = to_numpy(ours(**batch))
    real = batch["attention_mask"].astype(bool)
    assert np.abs(got[real] - want[real]).max() <= tol * max(1.0, np.abs(want).max())
    emb = to_numpy(ours.embed(**batch))
    cpu = transformer.load(minilm_path, threads=2).embed(**batch)
    assert np.sum(emb * cpu, axis=1).min() >= (0.99999 if dtype == "float32" else 0.999)


@pytest.mark.gpu
def test_pre_ln_encoder_on_gpu_matches_cpu(gpu, rng):
    from transformer.models.config import EncoderConfig
    from transformer.models.encoder import EncoderModel, encoder_shapes
    cfg = EncoderConfig(vocab_size=50, d_model=64, n_heads=4, n_layers=2, d_ff=96,
                        max_position_embeddings=40, pre_norm=True, activation="gelu")
    w = {k: (rng.standard_normal(s) * 0.2).astype(np.float32)
         for k, s in encoder_shapes(cfg).items()}
    ids = rng.integers(0, 50, (3, 17))
    mask = (np.arange(17)[None] < np.array([[17], [5], [11]])).astype(np.int64)
    want = EncoderModel(cfg, w, threads=2)(ids, mask)
    got = to_numpy(EncoderModel(cfg, w).to("cuda")(ids, mask))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# -- decoder-only and encoder-decoder models on a GPU ---------------------------------------------

def _assert_close(got, want, dtype, real=None):
    """got (device) vs want (NumPy) logits: 1e-4 in float32, HALF_TOL of the scale otherwise."""
    got = to_numpy(got)
    if real is not None:
        got, want = got[real], want[real]
    tol = 1e-4 if dtype == "float32" else HALF_TOL[dtype]
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


def _assert_near_greedy(reference, ids, mask, out, tol):
    """Each new token of out (B, T + n) is within tol of the best logit of `reference` (an HF
    model, float32) at its step, teacher-forced on out: a greedy choice up to near ties."""
    B, T = ids.shape
    full = np.concatenate([mask, np.ones((B, out.shape[1] - T), np.int64)], 1)
    logits = _hf_logits(reference, np.where(full == 1, out, 0), full)
    for t in range(T, out.shape[1]):
        step = logits[:, t - 1]
        chosen = step[np.arange(B), out[:, t]]
        assert np.all(chosen >= step.max(-1) - tol), f"step {t - T}: {step.max(-1) - chosen}"


def _sequence_logprob(reference, ids, mask, out):
    """Sum over the new tokens of out of log p under `reference` (HF, float32), per row."""
    B, T = ids.shape
    full = np.concatenate([mask, np.ones((B, out.shape[1] - T), np.int64)], 1)
    logits = _hf_logits(reference, np.where(full == 1, out, 0), full).astype(np.float64)
    lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return np.take_along_axis(lp[:, T - 1:-1], out[:, T:, None], -1)[..., 0].sum(1)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,cfg,dtype", [("gpt2", GPT2_CONFIGS[0], "float32"),
                                            ("gpt2", GPT2_CONFIGS[0], "float16"),
                                            ("gpt2", GPT2_CONFIGS[1], "float32"),
                                            ("llama", LLAMA_CONFIGS[0], "float32"),
                                            ("llama", LLAMA_CONFIGS[0], "float16"),
                                            ("llama", LLAMA_CONFIGS[2], "bfloat16")])
def test_decoder_on_gpu_matches_hf_cuda(gpu, tmp_path, rng, kind, cfg, dtype):
    model, _ = _save(tmp_path, rng, kind, cfg)
    ours = transformer.load(tmp_path, device="cuda", dtype=dtype)
    ref32 = model.cuda()
    ids, mask = _prompts(rng, 3, 9, cfg["vocab_size"])
    ref = ref32  # bfloat16 against float32 HF, as the MiniLM test
    if dtype == "float16":  # HF in float16, same weights
        ref = hf.AutoModelForCausalLM.from_pretrained(str(tmp_path), torch_dtype=torch.float16)
        ref = ref.cuda().eval()
    got = ours(ids, mask)
    assert ops.on_device(got) and got.shape == ids.shape + (cfg["vocab_size"],)
    _assert_close(got, _hf_logits(ref, ids, mask), dtype, mask.astype(bool))
    if dtype == "float32":
        for kw in (dict(num_beams=1), dict(num_beams=4),
                   dict(num_beams=3, length_penalty=0.6, num_return_sequences=2)):
            want = _hf_generate(ref32, ids, mask, max_new_tokens=10, do_sample=False,
                                eos_token_id=2, **kw)
            out = ours.generate(ids, mask, max_new_tokens=10, eos_token_id=2, pad_token_id=0,
                                **kw)
            assert ops.on_device(out) and out.dtype == np.int64
            np.testing.assert_array_equal(to_numpy(out), want, err_msg=str(kw))
    else:
        out = to_numpy(ours.generate(ids, mask, max_new_tokens=10, eos_token_id=[]))
        _assert_near_greedy(ref32, ids, mask, out, HALF_TOL[dtype] * 10)
        # beam search: as good as our float32 beams (checked against HF above) up to near ties
        beams = to_numpy(ours.generate(ids, mask, max_new_tokens=10, eos_token_id=[],
                                       num_beams=4))
        want = to_numpy(transformer.load(tmp_path, device="cuda").generate(
            ids, mask, max_new_tokens=10, eos_token_id=[], num_beams=4))
        assert beams.shape == want.shape
        np.testing.assert_array_less(_sequence_logprob(ref32, ids, mask, want) - 1.0,
                                     _sequence_logprob(ref32, ids, mask, beams))


@pytest.mark.gpu
def test_kv_cache_on_gpu_equals_full_recompute(gpu, tmp_path, rng):
    _save(tmp_path, rng, "llama", LLAMA_CONFIGS[0])
    ours = transformer.load(tmp_path, device="cuda")
    seq = rng.integers(3, 97, (2, 20))
    cache = ours.new_cache(2, 20)
    assert ops.on_device(cache.k) and cache.copy_on_reorder
    logits = ours.prefill(seq[:, :5], None, cache)
    for t in range(5, 20):
        np.testing.assert_allclose(to_numpy(logits), to_numpy(ours(seq[:, :t])[:, -1]),
                                   rtol=1e-4, atol=1e-4)
        logits = ours.decode_step(seq[:, t], cache)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32"])
def test_stories260k_golden_on_gpu(gpu, shared_models, dtype):
    path = shared_models / "stories260K" / "stories260K.bin"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    check_stories_golden(transformer.load(path, device="cuda", dtype=dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("kind,dtype", [("marian", "float32"), ("bart", "float32"),
                                        ("marian", "float16"), ("bart", "bfloat16")])
def test_seq2seq_on_gpu_matches_hf_cuda(gpu, tmp_path, rng, kind, dtype):
    model, _ = _save_seq2seq(tmp_path, rng, kind, forced_eos_token_id=2)
    model = model.cuda()
    ours = transformer.load(tmp_path, device="cuda", dtype=dtype)
    src, mask = _source(rng, 3, 9)
    tgt = np.concatenate([np.full((3, 1), 3), rng.integers(4, 67, (3, 6))], 1)
    got = ours(src, mask, tgt)
    assert ops.on_device(got)
    _assert_close(got, _hf_seq2seq_logits(model, src, mask, tgt), dtype)
    if dtype != "float32":
        out = ours.generate(src, mask, max_new_tokens=8, num_beams=4)
        assert ops.on_device(out) and out.shape[0] == 3 and int(out.max()) < TINY["vocab_size"]
        return
    for kw in (dict(num_beams=1), dict(num_beams=4), dict(num_beams=4, length_penalty=0.6),
               dict(num_beams=3, num_return_sequences=2, length_penalty=2.0)):
        want = _hf_seq2seq_generate(model, src, mask, max_new_tokens=8, do_sample=False,
                                    eos_token_id=2, forced_eos_token_id=2, **kw)
        got = ours.generate(src, mask, max_new_tokens=8, eos_token_id=2, forced_eos_token_id=2,
                            **kw)
        np.testing.assert_array_equal(to_numpy(got), want, err_msg=str(kw))


@pytest.mark.gpu
@pytest.mark.parametrize("quant,dtype", [("float32", "float32"), ("float32", "float16"),
                                         ("float32", "bfloat16"), ("int8", "float32")])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_aren_goldens_on_gpu(gpu, shared_models, quant, dtype, num_beams):
    path = shared_models / "aren-transliteration" / quant
    if not (path / "model.bin").is_file():
        pytest.skip(f"{path} not found")
    model = transformer.load(path, device="cuda", dtype=dtype)
    check_aren_goldens(model, num_beams, 1e-4 if dtype == "float32" else None)


# -- the same code paths without a GPU: the NumPy stand-in (tests/fake_gpu.py) ---------------------

def _close_to_cpu(got, want, dtype):
    got = to_numpy(got)
    tol = {"float32": 1e-6, "float16": 1e-2, "bfloat16": 5e-2}[dtype]  # of the logits scale
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("kind,cfg", [("gpt2", GPT2_CONFIGS[0]), ("llama", LLAMA_CONFIGS[0]),
                                      ("llama", LLAMA_CONFIGS[2])])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decoder_device_paths_match_cpu(fake_gpu, tmp_path, rng, kind, cfg, dtype):
    _, cpu = _save(tmp_path, rng, kind, cfg)
    ours = transformer.load(tmp_path, device="cuda", dtype=dtype)
    assert ours.device == "cuda" and ops.on_device(ours.weights["embeddings.word"])
    if cpu.weights["lm_head.weight"] is cpu.weights["embeddings.word"]:  # tied: one array
        assert ours.weights["lm_head.weight"] is ours.weights["embeddings.word"]
    ids, mask = _prompts(rng, 3, 9, cfg["vocab_size"])
    got = ours(ids, mask)
    assert ops.on_device(got)
    assert got.dtype == (np.float16 if dtype == "float16" else np.float32)
    _close_to_cpu(got, cpu(ids, mask), dtype)
    for kw in (dict(num_beams=1), dict(num_beams=4, num_return_sequences=2),
               dict(do_sample=True, seed=3, top_k=5),
               dict(num_beams=4, repetition_penalty=1.3, no_repeat_ngram_size=2,
                    bad_words_ids=[[5], [6, 7]], suppress_tokens=[8], min_new_tokens=3),
               dict(do_sample=True, seed=3, num_return_sequences=3, repetition_penalty=1.2)):
        out = ours.generate(ids, mask, max_new_tokens=8, eos_token_id=2, pad_token_id=0, **kw)
        assert ops.on_device(out) and out.dtype == np.int64
        if dtype == "float32":  # same math as the CPU: same tokens (beam: rows gathered)
            want = cpu.generate(ids, mask, max_new_tokens=8, eos_token_id=2, pad_token_id=0,
                                **kw)
            np.testing.assert_array_equal(to_numpy(out), want, err_msg=str(kw))


@pytest.mark.parametrize("kind", ["marian", "bart"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_seq2seq_device_paths_match_cpu(fake_gpu, tmp_path, rng, kind, dtype):
    _, cpu = _save_seq2seq(tmp_path, rng, kind)
    ours = transformer.load(tmp_path, device="cuda", dtype=dtype)
    src, mask = _source(rng, 3, 9)
    tgt = np.concatenate([np.full((3, 1), 3), rng.integers(4, 67, (3, 6))], 1)
    got = ours(src, mask, tgt)
    assert ops.on_device(got)
    _close_to_cpu(got, cpu(src, mask, tgt), dtype)
    prefix = dict(decoder_input_ids=np.array([[1, 3, 9], [3, 10, 11], [1, 1, 3]]),
                  decoder_attention_mask=np.array([[0, 1, 1], [1, 1, 1], [0, 0, 1]]))
    for kw in (dict(num_beams=1), dict(num_beams=4, num_return_sequences=2),
               dict(num_beams=4, no_repeat_ngram_size=2, repetition_penalty=1.3,
                    bad_words_ids=[[5]], **prefix),
               dict(num_beams=1, min_new_tokens=4, suppress_tokens=[6], **prefix)):
        out = ours.generate(src, mask, max_new_tokens=8, **kw)
        assert ops.on_device(out) and out.dtype == np.int64
        if dtype == "float32":
            np.testing.assert_array_equal(to_numpy(out),
                                          cpu.generate(src, mask, max_new_tokens=8, **kw))
    for kw in (dict(num_beams=2), dict(num_beams=1, **prefix)):
        att = ours.generate(src, mask, max_new_tokens=5, return_attention=True, **kw).attention
        assert all(isinstance(a, np.ndarray) and np.allclose(a.sum(1), 1, atol=1e-3)
                   for a in att)
        if dtype == "float32":  # same tokens as the CPU: the same weights
            want = cpu.generate(src, mask, max_new_tokens=5, return_attention=True,
                                **kw).attention
            for a, w in zip(att, want):
                np.testing.assert_allclose(a, w, atol=1e-5)
    out, scores = ours.generate(src, mask, max_new_tokens=5, num_beams=2, return_scores=True)
    assert ops.on_device(scores) and scores.shape == (3,)
    per_token = ours.score(src, mask, to_numpy(out)[:, 1:])
    assert isinstance(per_token[0], np.ndarray)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aren_goldens_device_paths(fake_gpu, shared_models, dtype):
    """Pre-LN with final norms and sinusoids: residual adds must go through ops.add (bfloat16
    storage added as integers gives nonsense)."""
    path = shared_models / "aren-transliteration" / "float32"
    if not (path / "model.bin").is_file():
        pytest.skip(f"{path} not found")
    model = transformer.load(path, device="cuda", dtype=dtype)
    check_aren_goldens(model, 4, 1e-4 if dtype == "float32" else None)


def test_stories260k_golden_device_paths(fake_gpu, shared_models):
    path = shared_models / "stories260K" / "stories260K.bin"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    check_stories_golden(transformer.load(path, device="cuda"))


def test_device_inputs_accepted(fake_gpu, tmp_path, rng):
    """input_ids and attention_mask may be device arrays; the cache on the device gathers rows."""
    _, cpu = _save(tmp_path, rng, "gpt2", GPT2_CONFIGS[0])
    ours = transformer.load(tmp_path, device="cuda")
    ids, mask = _prompts(rng, 2, 6, 97)
    xp = fake_gpu.FAKE_CUPY
    np.testing.assert_array_equal(to_numpy(ours(xp.asarray(ids), xp.asarray(mask))),
                                  to_numpy(ours(ids, mask)))
    cache = ours.new_cache(2, 10)
    assert cache.copy_on_reorder and ops.on_device(cache.k)
    from transformer.models.config import EncoderConfig
    from transformer.models.encoder import EncoderModel, encoder_shapes
    cfg = EncoderConfig(vocab_size=97, d_model=32, n_heads=4, n_layers=1, d_ff=40,
                        max_position_embeddings=16, type_vocab_size=2)
    w = {k: rng.standard_normal(s).astype(np.float32) for k, s in encoder_shapes(cfg).items()}
    enc = EncoderModel(cfg, w).to("cuda")
    types = (np.arange(6)[None] > 2).astype(np.int64).repeat(2, 0)
    np.testing.assert_allclose(to_numpy(enc(xp.asarray(ids), xp.asarray(mask), xp.asarray(types))),
                               EncoderModel(cfg, w)(ids, mask, types), rtol=1e-5, atol=1e-5)


def test_bad_device_and_dtype(tmp_path, rng):
    _save(tmp_path, rng, "gpt2", GPT2_CONFIGS[0])
    with pytest.raises(ValueError, match="device must be one of"):
        transformer.load(tmp_path, device="tpu")
    with pytest.raises(ValueError, match="dtype on device='cuda' must be one of"):
        transformer.load(tmp_path, device="cuda", dtype="int8")
    with pytest.raises(ValueError, match="dtype on device='cpu' must be one of"):
        transformer.load(tmp_path, dtype="float16")
