"""SentencePiece tokenizers against Hugging Face's: MarianTokenizer on SentencePiece models
trained here (shared and separate vocabularies, language codes, unknown pieces, truncation),
and a Marian directory without tokenizer.json translating text end to end; T5Tokenizer on a
unigram spiece.model trained here (T5's ids: pad 0, eos 1, unk 2, no bos) against transformers'
T5Tokenizer built from that file (spaces, punctuation, unicode, sentinels, truncation, decode)."""
import json
import random

import numpy as np
import pytest

from transformer.tokenizer import MarianTokenizer, T5Tokenizer

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


def tiny_marian(path):
    """A tiny random MarianMTModel saved in `path` with the SentencePiece files of _marian_dir
    and no tokenizer.json. Returns the HF model (eval mode)."""
    import torch
    theirs = _marian_dir(path, False)
    V = max(json.loads((path / "vocab.json").read_text()).values()) + 1
    torch.manual_seed(0)
    cfg = hf.MarianConfig(vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=64,
                          pad_token_id=theirs.pad_token_id, eos_token_id=theirs.eos_token_id,
                          decoder_start_token_id=theirs.pad_token_id)
    model = hf.MarianMTModel(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def test_marian_directory_without_tokenizer_json(tmp_path, rng):
    """A saved tiny MarianMTModel with the SentencePiece files and no tokenizer.json loads its
    tokenizer and translates text (tokens equal to HF generate on the same ids)."""
    import transformer
    torch = pytest.importorskip("torch")

    model = tiny_marian(tmp_path)
    ours = transformer.load(tmp_path, threads=2)
    assert isinstance(ours.tokenizer, MarianTokenizer)
    src = np.array([ours.tokenizer.encode("hello world")])
    out = ours.generate(src, max_new_tokens=5, num_beams=2)
    with torch.no_grad():
        want = model.generate(torch.tensor(src), max_new_tokens=5, num_beams=2).numpy()
    np.testing.assert_array_equal(out, want)
    assert isinstance(ours.tokenizer.decode(out[0]), str)


T5_WORDS = ("the quick brown fox jumps over the lazy dog . , ! ? ; : ' \" ( ) - hello world "
            "translate English to German : das Haus ist wunderbar café naïve über straße "
            "東京 日本語 emoji 😀 don't it's 3.14 $5 e-mail summarize : a b c").split()
T5_TEXTS = ["hello world", "  hello   world  ", "", " ", "\t\n", "Hello, World!",
            "translate English to German: The house is wonderful.",
            "<extra_id_0> hello <extra_id_1>. world <extra_id_2>", "hello<extra_id_5>world",
            "<extra_id_0><extra_id_1>", "<extra_id_99>", "<extra_id_100> <extra_id_-1>",
            "</s> hi <pad> <unk>", "hello </s>", "東京 café 😀 zebra quartz", "naïve über",
            "ｆｕｌｌ width ﬁ ½", "a\tb\nc\rd", "x\u00a0y\u3000z\u2028w", "a\x0bb\x0cc",
            "a\u200bb\ufeffc\x00d", "e\u0301 a\u0344b", "\u2581hello \u2581\u2581x a\u2581b",
            "don't stop — it's 3.14!", "((nested)) [brackets] {braces}",
            "summarize: " + "the lazy dog sleeps " * 30]


def train_t5_spiece(path):
    """Write path/spiece.model: a SentencePiece unigram model of 150 pieces trained on generated
    text with T5's special ids (pad 0, eos 1, unk 2, no bos). Returns path."""
    gen = random.Random(0)  # training data only: fixed, so the vocabulary is reproducible
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = [" ".join(gen.choice(T5_WORDS) for _ in range(gen.randint(3, 14)))
             for _ in range(1500)]
    lines += ["".join(gen.choice(letters) for _ in range(gen.randint(2, 9)))
              for _ in range(2000)]
    (path / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(path / "corpus.txt"),
                                   model_prefix=str(path / "spiece"), vocab_size=150,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, character_coverage=0.995, minloglevel=2)
    for name in ("corpus.txt", "spiece.vocab"):
        (path / name).unlink()
    return path


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A directory holding only spiece.model (train_t5_spiece)."""
    return train_t5_spiece(tmp_path_factory.mktemp("t5-spiece"))


def _hf_t5(path, **kw):
    """transformers' T5Tokenizer built from the spiece.model in `path` (transformers 5: a
    tokenizers Unigram converted from it; the reference of T5Tokenizer)."""
    if int(hf.__version__.split(".")[0]) < 5:
        pytest.skip(f"the reference is transformers 5's T5Tokenizer (installed: "
                    f"{hf.__version__}, whose slow T5Tokenizer decodes differently)")
    return hf.T5Tokenizer.from_pretrained(str(path), **kw)


def test_t5_tokenizer_matches_hf(t5_dir):
    theirs = _hf_t5(t5_dir)
    ours = T5Tokenizer(t5_dir, max_length=10 ** 6)
    assert (ours.vocab_size, ours.pad_token_id, ours.eos_token_id, ours.unk_token_id) == \
        (len(theirs), 0, 1, 2) == (150 + 100, theirs.pad_token_id, theirs.eos_token_id,
                                   theirs.unk_token_id)
    for i in (0, 1, 99):
        assert ours.sentinel_token_id(i) == theirs.convert_tokens_to_ids(f"<extra_id_{i}>") \
            == ours.vocab_size - 1 - i
    for text in T5_TEXTS:
        want = theirs(text).input_ids
        assert ours.encode(text) == want, (text, theirs.convert_ids_to_tokens(want))
        assert ours.decode(want) == theirs.decode(want, skip_special_tokens=True), text
    batch = ours(T5_TEXTS[:6])
    want = theirs(T5_TEXTS[:6], padding=True)
    np.testing.assert_array_equal(batch["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], want["attention_mask"])
    for n in (1, 2, 5, 9):  # truncation keeps </s> last
        short = T5Tokenizer(t5_dir, max_length=n)
        for text in T5_TEXTS:
            assert short.encode(text) == theirs(text, truncation=True, max_length=n).input_ids
    # decode of ids a model may produce: every piece, sentinel and special id in any order
    ids = list(range(ours.vocab_size))
    random.Random(1).shuffle(ids)
    for k in range(0, len(ids), 7):
        chunk = ids[k:k + 7]
        assert ours.decode(chunk) == theirs.decode(chunk, skip_special_tokens=True), chunk


def test_t5_tokenizer_config_and_errors(t5_dir, tmp_path):
    """tokenizer_config.json's extra_ids and clean_up_tokenization_spaces are read as HF reads
    them; bad input raises naming the argument or file."""
    (tmp_path / "spiece.model").write_bytes((t5_dir / "spiece.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"extra_ids": 10, "clean_up_tokenization_spaces": True}), encoding="utf-8")
    theirs = _hf_t5(tmp_path)
    ours = T5Tokenizer(tmp_path, max_length=512)
    assert ours.vocab_size == len(theirs) == 160
    for text in T5_TEXTS + ["hello , world . don ' t ! ? it 's"]:
        want = theirs(text).input_ids
        assert ours.encode(text) == want, text
        assert ours.decode(want) == theirs.decode(want, skip_special_tokens=True), text
    assert T5Tokenizer(tmp_path / "spiece.model", 8, extra_ids=3).vocab_size == 153
    with pytest.raises(IndexError, match="ids must lie in \\[0, 160\\)"):
        ours.decode([160])
    with pytest.raises(TypeError, match="texts\\[1\\] must be a str"):
        ours(["fine", b"bytes"])
    with pytest.raises(TypeError, match="text must be a str"):
        ours.encode(None)
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        T5Tokenizer(tmp_path, max_length=0)
    with pytest.raises(ValueError, match="extra_ids must be an integer >= 0"):
        T5Tokenizer(tmp_path, 8, extra_ids=-1)
    (tmp_path / "tokenizer_config.json").write_text('{"extra_ids": "many"}', encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer_config.json: extra_ids must be"):
        T5Tokenizer(tmp_path, 8)
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        T5Tokenizer(tmp_path / "missing", 8)
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot read"):
        T5Tokenizer(tmp_path / "spiece.model", 8, extra_ids=0)
    plain = tmp_path / "plain"  # a SentencePiece model without T5's special pieces
    plain.mkdir()
    (plain / "c.txt").write_text("\n".join(T5_WORDS * 30), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(plain / "c.txt"), model_prefix=str(plain / "spiece"),
                                   vocab_size=60, model_type="unigram", minloglevel=2)
    with pytest.raises(ValueError, match="has no <pad> piece"):
        T5Tokenizer(plain, 8)


def test_t5_directory_selects_spiece(t5_dir, tmp_path):
    """hf_tokenizer (the one selection place) picks T5Tokenizer for a directory with
    spiece.model and no tokenizer.json; tokenizer.json still wins when present."""
    from transformer.tokenizer import Tokenizer, hf_tokenizer

    (tmp_path / "spiece.model").write_bytes((t5_dir / "spiece.model").read_bytes())
    tok = hf_tokenizer(str(tmp_path), 64)
    assert isinstance(tok, T5Tokenizer) and tok.max_length == 64
    _hf_t5(tmp_path).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert isinstance(hf_tokenizer(str(tmp_path), 64), Tokenizer)
