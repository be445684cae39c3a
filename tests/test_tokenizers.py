"""SentencePiece tokenizers against Hugging Face's: MarianTokenizer on SentencePiece models
trained here (shared and separate vocabularies, language codes, unknown pieces, truncation),
and a Marian directory without tokenizer.json translating text end to end."""
import json

import numpy as np
import pytest

from transformer.tokenizer import MarianTokenizer

spm = pytest.importorskip("sentencepiece")
hf = pytest.importorskip("transformers")

CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world how are you today",
          "machine translation is fun", "der schnelle braune fuchs springt",
          "guten morgen wie geht es dir", "ein kleiner hund schläft im garten"]
TEXTS = ["hello world", "the lazy fox sleeps", ">>de<< guten morgen", "zebra quartz xylophone",
         "ein hund, ein fuchs!", "machine translation is fun " * 20]


def _marian_dir(tmp_path, separate):
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS * 40), encoding="utf-8")
    for side, size in (("source", 60), ("target", 50)):
        spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"),
                                       model_prefix=str(tmp_path / side), vocab_size=size,
                                       model_type="unigram", minloglevel=2)
        (tmp_path / f"{side}.model").rename(tmp_path / f"{side}.spm")
    pieces = ["</s>", "<unk>", ">>de<<", ">>en<<"]
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "source.spm"))
    pieces += [sp.id_to_piece(i) for i in range(3, sp.get_piece_size())][:40]  # some missing
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces + ["<pad>"]))}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    if separate:
        tp = spm.SentencePieceProcessor(model_file=str(tmp_path / "target.spm"))
        tv = ["</s>", "<unk>"] + [tp.id_to_piece(i) for i in range(3, tp.get_piece_size())]
        target = {p: i for i, p in enumerate(dict.fromkeys(tv + ["<pad>"]))}
        (tmp_path / "target_vocab.json").write_text(json.dumps(target), encoding="utf-8")
    kw = dict(target_vocab_file=str(tmp_path / "target_vocab.json")) if separate else {}
    theirs = hf.MarianTokenizer(source_spm=str(tmp_path / "source.spm"),
                                target_spm=str(tmp_path / "target.spm"),
                                vocab=str(tmp_path / "vocab.json"),
                                separate_vocabs=separate, model_max_length=32, **kw)
    return theirs


@pytest.mark.parametrize("separate", [False, True])
def test_marian_tokenizer_matches_hf(tmp_path, separate):
    theirs = _marian_dir(tmp_path, separate)
    ours = MarianTokenizer(tmp_path, max_length=32)
    for text in TEXTS:
        want = theirs(text, truncation=True, max_length=32).input_ids
        assert ours.encode(text) == want, text
        target = theirs(text_target=text, truncation=True, max_length=32).input_ids
        assert ours.encode_target(text) == target, text
        if not separate:  # with separate vocabularies HF skips the ids that are special in
            # the *source* vocabulary (a target piece may share one); ours skips the target's
            assert ours.decode(target) == theirs.decode(target, skip_special_tokens=True)
        assert ours.decode(target + [ours.target_encoder["<pad>"]]) == ours.decode(target)
    batch = ours(TEXTS[:3])
    want = theirs(TEXTS[:3], padding=True)
    np.testing.assert_array_equal(batch["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], want["attention_mask"])
    with pytest.raises(IndexError, match="ids must lie"):
        ours.decode([10 ** 6])


def test_marian_directory_without_tokenizer_json(tmp_path, rng):
    """A saved tiny MarianMTModel with the SentencePiece files and no tokenizer.json loads its
    tokenizer and translates text (tokens equal to HF generate on the same ids)."""
    import transformer
    torch = pytest.importorskip("torch")

    theirs = _marian_dir(tmp_path, False)
    V = max(json.loads((tmp_path / "vocab.json").read_text()).values()) + 1
    torch.manual_seed(0)
    cfg = hf.MarianConfig(vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=64,
                          pad_token_id=theirs.pad_token_id, eos_token_id=theirs.eos_token_id,
                          decoder_start_token_id=theirs.pad_token_id)
    model = hf.MarianMTModel(cfg).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = transformer.load(tmp_path, threads=2)
    assert isinstance(ours.tokenizer, MarianTokenizer)
    src = np.array([ours.tokenizer.encode("hello world")])
    out = ours.generate(src, max_new_tokens=5, num_beams=2)
    with torch.no_grad():
        want = model.generate(torch.tensor(src), max_new_tokens=5, num_beams=2).numpy()
    np.testing.assert_array_equal(out, want)
    assert isinstance(ours.tokenizer.decode(out[0]), str)
