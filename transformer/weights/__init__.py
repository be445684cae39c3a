"""Weight readers and name mapping. Loading never unpickles: safetensors and GGUF (read one tensor
at a time, as Lazy tensors, so that a model is packed as it streams in), llama2.c and
CTranslate2 files."""
from .mapping import WeightsError, check_tensors
from .lazy import Lazy, concat, materialize
from .safetensors import open_safetensors

__all__ = ["WeightsError", "check_tensors", "open_safetensors", "Lazy", "concat", "materialize"]
