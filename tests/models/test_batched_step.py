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
