"""Checks and packing of (B, T) token batches, shared by every model family."""
import numpy as np

from ..device import to_numpy


def check_batch(input_ids, attention_mask, vocab_size, name="input_ids",
                mask_name="attention_mask"):
    """Validate a batch: input_ids (B, T), T >= 1, integers in [0, vocab_size); attention_mask
    None or (B, T) of 0/1 (or bool) with at least one real token a row; NumPy or CuPy (copied
    to the host: batches are checked and packed there).
    Returns (ids int64 (B, T), mask bool (B, T), lengths (B,) int64), NumPy. Raises TypeError,
    ValueError or IndexError naming the argument."""
    ids = np.asarray(to_numpy(input_ids))
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {ids.dtype}")
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, T) with B >= 1 and T >= 1, got "
                         f"{ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise IndexError(f"{name} must lie in [0, {vocab_size}), got values in "
                         f"[{ids.min()}, {ids.max()}]")
    if attention_mask is None:
        mask = np.ones(ids.shape, bool)
    else:
        mask = np.asarray(to_numpy(attention_mask))
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
            raise TypeError(f"{mask_name} must be an integer or bool array, got {mask.dtype}")
        if mask.shape != ids.shape:
            raise ValueError(f"{mask_name} must have the shape of {name} {ids.shape}, got "
                             f"{mask.shape}")
        if np.any((mask != 0) & (mask != 1)):
            raise ValueError(f"{mask_name} must hold only 0 and 1")
        mask = mask.astype(bool)
    lens = mask.sum(1)
    if len(lens) and lens.min() == 0:
        raise ValueError(f"{mask_name} row {int(np.argmin(lens))} has no real token")
    return ids.astype(np.int64), mask, lens


def check_tokens(tokens, vocab_size, rows):
    """The new tokens of a decode step: tokens (R,) integers in [0, vocab_size), 1 <= R <= rows
    (the cache's rows). Returns them as C-contiguous int64 NumPy. Raises ValueError / IndexError naming
    `tokens`."""
    if type(tokens) is not np.ndarray or tokens.dtype != np.int64 \
            or not tokens.flags.c_contiguous:
        tokens = np.asarray(to_numpy(tokens))
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got {tokens.dtype}")
        tokens = np.ascontiguousarray(tokens, np.int64)
    if tokens.ndim != 1 or not 0 < len(tokens) <= rows:
        raise ValueError(f"tokens must be 1 to {rows} integers (one per cache row), got shape "
                         f"{tokens.shape}")
    values = tokens.tolist()  # a few rows: Python's min / max beat two NumPy reductions
    if min(values) < 0 or max(values) >= vocab_size:
        raise IndexError(f"tokens must lie in [0, {vocab_size}), got values in "
                         f"[{min(values)}, {max(values)}]")
    return tokens


def check_no_holes(mask, mask_name="attention_mask"):
    """Raise ValueError when a row of the (B, T) bool mask has a hole (a 0 between 1s): models
    with relative position buckets (T5, MPNet) measure distances over the packed real tokens,
    where HF measures them over columns, so such a mask would silently give other values
    (padding on the left or the right is no hole)."""
    first = mask.argmax(1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(1)
    holes = np.flatnonzero(mask.sum(1) != last - first + 1)
    if len(holes):
        raise ValueError(f"{mask_name} row {int(holes[0])} has a hole (a 0 between real "
                         "tokens): this model's relative positions count the real tokens, HF "
                         "counts columns; pad only on the left or the right")


def pack(mask):
    """Packing of the real tokens of a (B, T) bool mask: flat indices into (B*T,), cu_seqlens
    (B+1,) int64, and each real token's column in the padded batch (its HF position id)."""
    flat = np.flatnonzero(mask.ravel())
    cu = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    columns = np.tile(np.arange(mask.shape[1], dtype=np.int64), mask.shape[0])[flat]
    return flat, cu, columns
