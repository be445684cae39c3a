"""Encoder-decoder models against Hugging Face transformers (Marian, BART: tiny random configs
built offline) and the real CTranslate2 aren-transliteration model with its published goldens."""
import json

import numpy as np
import pytest

import transformer
from conftest import perturb, torch_call
from transformer.device import to_numpy
from transformer.models.seq2seq import Seq2SeqConfig, seq2seq_shapes, sinusoid_table
from transformer.models.transformer2017 import PRESETS, preset
from transformer.weights import WeightsError

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")

TINY = dict(vocab_size=67, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=40,
            decoder_ffn_dim=40, max_position_embeddings=64, pad_token_id=1, eos_token_id=2,
            decoder_start_token_id=3, bos_token_id=0)


def _save(tmp_path, rng, kind, **overrides):
    torch.manual_seed(int(rng.integers(1 << 31)))
    kw = dict(TINY, **overrides)
    if kind == "marian":
        model = hf.MarianMTModel(hf.MarianConfig(**dict(dict(activation_function="swish"), **kw)))
    else:
        model = hf.BartForConditionalGeneration(hf.BartConfig(**kw))
    perturb(model, 0.1, () if kind == "bart" else ("embed_positions",))  # Marian's sinusoids stay
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model, transformer.load(tmp_path, threads=2)


def _source(rng, B, S, V=67):
    ids = rng.integers(4, V, (B, S))
    lens = rng.integers(1, S + 1, B)
    lens[0] = S
    mask = (np.arange(S)[None] < lens[:, None]).astype(np.int64)
    return np.where(mask == 1, ids, 1), mask


def _hf_logits(model, src, mask, tgt):
    """HF logits (float32 NumPy) on the model's device."""
    return torch_call(model, model.device, input_ids=src, attention_mask=mask,
                      decoder_input_ids=tgt)


def _hf_generate(model, src, mask, **kw):
    return torch_call(lambda **a: model.generate(**a, **kw), model.device, inputs=src,
                      attention_mask=mask)


@pytest.mark.parametrize("kind", ["marian", "bart"])
def test_logits_match_hf(tmp_path, rng, kind):
    model, ours = _save(tmp_path, rng, kind)
    src, mask = _source(rng, 4, 11)
    tgt = np.concatenate([np.full((4, 1), 3), rng.integers(4, 67, (4, 6))], 1)
    want = _hf_logits(model, src, mask, tgt)
    assert np.abs(ours(src, mask, tgt) - want).max() <= 1e-4


@pytest.mark.parametrize("kind", ["marian", "bart"])
def test_generate_matches_hf(tmp_path, rng, kind):
    model, ours = _save(tmp_path, rng, kind, forced_eos_token_id=2)
    src, mask = _source(rng, 3, 9)
    # an eos that decoding actually produces, so that stopping is exercised
    free = ours.generate(src, mask, max_new_tokens=8, eos_token_id=[], forced_eos_token_id=None)
    eos = int(np.bincount(free[:, 1:].ravel()).argmax())
    for kw in (dict(num_beams=1), dict(num_beams=4), dict(num_beams=4, length_penalty=0.6),
               dict(num_beams=3, num_return_sequences=2, length_penalty=2.0)):
        want = _hf_generate(model, src, mask, max_new_tokens=8, do_sample=False,
                            eos_token_id=eos, forced_eos_token_id=eos, **kw)
        got = ours.generate(src, mask, max_new_tokens=8, eos_token_id=eos,
                            forced_eos_token_id=eos, **kw)
        np.testing.assert_array_equal(got, want, err_msg=str(kw))


def test_settled_sources_leave_the_batch(tmp_path, rng):
    """Sources whose search has ended drop out of later decode steps (fewer rows decoded), with
    the tokens of HF generate, which keeps decoding them."""
    def end_steps(free, t):  # the steps at which greedy search ends each source if eos = t
        hit = free == t
        return set(np.where(hit.any(1), hit.argmax(1), -1).tolist()) - {-1}

    for attempt in range(8):  # a model and an eos with which greedy sources end at 2+ steps
        # untied output projection: with tied random weights every source decodes alike
        model, ours = _save(tmp_path, rng, "marian", vocab_size=23, tie_word_embeddings=False)
        src, mask = _source(rng, 8, 9, V=23)
        free = ours.generate(src, mask, max_new_tokens=12, eos_token_id=[],
                             forced_eos_token_id=None)[:, 1:]
        eos = max(range(4, 23), key=lambda t: len(end_steps(free, t)))
        if len(end_steps(free, eos)) >= 2:
            break
    rows = []
    decode_step = ours._decode_step

    def counting(tokens, state):
        rows.append(len(tokens))
        return decode_step(tokens, state)

    ours._decode_step = counting
    for kw in (dict(num_beams=1), dict(num_beams=3), dict(num_beams=4, length_penalty=0.6),
               dict(num_beams=3, early_stopping=True), dict(num_beams=2, early_stopping="never"),
               dict(num_beams=3, num_return_sequences=2, length_penalty=2.0)):
        rows.clear()
        with torch.no_grad():
            want = model.generate(torch.tensor(src), attention_mask=torch.tensor(mask),
                                  max_new_tokens=14, do_sample=False, eos_token_id=eos,
                                  forced_eos_token_id=None, **kw).numpy()
        got = ours.generate(src, mask, max_new_tokens=14, eos_token_id=eos,
                            forced_eos_token_id=None, **kw)
        np.testing.assert_array_equal(got, want, err_msg=str(kw))
        if kw["num_beams"] == 1:  # sources end at 2+ different steps before the last
            assert rows[-1] < rows[0], rows


def test_marian_sinusoids_match_hf(tmp_path, rng):
    model, _ = _save(tmp_path, rng, "marian")
    table = model.model.encoder.embed_positions.weight.detach().numpy()
    np.testing.assert_allclose(sinusoid_table(64, 32, "marian"), table, atol=1e-6)


def test_sinusoid_layouts():
    t = sinusoid_table(50, 8, "paper")
    pos, i = 7, 2
    assert np.isclose(t[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / 8)))
    assert np.isclose(t[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / 8)))
    t = sinusoid_table(50, 8, "t2t")
    assert np.isclose(t[pos, 4 + 3], np.cos(pos * np.exp(-np.log(10000) * 3 / 3)))


def test_return_scores_and_score_api(tmp_path, rng):
    _, ours = _save(tmp_path, rng, "bart")
    src, mask = _source(rng, 2, 7)
    # no forced eos: the search ranks by the processed scores, return_scores gives the model's
    out, scores = ours.generate(src, mask, max_new_tokens=6, num_beams=3, num_return_sequences=3,
                                return_scores=True, eos_token_id=[], forced_eos_token_id=None)
    assert out.shape == (6, 7) and scores.shape == (6,)
    per_token = ours.score(np.repeat(src, 3, 0), np.repeat(mask, 3, 0), out[:, 1:])
    # score() appends an eos; without eos in the search the hypothesis score excludes it
    np.testing.assert_allclose([p[:-1].sum() for p in per_token], scores, rtol=1e-5, atol=1e-5)
    assert scores[0] >= scores[1] - 1e-4  # n-best: the search's best first (lp 1.0, same length)


def test_bring_your_own_weights(tmp_path, rng):
    """config.json with a preset and our tensor names in model.safetensors."""
    from safetensors.numpy import save_file

    cfg = dict(model_type="transformer", preset="transformer-base", src_vocab_size=50,
               tgt_vocab_size=40, d_model=32, n_heads=4, d_ff=64, encoder_layers=2,
               decoder_layers=1)
    config = preset(**{k: v for k, v in cfg.items() if k not in ("model_type", "preset")},
                    name="transformer-base")
    tensors = {k: (rng.standard_normal(s) * 0.2).astype(np.float32)
               for k, s in seq2seq_shapes(config).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = transformer.load(tmp_path)
    out = model.generate(np.array([[5, 6, 7]]), max_new_tokens=5)
    assert out.shape[0] == 1 and out[0, 0] == config.decoder_start_token_id
    assert PRESETS["transformer-big"]["d_model"] == 1024
    del tensors["decoder.layers.0.cross_kv.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="decoder.layers.0.cross_kv.weight"):
        transformer.load(tmp_path)


def test_seq2seq_bad_input(tmp_path, rng):
    _, ours = _save(tmp_path, rng, "bart")
    with pytest.raises(ValueError, match="decoder_input_ids is required"):
        ours(np.array([[5, 6]]))
    with pytest.raises(IndexError, match="input_ids must lie in"):
        ours.generate(np.array([[5, 67]]))
    with pytest.raises(ValueError, match="attention_mask row 0 has no real token"):
        ours.generate(np.array([[5, 6]]), np.array([[0, 0]]))
    with pytest.raises(ValueError, match="must be a multiple"):
        Seq2SeqConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=10, n_heads=3, encoder_layers=1,
                      decoder_layers=1, d_ff=4)


# -- the real CTranslate2 aren-transliteration model ---------------------------------------------

GOLDEN = {"آ ت ز م و ن": ("a t z m o n", [-0.106023, -0.065410, -0.056002, -0.447953, -0.230714,
                                          -0.092184, -0.063463]),
          "آ ت ش ي س و ن": ("a c h i s o n", [-0.072660, -0.300309, -0.181187, -0.395671,
                                              -0.025631, -0.123466, -0.002034, -0.012639])}


@pytest.fixture(scope="module", params=["float32", "int8", "int16"])
def aren(request, shared_models):
    path = shared_models / "aren-transliteration" / request.param
    if not (path / "model.bin").is_file():
        pytest.skip(f"{path} not found")
    return request.param, transformer.load(path, threads=2)


def check_aren_goldens(model, num_beams, score_atol=None):
    """The published transliterations of GOLDEN, batched (right padding), and with score_atol
    the published per-token log-probabilities. Device outputs are brought to NumPy."""
    texts = list(GOLDEN)
    batch = [model.tokenizer.encode(t) for t in texts]
    S = max(map(len, batch))
    ids = np.array([b + [0] * (S - len(b)) for b in batch])
    mask = np.array([[1] * len(b) + [0] * (S - len(b)) for b in batch])
    out = to_numpy(model.generate(ids, mask, num_beams=num_beams, max_new_tokens=30))
    assert [model.tokenizer.decode(row) for row in out] == [GOLDEN[t][0] for t in texts]
    if score_atol is not None:
        for t in texts:
            target = [model.target_vocabulary.index(x) for x in GOLDEN[t][0].split()]
            logp = model.score(np.array([model.tokenizer.encode(t)]), None, np.array([target]))[0]
            np.testing.assert_allclose(logp, GOLDEN[t][1], atol=score_atol)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_aren_goldens(aren, num_beams):
    quant, model = aren
    assert model.spec == ("TransformerBase", 2)
    check_aren_goldens(model, num_beams, 1e-4 if quant == "float32" else None)


def test_ctranslate2_bad_files(shared_models, tmp_path):
    import shutil

    src = shared_models / "aren-transliteration" / "float32"
    if not src.is_dir():
        pytest.skip("aren-transliteration not found")
    d = tmp_path / "m"
    shutil.copytree(src, d)
    data = (d / "model.bin").read_bytes()
    (d / "model.bin").write_bytes(data[:-10])
    with pytest.raises(WeightsError, match="truncated"):
        transformer.load(d)
    (d / "model.bin").write_bytes(data[:32] + b"\xff" * 20 + data[52:])  # a name's bytes
    with pytest.raises(WeightsError, match="corrupt"):
        transformer.load(d)
    (d / "model.bin").write_bytes(b"\x09\x00\x00\x00" + data[4:])
    with pytest.raises(WeightsError, match="binary version 9"):
        transformer.load(d)
    (d / "model.bin").write_bytes(data[:4] + b"\x0c\x00Transformer\x00" + data[22:])
    with pytest.raises(WeightsError, match="spec 'Transformer'"):
        transformer.load(d)


def tiny_t5(path, rng, proj, tied):
    """A tiny random T5ForConditionalGeneration (V 67, C 40, d_kv 12 != C / H, 2 + 2 layers,
    relative_attention_max_distance 20; feed_forward_proj `proj`, tie_word_embeddings `tied`),
    perturbed, saved in `path`. Returns the HF model."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    cfg = hf.T5Config(vocab_size=67, d_model=40, d_kv=12, d_ff=56, num_layers=2,
                      num_decoder_layers=2, num_heads=3, feed_forward_proj=proj,
                      relative_attention_max_distance=20, tie_word_embeddings=tied,
                      decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
                      dropout_rate=0.0)
    model = perturb(hf.T5ForConditionalGeneration(cfg), 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.mark.parametrize("proj,tied", [("relu", True), ("gated-gelu", False)])
def test_t5_matches_hf(tmp_path, rng, proj, tied):
    """T5 v1.0 (ReLU, tied head rescaled by d_model^-0.5) and v1.1 (gated GELU, separate head):
    RMS norms, unscaled attention, relative position buckets inside the kernels (encoder
    bidirectional, decoder causal, distances beyond max_distance), d_kv != d_model / H; logits
    of ragged batches, greedy and beam tokens against HF."""
    model = tiny_t5(tmp_path, rng, proj, tied)
    ours = transformer.load(tmp_path, threads=2)
    src, mask = _source(rng, 3, 30)
    src = np.where(mask == 1, np.maximum(src, 2), 0)
    tgt = np.concatenate([np.zeros((3, 1), np.int64), rng.integers(2, 67, (3, 25))], 1)
    want = _hf_logits(model, src, mask, tgt)
    got = ours(src, mask, tgt)
    assert np.abs(got - want).max() <= 1e-4
    for kw in (dict(num_beams=1), dict(num_beams=3)):
        hf_out = _hf_generate(model, src, mask, max_new_tokens=8, do_sample=False, **kw)
        np.testing.assert_array_equal(ours.generate(src, mask, max_new_tokens=8, **kw), hf_out)
