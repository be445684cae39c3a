"""Kept from issue 13's probe: Python threads give bit-identical results; resident memory stays
flat over many calls (marked slow, still run by `make test`); nothing in the package unpickles."""
import pathlib
import re
import sys
import threading

import numpy as np
import pytest

import transformer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "models"))
from test_bad_input import tiny_dir  # noqa: E402,F401

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _rss():
    """Resident set size in bytes (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        return None


def test_python_threads_bit_identical(stories):
    ids = np.array([[1, 400, 32, 7], [1, 9, 81, 300]])
    want = stories(ids)
    gen = stories.generate(ids, max_new_tokens=8)
    results = [None] * 4

    def work(i):
        results[i] = (stories(ids), stories.generate(ids, max_new_tokens=8))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for logits, tokens in results:
        np.testing.assert_array_equal(logits, want)
        np.testing.assert_array_equal(tokens, gen)


@pytest.mark.slow
def test_soak_resident_memory_is_flat(stories, tiny_dir):
    if _rss() is None:
        pytest.skip("no /proc/self/statm")
    encoder = transformer.load(tiny_dir, threads=1)
    ids = np.array([[1, 2, 3, 4]])
    prompt = np.array([[1, 400, 32]])
    for _ in range(200):  # warm up caches and allocator pools
        encoder.embed(ids)
        stories.generate(prompt, max_new_tokens=4)
    before = _rss()
    for i in range(5000):
        encoder.embed(ids)
        if i % 10 == 0:
            stories.generate(prompt, max_new_tokens=4)
    grown = _rss() - before
    assert grown < 0.05 * before, f"resident memory grew {grown} bytes from {before}"


def test_no_pickle_anywhere():
    # np.load is safe as called (allow_pickle defaults to False: object arrays are refused)
    pattern = re.compile(r"\bpickle\b|cPickle|allow_pickle\s*=\s*True|torch\.load")
    hits = []
    for path in (ROOT / "transformer").rglob("*.py"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if pattern.search(code) and "never" not in code:
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "pickle-capable loading in the package:\n" + "\n".join(hits)
