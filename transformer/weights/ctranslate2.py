"""Read CTranslate2 model.bin files (OpenNMT/CTranslate2, python/ctranslate2/specs/model_spec.py
writes them, src/models/model.cc reads them): little-endian uint32 binary version; for version
>= 2 a string spec name and a uint32 spec revision (strings: uint16 length including a final
NUL, the bytes, the NUL); uint32 variable count; per variable a string name, uint8 rank, rank
uint32 dimensions, then (version >= 4) uint8 type id and uint32 byte count, or (version < 4)
uint8 item size and uint32 item count, then the raw data; then (version >= 3) uint32 alias count
and alias/target string pairs. Quantized weights (int8, int16) come with a `<name>_scale`
variable (per output row or one scalar): the float value is q / scale."""
import math
import os
import struct

import numpy as np

from ..ops.packed import PackedWeight
from .mapping import WeightsError

# CTranslate2 DataType ids (include/ctranslate2/types.h) -> NumPy dtypes
TYPE_IDS = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2"}
ITEM_SIZES = {4: "<f4", 2: "<i2", 1: "i1"}


def read_ctranslate2(path, int8=False):
    """Spec and variables of a CTranslate2 model.bin.

    Returns (spec, revision, variables): spec name (e.g. "TransformerBase"), spec revision, and
    {name: float32 array} with aliases resolved and every quantized weight dequantized (its
    _scale removed), or with int8=True every quantized 2-D weight as a
    transformer.ops.packed.PackedWeight: int8 ones taken as stored (integers and row scales),
    int16 ones requantized per row to int8 from their integers (q8 = round(q16 * 127 /
    max|q16|), the scale multiplied by the same factor, in float64); variables shared by an
    alias stay one object. Raises FileNotFoundError, or WeightsError for an unsupported binary version,
    an unknown data type or a truncated file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        try:
            values = struct.unpack_from("<" + fmt, data, pos)
        except struct.error:
            raise WeightsError(f"{path}: truncated CTranslate2 model (at byte {pos})")
        pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string():
        nonlocal pos
        n = take("H")
        if n == 0 or pos + n > len(data):
            raise WeightsError(f"{path}: truncated CTranslate2 model (string at byte {pos})")
        try:
            s = data[pos:pos + n - 1].decode("utf-8")
        except UnicodeDecodeError:
            raise WeightsError(f"{path}: corrupt CTranslate2 model (bad string at byte {pos})")
        pos += n
        return s

    version = take("I")
    if not 1 <= version <= 6:
        raise WeightsError(f"{path}: CTranslate2 binary version {version} is not supported (1-6)")
    spec, revision = (string(), take("I")) if version >= 2 else ("TransformerBase", 1)
    raw = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        shape = take(f"{rank}I") if rank else ()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if version >= 4:
            type_id, n_bytes = take("B"), take("I")
            if type_id not in TYPE_IDS:
                raise WeightsError(f"{path}: {name}: unsupported CTranslate2 data type {type_id}")
            dtype = np.dtype(TYPE_IDS[type_id])
        else:
            item, count = take("B"), take("I")
            if item not in ITEM_SIZES:
                raise WeightsError(f"{path}: {name}: unsupported item size {item}")
            dtype, n_bytes = np.dtype(ITEM_SIZES[item]), item * count
        if pos + n_bytes > len(data) or n_bytes != dtype.itemsize * math.prod(shape):
            raise WeightsError(f"{path}: {name}: truncated or inconsistent data")
        raw[name] = np.frombuffer(data, dtype, n_bytes // dtype.itemsize, pos).reshape(shape)
        pos += n_bytes
    if version >= 3 and pos < len(data):
        for _ in range(take("I")):
            alias, target = string(), string()
            if target not in raw:
                raise WeightsError(f"{path}: alias {alias!r} of unknown variable {target!r}")
            raw[alias] = raw[target]
    if pos != len(data):
        raise WeightsError(f"{path}: {len(data) - pos} unexpected bytes after the variables")
    out, done = {}, {}  # done: id of a raw array -> its converted value (aliases stay shared)
    for name, value in raw.items():
        if name.endswith("_scale") and name[:-6] in raw:
            continue
        scale = raw.get(name + "_scale")
        if scale is None and value.dtype.kind in "iu" and value.ndim:
            raise WeightsError(f"{path}: {name}: integer data ({value.dtype}) without a "
                               f"{name}_scale variable (float weights expected)")
        if scale is not None and scale.size not in (1, len(value) if value.ndim else 1):
            raise WeightsError(f"{path}: {name}_scale has {scale.size} values for {name} of "
                               f"shape {value.shape} (one per row, or one)")
        if id(value) not in done:
            done[id(value)] = _convert(value, scale, int8)
        out[name] = done[id(value)]
    return spec, revision, out


def _convert(value, scale, int8):
    """One variable as float32 (dequantized: value / scale), or as a PackedWeight (see
    read_ctranslate2)."""
    if scale is None:
        return value.astype(np.float32)
    scale = scale.astype(np.float32)
    if int8 and value.ndim == 2 and value.dtype.kind == "i":
        rows = np.broadcast_to(scale, (value.shape[0],)).astype(np.float64)
        if value.dtype != np.int8:  # int16: requantize each row to [-127, 127]
            amax = np.abs(value).max(axis=1).astype(np.float64) if value.shape[1] else 0
            factor = np.where(amax > 0, 127.0 / np.maximum(amax, 1), 1.0)
            value = np.clip(np.rint(value * factor[:, None]), -127, 127).astype(np.int8)
            rows = rows * factor
        return PackedWeight.from_int8(value, rows.astype(np.float32))
    value = value.astype(np.float32)
    return value / (scale.reshape(-1, *([1] * (value.ndim - 1))) if scale.ndim else scale)
