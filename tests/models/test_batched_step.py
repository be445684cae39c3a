"""The batched decode step (Model.step_decodings: several requests' search steps as one forward,
the serving engine's continuous batching) against each request stepped alone: the same logits
bit for bit at float32 (batch_invariant), int8 and bfloat16, for decoder-only (GPT-2, Llama:
rotary, grouped-query) and encoder-decoder (BART, Marian) families, with beams reordered
between steps and requests of different lengths and row counts."""
import numpy as np
import pytest

import test_decoder as dec
import test_seq2seq as s2s
from transformer.generation import GenerationConfig

pytest.importorskip("torch")

FAMILIES = ["gpt2", "llama", "bart", "marian"]


def _model(tmp_path, rng, family, dtype, batch_invariant=True):
    if family in ("gpt2", "llama"):
        cfg = dec.GPT2_CONFIGS[0] if family == "gpt2" else dec.LLAMA_CONFIGS[0]
        _, model = dec._save(tmp_path, rng, family, cfg)
    else:
        _, model = s2s._save(tmp_path, rng, family)
    if dtype != "float32":
        model.to("cpu", dtype)
    model.batch_invariant = batch_invariant
    return model


def _requests(rng, model, n):
    """n decodings of prompts / sources of different lengths, started with 1 to 4 rows (at
    least 17 rows in all for n = 9: float32 products of more than 16 rows take another kernel
    unless the backend is row invariant)."""
    V = 60
    out = []
    for _ in range(n):
        T = int(rng.integers(1, 12))
        ids = rng.integers(4, V, (1, T))
        rows = int(rng.integers(2, 5))
        if model.kind == "decoder":
            d = model.decoding(ids)
        else:
            d = model.decoding(ids, config=GenerationConfig())
        out.append((d, rows))
    return out


@pytest.mark.parametrize("dtype", ["float32", "int8", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_step_decodings_equals_each_alone(tmp_path, rng, family, dtype):
    model = _model(tmp_path, rng, family, dtype)
    seed = int(rng.integers(1 << 31))
    runs = []
    for batched in (False, True):  # the same requests twice: stepped alone, then together
        r = np.random.default_rng(seed)
        reqs = _requests(r, model, 9)
        logits = [d.start(rows, 12)[[0] * rows] for d, rows in reqs]
        for d, rows in reqs:
            d.reorder(np.zeros(rows, np.int64))  # the rows of a prompt start from its row
        seen = []
        for step in range(8):
            tokens = [r.integers(4, 60, rows) for _, rows in reqs]
            work = [(d, t) for (d, _), t in zip(reqs, tokens)]
            got = model.step_decodings(work) if batched else [d.step(t) for d, t in work]
            seen.append([np.array(g, copy=True) for g in got])
            for d, rows in reqs:  # beams: rows permuted, as a beam search reorders them
                d.reorder(r.permutation(rows))
        runs.append((logits, seen))
    (l0, s0), (l1, s1) = runs
    for a, b in zip(l0, l1):
        np.testing.assert_array_equal(a, b)
    for step0, step1 in zip(s0, s1):
        for a, b in zip(step0, step1):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_step_decodings_checks_before_any_cache_changes(tmp_path, rng):
    model = _model(tmp_path, rng, "gpt2", "float32")
    d1, d2 = model.decoding(np.array([[5, 6, 7]])), model.decoding(np.array([[8, 9]]))
    d1.start(1, 4), d2.start(1, 4)
    before = d1.cache.lengths.copy(), d2.cache.lengths.copy()
    with pytest.raises((ValueError, IndexError)):
        model.step_decodings([(d1, np.array([5])), (d2, np.array([10 ** 6]))])
    np.testing.assert_array_equal(d1.cache.lengths, before[0])
    np.testing.assert_array_equal(d2.cache.lengths, before[1])


def _decoder(tmp_path, rng, family, dtype):
    """A tiny random decoder with 512 positions (prompts of several 64-token tiles)."""
    import transformer
    torch, hf = dec.torch, dec.hf
    if family == "bloom":
        torch.manual_seed(int(rng.integers(1 << 31)))
        hf.BloomForCausalLM(hf.BloomConfig(vocab_size=97, hidden_size=48, n_head=4, n_layer=2)
                            ).save_pretrained(tmp_path, safe_serialization=True)
        model = transformer.load(tmp_path, threads=2)
    else:
        cfg = dict(dec.GPT2_CONFIGS[0], n_positions=512) if family == "gpt2" else \
            dict(dec.LLAMA_CONFIGS[0], max_position_embeddings=512)
        _, model = dec._save(tmp_path, rng, family, cfg)
    if dtype != "float32":
        model.to("cpu", dtype)
    model.batch_invariant = True
    return model


@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "bloom"])
def test_prompt_chunks_equal_the_whole_prefill(tmp_path, rng, family, dtype):
    """Prompts prefilled in chunks of whole 64-row tiles (several prompts a forward:
    prefill_decodings) give the bits of start()'s whole prefill, and so do the steps after."""
    model = _decoder(tmp_path, rng, family, dtype)
    V = model.config.vocab_size
    lengths = [1, 63, 64, 65, 130, 200]
    prompts = [rng.integers(3, V, (1, n)) for n in lengths]
    whole = [model.decoding(p) for p in prompts]
    want = [d.start(1, 8) for d in whole]
    chunked = [model.decoding(p) for p in prompts]
    for d in chunked:
        d.begin(1, 8)
    got = [None] * len(chunked)
    todo = list(range(len(chunked)))
    size = {i: int(rng.choice([64, 128])) for i in todo}
    while todo:
        work = [(chunked[i], min(size[i], len(chunked[i].prompt)
                                 - int(chunked[i].cache.lengths[0]))) for i in todo]
        for i, out in zip(todo, model.prefill_decodings(work)):
            if out is not None:
                got[i] = out
        todo = [i for i in todo if got[i] is None]
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    for step in range(3):
        tokens = [rng.integers(3, V, 1) for _ in prompts]
        a = [d.step(t) for d, t in zip(whole, tokens)]
        b = model.step_decodings(list(zip(chunked, tokens)))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="chunk"):
        model.prefill_decodings([(chunked[0], 1)])  # its prompt is done
