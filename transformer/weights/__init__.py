"""Weight readers and name mapping. Loading never unpickles: safetensors only (more formats come
with the families that need them)."""
from .mapping import WeightsError, check_tensors
from .safetensors import read_safetensors

__all__ = ["WeightsError", "check_tensors", "read_safetensors"]
