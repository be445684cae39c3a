"""The OpenAI routes through the official `openai` client against a real `transformer serve`
process: every answer equal, bit for bit, to the Python API's (model.generate / model.embed of
the same model loaded here with batch-invariant products), also under 64 concurrent clients."""
import asyncio
import base64
import functools

import numpy as np
import pytest

from server_helpers import CHAT_TEMPLATE, model_dirs, reference, servers  # noqa: F401

openai = pytest.importorskip("openai")

WORDS = " ".join(__import__("server_helpers").CORPUS).replace(".", "").split()


def _text(rng, n_min=2, n_max=8):
    return " ".join(rng.choice(WORDS, int(rng.integers(n_min, n_max + 1))))


def _client(server, cls=None, key="none"):
    return (cls or openai.OpenAI)(base_url=server.url + "/v1", api_key=key, max_retries=0,
                                  timeout=120)


def _ref_embed(model, texts):
    batch = model.tokenizer(texts)
    return model.embed(batch["input_ids"], batch["attention_mask"])


def _ref_generate(model, prompt, n, max_tokens, temperature=0.0, top_p=1.0, seed=None):
    """(choices [(new tokens kept, their logprobs, finish_reason)], prompt ids) of
    model.generate for one prompt with n rows: what the server must answer."""
    ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    # OpenAI's sampling: temperature and top_p only (top_k=0: HF's default 50 is off)
    kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) \
        if temperature > 0 else {}
    out = model.generate(np.tile(np.array(ids, np.int64), (n, 1)), max_new_tokens=max_tokens,
                         seed=seed, return_dict_in_generate=True, **kw)
    eos = model.config.eos_token_ids
    eos = set(np.atleast_1d(eos).tolist())
    choices = []
    for row, lp in zip(out.sequences[:, len(ids):].tolist(), out.token_logprobs):
        kept = row[:next((i for i, t in enumerate(row) if t in eos), len(row))]
        choices.append((kept, lp[:len(kept)].tolist(),
                        "stop" if len(kept) < len(row) or len(kept) < max_tokens else "length"))
    return choices, ids


def _check_text(model, prompt_ids, kept, text):
    """The completion appended to the prompt is the text of prompt + new tokens."""
    tok = model.tokenizer
    assert tok.decode(prompt_ids + kept) == tok.decode(prompt_ids) + text


def test_embeddings_float_base64_dimensions(servers, reference, rng):
    server, ref = servers("bert"), reference("bert")
    client = _client(server)
    texts = [_text(rng) for _ in range(int(rng.integers(1, 6)))]
    want = _ref_embed(ref, texts)
    got = client.embeddings.create(model="bert", input=texts, encoding_format="float")
    assert [d.index for d in got.data] == list(range(len(texts)))
    assert np.array_equal(np.array([d.embedding for d in got.data], np.float32), want)
    assert got.usage.prompt_tokens == int(ref.tokenizer(texts)["attention_mask"].sum())
    raw = client.embeddings.create(model="bert", input=texts, encoding_format="base64")
    for d, w in zip(raw.data, want):
        assert np.array_equal(np.frombuffer(base64.b64decode(d.embedding), "<f4"), w)
    # the client's default: it asks for base64 and decodes it itself
    default = client.embeddings.create(model="bert", input=texts[0])
    assert np.array_equal(np.array(default.data[0].embedding, np.float32), want[0])
    d = int(rng.integers(2, want.shape[1]))
    short = client.embeddings.create(model="bert", input=texts, dimensions=d)
    e = np.array([x.embedding for x in short.data], np.float64)
    cut = want[:, :d].astype(np.float64)
    np.testing.assert_allclose(e, cut / np.linalg.norm(cut, axis=1, keepdims=True), atol=1e-6)
    ids = ref.tokenizer([texts[0]])["input_ids"][0].tolist()  # token ids as input
    by_ids = client.embeddings.create(model="bert", input=[ids], encoding_format="float")
    assert np.array_equal(np.array(by_ids.data[0].embedding, np.float32), want[0])


@pytest.mark.parametrize("sampling", [False, True])
def test_completions_match_generate(servers, reference, rng, sampling):
    server, ref = servers("gpt2"), reference("gpt2")
    client = _client(server)
    prompt, n = _text(rng), int(rng.integers(1, 4))
    kw = dict(temperature=float(rng.uniform(0.5, 1.5)), top_p=float(rng.uniform(0.5, 1.0)),
              seed=int(rng.integers(1 << 30))) if sampling else dict(temperature=0.0)
    max_tokens = int(rng.integers(4, 20))
    want, ids = _ref_generate(ref, prompt, n, max_tokens, **kw)
    got = client.completions.create(model="gpt2", prompt=prompt, max_tokens=max_tokens, n=n,
                                    logprobs=1, **kw)
    assert got.usage.prompt_tokens == len(ids)
    assert len(got.choices) == n
    for c, (kept, lps, reason) in zip(got.choices, want):
        assert c.logprobs.token_logprobs == lps  # bit for bit (float32 through JSON)
        assert c.finish_reason == reason
        _check_text(ref, ids, kept, c.text)
        assert "".join(c.logprobs.tokens) == c.text
    # streamed: the same text, delta by delta
    stream = client.completions.create(model="gpt2", prompt=prompt, max_tokens=max_tokens, n=n,
                                       stream=True, stream_options={"include_usage": True},
                                       **kw)
    texts, reasons, usage = [""] * n, [None] * n, None
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
            reasons[c.index] = c.finish_reason or reasons[c.index]
        usage = chunk.usage or usage
    assert texts == [c.text for c in got.choices]
    assert reasons == [c.finish_reason for c in got.choices]
    assert usage.completion_tokens == got.usage.completion_tokens


def test_completions_stop_and_token_prompts(servers, reference, rng):
    server, ref = servers("gpt2"), reference("gpt2")
    client = _client(server)
    for _ in range(20):  # a prompt whose continuation has text to stop in (not only eos / spaces)
        prompt = _text(rng)
        want, ids = _ref_generate(ref, prompt, 1, 24)
        full = ref.tokenizer.decode(ids + want[0][0])[len(ref.tokenizer.decode(ids)):]
        if len(full.strip()) >= 2:
            break
    stop = full.strip()[len(full.strip()) // 2:][:2]  # a string that occurs in the text
    got = client.completions.create(model="gpt2", prompt=[ids], max_tokens=24, temperature=0,
                                    stop=[stop])
    text = got.choices[0].text
    assert stop not in text and full.startswith(text), (full, stop, text, ids, want[0][0])
    assert got.choices[0].finish_reason == "stop"
    # the longest prefix of whole tokens before the stop string
    assert len(text) + max(len(ref.tokenizer.decode([t])) for t in want[0][0]) + 1 >= \
        full.find(stop)
    # several prompts: one engine request each, each its own answer
    prompts = [_text(rng) for _ in range(3)]
    many = client.completions.create(model="gpt2", prompt=prompts, max_tokens=6, temperature=0,
                                     echo=True)
    for p, c in zip(prompts, many.choices):
        choices, pids = _ref_generate(ref, p, 1, 6)
        assert c.text.startswith(p)
        _check_text(ref, pids, choices[0][0], c.text[len(p):])


def test_chat_matches_hf_template(servers, reference, model_dirs, rng):
    transformers = pytest.importorskip("transformers")
    server, ref = servers("gpt2"), reference("gpt2")
    client = _client(server)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(model_dirs["gpt2"] / "tokenizer.json"), chat_template=CHAT_TEMPLATE)
    messages = [{"role": "system", "content": _text(rng)},
                {"role": "user", "content": _text(rng)}]
    prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = hf.encode(prompt, add_special_tokens=False)
    want, _ = _ref_generate(ref, ids, 1, 10)
    got = client.chat.completions.create(model="gpt2", messages=messages, max_tokens=10,
                                         temperature=0, logprobs=True)
    c = got.choices[0]
    assert c.message.role == "assistant" and got.usage.prompt_tokens == len(ids)
    _check_text(ref, ids, want[0][0], c.message.content)
    assert [t.logprob for t in c.logprobs.content] == want[0][1]
    stream = client.chat.completions.create(model="gpt2", messages=messages, max_tokens=10,
                                            temperature=0, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == \
        c.message.content
    with pytest.raises(openai.BadRequestError) as e:  # the template's raise_exception
        client.chat.completions.create(model="gpt2", messages=[{"role": "tool", "content": "x",
                                                                "tool_call_id": "1"}])
    assert e.value.body["param"] == "messages"


def test_models_and_errors(servers):
    server = servers("gpt2")
    client = _client(server)
    assert [m.id for m in client.models.list()] == ["gpt2"]
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gpt2", prompt="x", max_tokens=2,
                                  extra_body={"frobnicate": 1})
    assert e.value.body["param"] == "frobnicate"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gpt2", prompt="x", max_tokens=2,
                                  extra_body={"temperature": "hot"})
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:  # more tokens than the model's positions
        client.completions.create(model="gpt2", prompt="a b " * 40, max_tokens=100)
    assert e.value.body["param"] in ("prompt", "max_tokens")
    with pytest.raises(openai.BadRequestError) as e:  # an encoder route on a decoder
        client.embeddings.create(model="gpt2", input="x")
    assert e.value.body["param"] == "model"
    import httpx
    post, get = (functools.partial(f, timeout=120) for f in (httpx.post, httpx.get))
    r = post(server.url + "/v1/completions", content=b"{not json",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = post(server.url + "/v1/completions", json=[1, 2])
    assert r.status_code == 400
    r = post(server.url + "/v1/completions", content=b"x" * (9 << 20))
    assert r.status_code == 413 and "error" in r.json()
    assert get(server.url + "/health").json() == {"status": "ok"}  # the worker lives


def test_api_key(servers):
    server = servers("gpt2", "--api-key", "sesame")
    with pytest.raises(openai.AuthenticationError) as e:
        _client(server, key="wrong").completions.create(model="gpt2", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "invalid_api_key"
    out = _client(server, key="sesame").completions.create(model="gpt2", prompt="x",
                                                           max_tokens=2, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length")


def test_64_concurrent_clients(servers, reference, rng):
    """64 clients at once (greedy and seeded sampling, streamed and not, embeddings too):
    each answer the Python API's for its input alone."""
    gen, emb = servers("gpt2"), servers("bert")
    ref, ref_bert = reference("gpt2"), reference("bert")
    jobs = []
    for i in range(64):
        kind = ("embed", "complete", "stream")[i % 3]
        jobs.append((kind, _text(rng), int(rng.integers(2, 12)), float(rng.uniform(0.5, 1.2))
                     if i % 2 else 0.0, int(rng.integers(1 << 30))))

    async def one(kind, text, max_tokens, temperature, seed):
        if kind == "embed":
            client = _client(emb, openai.AsyncOpenAI)
            out = await client.embeddings.create(model="bert", input=text,
                                                 encoding_format="float")
            return out.data[0].embedding
        client = _client(gen, openai.AsyncOpenAI)
        kw = dict(model="gpt2", prompt=text, max_tokens=max_tokens, temperature=temperature,
                  seed=seed)
        if kind == "complete":
            return (await client.completions.create(**kw)).choices[0].text
        text = ""
        async for chunk in await client.completions.create(stream=True, **kw):
            text += "".join(c.text for c in chunk.choices)
        return text

    async def main():
        return await asyncio.gather(*(one(*job) for job in jobs))

    answers = asyncio.run(main())
    for (kind, text, max_tokens, temperature, seed), got in zip(jobs, answers):
        if kind == "embed":
            assert np.array_equal(np.array(got, np.float32), _ref_embed(ref_bert, [text])[0])
        else:
            choices, ids = _ref_generate(ref, text, 1, max_tokens, temperature, seed=seed)
            _check_text(ref, ids, choices[0][0], got)


@pytest.mark.slow
def test_stories260k_completions(shared_models, rng):
    """A real decoder (llama2.c's stories260K and its tokenizer): greedy and seeded sampling
    through the openai client, the text of model.generate's tokens after the prompt."""
    import transformer
    from server_helpers import Server

    path = shared_models / "stories260K" / "stories260K.bin"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ref = transformer.load(path, threads=2)
    ref.batch_invariant = True
    server = Server(path)
    try:
        client = _client(server)
        for kw in (dict(temperature=0.0), dict(temperature=0.8, seed=int(rng.integers(1000)))):
            choices, ids = _ref_generate(ref, "Once upon a time", 1, 40, **kw)
            got = client.completions.create(model="stories260K", prompt="Once upon a time",
                                            max_tokens=40, logprobs=0, **kw)
            c = got.choices[0]
            _check_text(ref, ids, choices[0][0], c.text)
            assert c.logprobs.token_logprobs == choices[0][1]
    finally:
        assert server.stop() == 0
