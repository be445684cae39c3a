"""The serving engine: one scheduler thread per model runs every model computation of the
requests that any number of threads (or asyncio tasks) submit, batching them at the level of
one decode step (iteration-level scheduling: Yu et al. 2022, "Orca", OSDI; vLLM's scheduler,
Kwon et al. 2023) and packing embedding requests by a token budget (Hugging Face
text-embeddings-inference's queue). See docs/SERVING.md."""
import itertools
import threading
import time
from collections import deque

import numpy as np

from ..generation import generate
from ..models.encoder import POOLING_MODES
from .admission import as_batch, check_ids, kv_bytes_per_token, plan_generation
from .batch import step_many
from .errors import EngineClosed, QueueFull, RequestCancelled, _Abort

CHUNK = 64  # prompt chunks are whole query tiles of the attention kernel (csrc/cpu: BQ)
from .handle import Handle
from .metrics import Histogram
from .proxy import ProxyModel
from .stops import StopStrings, check_stop_strings

_ids = itertools.count()
_HIDDEN = ("hidden states",)  # the "pooling" of Engine.encode requests: model(...) itself
_LOGITS = ("logits",)  # the "pooling" of Engine.classify requests: model.classify(...)



def _stack(parts):
    """Rows of several requests as one right-padded batch: parts [(ids (b, t), mask (b, t) or
    None (all real), token types (b, t) or None)] -> ids, mask (rows, widest t) int64 and
    token types (None when no part has them), zeros beyond each part's columns, so that each
    row keeps the columns (positions) it has alone."""
    width = max(ids.shape[1] for ids, _, _ in parts)
    rows = sum(len(ids) for ids, _, _ in parts)
    ids_all, mask_all = np.zeros((rows, width), np.int64), np.zeros((rows, width), np.int64)
    types_all = np.zeros((rows, width), np.int64) \
        if any(types is not None for _, _, types in parts) else None
    at = 0
    for ids, mask, types in parts:
        b, t = ids.shape
        ids_all[at:at + b, :t] = ids
        mask_all[at:at + b, :t] = 1 if mask is None else mask
        if types is not None:
            types_all[at:at + b, :t] = types
        at += b
    return ids_all, mask_all, types_all

class _Job:
    """One piece of model work a request's thread posted: kind "create" / "start" / "step",
    its payload, its token cost for the prefill budget; value or error once run."""

    __slots__ = ("req", "kind", "payload", "cost", "event", "value", "error", "prefilled",
                 "chunk")

    def __init__(self, req, kind, payload, cost=0):
        self.req, self.kind, self.payload, self.cost = req, kind, payload, cost
        self.prefilled = self.chunk = 0  # a chunked prefill's progress (prompt tokens)
        self.event = threading.Event()
        self.value = self.error = None


class _Request:
    """A request's engine-side state: state "waiting" / "running" / "done"; busy while the
    scheduler computes its job; cancelled once cancel() ran."""

    def __init__(self, engine, kind, **data):
        self.id = next(_ids)
        self.kind = kind  # "generate" or "embed"
        self.__dict__.update(data)
        self.handle = Handle(lambda: engine._cancel(self))
        self.state, self.busy, self.cancelled, self.retired = "waiting", False, False, False
        self.job = self.thread = self.proxy = self.decoding = None
        self.prompt_width = None
        self.submitted = time.monotonic()
        self.last = None  # when its last logits came back (inter-token latency)


class Engine:
    """Continuous batching of concurrent requests on one model (transformer.load's result).

    Engine(model, max_queue=1024, kv_budget_tokens=None, kv_budget_bytes=None,
           max_batch_tokens=8192, max_prefill_tokens=None)

    model: a decoder ("decoder") or encoder-decoder ("seq2seq") model for submit(), an encoder
    ("encoder") for embed(). max_queue: requests waiting for admission at most (beyond it
    submit / embed raise QueueFull at once). kv_budget_tokens (or kv_budget_bytes, divided by
    2 x layers x KV heads x head_dim x 4 bytes a token): the KV pool; a generation request
    reserves rows x (its longest prompt + max_new_tokens) tokens (encoder-decoders: plus its
    source tokens, the cross-attention keys and values) from admission until it ends; default
    64 x max_position_embeddings. max_batch_tokens: real tokens of one embedding batch (one
    request's tokens at least). max_prefill_tokens: prompt tokens prefilled (and sources
    encoded) in one scheduler iteration (default 512, rounded down to a multiple of 64, at
    least 64): a decoder's prompt is prefilled in chunks of whole 64-token tiles, several
    requests' chunks in one forward (chunked prefill, SARATHI), so running requests wait at
    most that much prefill between two tokens; an encoder-decoder's source and decoder prefix
    go whole (at least one request an iteration), as does a request of several prompts.

    One scheduler thread does all model compute; each generation request runs the unchanged
    transformer.generation.generate in a thread of its own on a ProxyModel whose decoding
    posts start / step to the scheduler. Each scheduler iteration: (a) admit waiting requests
    in FIFO order while the KV budget allows (a request that does not fit waits, and so do the
    ones behind it); (b) run posted decoding constructions and prefills within
    max_prefill_tokens; (c) one decode step, through transformer.serving.batch.step_many, over
    every request that posted one (each with its pending reorder applied first); (d) one
    embedding batch; results go back to the request threads, finished or cancelled requests
    release their KV reservation at once. Outputs are bit-identical to model.generate /
    model.embed of the request alone: the engine sets model.batch_invariant (every product
    row gives the same bits whatever the other rows; on the CPU float32 products then take
    one kernel for every row count, int8 and bfloat16 always do), and the batched step runs
    each request's attention on its own cache.

    Thread-safe; usable from asyncio (handle.aresult(), `async for`). shutdown() or `with`
    ends it. Raises ValueError for a model of another kind or bad sizes."""

    def __init__(self, model, max_queue=1024, kv_budget_tokens=None, kv_budget_bytes=None,
                 max_batch_tokens=8192, max_prefill_tokens=None):
        if getattr(model, "kind", None) not in ("encoder", "decoder", "seq2seq"):
            raise ValueError(f"Engine needs a model of kind 'encoder', 'decoder' or 'seq2seq' "
                             f"(transformer.load's result), got {type(model).__name__}")
        for name, v in (("max_queue", max_queue), ("max_batch_tokens", max_batch_tokens)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if kv_budget_tokens is not None and kv_budget_bytes is not None:
            raise ValueError("give kv_budget_tokens or kv_budget_bytes, not both")
        positions = getattr(model.config, "max_position_embeddings", None) or 2048
        if kv_budget_bytes is not None:
            kv_budget_tokens = int(kv_budget_bytes) // kv_bytes_per_token(model)
        elif kv_budget_tokens is None:
            kv_budget_tokens = 64 * positions
        if not isinstance(kv_budget_tokens, int) or kv_budget_tokens < 1:
            raise ValueError(f"the KV budget must hold at least one token, got "
                             f"kv_budget_tokens={kv_budget_tokens!r}")
        # a request's output the same bits alone or among others: row-invariant products (the
        # model's own generate / embed then compute the same way: the engine's reference)
        model.batch_invariant = True
        # the scheduler thread runs every kernel from now on: the OpenMP workers of this thread
        # (which loaded the model) are released, or with libgomp they would make each kernel of
        # the scheduler wait for a wake-up (3x slower per token for a Marian beam search)
        model.kernels.release_threads()
        self.model, self.max_queue = model, max_queue
        self.kv_budget_tokens, self.max_batch_tokens = kv_budget_tokens, max_batch_tokens
        if max_prefill_tokens is not None and (not isinstance(max_prefill_tokens, int)
                                               or max_prefill_tokens < CHUNK):
            raise ValueError(f"max_prefill_tokens must be an integer >= {CHUNK}, got "
                             f"{max_prefill_tokens!r}")
        self.max_prefill_tokens = (max_prefill_tokens or 512) // CHUNK * CHUNK
        self._cond = threading.Condition(threading.Lock())
        self._waiting, self._embed_waiting = deque(), deque()
        self._running, self._threads = set(), set()
        self._prefill_jobs, self._step_jobs = deque(), []
        self._reserved, self._closing = 0, False
        self._count = dict(tokens_generated=0, requests_finished=0, requests_cancelled=0,
                           requests_failed=0, requests_refused=0, embed_batches=0,
                           embed_requests=0, steps=0)
        self._ttft, self._itl = Histogram(), Histogram()
        self._scheduler = threading.Thread(target=self._loop, daemon=True,
                                           name="transformer-serving-scheduler")
        self._scheduler.start()

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, input_ids, attention_mask=None, stop_strings=None, **kwargs):
        """Queue a generation request; returns its Handle at once.

        input_ids: (T,) or (B, T) integers (an encoder-decoder: the source; its decoder
        prefix as decoder_input_ids / decoder_attention_mask); attention_mask the same shape
        or None; kwargs: every keyword of transformer.generation.generate (decoding options,
        generation_config, return_scores, return_dict_in_generate, return_attention, ...)
        except streamer (iterate the handle). stop_strings: a str or a list (greedy and
        sampling; needs model.tokenizer; transformer/serving/stops.py has the semantics).
        handle.result() is what model.generate returns for the same arguments (NumPy).
        Raises at once: generate's TypeError / ValueError / IndexError for a bad option or
        input; ValueError when the request exceeds the model's positions or the whole KV
        budget (naming kv_budget_tokens); QueueFull when max_queue requests wait;
        EngineClosed after shutdown; TypeError for an encoder (use embed)."""
        if self.model.kind == "encoder":
            raise TypeError("an encoder model does not generate: use Engine.embed")
        plan = plan_generation(self.model, input_ids, attention_mask, kwargs)
        strings = check_stop_strings(stop_strings, getattr(self.model, "tokenizer", None),
                                     plan.cfg.num_beams)
        if plan.kv_tokens > self.kv_budget_tokens:
            raise ValueError(f"the request needs {plan.kv_tokens} KV tokens ({plan.rows} rows x "
                             f"(prompt + max_new_tokens={plan.cfg.max_new_tokens})) but the "
                             f"engine's whole KV budget is kv_budget_tokens="
                             f"{self.kv_budget_tokens}")
        req = _Request(self, "generate", plan=plan, strings=strings)
        self._enqueue(req, self._waiting)
        return req.handle

    def embed(self, input_ids, attention_mask=None, token_type_ids=None, pooling=None,
              normalize=None):
        """Queue an embedding request (an encoder model); returns its Handle at once, whose
        result() is model.embed(input_ids, attention_mask, token_type_ids, pooling, normalize)
        for these rows: (B, C x pooling modes) float32. input_ids (T,) or (B, T) integers,
        attention_mask / token_type_ids the same shape or None. Waiting requests with the same
        pooling and normalize are packed into one model.embed call of up to max_batch_tokens
        real tokens (right padded to the widest; each row's columns as given, so its
        positions are those it has alone). Raises at once: TypeError / ValueError /
        IndexError for bad inputs or a pooling mode, ValueError for rows longer than the
        model takes, QueueFull, EngineClosed; TypeError for a model that is not an encoder."""
        model = self.model
        if model.kind != "encoder":
            raise TypeError(f"embed needs an encoder model, this one is a {model.kind!r} model "
                            f"(use Engine.submit)")
        ids, mask, lengths = check_ids(input_ids, attention_mask, model.config.vocab_size)
        limit = getattr(model.config, "max_length", None)
        if limit is not None and ids.shape[1] > limit:
            raise ValueError(f"input_ids has T={ids.shape[1]} tokens but the model takes at most "
                             f"{limit} (max_position_embeddings)")
        types = None
        if token_type_ids is not None:
            types = as_batch(token_type_ids, "token_type_ids").astype(np.int64)
            if types.shape != ids.shape:
                raise ValueError(f"token_type_ids must have the shape of input_ids "
                                 f"{ids.shape}, got {types.shape}")
        modes = None if pooling is None else (pooling,) if isinstance(pooling, str) \
            else tuple(pooling)
        if modes == _LOGITS and model.labels is None:
            raise TypeError("classify needs a sequence classifier (config.json architectures "
                            "*ForSequenceClassification); this encoder has no such head")
        if modes is not None and modes not in (_HIDDEN, _LOGITS):  # the model's own check
            if not modes or any(m not in POOLING_MODES for m in modes):
                raise ValueError(f"pooling must be one of {POOLING_MODES} or a tuple of them, "
                                 f"got {pooling!r}")
        if mask is None:
            mask = np.ones(ids.shape, np.int64)
        req = _Request(self, "embed", ids=ids, mask=mask, types=types, modes=modes,
                       normalize=normalize, tokens=int(lengths.sum()), kv_tokens=0)
        self._enqueue(req, self._embed_waiting)
        return req.handle

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        """Queue a request for an encoder's last hidden state; its handle's result() is
        model(input_ids, attention_mask, token_type_ids): (B, T, C) float32, 0 at padded
        positions. Packed with the other waiting encode requests by max_batch_tokens, as
        embed. Raises embed's errors."""
        return self.embed(input_ids, attention_mask, token_type_ids, pooling=_HIDDEN)

    def classify(self, input_ids, attention_mask=None, token_type_ids=None):
        """Queue a request for a sequence classifier's logits (a cross-encoder's scores, the
        /rerank of text-embeddings-inference); its handle's result() is
        model.classify(input_ids, attention_mask, token_type_ids) for these rows, bit for bit:
        (B, num_labels) float32, columns model.labels. Packed with the other waiting classify
        requests by max_batch_tokens, as embed. Raises embed's errors, and TypeError for a
        model without a classification head."""
        return self.embed(input_ids, attention_mask, token_type_ids, pooling=_LOGITS)

    def _enqueue(self, req, queue):
        with self._cond:
            if self._closing:
                raise EngineClosed("the engine is shut down: it admits no more requests")
            if len(queue) >= self.max_queue:
                self._count["requests_refused"] += 1
                raise QueueFull(f"the engine's waiting queue is full (max_queue="
                                f"{self.max_queue}); retry later")
            queue.append(req)
            self._cond.notify_all()

    # -- the request threads' side ------------------------------------------------------------
    def _post(self, req, kind, payload):
        """Called in a request's thread by its proxy: queue `kind` work for the scheduler and
        block until it ran; returns its value or raises its error (_Abort when cancelled)."""
        if kind == "check":
            if req.cancelled:
                raise _Abort()
            return None
        plan = req.plan
        cost = plan.create_cost if kind == "create" else plan.start_cost if kind == "start" else 0
        job = _Job(req, kind, payload, cost)
        with self._cond:
            if req.cancelled or req.state != "running":
                raise _Abort()
            req.job = job
            (self._step_jobs if kind == "step" else self._prefill_jobs).append(job)
            self._cond.notify_all()
        job.event.wait()
        if job.error is not None:
            raise job.error
        return job.value

    def _run_request(self, req):
        """A request's thread: the unchanged search on the proxy model, then its result."""
        plan, handle = req.plan, req.handle
        kwargs = dict(plan.kwargs)
        stops = None
        as_tuple = False
        if req.strings is not None:
            tails = None
            if self.model.kind == "decoder":  # each row's text continues its prompt's
                B, mask = len(plan.ids), plan.mask if plan.mask is not None else \
                    np.ones_like(plan.ids)
                tails = [plan.ids[b][mask[b] != 0][-4:].tolist()
                         for b in range(B) for _ in range(plan.rows // B)]
            stops = StopStrings(req.strings, self.model.tokenizer, plan.rows,
                                plan.cfg.eos_token_id, plan.cfg.pad_token_id, handle._push,
                                tails)
            if kwargs.get("return_scores") and not (kwargs.get("return_dict_in_generate")
                                                    or kwargs.get("return_attention")):
                kwargs["return_dict_in_generate"], as_tuple = True, True
        req.proxy = ProxyModel(self.model, lambda kind, payload: self._post(req, kind, payload),
                               stops)
        streamer = None
        if plan.cfg.num_beams == 1:
            streamer = stops.observe if stops is not None else handle._push
        result, error, columns = None, None, None
        try:
            try:
                out = generate(req.proxy, plan.ids, plan.mask, streamer=streamer, **kwargs)
                if stops is not None or plan.cfg.num_beams > 1:
                    if stops is not None:
                        out = stops.cut(out, req.prompt_width, plan.cfg.pad_token_id)
                        if as_tuple:
                            out = (out.sequences, out.scores)
                    seqs = out[0] if isinstance(out, tuple) else getattr(out, "sequences", out)
                    columns = list(seqs[:, req.prompt_width:].T.copy())
                result = out
            except _Abort:
                error = RequestCancelled("the request was cancelled")
            except BaseException as e:  # the request's own error, raised by result()
                error = e
            with self._cond:  # retired (KV released, counted) before its caller sees the end
                self._retire(req)
                if not req.cancelled:
                    self._count["requests_failed" if error is not None
                                else "requests_finished"] += 1
            req.handle._finish(result=result, error=error, columns=columns)
        finally:
            with self._cond:
                self._threads.discard(threading.current_thread())
                req.thread = req.proxy = None  # no cycles: freed without the collector
                self._cond.notify_all()

    # -- cancelling and retiring --------------------------------------------------------------
    def _cancel(self, req):
        """handle.cancel(): out of the queue, or its pending job failed with _Abort and its KV
        released now (when the scheduler is computing its job: right after it)."""
        with self._cond:
            if req.state == "done" or req.handle.done() or req.cancelled:
                return False
            if req.state == "waiting":
                (self._waiting if req.kind == "generate" else self._embed_waiting).remove(req)
                req.state = "done"
            else:
                req.cancelled = True
                if not req.busy:
                    job = req.job
                    if job is not None:
                        queue = self._step_jobs if job.kind == "step" else self._prefill_jobs
                        if job in queue:
                            queue.remove(job)
                        job.error = _Abort()
                        job.event.set()
                    self._retire(req)
            self._count["requests_cancelled"] += 1
            self._cond.notify_all()
            busy = req.busy
        if not busy:  # else the scheduler ends it right after its computation
            req.handle._cancelled()
        return True

    def _retire(self, req):
        """Under the lock: the request leaves the running set and its KV reservation is
        released (once); its real decoding objects are dropped."""
        if req.retired:
            return
        req.retired, req.state, req.job = True, "done", None
        if req in self._running:
            self._running.discard(req)
            if req.kind == "generate":
                self._reserved -= req.plan.kv_tokens
        if req.proxy is not None:
            req.proxy.release()
        req.decoding = req.proxy = None
        self._cond.notify_all()

    # -- the scheduler ------------------------------------------------------------------------
    # how long a decode step waits for running requests whose search is still choosing their
    # next token, and a prefill for admitted requests still posting their first work (seconds):
    # without it a step would take only the requests that were quick, and every weight would
    # be read twice per token
    STEP_GATHER = 0.02

    def _loop(self):
        while True:
            with self._cond:
                gather_until = None
                while True:
                    admitted = self._admit()
                    if not admitted and self._gathering():
                        now = time.monotonic()
                        gather_until = gather_until or now + self.STEP_GATHER
                        if now < gather_until:
                            self._cond.wait(gather_until - now)
                            continue
                    prefill = self._take_prefill()
                    steps = self._take(self._step_jobs)
                    embeds = self._take_embeds()
                    if admitted or prefill or steps or embeds:
                        break
                    if self._closing and not (self._running or self._waiting
                                              or self._embed_waiting):
                        return
                    self._cond.wait()
            try:
                for req in admitted:
                    req.thread.start()
                if prefill:
                    self._run_prefill(prefill)
                if steps:
                    self._run_steps(steps)
                if embeds:
                    self._run_embeds(embeds)
            except BaseException as e:  # a bug of the engine: fail this work, keep serving
                self._fail_all(prefill + steps, embeds, e)

    def _gathering(self):
        """Under the lock: True when the work posted should wait for running requests on their
        way to post theirs. Before a prefill: admitted requests that have not yet posted
        their construction or prefill (the newcomers' sources are encoded and their prompts
        chunked together). Before a step (no prefill posted): requests that have had logits
        back and not yet posted their next step (their search is choosing the next token in
        its own thread; one token round is then one step)."""
        if self._prefill_jobs:
            first = True
        elif self._step_jobs:
            first = False
        else:
            return False
        return any((r.last is None) == first and r.job is None and not r.busy
                   for r in self._running)

    def _fail_all(self, jobs, embeds, error):
        """The scheduler's safety net: every job and embedding request of a failed iteration
        ends with `error` (none is left waiting for an answer that never comes)."""
        for job in jobs:
            if not job.event.is_set():
                job.value, job.error = None, error
                with self._cond:
                    job.req.busy = False
                job.event.set()
        with self._cond:
            for r in embeds:
                r.busy = False
                self._retire(r)
        for r in embeds:
            r.handle._finish(error=error)

    def _admit(self):
        """(a) Under the lock: the waiting requests that fit the KV budget, FIFO (the head
        blocks the ones behind it: no starvation of large requests); their threads made."""
        admitted = []
        while self._waiting and not self._closing:
            req = self._waiting[0]
            if self._reserved + req.plan.kv_tokens > self.kv_budget_tokens:
                break
            self._waiting.popleft()
            self._reserved += req.plan.kv_tokens
            req.state = "running"
            self._running.add(req)
            req.thread = threading.Thread(target=self._run_request, args=(req,), daemon=True,
                                          name=f"transformer-serving-request-{req.id}")
            self._threads.add(req.thread)
            admitted.append(req)
        return admitted

    def _take_prefill(self):
        """(b) Under the lock: posted constructions / prefills, FIFO, within
        max_prefill_tokens (the first one with a cost whatever its size). A decoder's
        one-prompt start is prefilled in chunks (job.chunk: the tokens of this iteration, whole
        64-token tiles but for a prompt's last chunk, so that the bits are the whole prefill's:
        transformer.models.block.PromptChunk); it stays first in the queue until its last
        chunk, so running requests wait at most max_prefill_tokens of prefill a token."""
        taken, used, budget = [], 0, self.max_prefill_tokens
        while self._prefill_jobs:
            job = self._prefill_jobs[0]
            if self._chunked(job):
                left = job.cost - job.prefilled
                n = left if left <= budget - used else (budget - used) // CHUNK * CHUNK
                if n <= 0:
                    break
                job.chunk = n
                if n == left:
                    self._prefill_jobs.popleft()
                job.req.busy = True
                taken.append(job)
                used += n
                if n < left:
                    break
                continue
            if used and used + job.cost > budget:
                break
            self._prefill_jobs.popleft()
            job.req.busy = True
            taken.append(job)
            used += job.cost
        return taken

    def _chunked(self, job):
        """A start prefilled in chunks: a decoder's decoding of one prompt."""
        return (job.kind == "start" and self.model.kind == "decoder"
                and len(job.req.decoding.sequences) == 1)

    def _take(self, jobs):
        """(c) Under the lock: every posted step."""
        taken = list(jobs)
        jobs.clear()
        for job in taken:
            job.req.busy = True
        return taken

    def _take_embeds(self):
        """(d) Under the lock: the oldest waiting embedding request and the later ones with
        its pooling / normalize, FIFO, within max_batch_tokens real tokens."""
        if not self._embed_waiting:
            return []
        key = (self._embed_waiting[0].modes, self._embed_waiting[0].normalize)
        taken, used, keep = [], 0, deque()
        while self._embed_waiting:
            req = self._embed_waiting.popleft()
            if (req.modes, req.normalize) == key and (
                    not taken or used + req.tokens <= self.max_batch_tokens):
                taken.append(req)
                used += req.tokens
            else:
                keep.append(req)
                if (req.modes, req.normalize) == key:
                    break
        keep.extend(self._embed_waiting)
        self._embed_waiting = keep
        for req in taken:
            req.state, req.busy = "running", True
            self._running.add(req)
        return taken

    def _deliver(self, jobs):
        """Results back to the request threads; a request cancelled meanwhile gets _Abort and
        is retired now."""
        now = time.monotonic()
        cancelled = []
        with self._cond:
            for job in jobs:
                req = job.req
                req.busy, req.job = False, None
                if req.cancelled:
                    job.value, job.error = None, _Abort()
                    self._retire(req)
                    cancelled.append(req)
                elif job.error is None and job.kind in ("start", "step"):
                    rows = len(job.value)
                    self._count["tokens_generated"] += rows
                    if job.kind == "start":
                        self._ttft.observe(now - req.submitted)
                    else:
                        self._itl.observe(now - req.last)
                    req.last = now
        for req in cancelled:  # its end seen only once its KV is released
            req.handle._cancelled()
        for job in jobs:
            job.event.set()

    def _run_prefill(self, jobs):
        chunks = [job for job in jobs if self._chunked(job)]
        if chunks:
            self._run_chunks(chunks)
        sources = [job for job in jobs if job.kind == "create" and self.model.kind == "seq2seq"]
        encoded = self._encode_together(sources) if len(sources) > 1 else {}
        for job in jobs:
            if job in chunks:
                continue
            if job in encoded:
                args, kwargs = job.payload
                job.payload = (args, dict(kwargs, encoder_output=encoded[job]))
            req = job.req
            try:
                if job.kind == "create":
                    args, kwargs = job.payload
                    req.decoding = job.value = self.model.decoding(*args, **kwargs)
                    req.prompt_width = req.decoding.sequences.shape[1]
                else:
                    job.value = req.decoding.start(*job.payload)
            except BaseException as e:
                job.error = e
            self._deliver([job])

    def _encode_together(self, jobs):
        """The sources of several encoder-decoder requests' constructions encoded as one
        batch (their rows padded to one width), split back per request: {job: its
        EncoderOutput}; {} when the batch fails (each request then encodes alone and gets its
        own error)."""
        sources = [(np.asarray(job.payload[0][0]), job.payload[0][1], None) for job in jobs]
        ids, mask, _ = _stack(sources)
        try:
            parts = self.model.encode(ids, mask).split([len(s[0]) for s in sources])
        except Exception:  # noqa: BLE001 - each request then raises its own error alone
            return {}
        return dict(zip(jobs, parts))

    def _run_chunks(self, jobs):
        """Prompt chunks of several requests as one forward (model.prefill_decodings); a
        request whose prompt is complete gets its start logits, the others stay queued."""
        try:
            for job in jobs:
                if job.prefilled == 0:
                    job.req.decoding.begin(*job.payload)
            outs = self.model.prefill_decodings([(j.req.decoding, j.chunk) for j in jobs])
        except BaseException as e:
            with self._cond:
                for job in jobs:
                    if job in self._prefill_jobs:
                        self._prefill_jobs.remove(job)
            for job in jobs:
                job.error = e
            self._deliver(jobs)
            return
        done = []
        with self._cond:
            for job, out in zip(jobs, outs):
                job.prefilled += job.chunk
                if out is not None or job.req.cancelled:
                    if job in self._prefill_jobs:
                        self._prefill_jobs.remove(job)
                    job.value = out
                    done.append(job)
                else:
                    job.req.busy = False
        self._deliver(done)

    def _run_steps(self, jobs):
        ready = []
        for job in jobs:
            tokens, reorder = job.payload
            try:
                if reorder is not None:
                    job.req.decoding.reorder(reorder)
                ready.append(job)
            except BaseException as e:
                job.error = e
        if ready:
            try:
                logits = step_many(self.model, [(j.req.decoding, j.payload[0]) for j in ready])
            except BaseException as e:
                for j in ready:
                    j.error = e
            else:
                for j, value in zip(ready, logits):
                    j.value = value
            with self._cond:
                self._count["steps"] += 1
        self._deliver(jobs)

    def _run_embeds(self, reqs):
        ids, mask, types = _stack([(r.ids, r.mask, r.types) for r in reqs])
        hidden = reqs[0].modes == _HIDDEN

        def run(ids, mask, types):  # one model call: hidden states, logits or embeddings
            if hidden:
                return self.model(ids, mask, types)
            if reqs[0].modes == _LOGITS:
                return self.model.classify(ids, mask, types)
            return self.model.embed(ids, mask, types, pooling=reqs[0].modes,
                                    normalize=reqs[0].normalize)

        results = {}
        try:
            out = run(ids, mask, types)
            at = 0
            for r in reqs:
                rows = out[at:at + len(r.ids)]
                results[r] = ((rows[:, :r.ids.shape[1]] if hidden else rows).copy(), None)
                at += len(r.ids)
        except BaseException:  # one request's bad input: each alone, so only it fails
            for r in reqs:
                try:
                    results[r] = (run(r.ids, r.mask, r.types), None)
                except BaseException as e:
                    results[r] = (None, e)
        with self._cond:
            self._count["embed_batches"] += 1
            for r in reqs:
                r.busy = False
                if not r.cancelled:
                    self._count["embed_requests"] += 1
                    self._count["requests_finished" if results[r][1] is None
                                else "requests_failed"] += 1
                self._retire(r)
        for r in reqs:
            if r.cancelled:
                r.handle._cancelled()
            else:
                value, error = results[r]
                r.handle._finish(result=value, error=error)

    # -- ending, counters ---------------------------------------------------------------------
    def shutdown(self, timeout=None):
        """Stop admitting (submit / embed raise EngineClosed from now on), cancel the waiting
        requests, let the running ones finish within `timeout` seconds (None: as long as they
        take), cancel the rest, and join the scheduler and every request thread. Idempotent."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closing = True
            waiting = list(self._waiting) + list(self._embed_waiting)
        for req in waiting:
            self._cancel(req)
        with self._cond:
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._running, None if deadline is None
                                else max(0.0, deadline - time.monotonic()))
            running = list(self._running)
        for req in running:
            self._cancel(req)
        self._scheduler.join()
        while True:
            with self._cond:
                threads = list(self._threads)
            if not threads:
                break
            for t in threads:
                if t.ident is not None:
                    t.join()
                else:  # made at admission but never started: nothing to wait for
                    with self._cond:
                        self._threads.discard(t)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    @property
    def closed(self):
        """True once shutdown() began."""
        return self._closing

    def metrics(self):
        """The engine's counters now, a new dict of plain Python values: queue_length,
        embed_queue_length, running_requests, running_rows, kv_reserved_tokens,
        kv_budget_tokens, tokens_generated (rows of logits computed: one per token chosen),
        requests_finished / requests_cancelled / requests_failed / requests_refused,
        embed_batches, embed_requests, steps (batched decode steps), and the histograms
        time_to_first_token_seconds (submit to the first logits) and
        inter_token_latency_seconds (between two logits of a request), each {"buckets":
        [(le, cumulative count), ...], "sum", "count"}."""
        with self._cond:
            gen = [r for r in self._running if r.kind == "generate"]
            return dict(queue_length=len(self._waiting),
                        embed_queue_length=len(self._embed_waiting),
                        running_requests=len(gen), running_rows=sum(r.plan.rows for r in gen),
                        kv_reserved_tokens=self._reserved, kv_budget_tokens=self.kv_budget_tokens,
                        **self._count,
                        time_to_first_token_seconds=self._ttft.snapshot(),
                        inter_token_latency_seconds=self._itl.snapshot())
