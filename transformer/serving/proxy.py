"""The model and decoding objects a request's unchanged search (transformer.generation.
generate) runs on inside the serving engine: they compute nothing in the request's thread,
they post the work to the engine's scheduler and wait for it."""
import numpy as np


class ProxyModel:
    """The model as one request's search sees it: every attribute is the real model's
    (config, DECODING_INPUTS, DEFAULT_MAX_NEW_TOKENS, generation_config, ...), but decoding(...)
    posts the construction of the real decoding object (an encoder-decoder encodes its source
    there) to the scheduler and returns a ProxyDecoding over it.

    post: callable(kind, payload) -> value, blocking until the scheduler ran the work
    ("create": (args, kwargs) -> the real decoding; "start": (rows, max_new_tokens) -> logits;
    "step": (tokens, reorder index or None) -> logits); raises the work's error, or the
    engine's private abort when the request was cancelled. stops: the request's StopStrings
    or None."""

    def __init__(self, model, post, stops=None):
        self._model, self._post, self._stops = model, post, stops
        self.decodings = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def decoding(self, *args, **kwargs):
        """The search contract for this request: the real model.decoding(*args, **kwargs),
        built by the scheduler, behind a ProxyDecoding."""
        proxy = ProxyDecoding(self._post("create", (args, kwargs)), self._post, self._stops)
        self.decodings.append(proxy)
        return proxy

    def release(self):
        """Drop the real decoding objects (their KV caches) once the request retired."""
        for d in self.decodings:
            d._real = None


class ProxyDecoding:
    """The search contract (transformer.generation.contract) over a real decoding object whose
    start and step run in the engine's scheduler thread. start(rows, max_new_tokens) and
    step(tokens) post the work and block until its logits come back; reorder(index) computes
    nothing: it is composed and applied by the scheduler just before the next step (the search
    always steps after a reorder), so a beam search's reorder costs no extra scheduler
    iteration. The other attributes (sequences, mask, ignore, vocab_size, threads,
    source_lengths, attention) are the real object's; record_attention is forwarded (it only
    records a choice). When the request's stop strings have stopped every row, step returns
    logits that make the search choose eos (or, without eos, token 0) without calling the
    model (the engine cuts those tokens)."""

    # the search's own kernels (beam search's fused top-k) run in the request's thread on one
    # thread: no OpenMP team there, whose idle workers would slow every kernel of the scheduler
    # (libgomp throttles its spinning once more threads are kept than there are cores); the
    # top-k of each row is the same whatever the thread count
    threads = 1

    def __init__(self, real, post, stops=None):
        self._real, self._post, self._stops = real, post, stops
        self._reorder = None

    def __getattr__(self, name):
        real = self.__dict__.get("_real")
        if real is None:
            raise AttributeError(name)
        return getattr(real, name)

    def record_attention(self, layer, heads):
        """The real decoding's record_attention (it only records the choice)."""
        self._real.record_attention(layer, heads)

    def start(self, rows, max_new_tokens):
        """The real start(rows, max_new_tokens), run by the scheduler: logits (B, V)."""
        self._reorder = None
        return self._post("start", (rows, max_new_tokens))

    def reorder(self, index):
        """Compose index (R',) int64 with the pending reorder; the scheduler applies it just
        before the next step."""
        index = np.asarray(index, np.int64)
        self._reorder = index if self._reorder is None else self._reorder[index]

    def step(self, tokens):
        """The real step(tokens (R,) int64) after the pending reorder, run by the scheduler in
        one batched step (transformer.serving.batch.step_many): logits (R, V)."""
        tokens = np.ascontiguousarray(tokens, np.int64)
        if self._stops is not None and self._stops.all_stopped:
            self._post("check", None)  # a cancelled request still unwinds here
            self._reorder = None
            logits = np.full((len(tokens), self.vocab_size), -1e30, np.float32)
            eos = [e for e in sorted(self._stops.eos) if e < self.vocab_size]
            if eos:
                logits[:, eos[0]] = 0
            return logits
        reorder, self._reorder = self._reorder, None
        return self._post("step", (tokens, reorder))
