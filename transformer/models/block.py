"""The pieces of a transformer block that vary between families, in one place: the norm (kind
and placement around the residual) and the feed-forward block (plain or gated), described by a
BlockSpec and shared by the encoder, decoder and encoder-decoder stacks (Vaswani et al. 2017,
section 3.1; pre-LN: Xiong et al. 2020; RMSNorm: Zhang & Sennrich 2019; gated FFN: Shazeer
2020, "GLU Variants Improve Transformer").

Weights are looked up in a {name: array} dict by prefix: `<prefix>.weight` / `.bias` of a norm
(no bias for RMSNorm), `<p>ff1.*` (F or, gated, 2F rows: gate | up) and `<p>ff2.*` of the FFN
(biases optional)."""
from dataclasses import dataclass

from .. import ops


@dataclass(frozen=True)
class BlockSpec:
    """What varies in a block: norm "layer_norm" or "rms_norm" with eps, pre_norm (norm before
    each sub-layer, residual added after; else post-LN: norm(x + sublayer(x))), activation of
    the FFN ("relu", "gelu", "gelu_tanh", "silu"), gated (act(gate) * up, a fused (2F, C)
    ff1), attention_scale (None: 1/sqrt(head_dim); T5: 1.0)."""

    norm: str = "layer_norm"
    eps: float = 1e-5
    pre_norm: bool = False
    activation: str = "gelu"
    gated: bool = False
    attention_scale: float = None


def norm(spec, w, name, x, threads, residual=None):
    """norm(x + residual) with the weights `name`.weight (and .bias for LayerNorm); residual
    (post-LN) fused into the LayerNorm kernel, added first for RMSNorm."""
    if spec.norm == "rms_norm":
        if residual is not None:
            x = ops.add(x, residual)
        return ops.rms_norm(x, w[name + ".weight"], spec.eps, threads=threads)
    return ops.layer_norm(x, w[name + ".weight"], w[name + ".bias"], spec.eps,
                          residual=residual, threads=threads)


def linear(w, name, x, threads, activation=None):
    """x @ `name`.weight^T (+ `name`.bias when present), then the activation."""
    return ops.linear(x, w[name + ".weight"], w.get(name + ".bias"), activation,
                      threads=threads)


def feed_forward(spec, w, p, x, threads):
    """ff2(act(ff1(x))), or gated: ff2(act(gate) * up) with ff1 = gate | up (SwiGLU's fused
    kernel for silu)."""
    if not spec.gated:
        return linear(w, p + "ff2", linear(w, p + "ff1", x, threads, spec.activation), threads)
    gate_up = linear(w, p + "ff1", x, threads)
    f = ops.swiglu(gate_up, threads=threads, activation=spec.activation)
    return linear(w, p + "ff2", f, threads)


def sublayer(spec, w, norm_name, h, fn, threads):
    """One residual sub-layer around fn (attention or FFN): pre-LN h + fn(norm(h)), or post-LN
    norm(h + fn(h))."""
    if spec.pre_norm:
        return ops.add(h, fn(norm(spec, w, norm_name, h, threads)))
    return norm(spec, w, norm_name, fn(h), threads, residual=h)
