"""The real aren-transliteration model (CTranslate2 TransformerBase) against ctranslate2.Translator
as a live oracle: target prefix, min / max length, repetition penalty, no-repeat n-grams and
suppressed sequences (CTranslate2's suppress_sequences = HF's bad_words_ids).

The processors are compared under greedy search: CTranslate2's beam search applies them to
other scores than HF's (whose semantics this engine keeps: after the log-softmax), so beam
results may differ by design; beam search is compared for lengths and target prefixes."""
import numpy as np
import pytest

import transformer

ct2 = pytest.importorskip("ctranslate2")

WORDS = ["آ ت ز م و ن", "آ ت ش ي س و ن", "م ح م د", "ع ل ي", "س ا ر ة"]


@pytest.fixture(scope="module")
def aren(shared_models):
    path = shared_models / "aren-transliteration" / "float32"
    if not (path / "model.bin").is_file():
        pytest.skip(f"{path} not found")
    return transformer.load(path, threads=2), ct2.Translator(str(path), intra_threads=2)


def _ours(model, words, prefix=None, **kw):
    """Our hypotheses as token strings (eos and padding dropped) for words and target prefixes
    (lists of target tokens, one list per word, all of one length)."""
    batch = [model.tokenizer.encode(t) for t in words]
    S = max(map(len, batch))
    ids = np.array([b + [0] * (S - len(b)) for b in batch])
    mask = np.array([[1] * len(b) + [0] * (S - len(b)) for b in batch])
    vocab = model.target_vocabulary
    if prefix is not None:
        start = model.config.decoder_start_token_id
        kw["decoder_input_ids"] = np.array([[start] + [vocab.index(x) for x in p]
                                            for p in prefix])
    out = model.generate(ids, mask, **kw)
    T = 1 if prefix is None else 1 + len(prefix[0])
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    return [(prefix[b] if prefix else []) + [vocab[t] for t in row[T:] if t not in (eos, pad)]
            for b, row in enumerate(out)]


def _theirs(translator, words, **kw):
    return [r.hypotheses[0] for r in translator.translate_batch([w.split() for w in words],
                                                                **kw)]


def test_processors_greedy_match_ctranslate2(aren):
    model, translator = aren
    vocab = model.target_vocabulary
    h, a, l = vocab.index("h"), vocab.index("a"), vocab.index("l")
    for ours, theirs in ((dict(), dict()),
                         (dict(repetition_penalty=3.0), dict(repetition_penalty=3.0)),
                         (dict(repetition_penalty=0.5), dict(repetition_penalty=0.5)),
                         (dict(no_repeat_ngram_size=1), dict(no_repeat_ngram_size=1)),
                         (dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=2)),
                         (dict(min_new_tokens=9), dict(min_decoding_length=9)),
                         (dict(max_new_tokens=3), dict(max_decoding_length=3)),
                         (dict(bad_words_ids=[[h], [a, l]]),
                          dict(suppress_sequences=[["h"], ["a", "l"]])),
                         (dict(no_repeat_ngram_size=2, repetition_penalty=1.5, min_new_tokens=7,
                               bad_words_ids=[[h]]),
                          dict(no_repeat_ngram_size=2, repetition_penalty=1.5,
                               min_decoding_length=7, suppress_sequences=[["h"]]))):
        got = _ours(model, WORDS, num_beams=1, **dict(dict(max_new_tokens=30), **ours))
        want = _theirs(translator, WORDS, beam_size=1, **theirs)
        assert got == want, ours


@pytest.mark.parametrize("num_beams", [1, 4])
def test_target_prefix_and_lengths_match_ctranslate2(aren, num_beams):
    model, translator = aren
    for prefix in ([["a"]] * 5, [["e", "l"], ["a", "c"], ["m", "u"], ["e", "l"], ["s", "a"]]):
        got = _ours(model, WORDS, prefix, num_beams=num_beams, max_new_tokens=30)
        want = _theirs(translator, WORDS, beam_size=num_beams, target_prefix=prefix)
        assert got == want, prefix
    for n in (2, 4):
        got = _ours(model, WORDS, num_beams=num_beams, max_new_tokens=n)
        assert got == _theirs(translator, WORDS, beam_size=num_beams, max_decoding_length=n)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_attention_matches_ctranslate2(aren, num_beams):
    """return_attention: the last decoder layer's first head (CTranslate2's defaults), one row
    per target token (CTranslate2 leaves out the eos row), one column per source token.
    CTranslate2 is asked one sentence at a time: its batched beam search gives some sentences
    another first row than the same sentence alone (ours equals the latter)."""
    model, translator = aren
    batch = [model.tokenizer.encode(t) for t in WORDS]
    S = max(map(len, batch))
    ids = np.array([b + [0] * (S - len(b)) for b in batch])
    mask = np.array([[1] * len(b) + [0] * (S - len(b)) for b in batch])
    out = model.generate(ids, mask, num_beams=num_beams, max_new_tokens=30,
                         return_attention=True)
    res = [translator.translate_batch([w.split()], beam_size=num_beams,
                                      return_attention=True)[0] for w in WORDS]
    for b, r in enumerate(res):
        want = np.array(r.attention[0])
        got = out.attention[b]
        assert got.shape == (len(r.hypotheses[0]) + 1, len(batch[b]))
        np.testing.assert_allclose(got[:len(want), :want.shape[1]], want, atol=1e-4)
    mean = model.generate(ids, mask, num_beams=num_beams, max_new_tokens=30,
                          return_attention=True, attention_heads=0).attention
    assert all(np.allclose(a.sum(1), 1, atol=1e-5) for a in mean)
