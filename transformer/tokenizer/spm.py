"""The optional `sentencepiece` package, which the Marian and T5 tokenizers need."""


def sentencepiece_module(what):
    """The sentencepiece module, or ImportError saying that `what` needs it."""
    try:
        import sentencepiece
    except ImportError as e:
        raise ImportError(f"{what} without tokenizer.json need the sentencepiece package "
                          "(pip install sentencepiece)") from e
    return sentencepiece


