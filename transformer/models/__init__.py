"""Model families. Each family is one module whose model class registers itself with
`register_family`, for the HF config.json `model_type` (or `architectures`) values it loads, or
for a file layout of its own (`detect(path)`: llama2.c checkpoints, CTranslate2 directories),
so a new architecture is one new file (CTranslate2's register_loader idea). Every family loads
the same way: `cls.load(path, threads=None, tokenizer=None, dtype="float32")` returns the model
(transformer.models.base.Model.load reads a config.json directory through the class's
`from_pretrained(path, config_dict, threads)`; a layout family overrides `load`)."""
import os

_FAMILIES = {}  # model_type -> family class
_LAYOUTS = []  # (name, detect(path) -> bool, family class), in registration order


def register_family(*model_types, layout=None, detect=None):
    """Class decorator, the one way a family registers: it loads config.json files whose
    model_type is one of `model_types`, or (detect given) the paths for which detect(path) is
    true, a layout named `layout`. The class loads with `load(path, threads, tokenizer, dtype)`
    (see the module docstring)."""
    def wrap(cls):
        for t in model_types:
            _FAMILIES[t] = cls
        if detect is not None:
            _LAYOUTS.append((layout or cls.__name__, detect, cls))
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


def family_for_path(path):
    """The family class that loads `path`: the first registered layout whose detect(path) is
    true, else the family of path/config.json (family_for). Raises FileNotFoundError for a
    missing directory or config.json, ValueError for a bad config.json or unknown family."""
    from . import ctranslate2, gguf, llama2c  # noqa: F401  (registers the layouts)
    from .._io import read_json

    for _, detect, cls in _LAYOUTS:
        if detect(path):
            return cls
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path}: no config.json")
    return family_for(read_json(config_path, "JSON object (the model's config)"), config_path)


def load(path, threads=None, tokenizer=None, dtype="float32"):
    """The model at `path` loaded by its family (family_for_path), on the CPU in `dtype`
    (packed as the weights are read; None: the file's own default, float32 but for a GGUF file
    of q8_0 blocks; a CTranslate2 int8 model kept as stored at int8), tokenizer a layout's
    tokenizer file (llama2.c); transformer.load moves the model afterwards when needed."""
    return family_for_path(path).load(path, threads=threads, tokenizer=tokenizer, dtype=dtype)
