"""Tiny random models for the serving tests, built by the builders of tests/models (GPT-2,
Llama, Marian, BART, BERT directories written offline with transformers), once a process (a
temporary directory removed at exit), float32 and int8."""
import atexit
import functools
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))

import transformer  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")

import test_bert as bert  # noqa: E402
import test_decoder as dec  # noqa: E402
import test_seq2seq as s2s  # noqa: E402

# family -> (builder, dtype); each model saved once, loaded with 2 threads
FAMILIES = {"gpt2": "float32", "llama": "int8", "marian": "float32", "bart": "int8"}


def _build(family, root):
    rng = np.random.default_rng(4321 + len(family))
    path = root / family
    if family in ("gpt2", "llama"):
        cfg = dec.GPT2_CONFIGS[0] if family == "gpt2" else dec.LLAMA_CONFIGS[0]
        dec._save(path, rng, family, cfg)
    else:
        s2s._save(path, rng, family)
    return transformer.load(path, threads=2, dtype=FAMILIES[family])


@functools.cache
def _root():
    root = pathlib.Path(tempfile.mkdtemp(prefix="serving-models-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def generation_model(family):
    """The model of `family` (FAMILIES: gpt2 float32, llama int8, marian float32, bart int8),
    built on first use."""
    return _build(family, _root())


@functools.cache
def bert_models():
    """{"float32": model, "int8": model}: one tiny random BERT directory loaded both ways."""
    path = _root() / "bert"
    bert._tiny_hf(path, np.random.default_rng(77))
    return {d: transformer.load(path, threads=2, dtype=d) for d in ("float32", "int8")}


def serving_threads():
    """The engine's threads alive now (scheduler and request threads)."""
    import threading
    return [t for t in threading.enumerate() if t.name.startswith("transformer-serving")]


def from_threads(submit, n, clients=4):
    """submit(i) for i in range(n) from `clients` threads (thread k takes k, k + clients, ...);
    returns the n handles in order, once every thread has joined (60 s each)."""
    import threading
    got = [None] * n

    def client(k):
        for i in range(k, n, clients):
            got[i] = submit(i)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got
