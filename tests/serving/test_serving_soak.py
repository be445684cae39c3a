"""A short soak of the serving engine: thousands of tiny requests from many threads, every
result bit-identical to model.generate alone, the Python heap flat (tracemalloc) and nothing
left behind (KV pool, threads)."""
import gc
import threading
import time
import tracemalloc

import numpy as np

from serving_helpers import generation_model, serving_threads
from transformer.serving import Engine


def test_soak_thousands_of_tiny_requests():
    model = generation_model("gpt2")
    rng = np.random.default_rng(2000)
    prompts = [rng.integers(3, 97, int(rng.integers(1, 6))) for _ in range(16)]
    want = [model.generate(p[None], max_new_tokens=2) for p in prompts]
    n_clients, per_client = 16, 25  # 400 requests a wave
    bad, heap = [], {}

    def client(k):
        for i in range(per_client):
            j = (k + i) % len(prompts)
            out = engine.submit(prompts[j], max_new_tokens=2).result(60)
            if not np.array_equal(out, want[j]):
                bad.append(j)

    def wave():
        threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    started = time.monotonic()
    with Engine(model, kv_budget_tokens=2000) as engine:
        wave()  # warm-up: caches, the allocator
        gc.collect()
        tracemalloc.start()
        for k in range(5):  # 2,000 more
            wave()
            if k == 0:
                gc.collect()
                heap["before"] = tracemalloc.get_traced_memory()[0]
        gc.collect()
        heap["after"] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        m = engine.metrics()
    elapsed = time.monotonic() - started
    assert not bad
    assert m["requests_finished"] == 6 * n_clients * per_client
    assert m["kv_reserved_tokens"] == 0 and m["running_requests"] == 0
    assert heap["after"] - heap["before"] < 64 << 10, heap  # flat: < 64 KiB over 1,600
    assert not serving_threads()
    print(f"2,400 requests in {elapsed:.1f} s, heap {heap}")
