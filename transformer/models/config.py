"""Model hyper-parameters: EncoderConfig, DecoderConfig and Seq2SeqConfig (names from the paper and
HF), one vocabulary for all three, that of the blocks (transformer.models.block): norm in NORMS,
activation in ACTIVATIONS (gated: act(gate) * up, Shazeer 2020), positions in POSITIONS. Each
config builds the BlockSpec of its layers when it is made, so that its fields are validated
there, once (a ValueError prefixed "config")."""
import math
from dataclasses import dataclass, replace
from functools import cached_property

from .block import ACTIVATIONS, NORMS, POSITIONS, BlockSpec

__all__ = ["EncoderConfig", "DecoderConfig", "Seq2SeqConfig", "ACTIVATIONS", "NORMS",
           "POSITIONS", "SINUSOIDS", "HF_ACTIVATIONS", "check_positive", "check_token_ids",
           "check_flags", "check_buckets", "check_real"]

SINUSOIDS = ("paper", "marian", "t2t")  # layouts of sinusoidal positions (Seq2SeqConfig)

# HF `hidden_act` strings -> our activation names
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "relu": "relu"}


def is_int(value):
    """Whether value is an int and not a bool (JSON true is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


_is_int = is_int


def check_positive(config, names):
    """Raise ValueError unless each named field of `config` is a positive integer."""
    for name in names:
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            raise ValueError(f"config {name} must be a positive integer, got {value!r}")


def check_token_ids(config, names, nullable=True):
    """Raise ValueError unless each named field of `config` is a token id (an integer >= 0; an
    id beyond the vocabulary is allowed, as HF: such an eos is never produced) or, when
    nullable, None; a tuple of them for eos_token_id."""
    for name in names:
        value = getattr(config, name)
        ids = value if isinstance(value, tuple) and name == "eos_token_id" else (value,)
        if not all((v is None and nullable) or (_is_int(v) and 0 <= v < 2 ** 63) for v in ids):
            raise ValueError(f"config {name} must be a token id (an integer in [0, 2 ** 63))"
                             f"{' or null' if nullable else ''}, got {value!r}")


def check_flags(config, names):
    """Raise ValueError unless each named field of `config` is True or False (a JSON string
    "false" would otherwise read as true)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise ValueError(f"config {name} must be true or false, got {value!r}")


def check_real(config, name, nullable=False):
    """Raise ValueError unless the field `name` of `config` is a finite positive number (or None
    when nullable)."""
    value = getattr(config, name)
    if value is None and nullable:
        return
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise ValueError(f"config {name} must be a finite positive number, got {value!r}")


def check_buckets(config, bidirectional):
    """Raise ValueError unless relative_attention_num_buckets / relative_attention_max_distance
    fit HF's bucket formula (modeling_t5.py _relative_position_bucket): buckets (halved when
    bidirectional) with at least one exact bucket, max_exact = those // 2, and max_distance >
    max_exact (the log-spaced buckets divide by log(max_distance / max_exact): at or below the
    exact range HF itself gives inf / nan or negative buckets)."""
    nb, md = config.relative_attention_num_buckets, config.relative_attention_max_distance
    least = 4 if bidirectional else 2
    if not _is_int(nb) or nb < least:
        raise ValueError(f"config relative_attention_num_buckets must be an integer >= {least}"
                         f"{' (bidirectional: half for each direction)' if bidirectional else ''}"
                         f", got {nb!r}")
    max_exact = (nb // 2 if bidirectional else nb) // 2
    if not _is_int(md) or md <= max_exact:
        raise ValueError(f"config relative_attention_max_distance must be an integer above the "
                         f"{max_exact} exact buckets of relative_attention_num_buckets={nb}, "
                         f"got {md!r}")


def _check_blocks(config, *names):
    """Build the config's BlockSpecs (its cached properties `names`), re-raising their
    ValueError as the config's."""
    try:
        for name in names:
            getattr(config, name)
    except ValueError as e:
        raise ValueError(f"config {e}") from None


def _check_positions(config, allowed):
    if config.positions not in allowed:
        raise ValueError(f"config positions must be one of {allowed} for "
                         f"{type(config).__name__}, got {config.positions!r}")


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of an encoder stack (Vaswani et al. 2017, section 3.1; BERT, table 1).

    vocab_size V, d_model C, n_heads H (head_dim D = C / H), n_layers L, d_ff F,
    max_position_embeddings (longest T), type_vocab_size (0: no token types), activation of the
    feed-forward block (ACTIVATIONS), layer_norm_eps, pre_norm (False: post-LN as BERT and the
    2017 paper, True: pre-LN with a final LayerNorm), pad_token_id, position_start (None: a
    token's position id is its column in the batch, as BERT; an integer: its rank among its
    sequence's real tokens plus position_start, as RoBERTa's padding_idx + 1 in HF
    modeling_roberta.py create_position_ids_from_input_ids), relative_attention_num_buckets (0:
    none; else a learned bidirectional relative position bias shared by the layers, MPNet:
    positions "relative", else "learned") and relative_attention_max_distance.
    Raises ValueError when a value is out of range or d_model is not a multiple of n_heads."""

    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    pre_norm: bool = False
    pad_token_id: int = 0
    position_start: int = None
    relative_attention_num_buckets: int = 0
    relative_attention_max_distance: int = 128

    def __post_init__(self):
        check_positive(self, ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff",
                              "max_position_embeddings"))
        check_token_ids(self, ("pad_token_id",), nullable=False)
        check_flags(self, ("pre_norm",))
        check_real(self, "layer_norm_eps")
        if not _is_int(self.type_vocab_size) or self.type_vocab_size < 0:
            raise ValueError(f"config type_vocab_size must be an integer >= 0, got "
                             f"{self.type_vocab_size!r}")
        if self.relative_attention_num_buckets != 0:
            check_buckets(self, bidirectional=True)
        if self.position_start is not None and not (
                isinstance(self.position_start, int)
                and 0 <= self.position_start < self.max_position_embeddings):
            raise ValueError(f"config position_start must be None or an integer in [0, "
                             f"{self.max_position_embeddings}), got {self.position_start!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"config d_model={self.d_model} must be a multiple of "
                             f"n_heads={self.n_heads}")
        _check_blocks(self, "block")

    @property
    def head_dim(self):
        """D = d_model / n_heads."""
        return self.d_model // self.n_heads

    @property
    def positions(self):
        """"relative" with a relative position bias, else "learned"."""
        return "relative" if self.relative_attention_num_buckets else "learned"

    @cached_property
    def block(self):
        """The BlockSpec of the layers (LayerNorm, post-LN unless pre_norm; bidirectional
        attention)."""
        return BlockSpec("layer_norm", self.layer_norm_eps, self.pre_norm, self.activation,
                         n_heads=self.n_heads, head_dim=self.head_dim, positions=self.positions)

    @property
    def max_length(self):
        """Longest sequence in tokens: the position table's rows after position_start."""
        return self.max_position_embeddings - (self.position_start or 0)


@dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a decoder-only model.

    vocab_size V, d_model C, n_heads H, n_kv_heads Hkv (grouped-query attention when < H),
    n_layers L, d_ff F, max_position_embeddings (longest sequence, prompt + new tokens),
    head_dim D (default C / H), norm (NORMS), norm_eps, activation (ACTIVATIONS) and gated (a
    gated FFN act(gate) * up with ff1 = gate | up; activation "swiglu" is short for "silu"
    gated, SwiGLU, and is stored so), positions "learned", "rotary" or "alibi" (ALiBi slopes
    in the attention kernels, BLOOM), rope_theta, rope_interleaved (llama2.c pairs (2i, 2i+1);
    False: HF rotate_half), embedding_norm (a LayerNorm after the word embedding, BLOOM), bias
    (linear layers carry biases), tie_word_embeddings, bos/eos/pad token ids (eos_token_id may
    be a tuple). Raises ValueError for inconsistent values."""

    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    n_kv_heads: int = None
    max_position_embeddings: int = 1024
    head_dim: int = None
    norm: str = "layer_norm"
    norm_eps: float = 1e-5
    activation: str = "gelu_tanh"
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_interleaved: bool = False
    embedding_norm: bool = False
    bias: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int = None
    eos_token_id: object = None
    pad_token_id: int = None
    gated: bool = False

    def __post_init__(self):
        if self.activation == "swiglu":
            object.__setattr__(self, "activation", "silu")
            object.__setattr__(self, "gated", True)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        check_positive(self, ("d_model", "n_heads", "n_kv_heads"))
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"config d_model={self.d_model} must be a multiple of "
                                 f"n_heads={self.n_heads} (or give head_dim)")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        check_positive(self, ("vocab_size", "d_model", "n_heads", "n_kv_heads", "n_layers",
                              "d_ff", "max_position_embeddings", "head_dim"))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"config n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        check_token_ids(self, ("bos_token_id", "eos_token_id", "pad_token_id"))
        check_flags(self, ("rope_interleaved", "embedding_norm", "bias", "tie_word_embeddings",
                           "gated"))
        check_real(self, "rope_theta")
        check_real(self, "norm_eps")
        _check_positions(self, ("learned", "rotary", "alibi"))
        _check_blocks(self, "block")

    @cached_property
    def block(self):
        """The BlockSpec of the layers (pre-norm, causal)."""
        return BlockSpec(self.norm, self.norm_eps, True, self.activation, self.gated,
                         n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                         head_dim=self.head_dim, causal=True, positions=self.positions,
                         rope_interleaved=self.rope_interleaved)

    @property
    def eos_token_ids(self):
        """The end-of-sequence ids as a tuple (empty when none)."""
        eos = self.eos_token_id
        return () if eos is None else tuple(eos) if isinstance(eos, tuple) else (eos,)


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyper-parameters of an encoder-decoder model.

    src_vocab_size, tgt_vocab_size, d_model C, n_heads H, encoder_layers, decoder_layers, d_ff F,
    activation (ACTIVATIONS), pre_norm (False: post-LN as the paper, Marian and BART),
    encoder_final_norm / decoder_final_norm, layernorm_embedding (BART), positions "learned",
    "sinusoidal" (in the layout `sinusoids`: "paper": PE(p, 2i) = sin, PE(p, 2i+1) = cos,
    frequencies 10000^(-2i/C); "marian": [sin | cos], 10000^(-2i/C); "t2t": [sin | cos],
    10000^(-i/(C/2 - 1)), tensor2tensor / OpenNMT / CTranslate2; positions
    "sinusoidal_<layout>" is short for both and stored so) or "relative";
    position_offset (added to the 0-based position: 2 for BART, 1 for CTranslate2),
    max_position_embeddings, scale_embedding (x sqrt(C)), norm_eps, decoder_start_token_id,
    eos_token_id, pad_token_id, bos_token_id, forced_bos_token_id / forced_eos_token_id (HF
    generation defaults of the family).
    T5's settings: norm "rms_norm" (no biases in norms), gated (a gated FFN, ff1 = gate | up),
    bias (False: no linear biases), d_kv (head_dim when not d_model / n_heads), attention_scale
    (1.0: unscaled scores; None: 1/sqrt(D)), positions "relative" (no position tables; a learned
    relative position bias per stack, relative_attention_num_buckets and
    relative_attention_max_distance: bidirectional in the encoder, causal in the decoder),
    lm_head_scale (d_model^-0.5 for T5's rescaled head).
    Raises ValueError for inconsistent values."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int
    n_heads: int
    encoder_layers: int
    decoder_layers: int
    d_ff: int
    activation: str = "relu"
    pre_norm: bool = False
    encoder_final_norm: bool = False
    decoder_final_norm: bool = False
    layernorm_embedding: bool = False
    positions: str = "sinusoidal"
    position_offset: int = 0
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    norm_eps: float = 1e-5
    decoder_start_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 0
    bos_token_id: int = None
    forced_bos_token_id: int = None
    forced_eos_token_id: int = None
    norm: str = "layer_norm"
    gated: bool = False
    bias: bool = True
    d_kv: int = None
    attention_scale: float = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    lm_head_scale: float = 1.0
    sinusoids: str = "paper"

    def __post_init__(self):
        check_positive(self, ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads",
                              "encoder_layers", "decoder_layers", "d_ff",
                              "max_position_embeddings"))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        check_token_ids(self, ("decoder_start_token_id", "eos_token_id", "pad_token_id",
                               "bos_token_id",
                               "forced_bos_token_id", "forced_eos_token_id"))
        check_flags(self, ("pre_norm", "encoder_final_norm", "decoder_final_norm",
                           "layernorm_embedding", "scale_embedding", "gated", "bias"))
        if not _is_int(self.position_offset) or self.position_offset < 0:
            raise ValueError(f"config position_offset must be an integer >= 0, got "
                             f"{self.position_offset!r}")
        check_real(self, "attention_scale", nullable=True)
        check_real(self, "lm_head_scale")
        check_real(self, "norm_eps")
        if self.d_kv is None and self.d_model % self.n_heads:
            raise ValueError(f"config d_model={self.d_model} must be a multiple of "
                             f"n_heads={self.n_heads} (or give d_kv)")
        if self.d_kv is not None:
            check_positive(self, ("d_kv",))
        if isinstance(self.positions, str) and self.positions.startswith("sinusoidal_"):
            object.__setattr__(self, "sinusoids", self.positions[len("sinusoidal_"):])
            object.__setattr__(self, "positions", "sinusoidal")
        _check_positions(self, ("learned", "sinusoidal", "relative"))
        if self.positions == "relative":  # bidirectional in the encoder, causal in the decoder
            check_buckets(self, bidirectional=True)
            check_buckets(self, bidirectional=False)
        if self.sinusoids not in SINUSOIDS:
            raise ValueError(f"config sinusoids must be one of {SINUSOIDS}, got "
                             f"{self.sinusoids!r}")
        _check_blocks(self, "encoder_block", "decoder_block")

    @property
    def head_dim(self):
        """D = d_kv, else d_model / n_heads."""
        return self.d_kv or self.d_model // self.n_heads

    @cached_property
    def encoder_block(self):
        """The BlockSpec of the encoder's layers (bidirectional self-attention)."""
        return BlockSpec(self.norm, self.norm_eps, self.pre_norm, self.activation, self.gated,
                         self.attention_scale, n_heads=self.n_heads, head_dim=self.head_dim,
                         positions=self.positions)

    @cached_property
    def decoder_block(self):
        """The BlockSpec of the decoder's layers (causal self-attention, cross-attention)."""
        return replace(self.encoder_block, causal=True, cross_attention=True)

    # the names generation reads
    @property
    def vocab_size(self):
        """Target vocabulary size (the LM head's width)."""
        return self.tgt_vocab_size

    @property
    def eos_token_ids(self):
        """The end-of-sequence ids as a tuple (empty when none; eos_token_id may be a list in
        config.json, as HF allows)."""
        eos = self.eos_token_id
        return () if eos is None else tuple(eos) if isinstance(eos, tuple) else (eos,)
