"""The base of the three model stacks (EncoderModel, DecoderModel, Seq2SeqModel): what they share
around the one stack runner (transformer.models.block.run).

  placement      `to(device, dtype)` moves the weights through the backend chosen for them
                 (transformer.ops.backend: packed for the CPU's int8 / bfloat16, cast for the
                 GPU); `kernels` is that backend object; `stack(prefix)` the blocks' weights
  outputs        `_padded` scatters packed rows back to the padded (B, T) shape; `_output`,
                 `_host_output`, `_device_outputs` return arrays where the model lives
  tables         tables derived from the weights or the config on the model's device, made on
                 first use and dropped when the model moves: `_cached`, `_grown` (grown by
                 doubling: rotary cos / sin, sinusoids), `_relative_bias` (relative position
                 biases per stack, rebuilt when their table changes)
  kind           "encoder", "decoder" or "seq2seq": what the model takes and returns
  loading        `load(path, threads, tokenizer, dtype)`, every family's entry
                 (transformer.models.register_family): a config.json directory here;
                 `from_weights` places a family's weights as they stream in (place_weights:
                 transformer.weights.Lazy tensors read, packed and dropped one at a time)

No device is tested here: whatever differs between devices is a method of the backend."""
import os

import numpy as np

from .. import ops
from .._threads import resolve_threads
from ..device import check, host_weights
from ..weights import Lazy
from . import block


def place_weights(weights, backend):
    """{name: weight placed by `backend`} (transformer.ops.backend: its place_weight packs for
    the CPU's int8 / bfloat16), each distinct value placed once so that tied tensors stay one
    array. A transformer.weights.Lazy value is read here, placed and dropped before the next
    one is read, so that a model loaded at int8 or bfloat16 never holds its float32 weights
    whole (issue 22: peak during load about the final size plus the largest tensor)."""
    moved, out = {}, {}
    for name, value in weights.items():
        if id(value) not in moved:
            moved[id(value)] = _place(backend, name, value)
            if isinstance(value, Lazy) and value.ndim == 2:
                _trim_heap()  # the temporaries of this weight, before the next is read
        out[name] = moved[id(value)]
    return out


def _trim_heap():
    """Give the C heap's free pages back to the system (glibc's malloc_trim(0)): the float32
    temporaries of packing, freed, would otherwise stay resident in the heap beside the packed
    model (glibc serves allocations under its dynamic mmap threshold, up to 32 MiB, from the
    heap). Does nothing where the C library has no malloc_trim."""
    import ctypes
    import ctypes.util
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _place(backend, name, value):
    """One weight placed by `backend`; a Lazy one is read by the backend (np.asarray, or a
    chunk of rows at a time by PackedWeight.pack), or taken as stored."""
    if isinstance(value, Lazy) and backend.dtype == "int4" and value.ndim == 2:
        stored = value.stored()  # GGUF q4_0 / q4_K blocks: codes, scale, minimum per 32
        if stored is not None and stored[0] == "int4":
            return ops.PackedWeight.from_int4(*stored[1])  # issue 22: taken as stored
    return backend.place_weight(name, value)


class Model:
    """A model of `config` with weights {our name: array} (moved by `to`); `device` / `dtype`
    say where they are; families list the devices they run on in DEVICES. tokenizer: optional
    (encode(text) -> ids, decode(ids) -> text); threads: CPU kernel threads
    (transformer._threads.resolve_threads)."""

    DEVICES = ("cpu", "cuda")
    kind = None  # "encoder", "decoder" or "seq2seq": what the model takes and returns
    device, dtype = "cpu", "float32"
    # every output row the same bits whatever the other rows of the batch (the backend's
    # row_invariant products; set by transformer.serving.Engine, or by hand)
    batch_invariant = False

    @classmethod
    def load(cls, path, threads=None, tokenizer=None, dtype="float32"):
        """The model at `path`, the one loading signature of every family (transformer.load's
        entry; tokenizer and dtype serve the layouts that override it): here a config.json
        directory, through the family's from_pretrained(path, config_dict, threads, dtype), with
        HF's generation_config.json as the decoding defaults of a model that generates; dtype: the
        CPU compute type the weights are packed in as they are read (from_weights). Raises
        FileNotFoundError, ValueError or transformer.weights.WeightsError naming the file."""
        from .._io import read_json
        config_dict = read_json(os.path.join(path, "config.json"),
                                "JSON object (the model's config)")
        model = cls.from_pretrained(path, config_dict, threads=threads, dtype=dtype)
        if model.kind != "encoder":
            from ..generation.config import GenerationConfig
            model.generation_config = GenerationConfig.from_file(path)
        return model

    @classmethod
    def from_weights(cls, config, weights, tokenizer=None, threads=None, dtype="float32",
                     **extra):
        """cls(config, weights, tokenizer, threads, **extra) on the CPU in `dtype`, each weight
        placed as it is read (place_weights: Lazy tensors streamed, packed for int8 / bfloat16),
        so that the float32 model never exists whole. Raises ValueError for a dtype the CPU
        does not run."""
        device, dtype = check("cpu", dtype)
        weights = place_weights(weights, ops.backend(device, dtype, resolve_threads(threads)))
        return cls(config, weights, tokenizer, threads, **extra).to(device, dtype)

    def __init__(self, config, weights, tokenizer=None, threads=None):
        self.config = config
        self.tokenizer = tokenizer
        self.threads = resolve_threads(threads)
        self.weights = host_weights(weights)
        # the weights as loaded: every move places from them, so that a round trip through a
        # rounding dtype (int8, bfloat16, float16) never keeps the rounded values
        self._source = self.weights
        self._tables = {}
        self._moved()

    # -- placement --------------------------------------------------------------------------------
    def to(self, device, dtype=None):
        """Move the weights to device ("cpu" or "cuda") in dtype (default float32); returns self.
        On the CPU, dtype "int8" / "int4" / "bfloat16" packs the linear weights and word
        embeddings (transformer.ops.cpu.packs; int8 quantized per row, CTranslate2's int8; int4
        per group of 32, transformer.ops.packed) and keeps the
        rest float32. Tensors shared between names (tied embeddings and LM head) stay shared.
        Every move starts from the weights as loaded (kept on the host while the model lives
        in another dtype or on the GPU), so `dtype` never lies: int8 then float32 gives the
        loaded float32 weights back, bfloat16 then int8 quantizes the float32 ones (a model
        loaded at int8 has only its int8 weights to start from: load it at float32 to move it).
        Raises ValueError for a device this family does not run on or a dtype the device does
        not run, RuntimeError without CuPy or a GPU."""
        device, dtype = check(device, dtype)
        if device not in self.DEVICES:
            raise ValueError(f"{type(self).__name__} runs on {self.DEVICES}, not {device!r}")
        self.weights = place_weights(self._source, ops.backend(device, dtype, self.threads))
        self.device, self.dtype = device, dtype
        self._tables = {}
        self._moved()
        return self

    def _moved(self):
        """Hook: refresh what is derived from the weights after `__init__` and `to`."""

    @property
    def kernels(self):
        """The backend object (transformer.ops.backend) of the model's device, dtype, threads
        and batch_invariant: chosen once, at the first forward after loading or `to()` (or a
        change of threads or batch_invariant)."""
        k = self.__dict__.get("_kernels")
        if k is None or k.device != self.device or k.threads != self.threads \
                or k.dtype != self.dtype or k.row_invariant != self.batch_invariant:
            k = self._kernels = ops.backend(self.device, self.dtype, self.threads,
                                            self.batch_invariant)
        return k

    def stack(self, prefix=""):
        """The blocks of the stack `prefix` ("" for a one-stack model, "encoder." / "decoder.")
        with their weights looked up once per placement: transformer.models.block.layers."""
        cache = self.__dict__.get("_stacks")
        if cache is None or cache[0] is not self.weights:
            cache = self._stacks = (self.weights, {})
        found = cache[1].get(prefix)
        if found is None:
            found = cache[1][prefix] = block.layers(self.weights, prefix)
        return found

    # -- tables -----------------------------------------------------------------------------------
    def _cached(self, key, make):
        """The table `key`, make() on first use after loading or `to()`."""
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = make()
        return table

    def _grown(self, key, need, limit, make):
        """The table `key` (an array, or a tuple of arrays of equal length) covering rows
        [0, min(need, limit)) at least: make(n) on first use, remade by doubling (at least 256
        rows, never beyond limit), so that a config's huge limit costs nothing until a sequence
        is that long. Each table is replaced whole (Python threads may share the model)."""
        table = self._tables.get(key)
        rows = 0 if table is None else len(table[0] if isinstance(table, tuple) else table)
        if table is None or rows < min(need, limit):
            table = self._tables[key] = make(min(limit, max(need, 2 * rows, 256)))
        return table

    def _zero_positions(self):
        """One zero row (1, C) of the model's dtype: the position table of stacks whose
        positions act inside the attention (rotary, ALiBi, relative buckets)."""
        return self._cached("zero_positions", lambda: self.kernels.place(
            np.zeros((1, self.config.d_model), np.float32)))

    def _relative_bias(self, prefix, max_distance, bidirectional=True):
        """The relative position bias (an ops.PositionBias) of the table
        `<prefix>position_bias.relative` (H, num_buckets), or None without one; made once per
        table, its distances bounded by the config's max_position_embeddings (+ offset)."""
        table = self.weights.get(prefix + "position_bias.relative")
        if table is None:
            return None
        hit = self._tables.get(("relative", prefix))
        if hit is None or hit[0] is not table:
            cfg = self.config
            longest = cfg.max_position_embeddings + getattr(cfg, "position_offset", 0)
            hit = self._tables[("relative", prefix)] = (table, ops.PositionBias.relative(
                self.kernels.to_host(table), max_distance, bidirectional, longest))
        return hit[1]

    # -- outputs ----------------------------------------------------------------------------------
    def _padded(self, rows, flat, shape):
        """Packed rows (N, W) of the real tokens back to the padded shape (B, T, W): row j at
        flat index flat[j] of (B * T,), zeros elsewhere, as returned to the user (_output)."""
        xp = self.kernels.xp
        out = xp.zeros((shape[0] * shape[1], rows.shape[1]), rows.dtype)
        out[xp.asarray(flat)] = rows
        return self._output(out.reshape(shape[0], shape[1], -1))

    def _output(self, x):
        """A float output as returned to the user (the backend's output: float32 NumPy on the
        CPU whatever the compute type; CuPy float32 or float16 on the GPU, bfloat16 decoded to
        float32)."""
        return self.kernels.output(x)

    def _host_output(self, a):
        """A host array computed for the user (token ids, scores) as returned: where the model
        lives (the backend's from_host: a CuPy copy on the GPU; transformer.device.to_numpy
        brings it back)."""
        return self.kernels.from_host(a)

    def _device_outputs(self, out):
        """generate's result (ids, (ids, scores) or a GenerateOutput) with its arrays as the
        model returns them (_host_output)."""
        if isinstance(out, tuple):
            return tuple(self._host_output(a) for a in out)
        if hasattr(out, "sequences"):  # the attention weights stay NumPy (host-computed)
            for name in ("sequences", "scores", "sequences_scores", "token_logprobs"):
                if getattr(out, name) is not None:
                    setattr(out, name, self._host_output(getattr(out, name)))
            return out
        return self._host_output(out)
