"""The one kernel interface for direct callers: every op checks its arguments here, once, then
runs on the backend object of where its operands live (transformer.ops.choose.backend_for:
NumPy arrays on CPUBackend, csrc/cpu; CuPy arrays on CUDABackend, csrc/cuda), the same objects
a placed model calls without these checks; the backend files hold only the math.

Conventions: on the CPU activations are float32 (other float dtypes are converted; anything else
is a TypeError); on the GPU every operand of an op is a CuPy array of one dtype, float32, float16
or bfloat16 (CuPy has no bfloat16 dtype: bfloat16 tensors are uint16 arrays of bf16 bits), and
index arrays may be NumPy or CuPy; shapes use the letters of DESIGN.md (B batch, T queries,
S keys, C width, H heads, D head_dim, N packed rows). Every op takes `threads=None` (see transformer._threads).
Errors: TypeError for a wrong dtype, ValueError for a wrong rank, shape or value, IndexError for
an index out of range; the message names the argument and what was expected.
"""
import math

import numpy as np

from .._threads import blas_single_threaded
from .backend import VarlenPlan, on_device
from .choose import backend, backend_for
from .packed import PackedWeight
from .position_bias import PositionBias

__all__ = ["linear", "bias_act", "add", "gelu", "gelu_tanh", "relu", "silu", "layer_norm",
           "rms_norm", "softmax", "embedding", "rotary", "rotary_tables", "sinusoid_table",
           "swiglu", "attention",
           "attention_varlen", "decode_attention", "beam_topk", "ACTIVATIONS",
           "GATED_ACTIVATIONS", "PackedWeight", "PositionBias", "backend", "backend_for",
           "on_device", "VarlenPlan"]

ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")
GATED_ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")  # ops.swiglu


def array_module(a):
    """numpy, or cupy for a CuPy array."""
    if on_device(a):
        from . import cuda
        return cuda.cupy()
    return np


def _empty(like, shape):
    """An uninitialised array of `shape` on like's device, with like's dtype."""
    return array_module(like).empty(shape, like.dtype)


def _device_array(name, a, ndim, min_ndim, like):
    from . import cuda
    if not on_device(a):
        raise TypeError(f"{name} must be a CuPy array on the GPU like the op's other operands, "
                        f"got {type(a).__name__}")
    if a.dtype not in cuda.SUFFIX:
        raise TypeError(f"{name} must be float32, float16 or bfloat16 (uint16 bits) on the GPU, "
                        f"got {a.dtype}")
    if like is not None and a.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the op's other operands have "
                        f"{like.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if min_ndim is not None and a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {a.shape}")
    return cuda.cupy().ascontiguousarray(a)


def _float32(name, a, ndim=None, min_ndim=None, like=None, empty_last=False):
    """a as a C-contiguous float32 array (fresh standard strides when a's are unusual), or on the
    GPU (a or `like` a CuPy array) a contiguous CuPy array of like's dtype; else a clear error
    naming `name`. With ndim / min_ndim given, an empty last axis (the features of a row) is a
    ValueError unless empty_last."""
    if type(a) is np.ndarray and a.dtype == np.float32 and a.flags.c_contiguous \
            and (like is None or type(like) is np.ndarray) and 1 not in a.shape \
            and (ndim is None or a.ndim == ndim) and (min_ndim is None or a.ndim >= min_ndim):
        pass  # the common case, already usable as it is (no length-1 axis: standard strides)
    elif on_device(a) or (like is not None and on_device(like)):
        a = _device_array(name, a, ndim, min_ndim, like)
    else:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{name} must have a floating dtype (float32 preferred), got "
                            f"{a.dtype}")
        if ndim is not None and a.ndim != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
        if min_ndim is not None and a.ndim < min_ndim:
            raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape "
                             f"{a.shape}")
        a = _standard(np.ascontiguousarray(a, dtype=np.float32))
    if (ndim or min_ndim) and a.shape[-1] == 0 and not empty_last:
        raise ValueError(f"{name} must have a non-empty last axis, got shape {a.shape}")
    return a


def _standard(a):
    """a (C-contiguous NumPy) itself, or a copy when a length-1 axis carries an odd stride
    (NumPy calls such views contiguous; BLAS would read the stride as a leading dimension)."""
    expected = a.itemsize
    for n, st in zip(reversed(a.shape), reversed(a.strides)):
        if st != expected:
            return a.copy(order="C")
        expected *= n
    return a


def _real(name, value, positive=False):
    """value as a finite float (positive: > 0), or a ValueError naming `name`."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, (bool, np.bool_)) or not math.isfinite(x) or (positive and x <= 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number, "
                         f"got {value!r}")
    return x


def _integer(name, value, low):
    """value as an int >= low, or a ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _indices(name, a, upper, shape=None, like=None):
    """a as a C-contiguous int64 array with 0 <= a < upper (on like's device), or a clear error
    naming `name`."""
    if not isinstance(a, np.ndarray) and not on_device(a):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {a.dtype}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= upper):
        raise IndexError(f"{name} must lie in [0, {upper}), got values in "
                         f"[{a.min()}, {a.max()}]")
    xp = array_module(like) if like is not None else array_module(a)
    return xp.ascontiguousarray(xp.asarray(a), dtype=np.int64)


def _activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def linear(x, weight, bias=None, activation=None, threads=None):
    """act(x @ weight^T + bias), the nn.Linear layout (Vaswani et al. 2017, section 3.3).

    x: (..., K) float; weight: (O, K) float, or a PackedWeight (CPU float32 / int8 / int4 /
    bfloat16 as a model keeps them, see transformer.ops.packed); bias: (O,) or None; activation:
    None, "relu", "gelu" (exact erf), "gelu_tanh" or "silu". Returns (..., O) float32. A float
    array: matmul through BLAS sgemm (or our skinny kernel for up to 64 rows); packed: our
    kernels, dequantization and bias fused; the activation runs on each output block while it
    is in cache."""
    x = _float32("x", x, min_ndim=1)
    packed = isinstance(weight, PackedWeight)
    if packed and on_device(x):
        raise TypeError("a PackedWeight (int8 / bfloat16) runs on the CPU only; x is a CuPy "
                        "array")
    if not packed:
        weight = _float32("weight", weight, ndim=2, like=x)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but weight expects {weight.shape[1]} "
                         f"(weight shape {weight.shape} is (out_features, in_features))")
    if bias is not None:
        bias = _float32("bias", bias, ndim=1, like=x)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
    _activation(activation)
    x2 = x.reshape(-1, x.shape[-1])
    with blas_single_threaded():
        out = backend_for(x, threads).linear(x2, weight, bias, activation)
    return out.reshape(x.shape[:-1] + (weight.shape[0],))


def bias_act(x, bias=None, activation="gelu", threads=None):
    """act(x + bias) for x (..., O), bias (O,) or None. Returns a new float32 array.
    GELU exact: 0.5 x (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016); "gelu_tanh" its tanh form."""
    x = _float32("x", x, min_ndim=1).copy()
    if bias is not None:
        bias = _float32("bias", bias, ndim=1, like=x)
        if bias.shape[0] != x.shape[-1]:
            raise ValueError(f"bias must have shape ({x.shape[-1]},), got {bias.shape}")
    _activation(activation)
    backend_for(x, threads).bias_act(x.reshape(-1, x.shape[-1]), bias, activation)
    return x


def add(a, b, threads=None):
    """a + b elementwise for two arrays of one shape (the residual add of pre-LN stacks; on the
    GPU it also serves bfloat16, which CuPy's own + would treat as integers). Returns a new
    array (float32 on the CPU, the operands' dtype on the GPU)."""
    a = _float32("a", a)
    b = _float32("b", b, like=a)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    return backend_for(a, threads).add(a, b)


def _elementwise(x, activation, threads):
    xp = array_module(x)
    return bias_act(xp.atleast_1d(x), None, activation, threads).reshape(xp.shape(x))


def gelu(x, threads=None):
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)); x (...) float. Returns float32."""
    return _elementwise(x, "gelu", threads)


def gelu_tanh(x, threads=None):
    """GELU, tanh approximation (GPT-2 "gelu_new"); x (...) float. Returns float32."""
    return _elementwise(x, "gelu_tanh", threads)


def silu(x, threads=None):
    """SiLU / swish, x sigmoid(x) (Elfwing et al. 2017); x (...) float. Returns float32."""
    return _elementwise(x, "silu", threads)


def relu(x, threads=None):
    """max(x, 0); x (...) float. Returns float32."""
    return _elementwise(x, "relu", threads)


def layer_norm(x, weight, bias, eps=1e-5, residual=None, threads=None):
    """LayerNorm(x + residual) * weight + bias over the last axis (Ba et al. 2016).

    x: (..., C) float; residual: same shape or None (the post-LN residual add, fused);
    weight, bias: (C,); eps > 0. Returns (..., C) float32."""
    x = _float32("x", x, min_ndim=1)
    C = x.shape[-1]
    weight = _float32("weight", weight, ndim=1, like=x)
    bias = _float32("bias", bias, ndim=1, like=x)
    if weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"weight and bias must have shape ({C},), got {weight.shape} and "
                         f"{bias.shape}")
    if residual is not None:
        residual = _float32("residual", residual, like=x)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have the shape of x {x.shape}, got {residual.shape}")
        residual = residual.reshape(-1, C)
    eps = _real("eps", eps, positive=True)
    out = _empty(x, x.shape)
    backend_for(x, threads).layer_norm(x.reshape(-1, C), weight, bias, eps, residual,
                                       out.reshape(-1, C))
    return out


def rms_norm(x, weight, eps=1e-6, threads=None):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (RMSNorm, Zhang & Sennrich 2019;
    HF LlamaRMSNorm). x: (..., C) float; weight: (C,); eps > 0. Returns (..., C) float32."""
    x = _float32("x", x, min_ndim=1)
    C = x.shape[-1]
    weight = _float32("weight", weight, ndim=1, like=x)
    if weight.shape != (C,):
        raise ValueError(f"weight must have shape ({C},), got {weight.shape}")
    eps = _real("eps", eps, positive=True)
    out = _empty(x, x.shape)
    backend_for(x, threads).rms_norm(x.reshape(-1, C), weight, eps, out.reshape(-1, C))
    return out


def sinusoid_table(n_positions, C, layout="paper"):
    """Sinusoidal position encodings (n_positions, C) float32 for position 0.. (Vaswani et al.
    2017, section 3.5), in the layout "paper" (PE(p, 2i) = sin, PE(p, 2i+1) = cos, frequencies
    10000^(-2i/C)), "marian" ([sin | cos], 10000^(-2i/C)) or "t2t" ([sin | cos],
    10000^(-i/(C/2 - 1)), tensor2tensor / OpenNMT / CTranslate2); computed in float64."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    half = C // 2
    if layout == "t2t":
        inv = np.exp(-math.log(10000.0) * np.arange(half) / max(half - 1, 1))
    else:
        inv = 10000.0 ** (-2.0 * np.arange(half) / C)
    ang = pos * inv[None]
    table = np.zeros((n_positions, C))
    if layout == "paper":
        table[:, 0:2 * half:2] = np.sin(ang)
        table[:, 1:2 * half:2] = np.cos(ang)
    else:
        table[:, :half] = np.sin(ang)
        table[:, half:2 * half] = np.cos(ang)
    return table.astype(np.float32)


def rotary_tables(max_positions, head_dim, theta=10000.0):
    """cos, sin tables (max_positions, head_dim/2) float32 of the rotary angles
    pos * theta^(-2i/head_dim) (RoFormer, Su et al. 2021, eq. 15), computed in float64.
    Raises ValueError for an odd head_dim or non-positive sizes."""
    head_dim = _integer("head_dim", head_dim, 2)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even and >= 2 for rotary embeddings, got {head_dim}")
    max_positions = _integer("max_positions", max_positions, 1)
    theta = _real("theta", theta, positive=True)
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(max_positions, dtype=np.float64)[:, None] * inv_freq[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotary(x, positions, cos, sin, n_heads, interleaved=False, threads=None):
    """Rotary position embedding of the first n_heads heads of each row, in place.

    x: (N, W) float32 C-contiguous, heads of D = 2 * cos.shape[1] values at columns
    [0, n_heads * D) (e.g. the Q then K heads of a fused QKV row); positions: (N,) integers in
    [0, P); cos, sin: (P, D/2) from rotary_tables. interleaved: rotate pairs (2i, 2i+1) as
    llama2.c; else pairs (i, i + D/2), HF's rotate_half. Returns x."""
    if on_device(x):  # the tables stay float32 whatever x's dtype
        if x.ndim != 2 or not x.flags.c_contiguous:
            raise TypeError("x must be a C-contiguous CuPy array of shape (N, W)")
        _device_array("x", x, 2, None, None)
        xp = array_module(x)
        cos, sin = (xp.ascontiguousarray(xp.asarray(t), dtype=np.float32) for t in (cos, sin))
    else:
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 \
                or not x.flags.c_contiguous:
            raise TypeError("x must be a C-contiguous float32 array of shape (N, W)")
        cos, sin = _float32("cos", cos, ndim=2), _float32("sin", sin, ndim=2)
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {cos.shape}, {sin.shape}")
    D = 2 * cos.shape[1]
    n_heads = _integer("n_heads", n_heads, 0)
    if n_heads * D > x.shape[1]:
        raise ValueError(f"{n_heads} heads of {D} do not fit in rows of {x.shape[1]}")
    pos = _indices("positions", array_module(positions).asarray(positions), cos.shape[0],
                   (x.shape[0],), like=x)
    backend_for(x, threads).rotary(x, pos, cos, sin, int(n_heads), bool(interleaved))
    return x


def swiglu(gate_up, threads=None, activation="silu"):
    """Gated activation act(gate) * up of a fused gate | up projection, the GLU variants of
    Shazeer 2020 ("GLU Variants Improve Transformer", eq. 5-6): activation "silu" SwiGLU (HF
    LlamaMLP; the default), "gelu" GEGLU (exact erf), "gelu_tanh" GEGLU with the tanh GELU (HF
    T5DenseGatedActDense, "gated-gelu"), "relu" ReGLU; the activation formulas of bias_act.

    gate_up: (..., 2F) float, gate first (on the GPU float32, float16 or bfloat16 as the other
    ops; the product is computed in float32 and rounded once). Returns (..., F) float32 (on the
    GPU gate_up's dtype). Raises TypeError for a non-float array, ValueError for an odd or empty
    last axis or an activation not in GATED_ACTIVATIONS."""
    gate_up = _float32("gate_up", gate_up, min_ndim=1)
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up must have an even last axis (gate | up), got {gate_up.shape}")
    if not isinstance(activation, str) or activation not in GATED_ACTIVATIONS:
        raise ValueError(f"activation must be one of {GATED_ACTIVATIONS}, got {activation!r}")
    F = gate_up.shape[-1] // 2
    out = _empty(gate_up, gate_up.shape[:-1] + (F,))
    backend_for(gate_up, threads).swiglu(gate_up.reshape(-1, 2 * F), activation,
                                         out.reshape(-1, F))
    return out


def softmax(x, mask=None, threads=None):
    """softmax(x + mask) over the last axis. x: (..., S) float; mask: additive float mask
    broadcastable to x (-inf removes an entry) or None. Rows whose every entry is -inf give zeros,
    not NaN. Returns float32 of x's shape."""
    x = _float32("x", x, min_ndim=1)
    xp = array_module(x)
    if mask is not None:
        if not on_device(mask) and not np.issubdtype(np.asarray(mask).dtype, np.number):
            raise TypeError(f"mask must be a float array, got {np.asarray(mask).dtype}")
        mask = xp.asarray(mask, dtype=np.float32)
        try:
            mask = xp.ascontiguousarray(xp.broadcast_to(mask, x.shape))
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to x {x.shape}")
        mask = mask.reshape(-1, x.shape[-1])
    out = _empty(x, x.shape)
    backend_for(x, threads).softmax(x.reshape(-1, x.shape[-1]), mask,
                                    out.reshape(-1, x.shape[-1]))
    return out


def embedding(input_ids, word_embeddings, position_embeddings, position_ids=None,
              token_type_ids=None, token_type_embeddings=None, norm_weight=None, norm_bias=None,
              eps=1e-12, threads=None):
    """LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]) (BERT,
    Devlin et al. 2019, section 3; HF BertEmbeddings).

    input_ids: (...) integer in [0, V); word_embeddings (V, C); position_embeddings (P, C);
    position_ids: input_ids' shape, default arange over the last axis; token_type_ids: same shape
    or None (type 0 when a token_type table is given); norm_weight/norm_bias (C,) or None for no
    norm. word_embeddings may be a PackedWeight (CPU int8 / bfloat16: the rows are gathered and
    dequantized first). Returns (..., C) float32. IndexError for any index out of its table."""
    packed = isinstance(word_embeddings, PackedWeight)
    word = word_embeddings if packed else _float32("word_embeddings", word_embeddings, ndim=2)
    V, C = word.shape
    position = _float32("position_embeddings", position_embeddings, ndim=2, like=word)
    if position.shape[1] != C:
        raise ValueError(f"position_embeddings must have {C} columns, got {position.shape}")
    ids = _indices("input_ids", input_ids, V, like=word)
    if ids.ndim == 0:
        raise ValueError("input_ids must have at least one dimension")
    if position_ids is None:
        if ids.shape[-1] > position.shape[0]:
            raise ValueError(f"sequence length {ids.shape[-1]} exceeds the "
                             f"{position.shape[0]} position embeddings")
        position_ids = np.broadcast_to(np.arange(ids.shape[-1]), ids.shape)
    pos = _indices("position_ids", array_module(position_ids).asarray(position_ids),
                   position.shape[0], ids.shape, like=word)
    token_type = types = None
    if token_type_embeddings is not None:
        token_type = _float32("token_type_embeddings", token_type_embeddings, ndim=2, like=word)
        if token_type.shape[1] != C:
            raise ValueError(f"token_type_embeddings must have {C} columns, got "
                             f"{token_type.shape}")
        if token_type_ids is None:
            token_type_ids = np.zeros(ids.shape, np.int64)
        types = _indices("token_type_ids", token_type_ids, token_type.shape[0], ids.shape,
                         like=word)
    elif token_type_ids is not None:
        raise ValueError("token_type_ids given but the model has no token_type_embeddings")
    if (norm_weight is None) != (norm_bias is None):
        raise ValueError("norm_weight and norm_bias must be given together")
    if norm_weight is not None:
        eps = _real("eps", eps, positive=True)
        norm_weight = _float32("norm_weight", norm_weight, ndim=1, like=word)
        norm_bias = _float32("norm_bias", norm_bias, ndim=1, like=word)
        if norm_weight.shape != (C,) or norm_bias.shape != (C,):
            raise ValueError(f"norm_weight and norm_bias must have shape ({C},)")
    out = backend_for(position, threads).embedding(
        ids.reshape(-1), pos.reshape(-1), word, position, norm_weight, norm_bias, eps,
        None if types is None else types.reshape(-1), token_type)
    return out.reshape(ids.shape + (C,))


def _check_qkv(q, k, v, ndim, q_axes, k_axes, row_axis, names=("q", "k", "v")):
    """Shared checks of attention operands. Returns (q, k, v): each as given when the kernels
    can read it in place (float32, D contiguous, no negative stride, rows at least D apart along
    `row_axis`, the leading dimension of the BLAS tiles), else a C-contiguous copy (negative,
    zero or overlapping strides, Fortran order)."""
    arrays = []
    for name, a in zip(names, (q, k, v)):
        if on_device(q):
            _device_array(name, a, None, None, q)
        elif not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise TypeError(f"{name} must be a float32 numpy array, got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
        if a.ndim != ndim:
            raise ValueError(f"{name} must have shape {q_axes if name == 'q' else k_axes}, got "
                             f"{a.shape}")
        if a.shape[-1] == 0:
            raise ValueError(f"{name} must have head_dim D >= 1, got shape {a.shape}")
        st = a.strides
        if st[-1] != a.itemsize or any(s % a.itemsize or s < 0 for s in st) \
                or st[row_axis] < a.shape[-1] * a.itemsize:
            if on_device(a):
                raise ValueError(f"{name} must be contiguous along its last axis (D) with "
                                 "non-negative row strides on the GPU")
            a = a.copy(order="C")
        arrays.append(a)
    q, k, v = arrays
    if k.shape != v.shape:
        raise ValueError(f"{names[1]} and {names[2]} must have the same shape, got {k.shape} "
                         f"and {v.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{names[0]} and {names[1]} must share head_dim D, got {q.shape[-1]} "
                         f"and {k.shape[-1]}")
    return q, k, v


def _position_bias(position_bias, H):
    """position_bias checked for H query heads (a PositionBias or None; the backends pass its
    kernel_args() to the kernels, the GPU uploading the host tables once). Raises TypeError
    for another object, ValueError for a head count that does not fit."""
    if position_bias is None:
        return None
    if not isinstance(position_bias, PositionBias):
        raise TypeError(f"position_bias must be a transformer.ops.PositionBias or None, got "
                        f"{type(position_bias).__name__}")
    if position_bias.n_heads != H:
        raise ValueError(f"position_bias has {position_bias.n_heads} heads, q has {H}")
    return position_bias


def attention(q, k, v, attention_mask=None, causal=False, scale=None, threads=None,
              position_bias=None):
    """Multi-head scaled dot-product attention, softmax(Q K^T / sqrt(D) + mask) V (Vaswani et al.
    2017, section 3.2.1), fused and tiled with an online softmax: memory O(block), not O(T S).

    q: (B, H, T, D) float32; k, v: (B, Hkv, S, D) float32 with H a multiple of Hkv (grouped-query
    attention); attention_mask: (B, S) of 0/1 (1 = a real key) or None; causal: query t sees keys
    s <= t + S - T (aligned at the end, as with a KV cache); scale: default 1/sqrt(D);
    position_bias: a PositionBias (ALiBi or relative buckets) added to the scaled scores inside
    the kernels (CPU and GPU: query t at t + S - T, key s at s), or None. Returns (B, H, T, D)
    float32; a query that sees no key gets zeros."""
    q, k, v = _check_qkv(q, k, v, 4, "(B, H, T, D)", "(B, Hkv, S, D)", 2)
    B, H, T, D = q.shape
    Bk, Hkv, S, _ = k.shape
    if Bk != B:
        raise ValueError(f"q and k must have the same batch size, got {B} and {Bk}")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"the {H} query heads must be a multiple of the {Hkv} key/value heads")
    key_bias = None
    xp = array_module(q)
    if attention_mask is not None:
        m = xp.asarray(attention_mask)
        if m.shape != (B, S):
            raise ValueError(f"attention_mask must have shape (B, S) = {(B, S)}, got {m.shape}")
        if not (np.issubdtype(m.dtype, np.integer) or m.dtype == np.bool_):
            raise TypeError(f"attention_mask must be 0/1 integers or booleans, got {m.dtype}")
        key_bias = xp.where(m != 0, 0.0, -np.inf).astype(np.float32)
    scale = 1.0 / math.sqrt(D) if scale is None else _real("scale", scale, positive=True)
    bias = _position_bias(position_bias, H)
    out = _empty(q, (B, T, H, D))  # rows-major planes, returned as a (B, H, T, D) view
    with blas_single_threaded():
        backend_for(q, threads).attention(
            q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
            VarlenPlan.padded(B, T, S), bool(causal), scale, key_bias, bias, out)
    return out.transpose(0, 2, 1, 3)


def _check_out(out, shape, like):
    """Raise ValueError unless `out` is a C-contiguous array of `shape` like `like`."""
    if not (isinstance(out, np.ndarray) or on_device(out)) or out.shape != shape \
            or out.dtype != like.dtype or not out.flags.c_contiguous \
            or on_device(out) != on_device(like) or out.size and out.strides[-1] != out.itemsize:
        raise ValueError(f"out must be a C-contiguous {like.dtype} array of shape {shape} on "
                         "q's device")
    if not on_device(out) and not out.flags.writeable:
        raise ValueError("out must be writeable")


def _offsets(name, cu, N, B=None):
    cu = np.asarray(cu.get() if on_device(cu) else cu)
    if cu.ndim != 1 or cu.size < 1 or not np.issubdtype(cu.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array of B+1 offsets, got shape "
                         f"{cu.shape} dtype {cu.dtype}")
    if B is not None and cu.size != B + 1:
        raise ValueError(f"{name} must have {B + 1} offsets like cu_seqlens, got {cu.size}")
    if cu[0] != 0 or cu[-1] != N or np.any(np.diff(cu) < 0):
        raise ValueError(f"{name} must rise from 0 to {N}, got {cu.tolist()[:8]}...")
    return cu.astype(np.int64)


def attention_varlen(q, k, v, cu_seqlens, causal=False, scale=None, out=None, cu_seqlens_k=None,
                     threads=None, position_bias=None):
    """Attention over a ragged batch packed without padding (the varlen layout of FlashAttention):
    sequence b owns rows cu_seqlens[b]:cu_seqlens[b+1] of q (and of k, v unless cu_seqlens_k is
    given) and attends only to its own keys.

    q: (N, H, D) float32, k, v: (Nk, Hkv, D) float32 (views with any row/head strides, e.g. slices
    of a fused QKV projection); cu_seqlens: (B+1,) non-decreasing integers from 0 to N;
    cu_seqlens_k: (B+1,) offsets from 0 to Nk of each sequence's keys (cross-attention: the
    decoder's queries against the encoder's rows), default cu_seqlens; causal: query t of a
    sequence sees its keys s <= t + S_b - T_b; out: optional (N, H, D) float32 C-contiguous array
    to write into; position_bias: a PositionBias or None (query t of a sequence at position
    t + S_b - T_b, its keys at 0..S_b-1). Returns out."""
    q, k, v = _check_qkv(q, k, v, 3, "(N, H, D)", "(Nk, Hkv, D)", 0)
    N, H, D = q.shape
    if k.shape[1] == 0 or H % k.shape[1]:
        raise ValueError(f"the {H} query heads must be a multiple of the {k.shape[1]} key/value "
                         "heads")
    cu = _offsets("cu_seqlens", cu_seqlens, N)
    if cu_seqlens_k is None:
        if k.shape[0] != N:
            raise ValueError(f"k must have N={N} rows like q (or give cu_seqlens_k), got "
                             f"{k.shape}")
        cu_k = cu
    else:
        cu_k = _offsets("cu_seqlens_k", cu_seqlens_k, k.shape[0], cu.size - 1)
    if out is None:
        out = _empty(q, (N, H, D))
    else:
        _check_out(out, (N, H, D), q)
    scale = 1.0 / math.sqrt(D) if scale is None else _real("scale", scale, positive=True)
    bias = _position_bias(position_bias, H)
    with blas_single_threaded():
        backend_for(q, threads).attention_varlen(q, k, v, VarlenPlan(cu, cu_k), bool(causal),
                                                 scale, bias, out)
    return out


def decode_attention(q, k_cache, v_cache, lengths, attention_mask=None, scale=None, out=None,
                     chunk=None, kv_index=None, threads=None, kv_rows=None, position_bias=None):
    """Attention of one new query per sequence against its KV cache (the decode step), split
    over keys across threads with a combine step (flash-decoding).

    q: (B, H, D) float32 (any row/head strides, D contiguous); k_cache, v_cache:
    (B, S_max, Hkv, D) float32 with H a multiple of Hkv (grouped-query attention reads each K/V
    head once for its group); lengths: (B,) integers, sequence b attends to keys [0, lengths[b]);
    attention_mask: (Bkv, S_max) 0/1 or None; scale: default 1/sqrt(D); chunk: keys per work item
    (default: enough items for every thread); kv_index: (B,) integers, query row b reads cache
    plane kv_index[b] (several rows sharing one plane, e.g. the beams of one source sentence
    against its encoder output), default b; kv_rows: (B, S_max) integers in [0, Bkv), CPU only,
    without kv_index and attention_mask: key j of row b is read from plane kv_rows[b, j] (a beam
    search cache reordered through this table instead of copies; k_cache may then hold more
    planes than B, e.g. those of sequences that finished); position_bias: a PositionBias or
    None (CPU and GPU; the query at position lengths[b] - 1, key j at j). Returns out (B, H, D)
    float32
    (zeros for a sequence with no key; NaN for NaN or +inf scores). Raises TypeError for a
    wrong dtype, ValueError for shapes that do not fit (v_cache must have k_cache's shape) or a
    chunk that is not a positive integer, IndexError for kv_index / kv_rows out of range.
    Views with negative or odd strides are copied first."""
    for name, a in (("k_cache", k_cache), ("v_cache", v_cache)):
        if getattr(a, "ndim", None) != 4:
            raise ValueError(f"{name} must have shape (Bkv, S_max, Hkv, D), got "
                             f"{getattr(a, 'shape', type(a).__name__)}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have the same shape, got {k_cache.shape} "
                         f"and {v_cache.shape}")
    # q (B, H, D): rows any stride; k/v planes checked on their (Bkv, Hkv, D) position-0 view
    q, k0, v0 = _check_qkv(q, k_cache[:, :1].reshape(k_cache.shape[:1] + k_cache.shape[2:])
                           if k_cache.shape[1] else k_cache[:, :0].sum(1),
                           v_cache[:, :1].reshape(v_cache.shape[:1] + v_cache.shape[2:])
                           if v_cache.shape[1] else v_cache[:, :0].sum(1), 3, "(B, H, D)",
                           "(Bkv, S_max, Hkv, D)", 1, ("q", "k_cache", "v_cache"))
    if not on_device(q):
        k_cache, v_cache = (c if c.strides[-1] == c.itemsize and
                            all(st >= 0 and st % c.itemsize == 0 for st in c.strides)
                            else c.copy(order="C") for c in (k_cache, v_cache))
    B, H, D = q.shape
    if kv_index is not None:
        kv_index = _indices("kv_index", np.asarray(kv_index.get() if on_device(kv_index)
                                                   else kv_index),
                            k_cache.shape[0], (B,)).astype(np.int32)
    elif k_cache.shape[0] != B and not (kv_rows is not None and k_cache.shape[0] > B):
        raise ValueError(f"k_cache must have B={B} planes (or give kv_index or kv_rows), got "
                         f"{k_cache.shape}")
    if k_cache.shape[2] == 0 or H % k_cache.shape[2]:
        raise ValueError(f"k_cache must have shape (Bkv, S_max, Hkv, D) with H={H} a multiple "
                         f"of Hkv, got {k_cache.shape}")
    if on_device(q) and not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous):
        raise ValueError("k_cache and v_cache must be C-contiguous on the GPU")
    S_max = k_cache.shape[1]
    lengths = np.asarray(lengths.get() if on_device(lengths) else lengths)
    if lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be ({B},) integers, got {lengths.shape} {lengths.dtype}")
    if B and (lengths.min() < 0 or lengths.max() > S_max):
        raise ValueError(f"lengths must lie in [0, {S_max}], got {lengths.tolist()}")
    if kv_rows is not None:
        if on_device(q) or kv_index is not None or attention_mask is not None:
            raise ValueError("kv_rows works on the CPU only, without kv_index or attention_mask")
        kv_rows = _indices("kv_rows", np.asarray(kv_rows), k_cache.shape[0],
                           (B, S_max)).astype(np.int32)
    key_bias = None
    xp = array_module(q)
    if attention_mask is not None:
        m = xp.asarray(attention_mask)
        if m.shape != (k_cache.shape[0], S_max):
            raise ValueError(f"attention_mask must have shape {(k_cache.shape[0], S_max)}, got "
                             f"{m.shape}")
        if not (np.issubdtype(m.dtype, np.integer) or m.dtype == np.bool_):
            raise TypeError(f"attention_mask must be 0/1 integers or booleans, got {m.dtype}")
        key_bias = xp.where(m != 0, 0.0, -np.inf).astype(np.float32)
    if out is None:
        out = _empty(q, (B, H, D))
    else:
        _check_out(out, (B, H, D), q)
    bias = _position_bias(position_bias, H)  # the query at lengths[b] - 1, keys at 0..
    if chunk is not None:  # more keys per item than S_max change nothing
        chunk = min(_integer("chunk", chunk, 1), max(1, S_max))
    scale = 1.0 / math.sqrt(D) if scale is None else _real("scale", scale, positive=True)
    return backend_for(q, threads).decode_attention(
        q, k_cache, v_cache, np.ascontiguousarray(lengths, np.int32), scale, kv_index, kv_rows,
        key_bias, bias, chunk, out)


def beam_topk(logits, beam_scores, num_beams, k, threads=None):
    """One beam-search selection step, fused (Hugging Face's vectorised beam search: log-softmax
    of the logits, plus each beam's running score, then the top k of every batch entry's beams).

    logits: (B * num_beams, V) float (rows b * num_beams + j are the beams of entry b);
    beam_scores: (B * num_beams,) float32 running log-probability of each beam; 1 <= k <= V.
    Scores are float32, rounded as `(x - max) - logsumexp + beam_score` (NumPy's and PyTorch's
    float32 log_softmax, the log-sum-exp accumulated in double). Returns (values (B, k) float32,
    indices (B, k) int64 in [0, num_beams * V), index = beam * V + token), best first per entry,
    equal scores in ascending index. Raises TypeError for non-float arrays, ValueError for shapes
    that do not fit (rows not a multiple of num_beams, k out of range). logits may be a CuPy
    array: the selection then runs on the device and only the (B, k) results come back (NumPy
    either way; on the device equal scores at the k-th place may be chosen in another order)."""
    logits = _float32("logits", logits, ndim=2)
    beam_scores = _float32("beam_scores", beam_scores, ndim=1)
    R, V = logits.shape
    if not (isinstance(num_beams, (int, np.integer)) and num_beams >= 1 and R % num_beams == 0):
        raise ValueError(f"num_beams must be a positive divisor of the {R} logits rows, got "
                         f"{num_beams!r}")
    if beam_scores.shape != (R,):
        raise ValueError(f"beam_scores must have shape ({R},), got {beam_scores.shape}")
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= V):
        raise ValueError(f"k must be an integer in [1, V={V}], got {k!r}")
    return backend_for(logits, threads).beam_topk(logits, beam_scores, int(num_beams), int(k))
