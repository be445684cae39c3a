"""Model families. Each family is one module that registers itself for the HF `model_type` and
`architectures` it can load (CTranslate2's register_loader idea), or for a file layout of its
own (llama2.c checkpoints, CTranslate2 directories), so a new architecture is one new file."""
_FAMILIES = {}
_LAYOUTS = []  # (name, detect(path) -> bool, family class), in registration order


def register_layout(name, detect):
    """Class decorator: the decorated family loads paths for which detect(path) is true (a
    layout other than an HF directory). The class provides
    `from_layout(path, threads, tokenizer, dtype)`."""
    def wrap(cls):
        _LAYOUTS.append((name, detect, cls))
        return cls
    return wrap


def layout_for(path):
    """The family class registered for the layout of `path`, or None (an HF directory)."""
    from . import ctranslate2, llama2c  # noqa: F401  (registers the layouts)

    for _, detect, cls in _LAYOUTS:
        if detect(path):
            return cls
    return None


def register_family(*model_types):
    """Class decorator: the decorated family loads config.json files whose model_type is one of
    `model_types`. The class provides `from_pretrained(path, config_dict, threads)`."""
    def wrap(cls):
        for t in model_types:
            _FAMILIES[t] = cls
        return cls
    return wrap


def family_for(config_dict, source="config.json"):
    """The family class for an HF config dict (chosen by model_type, else by architectures).
    Raises ValueError naming the unknown family and the known ones."""
    from . import bart, bert, bloom, gpt2, llama, mpnet, t5, transformer2017  # noqa: F401  (registers the families)

    model_type = config_dict.get("model_type")
    if isinstance(model_type, str) and model_type in _FAMILIES:
        return _FAMILIES[model_type]
    archs = config_dict.get("architectures") or ()
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ValueError(f"{source}: architectures must be a list of strings, got {archs!r}")
    for arch in archs:
        for t, cls in _FAMILIES.items():
            if arch.lower().startswith(t):
                return cls
    raise ValueError(f"{source}: unknown model family (model_type={model_type!r}, "
                     f"architectures={config_dict.get('architectures')!r}); supported: "
                     f"{sorted(_FAMILIES)}")
