"""Embedding requests of many threads packed into shared batches (Engine.embed) against each
caller's own model.embed: bit-identical at int8 and float32."""

import numpy as np
import pytest

from serving_helpers import bert_models, from_threads, serving_threads
from transformer.serving import Engine


def _requests(rng, n, V=99):
    out = []
    for i in range(n):
        B, T = int(rng.integers(1, 4)), int(rng.integers(2, 20))
        ids = rng.integers(1, V, (B, T))
        lens = rng.integers(1, T + 1, B)
        mask = (np.arange(T)[None] < lens[:, None]).astype(np.int64)
        types = rng.integers(0, 2, (B, T)) * mask if i % 3 == 0 else None
        pooling = ("mean", "cls", "max")[i % 3] if i % 4 == 0 else None
        out.append((np.where(mask == 1, ids, 0), mask, types, pooling))
    return out


@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_embed_from_many_threads(dtype):
    model = bert_models()[dtype]
    requests = _requests(np.random.default_rng(12), 40)
    with Engine(model, max_batch_tokens=120) as engine:
        def submit(i):
            ids, mask, types, pooling = requests[i]
            return engine.embed(ids, mask, types, pooling=pooling)
        got = [h.result(30) for h in from_threads(submit, len(requests))]
        m = engine.metrics()
    assert m["embed_requests"] == len(requests) and m["embed_batches"] < len(requests)
    differ = []
    for (ids, mask, types, pooling), g in zip(requests, got):
        want = model.embed(ids, mask, types, pooling=pooling)
        if not np.array_equal(g, want):
            differ.append(len(ids))
    assert not differ, f"{dtype}: requests of {differ} rows differ from model.embed alone"
    assert not serving_threads()


def test_embed_errors_at_submit():
    model = bert_models()["int8"]
    with Engine(model) as engine:
        with pytest.raises(IndexError, match="input_ids"):
            engine.embed([1, 500])
        with pytest.raises(ValueError, match="pooling"):
            engine.embed([1, 5], pooling="median")
        with pytest.raises(ValueError, match="takes at most"):
            engine.embed(np.ones(200, np.int64))
        with pytest.raises(ValueError, match="no real token"):
            engine.embed([1, 5], attention_mask=[0, 0])
        np.testing.assert_array_equal(engine.embed([1, 5, 7]).result(10),
                                      model.embed(np.array([[1, 5, 7]])))


def test_encode_hidden_states_packed():
    model = bert_models()["int8"]
    requests = _requests(np.random.default_rng(13), 12)
    with Engine(model, max_batch_tokens=200) as engine:
        handles = [engine.encode(ids, mask, types) for ids, mask, types, _ in requests]
        handles.append(engine.embed(*requests[0][:3]))  # another key: its own batch
        got = [h.result(30) for h in handles]
        assert engine.metrics()["embed_batches"] < len(handles)
    for (ids, mask, types, _), g in zip(requests, got):
        np.testing.assert_array_equal(g, model(ids, mask, types))
    np.testing.assert_array_equal(got[-1], model.embed(*requests[0][:3]))
