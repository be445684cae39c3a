"""text-embeddings-inference's routes through plain httpx and LibreTranslate's /translate
through libretranslatepy against real `transformer serve` processes, each answer the Python
API's; their error shapes; /metrics, /health, /info and the page's files."""
import functools
import numpy as np
import pytest

from server_helpers import CORPUS, model_dirs, reference, servers  # noqa: F401

httpx = pytest.importorskip("httpx")
# a loaded machine (the suite, other jobs): generous timeouts
post, get = (functools.partial(f, timeout=120) for f in (httpx.post, httpx.get))
WORDS = " ".join(CORPUS).replace(".", "").split()


def _texts(rng, k):
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 9)))) for _ in range(k)]


def test_embed_embed_all_tokenize_decode(servers, reference, rng):
    server, ref = servers("bert"), reference("bert")
    texts = _texts(rng, int(rng.integers(1, 5)))
    batch = ref.tokenizer(texts)
    r = post(server.url + "/embed", json={"inputs": texts})
    assert r.status_code == 200
    assert np.array_equal(np.array(r.json(), np.float32),
                          ref.embed(batch["input_ids"], batch["attention_mask"]))
    r = post(server.url + "/embed", json={"inputs": texts[0], "normalize": False})
    one = ref.tokenizer([texts[0]])
    assert np.array_equal(np.array(r.json(), np.float32),
                          ref.embed(one["input_ids"], one["attention_mask"], normalize=False))
    r = post(server.url + "/embed_all", json={"inputs": texts})
    hidden = ref(batch["input_ids"], batch["attention_mask"])
    for got, h, m in zip(r.json(), hidden, batch["attention_mask"]):
        assert np.array_equal(np.array(got, np.float32), h[:m.sum()])
    r = post(server.url + "/tokenize", json={"inputs": texts})
    for got, ids, m in zip(r.json(), batch["input_ids"], batch["attention_mask"]):
        assert [t["id"] for t in got] == ids[:m.sum()].tolist()
        assert got[0]["special"] and got[0]["start"] is None
        word = next(t for t in got if not t["special"])
        assert word["stop"] > word["start"] >= 0
    ids = batch["input_ids"][0][:batch["attention_mask"][0].sum()].tolist()
    r = post(server.url + "/decode", json={"ids": ids})
    assert r.json() == [ref.tokenizer.decode(ids)]


def test_tei_errors(servers):
    url = servers("bert").url
    long = " ".join(["a"] * 200)  # more tokens than the model's 64 positions
    r = post(url + "/embed", json={"inputs": long})
    assert r.status_code == 413 and r.json()["error_type"] == "validation"
    assert "64" in r.json()["error"]
    r = post(url + "/embed", json={"inputs": long, "truncate": True})
    assert r.status_code == 200 and len(r.json()) == 1
    r = post(url + "/embed", json={"inputs": 3})
    assert r.status_code == 422 and set(r.json()) == {"error", "error_type"}
    assert "inputs" in r.json()["error"]
    r = post(url + "/embed", json={"inputs": []})
    assert r.status_code == 400 and r.json()["error_type"] == "empty"
    r = post(url + "/embed", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = post(url + "/embed", json={"inputs": ["x"] * 600})
    assert r.status_code == 413 and "batch size" in r.json()["error"]
    r = post(url + "/decode", json={"ids": [10 ** 6]})
    assert r.status_code == 422 and r.json()["error_type"] == "tokenizer"
    assert get(url + "/health").status_code == 200


def test_translate_libretranslatepy(servers, reference, rng):
    lt = pytest.importorskip("libretranslatepy")
    server, ref = servers("marian"), reference("marian")
    text = _texts(rng, 1)[0]

    def beams(text, n):
        ids = np.array([ref.tokenizer.encode(text)])
        return [ref.tokenizer.decode(row) for row in
                ref.generate(ids, num_beams=max(4, n), num_return_sequences=n)]

    api = lt.LibreTranslateAPI(server.url)
    assert api.translate(text, "en", "de") == beams(text, 1)[0]  # a form body
    texts = _texts(rng, 3)
    r = post(server.url + "/translate", json={"q": texts + [""], "source": "en",
                                                     "target": "de", "alternatives": 2})
    assert r.status_code == 200
    want = [beams(t, 3) for t in texts]
    assert r.json()["translatedText"] == [w[0] for w in want] + [""]
    assert r.json()["alternatives"] == [w[1:] for w in want] + [["", ""]]
    r = post(server.url + "/translate", json={"q": text, "source": "fr", "target": "de"})
    assert r.status_code == 400 and "fr" in r.json()["error"]
    r = post(server.url + "/translate", json={"q": text, "source": "auto",
                                                     "target": "de", "num_beams": 2})
    ids = np.array([ref.tokenizer.encode(text)])
    assert r.json()["translatedText"] == ref.tokenizer.decode(ref.generate(ids, num_beams=2)[0])
    r = post(server.url + "/translate", json={"source": "en", "target": "de"})
    assert r.status_code == 400 and "q" in r.json()["error"]
    assert get(server.url + "/languages").json()[0] == {"code": "en", "name": "en",
                                                              "targets": ["de"]}


def test_translate_api_key(servers):
    lt = pytest.importorskip("libretranslatepy")
    server = servers("marian", "--api-key", "k3y")
    r = post(server.url + "/translate", data={"q": "hi", "source": "en", "target": "de",
                                                    "api_key": "nope"})
    assert r.status_code == 403 and "error" in r.json()
    assert isinstance(lt.LibreTranslateAPI(server.url, "k3y").translate("hi", "en", "de"), str)


def test_metrics_health_info_page(servers):
    server = servers("gpt2")
    post(server.url + "/v1/completions", json={"prompt": "the cat", "max_tokens": 3,
                                                      "temperature": 0})
    text = get(server.url + "/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["transformer_tokens_generated_total"] >= 3
    assert values["transformer_time_to_first_token_seconds_count"] >= 1
    assert values["transformer_kv_budget_tokens"] > 0
    for name in ("transformer_queue_length", "transformer_running_requests",
                 "transformer_running_rows", "transformer_kv_usage_ratio",
                 "transformer_tokens_per_second"):
        assert name in values
    assert any(k.startswith('transformer_request_duration_seconds_count{route="/v1/completions"')
               for k in values)
    assert get(server.url + "/info").json()["model_type"] == "decoder"
    page = get(server.url + "/")
    assert page.status_code == 200 and "app.js" in page.text
    assert "fetch" in get(server.url + "/app.js").text
