"""BERT against Hugging Face transformers (PyTorch CPU): tiny random configs built offline from
BertConfig, and the real all-MiniLM-L6-v2 on real sentences in ragged batches."""

import numpy as np
import pytest

import transformer
from conftest import perturb
from transformer.models.config import EncoderConfig
from transformer.models.encoder import EncoderModel, encoder_shapes
from transformer.ops import reference as ref

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")

SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on a street corner while people walk past him.",
    "Sentence embeddings map text to vectors so that similar meanings land close together.",
    "Ok",
    "Paris is the capital of France, and it is famous for the Eiffel Tower, its museums, its "
    "cafés and the long walks along the Seine that visitors remember for years.",
]


def _tiny_hf(tmp_path, rng, cls_name="BertModel", **overrides):
    torch.manual_seed(int(rng.integers(1 << 31)))
    kw = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
              intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kw.update(overrides)
    cfg = hf.BertConfig(**kw)
    model = perturb(getattr(hf, cls_name)(cfg), 0.05)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def _ragged_batch(rng, B, T, V, left=False):
    ids = rng.integers(1, V, (B, T))
    lens = rng.integers(1, T + 1, B)
    lens[0] = T
    mask = (np.arange(T)[None] < lens[:, None]).astype(np.int64)
    if left:
        mask = mask[:, ::-1].copy()
    ids = np.where(mask == 1, ids, 0)
    types = rng.integers(0, 2, (B, T)) * mask
    return ids, mask, types


def _hf_hidden(model, ids, mask, types):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types))
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("overrides", [
    {},
    dict(hidden_size=120, num_attention_heads=5, num_hidden_layers=3, intermediate_size=130,
         hidden_act="gelu_new"),
    dict(hidden_size=48, num_attention_heads=2, intermediate_size=64, hidden_act="relu",
         max_position_embeddings=300),
])
@pytest.mark.parametrize("left", [False, True])
def test_tiny_bert_matches_hf(tmp_path, rng, overrides, left):
    model = _tiny_hf(tmp_path, rng, **overrides)
    ours = transformer.load(tmp_path, threads=2)
    T = min(ours.config.max_position_embeddings, 70)
    ids, mask, types = _ragged_batch(rng, 5, T, ours.config.vocab_size, left)
    got = ours(ids, mask, types)
    want = _hf_hidden(model, ids, mask, types)
    real = mask.astype(bool)
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    assert np.all(got[~real] == 0)


def test_task_model_with_bert_prefix_and_heads(tmp_path, rng):
    """A BertForMaskedLM checkpoint: "bert." prefix, MLM head tensors ignored."""
    model = _tiny_hf(tmp_path, rng, "BertForMaskedLM")
    ours = transformer.load(tmp_path, threads=1)
    ids, mask, types = _ragged_batch(rng, 3, 20, 99)
    want = _hf_hidden(model.bert, ids, mask, types)
    got = ours(ids, mask, types)
    assert np.abs(got - want)[mask.astype(bool)].max() <= 1e-4


def _reference_encoder(config, w, ids):
    """float64 forward of one unpadded sequence (T,) from the reference ops."""
    T = len(ids)
    C, H, D, eps = config.d_model, config.n_heads, config.head_dim, config.layer_norm_eps
    h = ref.embedding(ids, w["embeddings.word"], w["embeddings.position"], None, None,
                      w["embeddings.token_type"], w["embeddings.norm.weight"],
                      w["embeddings.norm.bias"], eps)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        ln = lambda x, n: ref.layer_norm(x, w[p + n + ".weight"], w[p + n + ".bias"], eps)
        x = ln(h, "norm1") if config.pre_norm else h
        qkv = ref.linear(x, w[p + "qkv.weight"], w[p + "qkv.bias"]).reshape(T, 3, H, D)
        q, k, v = (qkv[:, j].transpose(1, 0, 2)[None] for j in range(3))
        ctx = ref.attention(q, k, v)[0].transpose(1, 0, 2).reshape(T, C)
        a = ref.linear(ctx, w[p + "out.weight"], w[p + "out.bias"])
        h = h + a if config.pre_norm else ln(h + a, "norm1")
        x = ln(h, "norm2") if config.pre_norm else h
        f = ref.linear(ref.linear(x, w[p + "ff1.weight"], w[p + "ff1.bias"], config.activation),
                       w[p + "ff2.weight"], w[p + "ff2.bias"])
        h = h + f if config.pre_norm else ln(h + f, "norm2")
    if config.pre_norm:
        h = ref.layer_norm(h, w["final_norm.weight"], w["final_norm.bias"], eps)
    return h


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_stack_matches_reference(rng, pre_norm):
    config = EncoderConfig(vocab_size=50, d_model=24, n_heads=3, n_layers=2, d_ff=40,
                           max_position_embeddings=80, type_vocab_size=2, activation="gelu",
                           layer_norm_eps=1e-5, pre_norm=pre_norm)
    w = {k: (rng.standard_normal(s) * (0.3 if len(s) == 2 else 0.1)).astype(np.float32)
         for k, s in encoder_shapes(config).items()}
    for k in w:
        if k.endswith("norm.weight") or "norm1.weight" in k or "norm2.weight" in k:
            w[k] += 1
    model = EncoderModel(config, w, threads=2)
    ids, mask, _ = _ragged_batch(rng, 4, 75, 50)
    got = model(ids, mask)
    for b in range(4):
        real = mask[b].astype(bool)
        np.testing.assert_allclose(got[b, real], _reference_encoder(config, w, ids[b, real]),
                                   rtol=1e-4, atol=1e-4)


# -- the real all-MiniLM-L6-v2 ----------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_hf(minilm_path):
    return hf.BertModel.from_pretrained(str(minilm_path)).eval()


def test_minilm_hello_world(minilm):
    """Known values from ../shared/models/README.md."""
    batch = minilm.tokenizer(["Hello world"])
    assert batch["input_ids"].tolist() == [[101, 7592, 2088, 102]]
    h = minilm(**batch)
    np.testing.assert_allclose(h[0, 0, :4], [0.176445, 0.039366, 0.077902, 0.258541], atol=2e-6)


@pytest.mark.parametrize("order", [slice(None), slice(None, None, -1)])
def test_minilm_matches_hf_ragged(minilm, minilm_hf, order):
    batch = minilm.tokenizer(SENTENCES[order])
    got = minilm(**batch)
    want = _hf_hidden(minilm_hf, batch["input_ids"], batch["attention_mask"],
                      batch["token_type_ids"])
    real = batch["attention_mask"].astype(bool)
    assert np.abs(got[real] - want[real]).max() <= 1e-4

    emb = minilm.embed(**batch)
    m = batch["attention_mask"][..., None].astype(np.float64)
    pooled = (want * m).sum(1) / m.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    cos = np.sum(emb * pooled, axis=1) / np.linalg.norm(emb, axis=1)
    assert cos.min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)


def test_minilm_batched_equals_single(minilm):
    together = minilm.embed_texts(SENTENCES, batch_size=4)
    alone = np.stack([minilm.embed_texts([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(together, alone, atol=2e-6)


def test_minilm_semantics(minilm):
    """Paraphrases score higher than unrelated sentences (a smoke test of real meaning)."""
    e = minilm.embed_texts(["A man is playing a guitar.", "Someone plays the guitar.",
                            "The stock market fell sharply today."])
    assert e[0] @ e[1] > 0.6 > e[0] @ e[2]


def test_config_dataclass_errors():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        EncoderConfig(vocab_size=5, d_model=10, n_heads=3, n_layers=1, d_ff=4)
    with pytest.raises(ValueError, match="activation"):
        EncoderConfig(vocab_size=5, d_model=12, n_heads=3, n_layers=1, d_ff=4, activation="tanh")


@pytest.mark.parametrize("kind,cls_name", [("roberta", "RobertaModel"),
                                           ("xlm-roberta", "XLMRobertaForMaskedLM")])
def test_roberta_positions_from_padding_idx(tmp_path, rng, kind, cls_name):
    """RoBERTa / XLM-RoBERTa: positions count the real tokens from pad_token_id + 1; ragged
    batches padded with the pad id on the right."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    cfg_cls = hf.XLMRobertaConfig if kind == "xlm-roberta" else hf.RobertaConfig
    cfg = cfg_cls(vocab_size=99, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                  intermediate_size=37, max_position_embeddings=40, type_vocab_size=1,
                  pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = perturb(getattr(hf, cls_name)(cfg), 0.05)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = transformer.load(tmp_path, threads=2)
    T = 38  # the longest a 40-row position table takes from padding_idx + 1 = 2
    ids, mask, _ = _ragged_batch(rng, 4, T, 99)
    ids = np.where(mask == 1, np.maximum(ids, 2), 1)
    with torch.no_grad():
        base = model.roberta if hasattr(model, "roberta") else model
        want = base(input_ids=torch.tensor(ids),
                    attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = ours(ids, mask)
    real = mask.astype(bool)
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    with pytest.raises(ValueError, match="at most 38"):
        ours(np.full((1, 39), 5), None)


@pytest.mark.parametrize("flags,normalize", [({"pooling_mode_max_tokens": True}, False),
                                             ({"pooling_mode_cls_token": True}, True),
                                             ({"pooling_mode_mean_tokens": True,
                                               "pooling_mode_max_tokens": True,
                                               "pooling_mode_mean_sqrt_len_tokens": True}, False)])
def test_sentence_transformers_pooling_config(tmp_path, rng, flags, normalize):
    """embed() follows the directory's modules.json and 1_Pooling/config.json (modes
    concatenated as sentence-transformers does: cls, max, mean, mean_sqrt_len; Normalize only
    when declared), against NumPy pooling of HF's hidden states."""
    import json

    model = _tiny_hf(tmp_path, rng)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models."
                "Transformer"}, {"idx": 1, "name": "1", "path": "1_Pooling",
                                 "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        dict({"word_embedding_dimension": 32}, **flags)))
    ours = transformer.load(tmp_path, threads=2)
    ids, mask, types = _ragged_batch(rng, 4, 9, 99)
    h = _hf_hidden(model, ids, mask, types).astype(np.float64)
    m = mask[..., None].astype(bool)
    pooled = {"pooling_mode_cls_token": h[:, 0],
              "pooling_mode_max_tokens": np.where(m, h, -np.inf).max(1),
              "pooling_mode_mean_tokens": (h * m).sum(1) / m.sum(1),
              "pooling_mode_mean_sqrt_len_tokens": (h * m).sum(1) / np.sqrt(m.sum(1))}
    want = np.concatenate([pooled[f] for f in pooled if flags.get(f)], axis=1)
    if normalize:
        want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = ours.embed(ids, mask, types)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(ours.embed(ids, mask, types, pooling="mean", normalize=False),
                               pooled["pooling_mode_mean_tokens"], atol=1e-4)
    with pytest.raises(ValueError, match="pooling must be one of"):
        ours.embed(ids, mask, types, pooling="median")
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ValueError, match="not supported"):
        transformer.load(tmp_path)


@pytest.mark.parametrize("left", [False, True])
def test_tiny_mpnet_matches_hf(tmp_path, rng, left):
    """MPNet: relative position buckets inside the attention kernel, positions from
    padding_idx + 1; ragged batches (right padding with the pad id, or left padding)."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    cfg = hf.MPNetConfig(vocab_size=99, hidden_size=48, num_attention_heads=4,
                         num_hidden_layers=2, intermediate_size=37, max_position_embeddings=300,
                         relative_attention_num_buckets=32, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    model = perturb(hf.MPNetModel(cfg), 0.05)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = transformer.load(tmp_path, threads=2)
    ids, mask, _ = _ragged_batch(rng, 4, 200, 99, left)  # distances beyond max_distance 128
    ids = np.where(mask == 1, np.maximum(ids, 2), 1)
    with torch.no_grad():
        want = model(input_ids=torch.tensor(ids),
                     attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = ours(ids, mask)
    real = mask.astype(bool)
    if not left:  # HF's positions count pad ids, its relative distances columns: as ours here
        assert np.abs(got[real] - want[real]).max() <= 1e-4
    else:  # left padding: compare each sequence alone (HF counts its pad columns otherwise)
        for b in range(len(ids)):
            row = ids[b][real[b]][None]
            with torch.no_grad():
                alone = model(input_ids=torch.tensor(row)).last_hidden_state.numpy()[0]
            assert np.abs(got[b][real[b]] - alone).max() <= 1e-4


@pytest.mark.slow
def test_all_mpnet_base_v2_matches_hf(mpnet_path):
    """The real all-mpnet-base-v2 on real sentences: hidden states against HF MPNetModel, and
    the embeddings against its sentence-transformers pooling (mean, then Normalize)."""
    ours = transformer.load(mpnet_path, threads=2)
    assert ours.pooling == ("mean",) and ours.normalize
    model = hf.MPNetModel.from_pretrained(str(mpnet_path)).eval()
    batch = ours.tokenizer(SENTENCES)
    with torch.no_grad():
        want = model(input_ids=torch.tensor(batch["input_ids"]),
                     attention_mask=torch.tensor(batch["attention_mask"])).last_hidden_state
    want = want.numpy().astype(np.float64)
    real = batch["attention_mask"].astype(bool)
    got = ours(batch["input_ids"], batch["attention_mask"])
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    m = batch["attention_mask"][..., None]
    pooled = (want * m).sum(1) / m.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    emb = ours.embed_texts(SENTENCES)
    assert np.sum(emb * pooled, axis=1).min() >= 0.99999
