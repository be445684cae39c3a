"""Stop strings (Hugging Face generate's `stop_strings`) for greedy search and sampling.

Semantics here: a row stops when the decoded text of its new tokens contains one of the stop
strings; the request ends when every row stopped (a stop string or eos) or at max_new_tokens.
Each row is returned cut before its stop string: it keeps the longest prefix of its new tokens
whose decoded text does not reach into the first occurrence of a stop string (OpenAI's `stop`,
where HF keeps the stop string's tokens), then pad_token_id. Rows that stopped keep running in
the search until all have (so sampling draws stay those of generate without stop strings), and
once all rows stopped the model is not called again. The result equals generate without
stop_strings with each row cut so; token_logprobs are 0 after the cut and scores /
sequences_scores are recomputed over the kept tokens."""
import numpy as np


def continuation(decode, tail, new, base=None):
    """The text of the tokens `new` after the tokens `tail` (lists of int; decode(ids) -> str):
    decode(tail + new) less decode(tail), so that a word boundary between them is kept
    (SentencePiece and Metaspace decoders drop the leading space of a text decoded alone);
    decode(new) where the tail's text is not a prefix of it. base: decode(tail), when the
    caller has it already."""
    if base is None:
        base = decode(list(tail)) if len(tail) else ""
    text = decode(list(tail) + list(new))
    return text[len(base):] if text.startswith(base) else decode(list(new))


def check_stop_strings(stop_strings, tokenizer, num_beams):
    """stop_strings (a str or a list of non-empty str) as a tuple, or None. Raises ValueError
    without a tokenizer (model.tokenizer) or for beam search, TypeError for non-strings."""
    if stop_strings is None:
        return None
    strings = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    if not strings or not all(isinstance(s, str) and s for s in strings):
        raise TypeError(f"stop_strings must be a non-empty string or a list of them, got "
                        f"{stop_strings!r}")
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        raise ValueError("stop_strings needs the model's tokenizer (model.tokenizer with "
                         "decode(ids) -> str)")
    if num_beams > 1:
        raise ValueError("stop_strings works with greedy search and sampling (num_beams=1): "
                         "beam search settles its hypotheses only at the end")
    return strings


class StopStrings:
    """The stop-string state of one request: fed each new column (N,) int64 (generate's
    streamer), it records per row whether it ended (eos) or stopped (a stop string) and how
    many new tokens to keep; `all_stopped` once no row is generating. push: callable(column
    (N,) int64) given each column as soon as no stop string can change it any more (a row's
    text is final up to its last len(longest stop string) - 1 characters), pad after a
    row's cut: the columns of the result, streamed. tails: per row the last tokens of its
    prompt (a list of int lists, or None): a row's text is its continuation of them
    (`continuation`), as a client is sent it."""

    def __init__(self, strings, tokenizer, rows, eos_token_id, pad_token_id=0, push=None,
                 tails=None):
        self.strings, self.tokenizer = strings, tokenizer
        self.tails = tails or [[] for _ in range(rows)]
        self.bases = [tokenizer.decode(t) if t else "" for t in self.tails]  # decoded once
        self.eos = set(np.atleast_1d(np.asarray(eos_token_id, np.int64)).tolist())
        self.new = [[] for _ in range(rows)]
        self.keep = [None] * rows  # new tokens kept (None: still generating)
        self.safe = [0] * rows  # new tokens no stop string can cut any more
        self.running = rows
        self.pad, self.push, self.released = pad_token_id, push, 0
        self.longest = max(len(s) for s in strings)

    @property
    def all_stopped(self):
        """True when every row ended by eos or by a stop string."""
        return self.running == 0

    def observe(self, column):
        """One new column (N,) int64 of the search."""
        for r, token in enumerate(column.tolist()):
            if self.keep[r] is not None:
                continue
            self.new[r].append(token)
            if token in self.eos:
                self.keep[r] = len(self.new[r])
                self.running -= 1
                continue
            text = self._text(r, len(self.new[r]))
            found = [i for i in (text.find(s) for s in self.strings) if i >= 0]
            if found:
                at = min(found)
                keep = 0
                for j in range(1, len(self.new[r]) + 1):
                    if len(self._text(r, j)) > at:
                        break
                    keep = j
                self.keep[r] = keep
                self.running -= 1
                continue
            # the text before its last longest - 1 characters is final: a stop string
            # starting there would already be complete
            final, j = len(text) - self.longest + 1, len(self.new[r])
            while j > self.safe[r] and len(self._text(r, j)) > final:
                j -= 1
            self.safe[r] = j
        if self.push is not None:
            self._release()

    def _text(self, r, j):
        """The text of row r's first j new tokens (its prompt's continuation)."""
        return continuation(self.tokenizer.decode, self.tails[r], self.new[r][:j],
                            self.bases[r])

    def _release(self):
        """Push the columns every row has settled: a running row up to its safe tokens, a
        stopped row its kept tokens then pad."""
        running = [self.safe[r] for r in range(len(self.keep)) if self.keep[r] is None]
        upto = min(running) if running else max(self.keep)
        for c in range(self.released, upto):
            self.push(np.array([row[c] if (k is None or c < k) and c < len(row) else self.pad
                                for row, k in zip(self.new, self.keep)], np.int64))
        self.released = max(self.released, upto)

    def cut(self, out, prompt_width, pad_token_id):
        """generate's output (ids (N, T + n) or a GenerateOutput; the engine asks for the
        latter when return_scores is set) with each row cut after its kept tokens (pad after
        them) and the width trimmed to the longest kept row; token_logprobs zeroed after the
        cut, scores and sequences_scores their float32 sum, attention cut alike."""
        seqs = getattr(out, "sequences", out)
        n_new = seqs.shape[1] - prompt_width
        keep = np.array([n_new if k is None else min(k, n_new) for k in self.keep], np.int64)
        width = int(keep.max())
        seqs = seqs[:, :prompt_width + width].copy()
        seqs[np.arange(prompt_width + width)[None] >= prompt_width + keep[:, None]] = pad_token_id
        if not hasattr(out, "sequences"):
            return seqs
        lp = out.token_logprobs[:, :width].copy()
        lp[np.arange(width)[None] >= keep[:, None]] = 0
        scores = lp.sum(1, dtype=np.float32)
        out.sequences, out.token_logprobs = seqs, lp
        out.scores, out.sequences_scores = scores, scores.copy()
        if out.attention is not None:
            out.attention = [a[:k] for a, k in zip(out.attention, keep)]
        return out
