"""Name mapping with shape checks: every expected tensor must be present with its exact shape,
and anything left over that is not known to be ignorable is reported (nanoGPT's from_pretrained
asserts every shape the same way)."""


class WeightsError(ValueError):
    """A weight file that does not fit the model: missing, unexpected or mis-shaped tensors, or a
    file that cannot be read. The message lists every problem at once."""


def check_tensors(tensors, expected, ignore=(), source="weights"):
    """Check `tensors` ({name: array}) against `expected` ({name: shape tuple}).

    ignore: name prefixes or suffixes that may be present and are dropped (e.g. "pooler.",
    ".position_ids"). Returns {name: array} holding exactly the expected names.
    Raises WeightsError listing missing, unexpected and mismatched tensors (name, expected shape,
    found shape), and NumPy or Lazy tensors of a non-floating dtype (integer bit patterns are no
    weights)."""
    import numpy as np

    from .lazy import Lazy

    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected
                  and not any(n.startswith(p) or n.endswith(p) for p in ignore)]
    mismatched = [(n, tuple(expected[n]), tuple(tensors[n].shape)) for n in expected
                  if n in tensors and tuple(tensors[n].shape) != tuple(expected[n])]
    wrong_dtype = [(n, tensors[n].dtype) for n in expected if n in tensors
                   and isinstance(tensors[n], (np.ndarray, Lazy))
                   and not np.issubdtype(tensors[n].dtype, np.floating)]
    if missing or unexpected or mismatched or wrong_dtype:
        lines = [f"{source} do not match the model:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:20])
                         + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:20])
                         + (" ..." if len(unexpected) > 20 else ""))
        for n, want, got in mismatched:
            lines.append(f"  shape mismatch: {n}: expected {want}, found {got}")
        for n, dtype in wrong_dtype:
            lines.append(f"  dtype: {n}: expected a floating dtype, found {dtype}")
        raise WeightsError("\n".join(lines))
    return {n: tensors[n] for n in expected}
