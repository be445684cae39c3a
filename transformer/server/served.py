"""The served model: the loaded model, its engine, and the text helpers every API shares
(tokenising without silent truncation, the text of new tokens, chat templates, languages)."""
import json
import os
import time

import numpy as np

from ..serving.stops import continuation
from .errors import ApiError


class Served:
    """One model served over HTTP.

    Served(model, engine, path, name=None, max_input_tokens=None, max_batch_inputs=512,
           source_lang=None, target_lang=None, num_beams=4)

    model: transformer.load's result; engine: a transformer.serving.Engine on it; path: the
    model directory (tokenizer.json, tokenizer_config.json and chat_template.jinja are read
    from it when present; a llama2.c checkpoint file: its directory). name: the model's id in
    the APIs (default the directory's name; a checkpoint file's name without its extension). max_input_tokens: tokens of one input at most
    (default and cap: what the model takes: an encoder's max_length, a decoder's or
    encoder-decoder's max_position_embeddings). source_lang / target_lang: a translation
    model's language codes (default: tokenizer_config.json's source_lang / target_lang; None:
    any code is accepted)."""

    def __init__(self, model, engine, path, name=None, max_input_tokens=None,
                 max_batch_inputs=512, source_lang=None, target_lang=None, num_beams=4):
        self.model, self.engine, self.kind = model, engine, model.kind
        path = os.fspath(path)
        self.dir = path if os.path.isdir(path) else os.path.dirname(path) or "."
        base = os.path.basename(os.path.normpath(path))
        self.name = name or (base if os.path.isdir(path) else os.path.splitext(base)[0])
        self.created = int(time.time())
        self.tokenizer = getattr(model, "tokenizer", None)
        self._raw = self._raw_tokenizer()
        cfg = model.config
        limit = getattr(cfg, "max_length", None) if self.kind == "encoder" else None
        limit = limit or getattr(cfg, "max_position_embeddings", None) or 2048
        self.max_input_tokens = min(limit, max_input_tokens or limit)
        self.max_batch_inputs = max_batch_inputs
        self.num_beams = num_beams
        config = self._tokenizer_config()
        self.special_tokens = {k: _token_text(config.get(k)) for k in
                               ("bos_token", "eos_token", "unk_token", "pad_token")}
        self.chat_template = self._chat_template(config)
        self.source_lang = source_lang or config.get("source_lang")
        self.target_lang = target_lang or config.get("target_lang")
        if self.kind != "encoder":
            from ..generation import generation_defaults
            gen = generation_defaults(model)
            eos = gen.eos_token_id
            self.eos = set(np.atleast_1d(np.asarray(() if eos is None else eos,
                                                    np.int64)).tolist())
            self.pad = gen.pad_token_id if gen.pad_token_id is not None else \
                min(self.eos, default=0)
        else:
            self.eos, self.pad = set(), 0
        self._chat = None

    # -- files of the directory -------------------------------------------------------------------
    def _raw_tokenizer(self):
        """tokenizer.json as a `tokenizers` Tokenizer without truncation or padding (token
        counts, offsets, add_special_tokens), or None."""
        file = os.path.join(self.dir, "tokenizer.json")
        if self.tokenizer is None or not os.path.isfile(file):
            return None
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(file)
        tok.no_truncation()
        tok.no_padding()
        return tok

    def _tokenizer_config(self):
        file = os.path.join(self.dir, "tokenizer_config.json")
        if not os.path.isfile(file):
            return {}
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
        return config if isinstance(config, dict) else {}

    def _chat_template(self, config):
        """The chat template: chat_template.jinja, else tokenizer_config.json's chat_template (a
        string, or a list of {name, template}: the one named "default"), else None."""
        file = os.path.join(self.dir, "chat_template.jinja")
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                return f.read()
        template = config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    # -- text <-> ids -----------------------------------------------------------------------------
    def need_tokenizer(self, param):
        if self.tokenizer is None:
            raise ApiError(400, "the model has no tokenizer: give token ids", param)

    def encode(self, text, param, add_special_tokens=True, truncate=False, left=False):
        """Token ids (list of int) of `text`: the model's own tokenizer's ids, not truncated
        (raw tokenizer.json when present, so that a long text is seen as long). More than
        max_input_tokens: cut when `truncate` (from the left when `left`), else ApiError 413
        naming `param` (TEI's validation error; the OpenAI routes answer 400)."""
        self.need_tokenizer(param)
        if not isinstance(text, str):
            raise ApiError(422, f"{param} must be a string", param)
        if self._raw is not None:
            ids = self._raw.encode(text, add_special_tokens=add_special_tokens).ids
        else:
            ids = list(self.tokenizer.encode(text))
        return self.check_length(ids, param, truncate, left)

    async def encode_many(self, texts, param, add_special_tokens=True, truncate=False,
                          left=False):
        """encode() of each text (a list of id lists); a large batch (over 4096 characters)
        is tokenised in a worker thread, off the event loop."""
        def run():
            return [self.encode(t, param, add_special_tokens, truncate, left) for t in texts]
        if sum(map(len, texts)) > 4096:
            from starlette.concurrency import run_in_threadpool
            return await run_in_threadpool(run)
        return run()

    async def encode_pairs(self, query, texts, param, truncate=False):
        """The model tokenizer's batch (input_ids, attention_mask, token_type_ids: (B, T)
        int64) of the pairs (query, texts[i]), as model.classify_texts tokenises them (the pair
        template; with `truncate`, HF's longest-first truncation to the model's own limit). A
        pair longer than max_input_tokens without `truncate` is ApiError 413 naming `param`.
        Tokenised in a worker thread, off the event loop."""
        self.need_tokenizer(param)
        if self._raw is None:
            raise ApiError(400, "the model has no tokenizer.json to make text pairs", param)

        def run():
            for text in texts:
                n = len(self._raw.encode(query, text).ids)
                if n > self.max_input_tokens and not truncate:
                    raise ApiError(413, f"`{param}` must have less than {self.max_input_tokens}"
                                   f" tokens with the query. Given: {n}", param,
                                   kind="validation")
            return self.tokenizer([query] * len(texts), texts)
        from starlette.concurrency import run_in_threadpool
        return await run_in_threadpool(run)

    def check_length(self, ids, param, truncate=False, left=False):
        limit = self.max_input_tokens
        if len(ids) > limit:
            if not truncate:
                raise ApiError(413, f"`{param}` must have less than {limit} tokens. "
                               f"Given: {len(ids)}", param, kind="validation")
            ids = ids[len(ids) - limit:] if left else ids[:limit]
        return ids

    def tokens(self, text, add_special_tokens=True):
        """TEI's /tokenize rows: [{id, text, special, start, stop}] (offsets in characters of
        `text`; None without tokenizer.json)."""
        self.need_tokenizer("inputs")
        if self._raw is None:
            ids = self.tokenizer.encode(text)
            return [dict(id=i, text=self.tokenizer.decode([i]), special=False, start=None,
                         stop=None) for i in ids]
        enc = self._raw.encode(text, add_special_tokens=add_special_tokens)
        return [dict(id=i, text=t, special=bool(s), start=None if s else a,
                     stop=None if s else b)
                for i, t, s, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask,
                                           enc.offsets)]

    def decode(self, ids, skip_special_tokens=True):
        """Text of token ids (IndexError for an id outside the vocabulary)."""
        self.need_tokenizer("ids")
        if self._raw is not None:
            vocab = self._raw.get_vocab_size()
            if any(not 0 <= i < vocab for i in ids):
                raise IndexError(f"token ids must lie in [0, {vocab})")
            return self._raw.decode(ids, skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(ids)

    def continuation(self, prompt, new):
        """The text of the new tokens `new` after `prompt` (lists of int): the decoded text of
        the prompt's last tokens and the new ones, less that of the prompt's last tokens, so
        that a word boundary between them is kept (SentencePiece drops a leading space of a
        text decoded alone). Eos tokens are not part of the text."""
        return continuation(self.decode, list(prompt[-4:]), [t for t in new if t not in self.eos])

    # -- engine requests -------------------------------------------------------------------------
    def embed(self, rows, normalize=None, hidden=False):
        """The engine handle of one embedding request over token-id rows (lists of int),
        right padded into one batch: result (B, C) float32 (the model's pooling; normalize
        None: the model's), or with `hidden` the last hidden states (B, T, C)."""
        from ..tokenizer import pad_batch
        batch = pad_batch(rows, 0)
        if hidden:
            return self.engine.encode(batch["input_ids"], batch["attention_mask"])
        return self.engine.embed(batch["input_ids"], batch["attention_mask"],
                                 normalize=normalize)

    # -- chat ---------------------------------------------------------------------------------------
    def render_chat(self, messages, add_generation_prompt=True):
        """The prompt text of OpenAI-style `messages` by the model's chat template, rendered as
        Hugging Face's apply_chat_template does (jinja2's ImmutableSandboxedEnvironment with
        trim_blocks, lstrip_blocks, loopcontrols, the tojson filter, raise_exception and
        strftime_now; the special tokens as variables). ApiError 400 naming `messages` when the
        template refuses them; 404 when the model has no template."""
        if self.chat_template is None:
            raise ApiError(404, "the model has no chat template (tokenizer_config.json "
                           "chat_template): use /v1/completions", "messages",
                           code="model_not_supported")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        if self._chat is None:
            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
                return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                                  separators=separators, sort_keys=sort_keys)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
            self._chat = env.from_string(self.chat_template)
        try:
            return self._chat.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **{k: v for k, v in self.special_tokens.items()
                                        if v is not None})
        except jinja2.exceptions.TemplateError as e:
            raise ApiError(400, f"the chat template refused the messages: {e}", "messages")

    # -- languages ----------------------------------------------------------------------------------
    def check_languages(self, source, target):
        """LibreTranslate's source / target codes against the model's: source "auto" or the
        model's source language, target the model's target language (any code when the
        model's are unknown). ApiError 400 naming the field otherwise."""
        for field, given, have in (("source", source, self.source_lang),
                                   ("target", target, self.target_lang)):
            if not isinstance(given, str) or not given:
                raise ApiError(400, f"Invalid request: missing {field} parameter", field)
            if have is not None and given != have and not (field == "source"
                                                           and given == "auto"):
                raise ApiError(400, f"{given} is not supported by this model: its {field} "
                               f"language is {have}", field)


def truncate_dimensions(e, dimensions, param="dimensions"):
    """Matryoshka truncation: the first `dimensions` components of each row of e (B, C)
    float32, L2-renormalised (sentence-transformers' truncate_dim, then normalisation); e
    itself when dimensions is None. ApiError 400 naming `param` beyond C."""
    if dimensions is None:
        return e
    if dimensions > e.shape[1]:
        raise ApiError(400, f"{param} must be at most the model's {e.shape[1]}, got "
                       f"{dimensions}", param)
    e = np.ascontiguousarray(e[:, :dimensions])
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), np.float32(1e-12))


def _token_text(token):
    """A special token of tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None
