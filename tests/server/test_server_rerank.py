"""text-embeddings-inference's /rerank through plain httpx against a real `transformer serve`
process on a cross-encoder (a random XLM-R sequence classifier of one label, saved by HF): the
scores are sigmoid(model.classify) of the pairs bit for bit (raw_scores: the logits), best
first; the errors name the field."""
import functools

import numpy as np
import pytest

from server_helpers import Server, model_dirs, servers  # noqa: F401

httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")
post = functools.partial(httpx.post, timeout=120)

import test_classify as tc  # noqa: E402  (tests/models, on the path through server_helpers)

import transformer  # noqa: E402


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    """(server, reference model) of a one-label XLM-R cross-encoder directory."""
    path = tmp_path_factory.mktemp("reranker")
    tc._tiny_classifier(path, np.random.default_rng(7), "xlm-roberta")
    ref = transformer.load(path, threads=2)
    ref.batch_invariant = True
    server = Server(path)
    yield server, ref
    server.stop()


def test_rerank_is_the_models_scores(reranker, rng):
    server, ref = reranker
    query = " ".join(rng.choice(tc.WORDS, 3))
    texts = [" ".join(rng.choice(tc.WORDS, int(rng.integers(1, 20)))) for _ in range(6)]
    batch = ref.tokenizer([query] * len(texts), texts)
    logits = ref.classify(**batch)[:, 0].astype(np.float64)
    r = post(server.url + "/rerank", json={"query": query, "texts": texts})
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert sorted(x["index"] for x in ranks) == list(range(len(texts)))
    scores = [x["score"] for x in ranks]
    assert scores == sorted(scores, reverse=True) and "text" not in ranks[0]
    for x in ranks:
        assert x["score"] == 1 / (1 + np.exp(-logits[x["index"]]))
    r = post(server.url + "/rerank", json={"query": query, "texts": texts,
                                           "raw_scores": True, "return_text": True})
    for x in r.json():
        assert x["score"] == logits[x["index"]] and x["text"] == texts[x["index"]]


def test_rerank_errors(reranker, servers):
    server, _ = reranker
    long = " ".join(["w1"] * 100)             # more tokens than the model's 64 positions
    r = post(server.url + "/rerank", json={"query": "w2", "texts": [long]})
    assert r.status_code == 413 and "texts" in r.json()["error"]
    r = post(server.url + "/rerank", json={"query": "w2", "texts": [long], "truncate": True})
    assert r.status_code == 200 and len(r.json()) == 1
    r = post(server.url + "/rerank", json={"query": "w2", "texts": []})
    assert r.status_code == 400 and r.json()["error_type"] == "empty"
    r = post(server.url + "/rerank", json={"query": 3, "texts": ["w1"]})
    assert r.status_code == 422 and "query" in r.json()["error"]
    r = post(servers("bert").url + "/rerank", json={"query": "a", "texts": ["b"]})
    assert r.status_code == 400 and "re-ranker" in r.json()["error"]
