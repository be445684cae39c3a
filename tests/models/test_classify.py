"""Cross-encoders (BERT and XLM-RoBERTa sequence classifiers) against Hugging Face transformers'
AutoModelForSequenceClassification: tiny random directories saved by HF, every CPU dtype, ragged
right-padded batches, and query / passage pairs through the tokenizer against HF's tokenizer."""
import json

import numpy as np
import pytest

import transformer
from conftest import perturb
from transformer.weights import WeightsError

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = [f"w{i}" for i in range(90)]
# |ours - HF float32| <= TOL * (1 + |HF|), per dtype (int8: per-row quantized products)
TOL = {"float32": 1e-5, "int8": 0.03, "bfloat16": 0.01}
ARCHS = {"bert": ("BertForSequenceClassification", 3), "xlm-roberta":
         ("XLMRobertaForSequenceClassification", 1)}


def _tokenizer_json(path, kind):
    """A word-level tokenizer.json with the family's pair template (BERT: [CLS] a [SEP] b [SEP]
    with types 1 on b; XLM-R: <s> a </s></s> b </s>), padding with the pad id."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if kind == "bert" else \
        ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=special[1 if kind == "bert" else 3]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
    else:
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        tok.enable_padding(pad_id=1, pad_token="<pad>")
    tok.save(str(path / "tokenizer.json"))
    return special


def _tiny_classifier(tmp_path, rng, kind, **overrides):
    """(HF model, our directory) of a random sequence classifier of `kind` saved by HF."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    arch, num_labels = ARCHS[kind]
    kw = dict(vocab_size=94, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
              intermediate_size=37, max_position_embeddings=64, num_labels=num_labels,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "xlm-roberta":
        kw.update(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    kw.update(overrides)
    cfg = (hf.BertConfig if kind == "bert" else hf.XLMRobertaConfig)(**kw)
    model = perturb(getattr(hf, arch)(cfg), 0.05)
    with torch.no_grad():  # a larger output layer, so that the logits are O(1)
        for name, p in model.named_parameters():
            if name in ("classifier.weight", "classifier.out_proj.weight"):
                p.mul_(8)
    model.save_pretrained(tmp_path, safe_serialization=True)
    _tokenizer_json(tmp_path, kind)
    return model


def _ragged(rng, kind, B, T):
    """Right-padded ids, mask, token types (B, T) of random words (BERT: types 0 then 1)."""
    lens = rng.integers(2, T + 1, B)
    lens[0] = T
    mask = (np.arange(T)[None] < lens[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(4, 94, (B, T)), 0 if kind == "bert" else 1)
    ids[:, 0] = 2 if kind == "bert" else 0  # [CLS] / <s>
    split = rng.integers(1, lens + 1)
    types = ((np.arange(T)[None] >= split[:, None]) & (mask == 1)).astype(np.int64)
    return ids, mask, (types if kind == "bert" else None)


def _hf_logits(model, ids, mask, types):
    kw = {} if types is None else {"token_type_ids": torch.tensor(types)}
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     **kw).logits.double().numpy()


@pytest.mark.parametrize("dtype", ["float32", "int8", "bfloat16"])
@pytest.mark.parametrize("kind", sorted(ARCHS))
def test_classify_matches_hf(tmp_path, rng, kind, dtype):
    model = _tiny_classifier(tmp_path, rng, kind)
    ours = transformer.load(tmp_path, dtype=dtype, threads=2)
    assert ours.labels == tuple(model.config.id2label[i] for i in range(model.num_labels))
    ids, mask, types = _ragged(rng, kind, 6, int(rng.integers(5, 40)))
    got = ours.classify(ids, mask, types)
    want = _hf_logits(model, ids, mask, types)
    assert got.dtype == np.float32 and got.shape == want.shape == (6, model.num_labels)
    assert np.all(np.abs(got - want) <= TOL[dtype] * (1 + np.abs(want))), (got, want)
    # the same rows one at a time, unpadded
    alone = np.concatenate([ours.classify(ids[i:i + 1, :mask[i].sum()], None,
                                          None if types is None else types[i:i + 1, :mask[i].sum()])
                            for i in range(6)])
    np.testing.assert_allclose(alone, got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(ARCHS))
def test_classify_text_pairs_match_hf_tokenizer(tmp_path, rng, kind):
    """Query / passage pairs through our tokenizer give HF's ids, token types and logits."""
    model = _tiny_classifier(tmp_path, rng, kind)
    ours = transformer.load(tmp_path, threads=2)
    queries = [" ".join(rng.choice(WORDS, rng.integers(1, 5))) for _ in range(5)]
    passages = [" ".join(rng.choice(WORDS, rng.integers(1, 20))) for _ in range(5)]
    pad = "[PAD]" if kind == "bert" else "<pad>"
    hf_tok = hf.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"),
                                        pad_token=pad)
    batch = hf_tok(queries, passages, padding=True, return_tensors="np",
                   return_token_type_ids=kind == "bert")
    mine = ours.tokenizer(queries, passages)
    np.testing.assert_array_equal(mine["input_ids"], batch["input_ids"])
    np.testing.assert_array_equal(mine["attention_mask"], batch["attention_mask"])
    if kind == "bert":
        np.testing.assert_array_equal(mine["token_type_ids"], batch["token_type_ids"])
        assert mine["token_type_ids"].any()
    want = _hf_logits(model, batch["input_ids"], batch["attention_mask"],
                      batch.get("token_type_ids"))
    got = ours.classify_texts(queries, passages, batch_size=2)
    assert np.abs(got - want).max() <= 1e-4
    with pytest.raises(ValueError, match="text_pair"):
        ours.classify_texts(queries, passages[:2])


def test_classify_bad_directories_and_inputs(tmp_path, rng):
    # a plain encoder has no head
    plain = tmp_path / "plain"
    perturb(hf.BertModel(hf.BertConfig(vocab_size=50, hidden_size=16, num_attention_heads=2,
                                       num_hidden_layers=1, intermediate_size=20)),
            0.05).save_pretrained(plain, safe_serialization=True)
    with pytest.raises(TypeError, match="no sequence-classification head"):
        transformer.load(plain).classify(np.array([[1, 2, 3]]))
    # the head's tensors missing: the error names them
    cls_dir = tmp_path / "cls"
    _tiny_classifier(cls_dir, rng, "bert")
    cfg = json.loads((cls_dir / "config.json").read_text())
    cfg["architectures"] = ["BertForSequenceClassification"]
    (plain / "config.json").write_text(json.dumps(dict(
        json.loads((plain / "config.json").read_text()), architectures=cfg["architectures"])))
    with pytest.raises(WeightsError, match="classifier.weight"):
        transformer.load(plain)
    # id2label of the wrong size for the stored head: a shape mismatch naming it
    (cls_dir / "config.json").write_text(json.dumps(dict(cfg, id2label={"0": "a", "1": "b"})))
    with pytest.raises(WeightsError, match="classifier.weight"):
        transformer.load(cls_dir)
    (cls_dir / "config.json").write_text(json.dumps(dict(cfg, id2label={"0": "a", "5": "b"})))
    with pytest.raises(ValueError, match="id2label"):
        transformer.load(cls_dir)
    (cls_dir / "config.json").write_text(json.dumps(cfg))
    ours = transformer.load(cls_dir)
    with pytest.raises(IndexError, match="token_type_ids"):
        ours.classify(np.array([[2, 5, 3]]), None, np.array([[0, 2, 0]]))
    with pytest.raises(IndexError, match="input_ids"):
        ours.classify(np.array([[2, 500, 3]]))
