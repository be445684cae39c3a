"""Text generation requests of the OpenAI routes on the engine: one engine request per prompt
(its n choices as n rows, so each prompt's answer is model.generate's for that prompt alone),
the choices' text, finish reasons and log-probabilities from the results, and their text as
it streams."""
import asyncio

import numpy as np

from .errors import ApiError


class Choice:
    """One generated row: tokens (list of int, the new tokens kept: before eos, pad after a
    stop string), logprobs (their log-probabilities, list of float), finish_reason ("stop":
    eos or a stop string; "length": max_tokens), text (their text after the prompt),
    completion_tokens (tokens generated: the kept ones and the eos)."""

    def __init__(self, served, prompt, new, logprobs, stop_strings, max_tokens):
        kept, reason = [], "length"
        for t in new:
            if t in served.eos or (stop_strings and t == served.pad):
                reason = "stop"
                break
            kept.append(t)
        if reason == "length" and len(kept) < max_tokens:  # cut by a stop string
            reason = "stop"
        self.tokens, self.finish_reason = kept, reason
        self.logprobs = [float(x) for x in logprobs[:len(kept)]]
        self.completion_tokens = len(kept) + (1 if reason == "stop" and len(kept) < len(new)
                                              and new[len(kept)] in served.eos else 0)
        self.text = served.continuation(prompt, kept)
        self._served, self._prompt = served, prompt

    def pieces(self):
        """The text of each kept token (list of str, concatenating to text where the
        tokenizer's decoding allows: each piece is what that token adds to the text)."""
        out, before = [], ""
        for i in range(1, len(self.tokens) + 1):
            text = self._served.continuation(self._prompt, self.tokens[:i])
            out.append(text[len(before):] if text.startswith(before) else
                       self._served.decode([self.tokens[i - 1]], skip_special_tokens=False))
            before = text
        return out


class Generation:
    """The engine requests of one OpenAI generation request: `prompts` (lists of token ids),
    each run with `n` rows and the generate options `options` (max_new_tokens, do_sample,
    ...), `stop` (stop strings or None). submit() queues them all or none (QueueFull and the
    model's errors are raised after cancelling those already queued)."""

    def __init__(self, served, prompts, n, options, stop):
        self.served, self.prompts, self.n = served, prompts, n
        self.options, self.stop, self.handles = options, stop, []

    def submit(self):
        engine = self.served.engine
        try:
            for ids in self.prompts:
                rows = np.tile(np.asarray(ids, np.int64), (self.n, 1))
                self.handles.append(engine.submit(rows, stop_strings=self.stop,
                                                  return_dict_in_generate=True,
                                                  **self.options))
        except BaseException:
            self.cancel()
            raise
        return self

    def cancel(self):
        for h in self.handles:
            h.cancel()

    def choices(self, p, out):
        """The Choice of each row of prompt p's GenerateOutput `out`."""
        width = len(self.prompts[p])
        seqs, lps = out.sequences, out.token_logprobs
        return [Choice(self.served, self.prompts[p], seqs[j, width:].tolist(), lps[j],
                       self.stop, self.options["max_new_tokens"]) for j in range(self.n)]

    async def results(self):
        """Every Choice, prompt-major (choice index p * n + j)."""
        try:
            outs = await asyncio.gather(*(h.aresult() for h in self.handles))
        except BaseException:
            self.cancel()
            raise
        return [c for p, out in enumerate(outs) for c in self.choices(p, out)]

    async def stream(self):
        """Async iterator of (index, text delta, Choice or None) as tokens come: a delta as
        soon as a row's text grows (held back while it ends in an incomplete UTF-8 character),
        then once its request ended (index, final delta, its Choice). Leaving the iteration
        (a disconnected client) cancels every request."""
        queue = asyncio.Queue()

        async def pump(p, handle):
            try:
                async for column in handle:
                    queue.put_nowait((p, column, None))
                queue.put_nowait((p, None, await handle.aresult()))
            except BaseException as e:  # noqa: BLE001 - the consumer raises it
                queue.put_nowait((p, None, e))

        tasks = [asyncio.ensure_future(pump(p, h)) for p, h in enumerate(self.handles)]
        served, n = self.served, self.n
        new = [[] for _ in range(len(self.handles) * n)]
        sent = [""] * len(new)
        ended = [False] * len(new)
        try:
            left = len(self.handles)
            while left:
                p, column, end = await queue.get()
                if column is not None:
                    for j, token in enumerate(column.tolist()):
                        i = p * n + j
                        if ended[i] or token in served.eos or (self.stop and token == served.pad):
                            ended[i] = True
                            continue
                        new[i].append(token)
                        text = served.continuation(self.prompts[p], new[i])
                        if text.startswith(sent[i]) and len(text) > len(sent[i]) \
                                and not text.endswith("\ufffd"):
                            yield i, text[len(sent[i]):], None
                            sent[i] = text
                    continue
                left -= 1
                if isinstance(end, BaseException):
                    raise end
                for j, choice in enumerate(self.choices(p, end)):
                    i = p * n + j
                    text = choice.text
                    yield i, text[len(sent[i]):] if text.startswith(sent[i]) else "", choice
        finally:
            self.cancel()
            for t in tasks:
                t.cancel()


def options(served, body, max_tokens, prompt_lengths):
    """generate's keyword arguments of an OpenAI request `body` (temperature 0: greedy; else
    sampling with temperature, top_p, top_k; seed; repetition_penalty; min_tokens as
    min_new_tokens), after refusing what
    the engine does not do (ApiError 400 naming the field) and a prompt + max_tokens beyond
    the model's positions (400 naming max_tokens, OpenAI's context-length message)."""
    if body.frequency_penalty or body.presence_penalty:
        field = "frequency_penalty" if body.frequency_penalty else "presence_penalty"
        raise ApiError(400, f"{field} is not supported by this server: use "
                       f"repetition_penalty", field)
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported by this server", "logit_bias")
    positions = served.max_input_tokens
    for length in prompt_lengths:
        if length + max_tokens > positions:
            raise ApiError(400, f"This model's maximum context length is {positions} tokens. "
                           f"However, you requested {length + max_tokens} tokens ({length} in "
                           f"the prompt, {max_tokens} for the completion). Please reduce the "
                           f"prompt or max_tokens.", "max_tokens",
                           code="context_length_exceeded")
    sampling = body.temperature > 0
    if body.min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens={body.min_tokens} exceeds max_tokens={max_tokens}",
                       "min_tokens")
    opts = dict(max_new_tokens=max_tokens, do_sample=sampling, seed=body.seed,
                repetition_penalty=body.repetition_penalty, min_new_tokens=body.min_tokens)
    if sampling:
        opts.update(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
    return opts


def stop_strings(stop):
    """OpenAI's stop (a str, a list of up to 4 str, or None) as a list or None; ApiError 400
    naming `stop` for empty strings or more than 4."""
    if stop is None:
        return None
    stop = [stop] if isinstance(stop, str) else list(stop)
    if not stop:
        return None
    if len(stop) > 4 or not all(stop):
        raise ApiError(400, "stop must be up to 4 non-empty strings", "stop")
    return stop
