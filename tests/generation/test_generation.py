"""Generation options against Hugging Face generate (tiny random GPT-2, Llama, Marian, BART built
offline): each logits processor and some combinations, greedy and beam 4, token-identical;
decoder prefixes of different lengths per row; generation_config.json defaults; the validated
GenerationConfig; sampling several sequences per prompt; scores accumulated by the search."""
import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))

import transformer  # noqa: E402
from transformer.generation import GenerationConfig, log_softmax  # noqa: E402

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")

import test_decoder as dec  # noqa: E402
import test_seq2seq as s2s  # noqa: E402

# options of HF generate, each alone and some together; eos is filled in per model
OPTIONS = [dict(repetition_penalty=1.4), dict(repetition_penalty=0.7),
           dict(no_repeat_ngram_size=2), dict(min_new_tokens=6),
           dict(bad_words_ids="bad"), dict(suppress_tokens="suppress"),
           dict(begin_suppress_tokens="begin"),
           dict(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=3,
                bad_words_ids="bad", suppress_tokens="suppress")]


def _fill(kw, frequent):
    """Concrete token lists for the placeholders of OPTIONS from the tokens decoding produces."""
    a, b, c = frequent[:3]
    lists = {"bad": [[a], [b, c], [c, b, a]], "suppress": [b], "begin": [a, c]}
    return {k: lists[v] if isinstance(v, str) else v for k, v in kw.items()}


def _frequent(out, skip):
    """The most frequent new tokens of `out` (after `skip` columns), most frequent first."""
    counts = np.bincount(out[:, skip:].ravel(), minlength=4)
    return [int(t) for t in np.argsort(-counts, kind="stable")[:4]]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def decoder(request, tmp_path_factory):
    rng = np.random.default_rng(1234 + len(request.param))
    cfg = dec.GPT2_CONFIGS[0] if request.param == "gpt2" else dec.LLAMA_CONFIGS[0]
    model, ours = dec._save(tmp_path_factory.mktemp(request.param), rng, request.param, cfg)
    ids, mask = dec._prompts(rng, 3, 6, cfg["vocab_size"])
    return model, ours, ids, mask


@pytest.fixture(scope="module", params=["marian", "bart"])
def seq2seq(request, tmp_path_factory):
    rng = np.random.default_rng(99 + len(request.param))
    model, ours = s2s._save(tmp_path_factory.mktemp(request.param), rng, request.param)
    src, mask = s2s._source(rng, 3, 7)
    return model, ours, src, mask


@pytest.mark.parametrize("num_beams", [1, 4])
def test_processors_match_hf_decoder(decoder, num_beams):
    model, ours, ids, mask = decoder
    free = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=[])
    top = _frequent(free, ids.shape[1])
    eos = top[3]  # a token decoding produces: stopping and min_new_tokens are exercised
    for kw in OPTIONS:
        kw = _fill(kw, top)
        want = dec._hf_generate(model, ids, mask, max_new_tokens=12, do_sample=False,
                                num_beams=num_beams, eos_token_id=eos, **kw)
        got = ours.generate(ids, mask, max_new_tokens=12, num_beams=num_beams, eos_token_id=eos,
                            pad_token_id=0, **kw)
        np.testing.assert_array_equal(got, want, err_msg=str(kw))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_processors_match_hf_seq2seq(seq2seq, num_beams):
    model, ours, src, mask = seq2seq
    free = ours.generate(src, mask, max_new_tokens=10, eos_token_id=[], forced_eos_token_id=None)
    top = _frequent(free, 1)
    eos = top[3]
    for kw in OPTIONS + [dict(forced_bos_token_id="begin"), dict(min_length=7)]:
        kw = _fill(kw, top)
        if "forced_bos_token_id" in kw:
            kw["forced_bos_token_id"] = kw["forced_bos_token_id"][0]
        common = dict(max_new_tokens=10, num_beams=num_beams, eos_token_id=eos,
                      forced_eos_token_id=eos, **kw)
        want = s2s._hf_generate(model, src, mask, do_sample=False, **common)
        got = ours.generate(src, mask, **common)
        np.testing.assert_array_equal(got, want, err_msg=str(kw))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_decoder_prefix_of_different_lengths(seq2seq, num_beams):
    """decoder_input_ids rows of 1, 3 and 2 real tokens, left padded: each row gives the tokens
    it gives alone (positions counted from its first real token, as CTranslate2), and alone
    the tokens of HF generate (whose positions are the padded columns, so that HF's own
    batched rows differ from its rows alone)."""
    model, ours, src, mask = seq2seq
    rng = np.random.default_rng(5)
    start, pad = ours.config.decoder_start_token_id, ours.config.pad_token_id
    prefix = np.full((3, 3), pad)
    dmask = np.zeros((3, 3), np.int64)
    for b, n in enumerate([1, 3, 2]):
        prefix[b, 3 - n:] = [start] + list(rng.integers(4, 67, n - 1))
        dmask[b, 3 - n:] = 1
    for kw in (dict(), dict(no_repeat_ngram_size=2, repetition_penalty=1.2)):
        common = dict(max_new_tokens=8, num_beams=num_beams, eos_token_id=2, pad_token_id=pad,
                      **kw)
        got = ours.generate(src, mask, decoder_input_ids=prefix, decoder_attention_mask=dmask,
                            **common)
        for b in range(3):
            s, p = src[b:b + 1, mask[b] == 1], prefix[b:b + 1, dmask[b] == 1]
            want = s2s._hf_generate(model, s, np.ones_like(s), do_sample=False,
                                    decoder_input_ids=torch.tensor(p), **common)
            alone = ours.generate(s, decoder_input_ids=p, **common)
            np.testing.assert_array_equal(alone, want, err_msg=str(kw))
            n = alone.shape[1]
            np.testing.assert_array_equal(got[b, 3 - p.shape[1]:3 - p.shape[1] + n], alone[0],
                                          err_msg=str(kw))
            assert (got[b, 3 - p.shape[1] + n:] == pad).all()
    # a prefix without the start token gets it prepended (HF), and the tokens of the prefix
    words = rng.integers(4, 67, (3, 2))
    got = ours.generate(src, mask, decoder_input_ids=words, max_new_tokens=4, eos_token_id=[])
    assert got.shape == (3, 7) and (got[:, 0] == start).all() and (got[:, 1:3] == words).all()


def test_generation_config_json_defaults(tmp_path):
    """The directory's generation_config.json sets the defaults (HF reads it too); the call's
    arguments win."""
    rng = np.random.default_rng(7)
    model, _ = s2s._save(tmp_path, rng, "marian")
    gen = dict(num_beams=3, max_new_tokens=6, no_repeat_ngram_size=2, bad_words_ids=[[1]],
               repetition_penalty=1.3, eos_token_id=2, decoder_start_token_id=3,
               pad_token_id=1)
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    ours = transformer.load(tmp_path, threads=2)
    assert ours.generation_config.num_beams == 3
    model = hf.MarianMTModel.from_pretrained(tmp_path).eval()
    src, mask = s2s._source(rng, 2, 6)
    want = s2s._hf_generate(model, src, mask)
    got = ours.generate(src, mask)
    np.testing.assert_array_equal(got, want)
    want = s2s._hf_generate(model, src, mask, num_beams=1, max_new_tokens=4)
    got = ours.generate(src, mask, num_beams=1, max_new_tokens=4)
    np.testing.assert_array_equal(got, want)
    assert got.shape[1] <= 5


def test_bad_options_name_the_argument(decoder):
    _, ours, ids, mask = decoder
    V = ours.config.vocab_size
    for kw, match in ((dict(length_penalty=float("nan")), "length_penalty"),
                      (dict(num_beams=4, length_penalty=float("inf")), "length_penalty"),
                      (dict(do_sample=True, temperature=0.0), "temperature"),
                      (dict(top_p=1.5), "top_p"), (dict(top_p=0.0), "top_p"),
                      (dict(forced_bos_token_id=V), "forced_bos_token_id"),
                      (dict(forced_eos_token_id=-1), "forced_eos_token_id"),
                      (dict(num_beams=0), "num_beams"), (dict(top_k=-1), "top_k"),
                      (dict(repetition_penalty=0.0), "repetition_penalty"),
                      (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
                      (dict(min_new_tokens=1.5), "min_new_tokens"),
                      (dict(bad_words_ids=[[]]), "bad_words_ids"),
                      (dict(bad_words_ids=[[V]]), "bad_words_ids"),
                      (dict(suppress_tokens=[V + 3]), "suppress_tokens"),
                      (dict(eos_token_id=[-1]), "eos_token_id"),
                      (dict(num_return_sequences=2), "num_return_sequences"),
                      (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
                      (dict(early_stopping="sometimes"), "early_stopping"),
                      (dict(max_new_tokens=0), "max_new_tokens"),
                      (dict(max_new_tokens=None, max_length=3), "max_length")):
        with pytest.raises(ValueError, match=match):
            ours.generate(ids, mask, **kw)
    with pytest.raises(TypeError, match="no_such_option"):
        ours.generate(ids, mask, no_such_option=1)
    cfg = GenerationConfig(num_beams=2, max_new_tokens=3).validate(V)
    assert cfg.eos_token_id == () and cfg.num_beams == 2


def test_sampling_num_return_sequences(decoder):
    """n independent samples per prompt: reproducible by seed, prefilled once, and the first
    new token distributed as the warped softmax of the prompt's logits (chi-square)."""
    from scipy.stats import chisquare

    _, ours, ids, mask = decoder
    a = ours.generate(ids, mask, do_sample=True, num_return_sequences=5, seed=3,
                      max_new_tokens=8, eos_token_id=[])
    b = ours.generate(ids, mask, do_sample=True, num_return_sequences=5, seed=3,
                      max_new_tokens=8, eos_token_id=[])
    assert a.shape == (15, 14)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :6], np.repeat(ids, 5, 0))
    assert len({tuple(r) for r in a[:5]}) > 1  # the samples of one prompt differ
    rows = []
    prefill = ours.prefill
    ours.prefill = lambda i, m=None, c=None, **k: (rows.append(len(i)), prefill(i, m, c, **k))[1]
    try:
        n = 6000
        out = ours.generate(ids[:1], mask[:1], do_sample=True, num_return_sequences=n, seed=11,
                            max_new_tokens=1, eos_token_id=[], temperature=1.5, top_k=8)
    finally:
        del ours.prefill
    assert rows == [1]
    logits = ours(ids[:1], mask[:1])[0, -1].astype(np.float64) / 1.5
    keep = np.argsort(-logits)[:8]
    p = np.exp(logits[keep] - logits[keep].max())
    p /= p.sum()
    counts = np.bincount(out[:, -1], minlength=ours.config.vocab_size)
    assert counts.sum() == counts[keep].sum()  # nothing outside the top 8
    assert chisquare(counts[keep], p * n).pvalue > 1e-4


def test_scores_accumulated_by_the_search(decoder):
    """Greedy per-token log-probabilities equal the model's log-softmax at the chosen tokens;
    beam scores are the sums of the per-token values and sequences_scores the ranking score;
    beam search prefills each prompt once."""
    _, ours, ids, mask = decoder
    T = ids.shape[1]
    out = ours.generate(ids, mask, max_new_tokens=6, eos_token_id=[], return_dict_in_generate=True)
    full = np.concatenate([mask, np.ones((len(ids), 6), np.int64)], 1)
    lp = log_softmax(ours(out.sequences, full))[:, T - 1:-1]
    want = np.take_along_axis(lp, out.sequences[:, T:, None], -1)[..., 0]
    np.testing.assert_allclose(out.token_logprobs, want, atol=1e-4)
    np.testing.assert_allclose(out.scores, want.sum(1), atol=1e-4)
    rows = []
    prefill = ours.prefill
    ours.prefill = lambda i, m=None, c=None, **k: (rows.append(len(i)), prefill(i, m, c, **k))[1]
    try:
        beam = ours.generate(ids, mask, max_new_tokens=6, num_beams=4, num_return_sequences=2,
                             length_penalty=0.5, eos_token_id=[], return_dict_in_generate=True)
        plain = ours.generate(ids, mask, max_new_tokens=6, num_beams=4, num_return_sequences=2,
                              length_penalty=0.5, eos_token_id=[])
    finally:
        del ours.prefill
    assert rows == [3, 3]
    np.testing.assert_array_equal(beam.sequences, plain)
    np.testing.assert_allclose(beam.token_logprobs.sum(1), beam.scores, atol=1e-5)
    np.testing.assert_allclose(beam.sequences_scores, beam.scores / 6 ** 0.5, rtol=1e-5)
    full = np.concatenate([np.repeat(mask, 2, 0), np.ones((6, 6), np.int64)], 1)
    lp = log_softmax(ours(beam.sequences, full))[:, T - 1:-1]
    want = np.take_along_axis(lp, beam.sequences[:, T:, None], -1)[..., 0]
    np.testing.assert_allclose(beam.token_logprobs, want, atol=1e-4)


def test_stream_yields_the_columns_of_generate(decoder, seq2seq):
    _, ours, ids, mask = decoder
    for kw in (dict(), dict(do_sample=True, seed=4, num_return_sequences=2, top_p=0.9)):
        out = ours.generate(ids, mask, max_new_tokens=7, eos_token_id=5, pad_token_id=0, **kw)
        cols = list(ours.stream(ids, mask, max_new_tokens=7, eos_token_id=5, pad_token_id=0,
                                **kw))
        np.testing.assert_array_equal(np.stack(cols, 1), out[:, ids.shape[1]:], err_msg=str(kw))
    with pytest.raises(ValueError, match="num_beams"):
        next(ours.stream(ids, mask, num_beams=2))
    _, mt, src, smask = seq2seq
    out = mt.generate(src, smask, max_new_tokens=5)
    np.testing.assert_array_equal(np.stack(list(mt.stream(src, smask, max_new_tokens=5)), 1),
                                  out[:, 1:])


def test_default_length_fits_the_positions(seq2seq, decoder):
    """Without max_new_tokens / max_length the default is capped at the model's positions (64
    here); an explicit max_new_tokens beyond them is an error naming it."""
    _, mt, src, mask = seq2seq
    out = mt.generate(src, mask, eos_token_id=[], forced_eos_token_id=None)
    assert out.shape == (3, 64)
    with pytest.raises(ValueError, match="max_new_tokens=64"):
        mt.generate(src, mask, max_new_tokens=64)
    _, lm, ids, m = decoder
    assert lm.generate(ids, m, eos_token_id=[]).shape == (3, 6 + 32)
