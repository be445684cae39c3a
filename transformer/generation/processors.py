"""Logits processors and warpers with the semantics and order of Hugging Face transformers
(generation/logits_process.py, GenerationMixin._get_logits_processor in generation/utils.py).

Every processor is called as processor(input_ids, scores, prompts=None) -> scores: input_ids
(R, t) int64 are the whole rows so far (prompt with its padding, then the new tokens; t = the
current length), prompts (R,) int64 the prompt each row continues (None: row r is prompt r),
scores (R, V) float32 (greedy and sampling: the logits; beam search: the log-softmax, as HF) on
the host, modified in place and returned. applies(t) says whether it changes anything at
length t, so that a search can keep its fast path (beam search's fused top-k) on the steps
where nothing applies. The search runs on the host for CPU and GPU models alike (the logits
come back each step), so these serve both."""
import numpy as np

NEG_INF = np.float32(-np.inf)


class LogitsProcessor:
    """Base class: applies(t) is True unless a subclass says otherwise."""

    def applies(self, t):
        """Whether __call__ changes scores when the rows hold t tokens."""
        return True

    def bans(self, t):
        """The tokens (n,) int64 set to -inf in every row at length t when that is all the
        processor does there (beam search then keeps its fused top-k and drops them from the
        candidates), else None."""
        return None

    def __call__(self, input_ids, scores, prompts=None):
        raise NotImplementedError


class RepetitionPenalty(LogitsProcessor):
    """RepetitionPenaltyLogitsProcessor (Keskar et al. 2019): the score of every token already in
    the row is divided by `penalty` when positive, multiplied when negative.
    ignore (R,) int64 or None: per row, the leading positions not counted (HF's
    prompt_ignore_length = the left padding of the attention mask)."""

    def __init__(self, penalty, ignore=None):
        self.penalty, self.ignore = np.float32(penalty), ignore

    def __call__(self, input_ids, scores, prompts=None):
        R, V = scores.shape
        seen = np.zeros((R, V + 1), bool)  # column V absorbs the ignored positions
        ids = input_ids
        if self.ignore is not None:
            skip = self.ignore if prompts is None else self.ignore[prompts]
            ids = np.where(np.arange(ids.shape[1])[None] < skip[:, None], V, ids)
        seen[np.arange(R)[:, None], ids] = True
        seen = seen[:, :V]
        s = scores[seen]
        scores[seen] = np.where(s < 0, s * self.penalty, s / self.penalty)
        return scores


class NoRepeatNGram(LogitsProcessor):
    """NoRepeatNGramLogitsProcessor (Paulus et al. 2017): a token that would complete an n-gram
    already present in the row gets -inf."""

    def __init__(self, ngram_size):
        self.n = int(ngram_size)

    def applies(self, t):
        return t >= self.n

    def __call__(self, input_ids, scores, prompts=None):
        n, t = self.n, input_ids.shape[1]
        if t < n:
            return scores
        # windows (R, t - n + 1, n) of every n-gram; banned: the last token of those whose first
        # n - 1 tokens equal the row's last n - 1 tokens
        grams = np.lib.stride_tricks.sliding_window_view(input_ids, n, axis=1)
        match = (grams[:, :, :n - 1] == input_ids[:, None, t - n + 1:]).all(-1)
        rows, where = np.nonzero(match)
        scores[rows, grams[rows, where, n - 1]] = NEG_INF
        return scores


class NoBadWords(LogitsProcessor):
    """NoBadWordsLogitsProcessor: the last token of each sequence of bad_words_ids gets -inf
    where the row ends with the sequence's other tokens (one-token sequences: always).
    Sequences equal to a single eos are dropped (as HF)."""

    def __init__(self, bad_words_ids, eos_token_ids=()):
        words = [tuple(w) for w in bad_words_ids if not (len(w) == 1 and w[0] in eos_token_ids)]
        self.single = np.array(sorted({w[0] for w in words if len(w) == 1}), np.int64)
        self.multi = {}  # prefix length -> (prefixes (K, n) int64, last tokens (K,) int64)
        for w in words:
            if len(w) > 1:
                self.multi.setdefault(len(w) - 1, []).append(w)
        self.multi = {n: (np.array([w[:-1] for w in ws], np.int64),
                          np.array([w[-1] for w in ws], np.int64)) for n, ws in self.multi.items()}

    def bans(self, t):
        return None if self.multi else self.single

    def __call__(self, input_ids, scores, prompts=None):
        scores[:, self.single] = NEG_INF
        for n, (prefixes, last) in self.multi.items():
            if n > input_ids.shape[1]:
                continue
            match = (input_ids[:, None, -n:] == prefixes[None]).all(-1)  # (R, K)
            rows, k = np.nonzero(match)
            scores[rows, last[k]] = NEG_INF
        return scores


class MinLength(LogitsProcessor):
    """MinLengthLogitsProcessor / MinNewTokensLengthLogitsProcessor: every eos gets -inf while
    the row holds fewer than `min_length` tokens, counting from position `start` (0: the whole
    row; the prompt length: new tokens only)."""

    def __init__(self, min_length, eos_token_ids, start=0):
        self.min_length, self.start = int(min_length), int(start)
        self.eos = np.array(eos_token_ids, np.int64)

    def applies(self, t):
        return t - self.start < self.min_length and len(self.eos) > 0

    def bans(self, t):
        return self.eos

    def __call__(self, input_ids, scores, prompts=None):
        if self.applies(input_ids.shape[1]):
            scores[:, self.eos] = NEG_INF
        return scores


class ForcedToken(LogitsProcessor):
    """ForcedBOSTokenLogitsProcessor (at_length 1) / ForcedEOSTokenLogitsProcessor (at_length
    max_length - 1): at that length every score but token's is -inf, token's 0."""

    def __init__(self, token, at_length):
        self.token, self.at_length = int(token), int(at_length)

    def applies(self, t):
        return t == self.at_length

    def __call__(self, input_ids, scores, prompts=None):
        if self.applies(input_ids.shape[1]):
            scores[:] = NEG_INF
            scores[:, self.token] = 0
        return scores


class SuppressTokens(LogitsProcessor):
    """SuppressTokensLogitsProcessor (at_length None: every step) and
    SuppressTokensAtBeginLogitsProcessor (at_length: HF's begin_index): the tokens get -inf."""

    def __init__(self, tokens, at_length=None):
        self.tokens = np.array(tokens, np.int64)
        self.at_length = at_length

    def applies(self, t):
        return self.at_length is None or t == self.at_length

    def bans(self, t):
        return self.tokens

    def __call__(self, input_ids, scores, prompts=None):
        if self.applies(input_ids.shape[1]):
            scores[:, self.tokens] = NEG_INF
        return scores


class Temperature(LogitsProcessor):
    """TemperatureLogitsWarper: scores / temperature. shift: first subtract each row's max (the
    same softmax; a tiny temperature then keeps only the top token, -inf elsewhere, instead of
    inf - inf = NaN), computed in float64; not for beam sampling, whose scores are added to the
    running beam scores (HF divides only)."""

    def __init__(self, temperature, shift=True):
        self.temperature, self.shift = temperature, shift

    def __call__(self, input_ids, scores, prompts=None):
        if not self.shift:
            scores /= scores.dtype.type(self.temperature)
            return scores
        x = np.asarray(scores, np.float64)
        top = x.max(-1, keepdims=True)
        with np.errstate(over="ignore", invalid="ignore"):
            x = (x - np.where(np.isfinite(top), top, 0.0)) / self.temperature
        return x.astype(scores.dtype, copy=False)


class TopK(LogitsProcessor):
    """TopKLogitsWarper: every score below the k-th largest of its row gets -inf (ties kept);
    k = max(top_k, min_tokens_to_keep)."""

    def __init__(self, top_k, min_tokens_to_keep=1):
        self.k = max(int(top_k), int(min_tokens_to_keep))

    def __call__(self, input_ids, scores, prompts=None):
        V = scores.shape[-1]
        if self.k < V:
            kth = np.partition(scores, V - self.k, axis=-1)[:, V - self.k][:, None]
            scores[scores < kth] = -np.inf
        return scores


class TopP(LogitsProcessor):
    """TopPLogitsWarper (nucleus, Holtzman et al. 2019): outside the smallest set of most
    probable tokens whose probability reaches top_p, scores get -inf; at least
    min_tokens_to_keep tokens stay."""

    def __init__(self, top_p, min_tokens_to_keep=1):
        self.top_p, self.keep = float(top_p), int(min_tokens_to_keep)

    def __call__(self, input_ids, scores, prompts=None):
        order = np.argsort(-scores, axis=-1, kind="stable")
        x = np.take_along_axis(scores, order, -1).astype(np.float64)
        m = x[:, :1]
        p = np.exp(x - m)
        p /= p.sum(-1, keepdims=True)
        before = np.cumsum(p, -1) - p  # mass of the strictly more probable tokens
        drop = before >= self.top_p
        drop[:, :self.keep] = False
        np.put_along_axis(scores, order, np.where(drop, -np.inf, np.take_along_axis(
            scores, order, -1)), -1)
        return scores


class LogitsProcessorList(list):
    """Processors applied in order: list(input_ids, scores, prompts=None) -> scores."""

    def applies(self, t):
        """Whether any processor changes scores at length t."""
        return any(p.applies(t) for p in self)

    def bans(self, t):
        """The union of the tokens banned at length t by the processors that apply, when each
        of them only bans tokens (Processor.bans), else None."""
        out = []
        for p in self:
            if p.applies(t):
                b = p.bans(t)
                if b is None:
                    return None
                out.append(b)
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)

    def __call__(self, input_ids, scores, prompts=None):
        for p in self:
            if p.applies(input_ids.shape[1]):
                scores = p(input_ids, scores, prompts)
        return scores


def build_processors(cfg, prompt_length, vocab_size, ignore=None):
    """The processors of a validated GenerationConfig, in HF's order (_get_logits_processor):
    repetition penalty, no-repeat n-grams, bad words, min length, min new tokens, forced BOS,
    forced EOS, suppressed tokens, tokens suppressed at the first new position.
    prompt_length: T, the prompt's (padded) length; vocab_size: V (eos ids >= V are never
    produced and need no ban); ignore: (R,) the leading positions the repetition penalty skips
    (or None)."""
    T, eos = prompt_length, tuple(t for t in cfg.eos_token_id if t < vocab_size)
    out = LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        out.append(RepetitionPenalty(cfg.repetition_penalty, ignore))
    if cfg.no_repeat_ngram_size > 0:
        out.append(NoRepeatNGram(cfg.no_repeat_ngram_size))
    if cfg.bad_words_ids:
        out.append(NoBadWords(cfg.bad_words_ids, eos))
    if cfg.min_length > 0:
        out.append(MinLength(cfg.min_length, eos))
    if cfg.min_new_tokens > 0:
        out.append(MinLength(cfg.min_new_tokens, eos, start=T))
    if cfg.forced_bos_token_id is not None:
        out.append(ForcedToken(cfg.forced_bos_token_id, 1))
    if cfg.forced_eos_token_id is not None:
        out.append(ForcedToken(cfg.forced_eos_token_id, T + cfg.max_new_tokens - 1))
    if cfg.suppress_tokens:
        out.append(SuppressTokens(cfg.suppress_tokens))
    if cfg.begin_suppress_tokens:
        begin = T + 1 if (T == 1 and cfg.forced_bos_token_id is not None) else T
        out.append(SuppressTokens(cfg.begin_suppress_tokens, begin))
    return out


def build_warpers(cfg):
    """The sampling warpers of a validated GenerationConfig in HF's order: temperature, top-k,
    top-p; beam sampling keeps at least 1 + len(eos) tokens (2 without eos), as HF."""
    out = LogitsProcessorList()
    if not cfg.do_sample:
        return out
    keep = (len(cfg.eos_token_id) + 1 if cfg.eos_token_id else 2) if cfg.num_beams > 1 else 1
    if cfg.temperature != 1.0:
        out.append(Temperature(cfg.temperature, shift=cfg.num_beams == 1))
    if cfg.top_k != 0:
        out.append(TopK(cfg.top_k, keep))
    if cfg.top_p < 1.0:
        out.append(TopP(cfg.top_p, keep))
    return out
