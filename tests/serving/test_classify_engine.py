"""Classify requests (Engine.classify, the cross-encoder scores behind /rerank) of many threads
packed into shared batches, among embedding requests, against each caller's own model.classify:
bit-identical on every CPU dtype."""

import numpy as np
import pytest

from serving_helpers import bert_models, from_threads, serving_threads
from transformer.serving import Engine

import test_classify as tc  # tests/models, on the path through serving_helpers


@pytest.mark.parametrize("dtype", ["float32", "int8", "bfloat16"])
@pytest.mark.parametrize("kind", ["bert", "xlm-roberta"])
def test_classify_from_many_threads(tmp_path, dtype, kind):
    import transformer

    rng = np.random.default_rng(31 + len(kind))
    tc._tiny_classifier(tmp_path, rng, kind)
    model = transformer.load(tmp_path, dtype=dtype, threads=2)
    requests = []
    for i in range(30):
        ids, mask, types = tc._ragged(rng, kind, int(rng.integers(1, 4)), int(rng.integers(2, 20)))
        requests.append((ids, mask, types, i % 5 == 4))  # every fifth an embedding request
    with Engine(model, max_batch_tokens=100) as engine:
        def submit(i):
            ids, mask, types, embed = requests[i]
            return (engine.embed if embed else engine.classify)(ids, mask, types)
        got = [h.result(30) for h in from_threads(submit, len(requests))]
        m = engine.metrics()
    assert m["embed_requests"] == len(requests) and m["embed_batches"] < len(requests)
    differ = []
    for i, ((ids, mask, types, embed), g) in enumerate(zip(requests, got)):
        want = (model.embed if embed else model.classify)(ids, mask, types)
        assert g.shape == want.shape == (len(ids), model.config.d_model if embed else
                                         len(model.labels))
        if not np.array_equal(g, want):
            differ.append(i)
    assert not differ, f"{kind} {dtype}: requests {differ} differ from the model's alone"
    assert not serving_threads()


def test_classify_errors_at_submit():
    with Engine(bert_models()["int8"]) as engine:  # a plain encoder: no classification head
        with pytest.raises(TypeError, match="sequence classifier"):
            engine.classify([[1, 5]])
