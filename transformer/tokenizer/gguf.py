"""The tokenizer a GGUF file describes in its metadata ("tokenizer.ggml.*", llama.cpp's
src/llama-vocab.cpp reads the same keys), built with the `tokenizers` library:

- model "gpt2": byte-level BPE from tokens and merges ("a b" strings), GPT-2's split (pre
  "gpt-2" / "default") or Llama 3's (pre "llama-bpe", "llama3", "llama-v3"; the regex of
  llama-vocab.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3);
- model "llama": SentencePiece BPE from tokens and scores: merges recovered from the vocabulary,
  best merged token first (as llama.cpp's llm_tokenizer_spm merges the best-scoring pair, and
  transformers' generate_merges orders them), byte fallback to the <0xNN> tokens, "▁" for a
  space and one prepended to the text (also before leading spaces, as llama.cpp), BOS added unless tokenizer.ggml.add_bos_token is false.
Control tokens (token type 3) are special: kept whole and skipped when decoding; user-defined
ones (type 4) are kept whole. The conversion follows transformers' integrations/gguf
(gguf_tokenizer_mapping.py) for these two models."""
from .hf import Tokenizer

__all__ = ["gguf_tokenizer"]

CONTROL, USER_DEFINED = 3, 4
GPT2_PRE = ("gpt-2", "default", None)
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _merges_from_scores(tokens, scores):
    """SentencePiece merges implied by a vocabulary and its scores: every split of a token into
    two tokens of the vocabulary, best merged score first (ties: shorter left part first, then
    vocabulary order), as transformers' generate_merges."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score in zip(tokens, scores):
        local = [(token[:k], token[k:], score) for k in range(1, len(token))
                 if token[:k] in vocab and token[k:] in vocab]
        merges += sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def gguf_tokenizer(metadata, max_length, source="GGUF file"):
    """The transformer.tokenizer.Tokenizer of a GGUF file's metadata ({key: value}, as
    transformer.weights.gguf.read_gguf returns it), truncating to max_length tokens; None when
    the file has no tokens. Raises ValueError naming the key for a tokenizer model or
    pre-tokenizer this does not build (model: gpt2, llama; pre: GPT-2's and Llama 3's)."""
    from tokenizers import (AddedToken, Regex, decoders, models, normalizers, pre_tokenizers,
                            processors)
    from tokenizers import Tokenizer as HFTokenizer

    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        return None
    kind = metadata.get("tokenizer.ggml.model")
    types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    if kind == "gpt2":
        pre = metadata.get("tokenizer.ggml.pre")
        if pre not in GPT2_PRE + LLAMA3_PRE:
            raise ValueError(f"{source}: tokenizer.ggml.pre {pre!r} is not supported (GPT-2's "
                             f"{GPT2_PRE[:2]} and Llama 3's {LLAMA3_PRE})")
        vocab = {t: i for i, t in enumerate(tokens)}
        merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges") or ()]
        # a merge whose parts or result is not a token can never apply (llama.cpp skips it too)
        merges = [m for m in merges if len(m) == 2 and m[0] in vocab and m[1] in vocab
                  and m[0] + m[1] in vocab]
        tok = HFTokenizer(models.BPE(vocab, merges))
        if pre in LLAMA3_PRE:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
    elif kind == "llama":
        scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        unk = metadata.get("tokenizer.ggml.unknown_token_id")
        tok = HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                                     _merges_from_scores(tokens, scores), fuse_unk=True,
                                     byte_fallback=True,
                                     unk_token=tokens[unk] if unk is not None else None))
        # "▁" prepended to the text always (llama.cpp's add_space_prefix, run.c's dummy
        # prefix), also before leading spaces, where Metaspace(prepend_scheme="first") adds none
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                               normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", True))
    else:
        raise ValueError(f"{source}: tokenizer.ggml.model {kind!r} is not supported (gpt2, "
                         "llama)")
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, k in zip(tokens, types) if k == CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False) for t, k in zip(tokens, types)
                    if k == USER_DEFINED])
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B",
            special_tokens=[(tokens[bos], bos)])
    pad = metadata.get("tokenizer.ggml.padding_token_id")
    pad = pad if pad is not None else metadata.get("tokenizer.ggml.eos_token_id", 0)
    return Tokenizer.wrap(tok, max_length, pad_id=pad, pad_token=tokens[pad])
