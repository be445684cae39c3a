"""The server under faults: a client that disconnects mid-stream frees its rows, a full queue
answers 429 at once, SIGTERM drains (running requests finish, exit status 0), and a
2,000-request soak keeps the process' memory flat."""
import asyncio
import functools
import threading
import time

import pytest

from server_helpers import Server, model_dirs, reference, servers  # noqa: F401

httpx = pytest.importorskip("httpx")
# a loaded machine (the suite, other jobs): generous timeouts
post, get = (functools.partial(f, timeout=120) for f in (httpx.post, httpx.get))


def _metrics(url):
    text = get(url + "/metrics", timeout=10).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _long_stream(url, client):
    """A streamed completion of gpt2-long that runs for a second or more (1000 tokens, no eos
    before: min_tokens), its response open: returns the response after its first event."""
    body = {"prompt": "once upon a time", "max_tokens": 1000, "min_tokens": 1000,
            "temperature": 0, "stream": True}
    request = client.build_request("POST", url + "/v1/completions", json=body)
    response = client.send(request, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(line for line in lines if line.startswith("data: "))
    return response, lines  # the iterator kept: collecting it would close the response


def test_disconnect_cancels_the_request(servers):
    url = servers("gpt2-long").url
    before = _metrics(url)["transformer_requests_cancelled_total"]
    with httpx.Client(timeout=30) as client:
        response, lines = _long_stream(url, client)
        assert _metrics(url)["transformer_running_requests"] == 1
        response.close()  # the client goes away mid-stream
    assert _wait(lambda: _metrics(url)["transformer_running_requests"] == 0, 10)
    after = _metrics(url)
    assert after["transformer_requests_cancelled_total"] == before + 1
    assert after["transformer_kv_reserved_tokens"] == 0
    r = post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 200  # the worker serves on


def test_full_queue_answers_429_at_once(servers):
    # room for one running request (a KV budget of 1100 tokens) and one waiting
    url = servers("gpt2-long", "--max-queue", "1", "--kv-budget-tokens", "1100").url
    with httpx.Client(timeout=60) as client:
        running, lines = _long_stream(url, client)
        waiting = {}

        def wait():
            waiting["r"] = post(url + "/v1/completions", timeout=60,
                                      json={"prompt": "the cat", "max_tokens": 90})
        t = threading.Thread(target=wait)
        t.start()
        assert _wait(lambda: _metrics(url)["transformer_queue_length"] == 1)
        start = time.monotonic()
        r = post(url + "/v1/completions", json={"prompt": "a dog", "max_tokens": 90})
        assert time.monotonic() - start < 2.0
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        r = post(url + "/embed", json={"inputs": "x"})  # a decoder: refused, not queued
        assert r.status_code in (400, 422)
        running.close()
        t.join(60)
    assert waiting["r"].status_code == 200
    assert _metrics(url)["transformer_requests_refused_total"] >= 1


def test_sigterm_drains_and_exits_0(model_dirs):
    # 300 tokens: about 3 s unloaded (SIGTERM lands while they run), within the deadline on a
    # loaded machine
    server = Server(model_dirs["gpt2-long"], "--shutdown-timeout", "600")
    done = {}

    def run():
        done["r"] = post(server.url + "/v1/completions", timeout=600,
                               json={"prompt": "once upon a time", "max_tokens": 300,
                                     "min_tokens": 300, "temperature": 0})
    t = threading.Thread(target=run)
    t.start()
    in_flight = ("transformer_running_requests", "transformer_queue_length")
    assert _wait(lambda: sum(_metrics(server.url)[k] for k in in_flight) == 1, 120)
    assert "r" not in done
    server.proc.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.HTTPError):  # the listening socket is closed: nothing admitted
        post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                   timeout=5)
    t.join(600)
    assert done["r"].status_code == 200
    assert done["r"].json()["usage"]["completion_tokens"] == 300
    assert server.proc.wait(600) == 0


@pytest.mark.slow
def test_soak_2000_requests_memory_flat(servers):
    """2,000 requests from 16 clients: a quarter completions (streamed and not, some cut off
    after their first event), a quarter embeddings, half /tokenize and /decode; the servers'
    resident memory after them is within 40 MiB of that after the first 400 (no leak of
    requests, threads, handles or connections), the KV pool is empty again."""
    gen, emb = servers("gpt2"), servers("bert")

    async def client(k, n, done):
        async with httpx.AsyncClient(timeout=300) as c:  # a loaded machine: slow, not hung
            for i in range(n):
                kind = (k + i) % 8
                if kind == 0 and i % 16 == 0:  # a stream cut off after its first event
                    async with c.stream("POST", gen.url + "/v1/completions", json={
                            "prompt": "a dog", "max_tokens": 30, "stream": True}) as r:
                        async for _ in r.aiter_lines():
                            break
                elif kind == 0:  # a stream read to its end
                    async with c.stream("POST", gen.url + "/v1/completions", json={
                            "prompt": "the cat", "max_tokens": 2, "stream": True}) as r:
                        async for _ in r.aiter_lines():
                            pass
                elif kind == 1:
                    r = await c.post(gen.url + "/v1/completions",
                                     json={"prompt": "the cat", "max_tokens": 1, "seed": i})
                elif kind in (2, 3):
                    r = await c.post(emb.url + "/embed", json={"inputs": ["the cat", "a dog"]})
                elif kind in (4, 5):
                    r = await c.post(emb.url + "/tokenize", json={"inputs": "the cat"})
                else:
                    r = await c.post(gen.url + "/decode", json={"ids": [5, 6, 7]})
                assert r.status_code == 200
                done.append(1)

    async def run(n_each):
        done = []
        await asyncio.gather(*(client(k, n_each, done) for k in range(16)))
        return len(done)

    start = time.monotonic()
    assert asyncio.run(run(25)) == 400
    rss0 = gen.rss_kib() + emb.rss_kib()
    assert asyncio.run(run(100)) == 1600
    assert _wait(lambda: _metrics(gen.url)["transformer_running_requests"] == 0, 10)
    rss1 = gen.rss_kib() + emb.rss_kib()
    assert rss1 - rss0 < 40 * 1024, (rss0, rss1)
    assert _metrics(gen.url)["transformer_kv_reserved_tokens"] == 0
    print(f"2000 requests in {time.monotonic() - start:.1f} s, RSS {rss0} -> {rss1} KiB")
