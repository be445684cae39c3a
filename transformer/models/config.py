"""Model hyper-parameters, one dataclass for every encoder (names from the paper and HF)."""
from dataclasses import dataclass
from functools import cached_property

from ..ops import ACTIVATIONS
from .block import BlockSpec

# HF `hidden_act` strings -> our activation names
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "relu": "relu"}


def check_positive(config, names):
    """Raise ValueError unless each named field of `config` is a positive integer."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of an encoder stack (Vaswani et al. 2017, section 3.1; BERT, table 1).

    vocab_size V, d_model C, n_heads H (head_dim D = C / H), n_layers L, d_ff F,
    max_position_embeddings (longest T), type_vocab_size (0: no token types), activation of the
    feed-forward block, layer_norm_eps, pre_norm (False: post-LN as BERT and the 2017 paper,
    True: pre-LN with a final LayerNorm), pad_token_id, position_start (None: a token's position
    id is its column in the batch, as BERT; an integer: its rank among its sequence's real
    tokens plus position_start, as RoBERTa's padding_idx + 1 in HF modeling_roberta.py
    create_position_ids_from_input_ids), relative_attention_num_buckets (0: none; else a learned
    bidirectional relative position bias shared by the layers, MPNet) and
    relative_attention_max_distance.
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
        if self.position_start is not None and not (
                isinstance(self.position_start, int)
                and 0 <= self.position_start < self.max_position_embeddings):
            raise ValueError(f"config position_start must be None or an integer in [0, "
                             f"{self.max_position_embeddings}), got {self.position_start!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"config d_model={self.d_model} must be a multiple of "
                             f"n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS or self.activation is None:
            raise ValueError(f"config activation must be one of {ACTIVATIONS[1:]}, got "
                             f"{self.activation!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"config layer_norm_eps must be positive, got {self.layer_norm_eps}")

    @property
    def head_dim(self):
        """D = d_model / n_heads."""
        return self.d_model // self.n_heads

    @cached_property
    def block(self):
        """The BlockSpec of the layers (LayerNorm, post-LN unless pre_norm; bidirectional
        attention, a relative position bias when relative_attention_num_buckets)."""
        return BlockSpec("layer_norm", self.layer_norm_eps, self.pre_norm, self.activation,
                         n_heads=self.n_heads, head_dim=self.head_dim,
                         positions="relative" if self.relative_attention_num_buckets
                         else "learned")

    @property
    def max_length(self):
        """Longest sequence in tokens: the position table's rows after position_start."""
        return self.max_position_embeddings - (self.position_start or 0)
