"""Decoder-only models (GPT-2, Llama, llama2.c) and generation against Hugging Face transformers
(PyTorch CPU) on tiny random configs built offline, and the real stories260K checkpoint."""
import struct

import numpy as np
import pytest

import transformer
from conftest import perturb, torch_call
from transformer.device import to_numpy
from transformer.generation import sample_next, warp

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")

GPT2_CONFIGS = [dict(vocab_size=97, n_embd=48, n_head=4, n_layer=2, n_positions=64),
                dict(vocab_size=61, n_embd=60, n_head=5, n_layer=3, n_positions=40,
                     activation_function="gelu")]
LLAMA_CONFIGS = [dict(vocab_size=97, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                      num_hidden_layers=2, intermediate_size=70, max_position_embeddings=64,
                      rope_theta=500.0, tie_word_embeddings=False),
                 dict(vocab_size=61, hidden_size=40, num_attention_heads=5, num_key_value_heads=5,
                      num_hidden_layers=2, intermediate_size=36, max_position_embeddings=64,
                      tie_word_embeddings=True, rms_norm_eps=1e-5),
                 dict(vocab_size=80, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                      num_hidden_layers=1, intermediate_size=50, max_position_embeddings=64,
                      head_dim=32)]


def _save(tmp_path, rng, kind, cfg):
    torch.manual_seed(int(rng.integers(1 << 31)))
    if kind == "gpt2":
        model = hf.GPT2LMHeadModel(hf.GPT2Config(bos_token_id=1, eos_token_id=2, **cfg))
    else:
        model = hf.LlamaForCausalLM(hf.LlamaConfig(bos_token_id=1, eos_token_id=2, **cfg))
    perturb(model, 0.1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model, transformer.load(tmp_path, threads=2)


def _prompts(rng, B, T, V, left=True):
    ids = rng.integers(3, V, (B, T))
    mask = np.ones((B, T), np.int64)
    for b in range(1, B):
        pad = int(rng.integers(0, T - 1))
        if left:
            mask[b, :pad] = 0
        else:
            mask[b, T - pad:] = 0
    return np.where(mask == 1, ids, 0), mask


def _hf_logits(model, ids, mask):
    """HF logits (float32 NumPy) with HF generate's position ids, on the model's device."""
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    return torch_call(model, model.device, input_ids=ids, attention_mask=mask, position_ids=pos)


def _hf_generate(model, ids, mask, **kw):
    return torch_call(lambda **a: model.generate(**a, pad_token_id=0, **kw), model.device,
                      inputs=ids, attention_mask=mask)


CASES = [("gpt2", c) for c in GPT2_CONFIGS] + [("llama", c) for c in LLAMA_CONFIGS]


@pytest.mark.parametrize("kind,cfg", CASES)
@pytest.mark.parametrize("left", [True, False])
def test_logits_match_hf(tmp_path, rng, kind, cfg, left):
    model, ours = _save(tmp_path, rng, kind, cfg)
    ids, mask = _prompts(rng, 4, 11, cfg["vocab_size"], left)
    got = ours(ids, mask)
    want = _hf_logits(model, ids, mask)
    real = mask.astype(bool)
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    assert np.all(got[~real] == 0)


@pytest.mark.parametrize("kind,cfg", [CASES[0], CASES[2], CASES[4]])
def test_greedy_and_beam_match_hf_generate(tmp_path, rng, kind, cfg):
    model, ours = _save(tmp_path, rng, kind, cfg)
    ids, mask = _prompts(rng, 3, 7, cfg["vocab_size"])
    # an eos that greedy decoding actually produces, so that stopping is exercised
    free = ours.generate(ids, mask, max_new_tokens=10, eos_token_id=[])
    eos = int(np.bincount(free[:, 7:].ravel()).argmax())
    for kw in (dict(num_beams=1), dict(num_beams=4), dict(num_beams=3, length_penalty=0.6),
               dict(num_beams=4, length_penalty=2.0, num_return_sequences=2),
               dict(num_beams=2, early_stopping=True)):
        want = _hf_generate(model, ids, mask, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                            **kw)
        got = ours.generate(ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0, **kw)
        np.testing.assert_array_equal(got, want, err_msg=str(kw))


def test_kv_cache_reorder_paths(rng):
    """KVCache.reorder against per-sequence histories kept in NumPy: table permutations (slots
    keep their lengths, also while dropping sequences) and the gathering fallback (ragged
    lengths move between slots); every decode step's attention compared in float64."""
    from transformer.models.block import BlockSpec, CachedSelfAttention, KVCache
    from transformer.ops import backend
    H = 4  # two query heads per KV head
    spec, kernels = BlockSpec(n_heads=H, n_kv_heads=2, head_dim=8, causal=True), backend()
    cache = KVCache(2, 4, 16, 2, 8)
    hist = []  # per slot: list of (k, v) (L, Hkv, D) per position
    for b, n in enumerate([3, 5, 2, 4]):  # ragged prompts, written as prefill does
        kv = rng.standard_normal((2, n, 2, 2, 8)).astype(np.float32)
        cache.k[:, b, :n] = kv[0].transpose(1, 0, 2, 3)
        cache.v[:, b, :n] = kv[1].transpose(1, 0, 2, 3)
        cache.lengths[b] = n
        hist.append([(kv[0, j], kv[1, j]) for j in range(n)])

    def step():
        R = len(hist)
        positions = cache.lengths[:R].astype(np.int64)
        attend = CachedSelfAttention(spec, kernels, cache, positions)
        for layer in range(2):
            q = rng.standard_normal((R, H, 8)).astype(np.float32)
            k = rng.standard_normal((R, 2, 8)).astype(np.float32)
            v = rng.standard_normal((R, 2, 8)).astype(np.float32)
            qkv = np.concatenate([a.reshape(R, -1) for a in (q, k, v)], 1)
            got = attend(layer, qkv).reshape(R, H, 8)
            for r in range(R):
                if layer == 0:
                    hist[r].append((np.zeros((2, 2, 8), np.float32),
                                    np.zeros((2, 2, 8), np.float32)))
                hist[r][-1][0][layer], hist[r][-1][1][layer] = k[r], v[r]
                K = np.stack([p[0][layer] for p in hist[r]]).astype(np.float64)  # (S, Hkv, D)
                V = np.stack([p[1][layer] for p in hist[r]]).astype(np.float64)
                K, V = np.repeat(K, 2, 1), np.repeat(V, 2, 1)
                s = np.einsum("hd,shd->hs", q[r], K) / np.sqrt(8)
                p = np.exp(s - s.max(1, keepdims=True))
                want = np.einsum("hs,shd->hd", p / p.sum(1, keepdims=True), V)
                np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-5)
        cache.lengths[:R] += 1

    step()
    for index in ([1, 1, 3, 0],   # lengths move between slots: gathered
                  [1, 0, 2, 3],   # each slot keeps its length: table only
                  [1, 0],         # fewer sequences, same lengths: table only
                  [1]):
        hist = [[(k.copy(), v.copy()) for k, v in hist[i]] for i in index]
        cache.reorder(index)
        assert cache.lengths[:len(index)].tolist() == [len(h) for h in hist]
        step()


@pytest.mark.parametrize("kind,cfg", [CASES[0], CASES[2]])
def test_kv_cache_decode_equals_full_recompute(tmp_path, rng, kind, cfg):
    _, ours = _save(tmp_path, rng, kind, cfg)
    seq = rng.integers(3, cfg["vocab_size"], (2, 20))
    cache = ours.new_cache(2, 20)
    logits = ours.prefill(seq[:, :5], None, cache)
    for t in range(5, 20):
        full = ours(seq[:, :t])[:, -1]
        np.testing.assert_allclose(logits, full, rtol=1e-4, atol=1e-4)
        logits = ours.decode_step(seq[:, t], cache)


def test_batched_equals_alone(tmp_path, rng):
    _, ours = _save(tmp_path, rng, "llama", LLAMA_CONFIGS[0])
    prompts = [rng.integers(3, 97, n) for n in (9, 2, 5)]
    T = max(map(len, prompts))
    ids = np.zeros((3, T), np.int64)
    mask = np.zeros((3, T), np.int64)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, 1
    together = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=[])
    for b, p in enumerate(prompts):
        alone = ours.generate(p[None], max_new_tokens=12, eos_token_id=[])
        np.testing.assert_array_equal(together[b, T:], alone[0, len(p):])


def test_sampling_reproducible_and_top_k_1_is_greedy(tmp_path, rng):
    _, ours = _save(tmp_path, rng, "gpt2", GPT2_CONFIGS[0])
    ids, mask = _prompts(rng, 2, 6, 97)
    a = ours.generate(ids, mask, max_new_tokens=15, do_sample=True, seed=7, eos_token_id=[])
    b = ours.generate(ids, mask, max_new_tokens=15, do_sample=True, seed=7, eos_token_id=[])
    c = ours.generate(ids, mask, max_new_tokens=15, do_sample=True, seed=8, eos_token_id=[])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = ours.generate(ids, mask, max_new_tokens=15, eos_token_id=[])
    top1 = ours.generate(ids, mask, max_new_tokens=15, do_sample=True, top_k=1, seed=3,
                         temperature=2.0, eos_token_id=[])
    np.testing.assert_array_equal(top1, greedy)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8),
                                                     (1.0, 6, 0.9)])
def test_sampling_distribution(rng, temperature, top_k, top_p):
    """Frequencies of 40000 draws against the warped distribution, computed independently."""
    from scipy.stats import chisquare

    logits = rng.standard_normal(10) * 1.5
    p = np.exp(logits / temperature)
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.zeros(10, bool)
    if top_k:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    q = np.where(keep, p, 0)
    q /= q.sum()
    mass = 0.0
    for i in np.argsort(-q):  # nucleus: most probable first until the mass reaches top_p
        if mass >= top_p:
            q[i] = 0
        mass += q[i]
    q /= q.sum()
    scores = warp(np.tile(logits, (40000, 1)), temperature, top_k, top_p)
    draws = sample_next(scores, np.random.default_rng(int(rng.integers(1 << 31))))
    counts = np.bincount(draws, minlength=10)
    assert np.all(counts[q == 0] == 0)
    live = q > 0
    if live.sum() == 1:  # the nucleus is one token (chisquare has no degree of freedom)
        assert counts[live] == 40000
    else:
        assert chisquare(counts[live], 40000 * q[live]).pvalue > 1e-4


def test_generate_bad_arguments(tmp_path, rng):
    _, ours = _save(tmp_path, rng, "gpt2", GPT2_CONFIGS[0])
    ids = np.array([[5, 6, 7]])
    for kw, match in ((dict(max_new_tokens=0), "max_new_tokens"), (dict(num_beams=0), "num_beams"),
                      (dict(top_p=0.0), "top_p"), (dict(temperature=0.0), "temperature"),
                      (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
                      (dict(max_new_tokens=62), "exceeds")):
        with pytest.raises(ValueError, match=match):
            ours.generate(ids, **kw)
    with pytest.raises(IndexError, match="input_ids"):
        ours(np.array([[5, 97]]))
    with pytest.raises(ValueError, match="attention_mask row 0"):
        ours(ids, np.zeros_like(ids))


# -- llama2.c: the real stories260K -------------------------------------------------------------

GOLDEN = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
          "park. One day, she saw a big, red ball. She wanted to play with it, but it was too "
          "high.\nLily")


def check_stories_golden(model):
    """llama2.c run.c, temperature 0, 64 steps counting the prompt: 60 new tokens."""
    prompt = model.tokenizer.encode("Once upon a time")
    assert prompt == [1, 403, 407, 261, 378]
    out = to_numpy(model.generate(np.array([prompt]), max_new_tokens=60))
    assert model.tokenizer.decode(out[0]) == GOLDEN


def test_stories260k_golden(stories):
    check_stories_golden(stories)


def test_stories260k_batched_equals_alone(stories):
    texts = ["Once upon a time", "Tom had a big red", "The sun"]
    prompts = [stories.tokenizer.encode(t) for t in texts]
    T = max(map(len, prompts))
    ids = np.array([[0] * (T - len(p)) + p for p in prompts])
    mask = np.array([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    together = stories.generate(ids, mask, max_new_tokens=30)
    for b, p in enumerate(prompts):
        alone = stories.generate(np.array([p]), max_new_tokens=30)
        np.testing.assert_array_equal(together[b, T:], alone[0, len(p):])


def _v1_from_legacy(legacy, out_path):
    """Rewrite a legacy llama2.c file with the version-1 header and tensor order."""
    from transformer.weights.llama2c import read_llama2c

    p, t = read_llama2c(legacy)
    head = struct.pack("<Ii7iB", 0x616B3432, 1, p["dim"], p["hidden_dim"], p["n_layers"],
                       p["n_heads"], p["n_kv_heads"], p["vocab_size"], p["max_seq_len"],
                       int(p["shared_classifier"]))
    order = ["attention_norm", "ffn_norm", "norm", "tok_embeddings", "wq", "wk", "wv", "wo", "w1",
             "w2", "w3"]
    with open(out_path, "wb") as f:
        f.write(head + b"\0" * (256 - len(head)))
        for name in order:
            f.write(np.ascontiguousarray(t[name], "<f4").tobytes())


def test_llama2c_version1_header(shared_models, stories, tmp_path):
    legacy = shared_models / "stories260K" / "stories260K.bin"
    v1 = tmp_path / "stories_v1.bin"
    _v1_from_legacy(legacy, v1)
    model = transformer.load(v1, tokenizer=shared_models / "stories260K" / "tok512.bin")
    ids = np.array([stories.tokenizer.encode("Once upon a time")])
    np.testing.assert_array_equal(model(ids), stories(ids))


def test_llama2c_bad_files(shared_models, tmp_path):
    from transformer.weights import WeightsError

    data = (shared_models / "stories260K" / "stories260K.bin").read_bytes()
    short = tmp_path / "short.bin"
    short.write_bytes(data[:-4])
    with pytest.raises(WeightsError, match="truncated"):
        transformer.load(short)
    long = tmp_path / "long.bin"
    long.write_bytes(data + b"\0" * 8)
    with pytest.raises(WeightsError, match="trailing data"):
        transformer.load(long)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack("<7i", 64, 172, 5, 7, 4, 512, 512) + data[28:])
    with pytest.raises(WeightsError, match="implausible"):
        transformer.load(bad)
    v9 = tmp_path / "v9.bin"
    v9.write_bytes(struct.pack("<Ii", 0x616B3432, 9) + b"\0" * 300)
    with pytest.raises(WeightsError, match="version 9"):
        transformer.load(v9)


def test_bloom_alibi_matches_hf(tmp_path, rng):
    """BLOOM: ALiBi slopes in the prefill and decode attention kernels (keys at their rank
    among the real tokens, as HF's cumsum of the mask), embedding LayerNorm, per-head fused
    QKV; left-padded batch: logits, greedy and beam tokens against HF."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    cfg = hf.BloomConfig(vocab_size=97, hidden_size=48, n_head=6, n_layer=2, bos_token_id=1,
                         eos_token_id=2)  # 6 heads: slopes beyond the power of two
    model = perturb(hf.BloomForCausalLM(cfg), 0.1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = transformer.load(tmp_path, threads=2)
    ids, mask = _prompts(rng, 3, 9, 97, left=True)
    want = torch_call(model, model.device, input_ids=ids, attention_mask=mask)
    got = ours(ids, mask)
    real = mask.astype(bool)
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    for kw in (dict(), dict(num_beams=3)):
        hf_out = _hf_generate(model, ids, mask, max_new_tokens=8, do_sample=False, **kw)
        np.testing.assert_array_equal(ours.generate(ids, mask, max_new_tokens=8, **kw), hf_out)
