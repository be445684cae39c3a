"""Tensors read when they are used, so that a loader streams: a family maps names and shapes over
`Lazy` tensors, and each is read (and converted to float32) only when the model places it, one
at a time, then packed (int8 / bfloat16) and dropped, so that the float32 model never exists
whole (transformer.models.base.place_weights).

A Lazy tensor keeps `shape` and `dtype` (what the file holds, converted: float32 for floating
tensors) without reading; `.T` and `concat` (along rows) stay lazy; every other NumPy use (a
ufunc, np.asarray, a method such as reshape, indexing) reads it then, so a family written for
NumPy arrays works unchanged. A tensor read from quantized blocks (GGUF) also keeps `stored`:
the blocks as stored, so that a compute type holding that layout exactly can take them without
a float32 round trip; row permutations and row concatenations keep them, a transpose does not."""
import numpy as np

__all__ = ["Lazy", "concat", "materialize"]


class Lazy(np.lib.mixins.NDArrayOperatorsMixin):
    """A tensor of `shape` whose float32 (or, for integer buffers, integer) values come from
    `read()` when used.

    shape: tuple of ints; dtype: the NumPy dtype `read()` returns; read: () -> ndarray of that
    shape and dtype (a fresh array or a read-only view of a memory map; never kept here, so
    each use reads again); stored: optional () -> (kind, arrays): the quantized blocks as
    stored, row-major over the rows of `shape` (kind "int4": codes (O, K) uint8 in 0..15,
    scale and minimum (O, K // 32) float32, value = code * scale + minimum; kind "int8":
    q (O, K) int8 and scale (O, K // 32) float32, value = q * scale); name: for messages;
    read_rows / read_cols: optional (start, stop) -> the rows / columns [start, stop) of
    read() (2-D), so that a packer reads a large table a chunk of rows at a time, also through
    a transpose (a row selection or a concatenation has none)."""

    __array_priority__ = 100

    def __init__(self, shape, dtype, read, stored=None, name="tensor", read_rows=None,
                 read_cols=None):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._read, self._stored, self.name = read, stored, name
        # (start, stop) -> rows [start, stop) as read() gives them, or None: the packers read a
        # large table in chunks of rows (transformer.ops.PackedWeight.pack)
        self.read_rows = read_rows
        self._read_cols = read_cols  # (start, stop) -> columns [start, stop): the transpose's rows

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))

    def __len__(self):
        return self.shape[0]

    def read(self):
        """The values, read now (float32 for floating tensors)."""
        return self._read()

    def stored(self):
        """(kind, arrays) of the quantized blocks as stored (see the class docstring), or None
        when the tensor is not held in blocks (or was transposed)."""
        return None if self._stored is None else self._stored()

    def __array__(self, dtype=None, copy=None):
        a = self._read()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = [np.asarray(x) if isinstance(x, Lazy) else x for x in inputs]
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getitem__(self, index):
        return self._read()[index]

    def __getattr__(self, name):  # reshape, astype, swapaxes, ...: on the values
        if name.startswith("__") or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._read(), name)

    @property
    def T(self):
        """The transpose, lazily (a transposed transpose is the tensor itself)."""
        if self.ndim < 2:
            return self
        original = self.__dict__.get("_transposed_of")
        if original is not None:
            return original
        t = Lazy(self.shape[::-1], self.dtype, lambda: self._read().T, name=self.name + ".T",
                 read_rows=self._read_cols and (lambda a, b: self._read_cols(a, b).T),
                 read_cols=self.read_rows and (lambda a, b: self.read_rows(a, b).T))
        t._transposed_of = self
        return t

    def rows(self, index):
        """Rows `index` (an int array over the first axis) of a 2-D tensor, lazily; the stored
        blocks (when any) are taken row for row."""
        index = np.asarray(index, np.int64)
        stored = None
        if self._stored is not None:
            def stored():
                kind, arrays = self._stored()
                return kind, tuple(a[index] for a in arrays)
        return Lazy((len(index),) + self.shape[1:], self.dtype, lambda: self._read()[index],
                    stored, self.name)

    def __repr__(self):
        return f"Lazy({self.name}, shape={self.shape}, dtype={self.dtype})"


def concat(parts, axis=0):
    """np.concatenate(parts, axis), lazily when every part is Lazy and axis is 0 (the rows of a
    fused QKV or gate/up weight); the stored blocks are concatenated when every part has the
    same kind."""
    if axis != 0 or not all(isinstance(p, Lazy) for p in parts):
        return np.concatenate([np.asarray(p) for p in parts], axis)
    tails = {p.shape[1:] for p in parts}
    if len(tails) != 1:
        raise ValueError(f"cannot concatenate rows of shapes {[p.shape for p in parts]}")
    shape = (sum(p.shape[0] for p in parts),) + tails.pop()
    stored = None
    if all(p._stored is not None for p in parts):
        def stored():
            blocks = [p.stored() for p in parts]
            if len({kind for kind, _ in blocks}) != 1:
                return None
            return blocks[0][0], tuple(np.concatenate(a) for a in zip(*(b for _, b in blocks)))
    return Lazy(shape, np.result_type(*(p.dtype for p in parts)),
                lambda: np.concatenate([p.read() for p in parts]), stored,
                "+".join(p.name for p in parts))


def materialize(value):
    """A Lazy tensor read now (any other value as it is)."""
    return value.read() if isinstance(value, Lazy) else value
