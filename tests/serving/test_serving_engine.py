"""The serving engine (transformer.serving.Engine) against each request run alone with
model.generate: many threads submitting a seeded mix (GPT-2 float32, Llama int8, Marian float32,
BART int8; greedy, sampling with seeds, beam search with num_return_sequences, processors,
prompts of different lengths, cancellations mid-stream) give bit-identical ids and scores,
nothing lost or duplicated, the KV pool empty at the end and no thread left; a full queue, the
errors at submit, shutdown, asyncio, stop strings."""
import asyncio
import threading
import time

import numpy as np
import pytest

from serving_helpers import FAMILIES, bert_models, generation_model, serving_threads
from transformer.generation import GenerateOutput
from transformer.serving import Engine, EngineClosed, Handle, QueueFull, RequestCancelled


class _Models:
    def __getitem__(self, family):
        return generation_model(family)


@pytest.fixture
def serving_models():
    """{family: model}, each built on first use."""
    return _Models()


def assert_same(got, want):
    """generate's outputs equal bit for bit: ids, (ids, scores) or a GenerateOutput."""
    if isinstance(want, GenerateOutput):
        assert isinstance(got, GenerateOutput)
        for name in ("sequences", "scores", "sequences_scores", "token_logprobs"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert (got.attention is None) == (want.attention is None)
        for g, w in zip(got.attention or (), want.attention or ()):
            np.testing.assert_array_equal(g, w)
    elif isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    else:
        np.testing.assert_array_equal(got, want)


def _vocab(model):
    cfg = model.config
    return getattr(cfg, "src_vocab_size", None) or cfg.vocab_size


def _mix(model, rng, n):
    """n requests (input_ids (T,), generate kwargs, cancel?) of a seeded mix."""
    V = _vocab(model)
    out = []
    for i in range(n):
        ids = rng.integers(4, V, int(rng.integers(1, 12)))
        kw = dict(max_new_tokens=int(rng.integers(2, 12)))
        mode = i % 5
        if mode == 0:
            kw.update(return_scores=True)
        elif mode == 1:
            kw.update(do_sample=True, seed=int(rng.integers(1 << 30)), top_k=20,
                      num_return_sequences=int(rng.integers(1, 3)), return_dict_in_generate=True)
        elif mode == 2:
            kw.update(num_beams=3, num_return_sequences=2, return_dict_in_generate=True)
            if model.kind == "seq2seq" and i % 2:
                kw.update(return_attention=True)
        elif mode == 3:
            kw.update(repetition_penalty=1.3, no_repeat_ngram_size=2, return_scores=True)
            if model.kind == "seq2seq":
                kw.update(decoder_input_ids=np.array([[model.config.decoder_start_token_id,
                                                       int(rng.integers(4, V))]]))
        else:  # consumed for a few tokens, then abandoned (or cancelled from outside)
            kw.update(max_new_tokens=30, eos_token_id=[])
        out.append((ids, kw, mode == 4))
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_many_threads_bit_identical_to_alone(serving_models, family):
    model = serving_models[family]
    requests = _mix(model, np.random.default_rng(len(family)), 20)
    want = [None if cancel else model.generate(ids[None], **kw) for ids, kw, cancel in requests]
    got, errors = [None] * len(requests), []
    engine = Engine(model, kv_budget_tokens=160, max_prefill_tokens=64)  # the least: 1 tile

    def client(k):
        try:
            for i in range(k, len(requests), 4):
                ids, kw, cancel = requests[i]
                handle = engine.submit(ids, **kw)
                if cancel:
                    if i % 2:  # abandon the iteration after two tokens
                        for j, _ in enumerate(handle):
                            if j == 1:
                                break
                    else:
                        stream = iter(handle)
                        next(stream)
                        assert handle.cancel()
                    with pytest.raises(RequestCancelled):
                        handle.result(10)
                    got[i] = "cancelled"
                else:
                    got[i] = handle.result(30)
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g == "cancelled"
        else:
            assert_same(g, w)
    m = engine.metrics()
    engine.shutdown(timeout=10)
    n_cancel = sum(c for _, _, c in requests)
    assert m["requests_finished"] == len(requests) - n_cancel
    assert m["requests_cancelled"] == n_cancel
    assert m["kv_reserved_tokens"] == 0 and m["running_requests"] == 0
    assert m["queue_length"] == 0 and m["time_to_first_token_seconds"]["count"] >= 16
    assert not serving_threads()


def test_full_queue_and_kv_admission(serving_models):
    model = serving_models["gpt2"]
    rng = np.random.default_rng(5)
    ids = rng.integers(3, 90, 6)
    big = dict(max_new_tokens=40, eos_token_id=[])
    engine = Engine(model, max_queue=2, kv_budget_tokens=46)  # one big request fills it
    try:
        a = engine.submit(ids, **big)
        stream = iter(a)  # kept: a collected iterator cancels its request
        next(stream)  # running
        small = [engine.submit(ids[:k], max_new_tokens=3) for k in (2, 3)]
        with pytest.raises(QueueFull, match="max_queue=2"):
            engine.submit(ids, max_new_tokens=3)
        m = engine.metrics()
        assert (m["queue_length"], m["requests_refused"], m["kv_reserved_tokens"]) == (2, 1, 46)
        assert a.cancel() and not a.cancel()
        with pytest.raises(RequestCancelled):
            a.result(5)
        for h, k in zip(small, (2, 3)):
            assert_same(h.result(10), model.generate(ids[None, :k], max_new_tokens=3))
        assert engine.metrics()["kv_reserved_tokens"] == 0
        with pytest.raises(ValueError, match="kv_budget_tokens=46"):
            engine.submit(ids, max_new_tokens=41)
    finally:
        engine.shutdown()
    assert not serving_threads()


def test_errors_at_submit(serving_models):
    model = serving_models["gpt2"]
    with Engine(model) as engine:
        with pytest.raises(ValueError, match="temperature"):
            engine.submit([5, 6], do_sample=True, temperature=-1.0)
        with pytest.raises(TypeError, match="unexpected keyword"):
            engine.submit([5, 6], no_such_option=1)
        with pytest.raises(ValueError, match="max_position_embeddings=64"):
            engine.submit([5, 6], max_new_tokens=63)
        with pytest.raises(IndexError, match="input_ids"):
            engine.submit([5, 600])
        with pytest.raises(ValueError, match="stop_strings needs the model's tokenizer"):
            engine.submit([5, 6], stop_strings="x")
        with pytest.raises(TypeError, match="embed needs an encoder"):
            engine.embed([5, 6])
        assert engine.metrics()["requests_refused"] == 0
    with pytest.raises(EngineClosed):
        engine.submit([5, 6])
    with Engine(bert_models()["int8"]) as engine, pytest.raises(TypeError, match="embed"):
        engine.submit([5, 6])
    assert not serving_threads()


def test_shutdown_cancels_what_does_not_finish(serving_models):
    model = serving_models["marian"]
    rng = np.random.default_rng(9)
    engine = Engine(model, kv_budget_tokens=200)
    long = [engine.submit(rng.integers(4, 60, 5), max_new_tokens=60, eos_token_id=[])
            for _ in range(6)]  # 4 run, 2 wait
    short = engine.submit(rng.integers(4, 60, 5), max_new_tokens=2)
    stream = iter(long[0])
    next(stream)
    started = time.monotonic()
    engine.shutdown(timeout=0.05)
    assert time.monotonic() - started < 10
    assert not serving_threads()
    for h in long + [short]:
        assert h.done()
        try:
            h.result(0)
        except RequestCancelled:
            pass
    assert any(isinstance(h._future.exception(), RequestCancelled) for h in long)
    assert engine.metrics()["kv_reserved_tokens"] == 0
    with pytest.raises(EngineClosed):
        engine.submit([5])


def test_asyncio_stream_and_result(serving_models):
    model = serving_models["llama"]
    rng = np.random.default_rng(11)
    prompts = [rng.integers(3, 90, int(rng.integers(2, 9))) for _ in range(6)]

    async def main(engine):
        async def one(i):
            handle = engine.submit(prompts[i], max_new_tokens=8, do_sample=bool(i % 2), seed=i)
            columns = [c async for c in handle]
            return columns, await handle.aresult()
        return await asyncio.gather(*[one(i) for i in range(len(prompts))])

    with Engine(model, kv_budget_tokens=60) as engine:
        results = asyncio.run(main(engine))
    for i, (columns, out) in enumerate(results):
        want = model.generate(prompts[i][None], max_new_tokens=8, do_sample=bool(i % 2), seed=i)
        assert_same(out, want)
        np.testing.assert_array_equal(np.stack(columns, 1), want[:, len(prompts[i]):])
    assert not serving_threads()


class _Letters:
    """A stand-in tokenizer: token t decodes to one letter, chr(97 + t % 26)."""

    def decode(self, ids):
        return "".join(chr(97 + int(t) % 26) for t in ids)


def _cut(out, T, keep, pad):
    """The reference: generate's GenerateOutput cut after `keep` new tokens a row."""
    width = int(max(keep))
    seqs = out.sequences[:, :T + width].copy()
    seqs[np.arange(T + width)[None] >= T + np.array(keep)[:, None]] = pad
    lp = out.token_logprobs[:, :width].copy()
    lp[np.arange(width)[None] >= np.array(keep)[:, None]] = 0
    return seqs, lp, lp.sum(1, dtype=np.float32)


def test_stop_strings(serving_models, monkeypatch):
    model = serving_models["gpt2"]
    monkeypatch.setattr(model, "tokenizer", _Letters(), raising=False)
    ids = np.random.default_rng(3).integers(3, 90, 5)
    kw = dict(max_new_tokens=20, eos_token_id=[], pad_token_id=0, do_sample=True, seed=7,
              num_return_sequences=3, return_dict_in_generate=True)
    ref = model.generate(ids[None], **kw)
    texts = [_Letters().decode(r[5:]) for r in ref.sequences]
    stop = texts[0][4:6]  # occurs in row 0; maybe in the others
    keep = [t.find(stop) if stop in t else 20 for t in texts]
    pushed, push = [], Handle._push
    monkeypatch.setattr(Handle, "_push", lambda self, c: (pushed.append(c), push(self, c)))
    with Engine(model) as engine:
        with pytest.raises(ValueError, match="beam"):
            engine.submit(ids, stop_strings=stop, num_beams=2)
        handle = engine.submit(ids, stop_strings=[stop, "@@"], **kw)
        out = handle.result(20)
        columns = list(handle)
    seqs, lp, scores = _cut(ref, 5, keep, 0)
    np.testing.assert_array_equal(out.sequences, seqs)
    np.testing.assert_array_equal(out.token_logprobs, lp)
    np.testing.assert_array_equal(out.scores, scores)
    np.testing.assert_array_equal(np.stack(columns, 1), seqs[:, 5:])
    assert pushed  # streamed as they settled: a prefix of the result's columns
    np.testing.assert_array_equal(np.stack(pushed, 1), seqs[:, 5:5 + len(pushed)])
    assert stop not in _Letters().decode(out.sequences[0, 5:5 + keep[0]])


def test_stop_strings_end_the_request_early(serving_models, monkeypatch):
    model = serving_models["llama"]
    monkeypatch.setattr(model, "tokenizer", _Letters(), raising=False)
    ids = np.random.default_rng(4).integers(3, 90, 4)
    ref = model.generate(ids[None], max_new_tokens=30, eos_token_id=[], pad_token_id=0,
                         return_dict_in_generate=True)
    stop = _Letters().decode(ref.sequences[0, 4 + 3:4 + 5])  # new tokens 3 and 4
    keep = [_Letters().decode(ref.sequences[0, 4:]).find(stop)]
    with Engine(model) as engine:
        out = engine.submit(ids, stop_strings=stop, max_new_tokens=30, eos_token_id=[],
                            pad_token_id=0, return_scores=True).result(20)
        assert engine.metrics()["tokens_generated"] <= keep[0] + 2 + 1
    seqs, _, scores = _cut(ref, 4, keep, 0)
    assert_same(out, (seqs, scores))


def test_one_dimensional_source_and_prefix(serving_models):
    model = serving_models["bart"]
    src = np.array([7, 9, 11, 13])
    prefix = np.array([model.config.decoder_start_token_id, 20, 21])
    with Engine(model) as engine:
        got = engine.submit(src, decoder_input_ids=prefix, max_new_tokens=5,
                            return_scores=True).result(20)
    assert_same(got, model.generate(src[None], decoder_input_ids=prefix[None], max_new_tokens=5,
                                    return_scores=True))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_long_prompts_prefilled_in_chunks(tmp_path, family):
    """Prompts of several 64-token tiles are prefilled a tile or a few per iteration
    (max_prefill_tokens=128) between the decode steps of the requests already running; every
    request still gets model.generate's tokens and scores alone, bit for bit."""
    import test_decoder as dec
    rng = np.random.default_rng(31 + len(family))
    cfg = dict(dec.GPT2_CONFIGS[0], n_positions=512) if family == "gpt2" else \
        dict(dec.LLAMA_CONFIGS[0], max_position_embeddings=512)
    _, model = dec._save(tmp_path, rng, family, cfg)
    V = model.config.vocab_size
    requests = [(rng.integers(3, V, int(n)), dict(max_new_tokens=int(rng.integers(4, 24)),
                                                  eos_token_id=[], return_scores=True))
                for n in rng.integers(1, 330, 10)]
    with Engine(model, max_prefill_tokens=128) as engine:
        handles = []
        for ids, kw in requests:
            handles.append(engine.submit(ids, **kw))
            time.sleep(0.01)  # arrivals while others run
        got = [h.result(timeout=120) for h in handles]
        steps = engine.metrics()["steps"]
    for (ids, kw), (seq, scores) in zip(requests, got):
        want_seq, want_scores = model.generate(ids[None], **kw)
        np.testing.assert_array_equal(seq, want_seq)
        np.testing.assert_array_equal(scores, want_scores)
    assert steps > 0


def test_sources_admitted_together_are_encoded_together(serving_models, monkeypatch):
    """Encoder-decoder requests admitted in one iteration have their sources encoded as one
    batch (split back per request), and each still translates as model.generate alone."""
    model = generation_model("marian")
    rng = np.random.default_rng(8)
    V = _vocab(model)
    sources = [rng.integers(4, V, int(n)) for n in rng.integers(2, 12, 6)]
    want = [model.generate(s[None], max_new_tokens=6, num_beams=2) for s in sources]
    batches, go = [], threading.Event()
    encode = model.encode

    def spy(input_ids, attention_mask=None):  # the first encode waits for the others' submits
        batches.append(len(input_ids))
        go.wait(30)
        return encode(input_ids, attention_mask)

    monkeypatch.setattr(model, "encode", spy)
    with Engine(model) as engine:
        handles = [engine.submit(s, max_new_tokens=6, num_beams=2) for s in sources]
        go.set()  # the waiting ones are admitted together, and their constructions gathered
        got = [h.result(timeout=60) for h in handles]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert max(batches) > 1, batches


class _Pieces:
    """A SentencePiece-like decode: "▁" is a space, and a text decoded alone loses its leading
    one (as SentencePiece and Metaspace decoders do)."""
    PIECES = {1: "▁a", 2: "▁to", 3: "x"}

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids).replace("▁", " ").lstrip(" ")


def test_stop_strings_match_the_text_a_client_is_sent():
    """A row's text is its continuation of the prompt (with the leading space a token takes
    after it), so " t" in the first new token " to" stops the row at once: nothing kept (the
    text decoded alone, "to to", would first hold " t" one token later)."""
    from transformer.serving.stops import StopStrings, continuation
    assert continuation(_Pieces().decode, [1], [2, 2]) == " to to"
    assert continuation(_Pieces().decode, [], [2, 2]) == "to to"
    for tails, keep in (([[1]], 0), (None, 1)):
        stops = StopStrings((" t",), _Pieces(), 1, eos_token_id=[], tails=tails)
        for _ in range(3):
            stops.observe(np.array([2]))
        assert stops.keep == [keep] and stops.all_stopped
