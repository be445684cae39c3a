"""The search contract: what greedy search, sampling and beam search need from a model, and
nothing else (docs/ARCHITECTURE.md, "Generation: the search contract").

A model that generates returns, from model.decoding(input_ids, attention_mask, config,
**inputs), one object per request with:

  sequences    (B, T) int64 NumPy: the rows the search extends (decoder-only: the prompts as
               given, padding included; encoder-decoder: the decoder prefix, starting with
               decoder_start_token_id, left padded)
  mask         (B, T) bool NumPy: the real tokens of sequences
  ignore       (B,) int64 or None: per row, the leading positions HF's repetition penalty skips
               (its prompt_ignore_length: the left padding of the attention mask)
  vocab_size   V, the width of the logits
  threads      the model's kernel threads (the fused beam top-k uses them)
  backend      the model's backend object (transformer.ops.backend): the search brings
               logits to the host with backend.to_host and repeats rows with backend.xp
  start(rows, max_new_tokens) -> logits (B, V)
               run every prompt once (prefill) into a fresh cache with room for `rows` rows
               of up to T + max_new_tokens tokens; the logits of each row's last token. Raises
               ValueError when a prompt + max_new_tokens exceeds the model's positions.
  step(tokens) -> logits (R, V)
               append tokens (R,) int64, one per cache row 0..R-1, and return their logits
  reorder(index)
               keep cache rows `index` (R',) in that order: fewer rows (finished sequences
               leave), permuted rows (beams), or repeated rows (R' up to `rows`: the beams or
               samples of a prompt start from its row)

Optional, for encoder-decoders (CTranslate2's return_attention):
  record_attention(layer, heads)
               before start: from then on each start / step also leaves
  attention    (R, S) float32 NumPy: the cross-attention weights of decoder layer `layer`
               (negative: from the last) averaged over its first `heads` heads (0: all), for
               the query that produced the logits just returned; S = the longest source
  source_lengths (B,) the real source tokens of each request row
The base class refuses record_attention with a ValueError (no cross-attention).

Logits may be device arrays (CuPy): the search brings them to the host as float32
(backend.to_host); token ids go to step as NumPy int64. The search never reads the
model's internals, and the model never sees the search's state (scores, processors)."""


class Decoding:
    """A base for the contract: `sequences`, `mask`, `vocab_size`, `threads`, `backend`,
    `ignore` set by the subclass; start / step / reorder to implement (see the module
    docstring)."""

    ignore = None
    threads = None
    backend = None
    attention = None

    def record_attention(self, layer, heads):
        raise ValueError("return_attention needs an encoder-decoder model (cross-attention)")

    def start(self, rows, max_new_tokens):
        raise NotImplementedError

    def step(self, tokens):
        raise NotImplementedError

    def reorder(self, index):
        raise NotImplementedError
