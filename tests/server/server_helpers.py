"""Fixtures of the server tests (imported by name into each test module): tiny random model directories (the GPT-2, Marian and BERT
builders of tests/models, plus a character-level tokenizer.json written with the `tokenizers`
library, a chat template and language codes), and `transformer serve` processes started on
them on free localhost ports (one per model and option set, for the whole session)."""
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))

for module in ("starlette", "uvicorn", "prometheus_client", "jinja2", "pydantic", "httpx"):
    pytest.importorskip(module, reason=f"the server extra (pip install \".[server]\"): {module}")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import httpx  # noqa: E402

import transformer  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
                 "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
                 "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
CORPUS = ["once upon a time there was a little dog who liked to play in the park.",
          "the cat sat on the mat and looked at the birds in the tree.",
          "a man is playing a guitar, and the children sing along with him!",
          "where is the station? it is near the river, at the end of the street.",
          "sentence embeddings map text to vectors; 42 of them fit in 7 lines."]


def write_tokenizer(path, vocab_size, specials, template=None):
    """A character-level-plus-merges BPE tokenizer.json of exactly vocab_size tokens (the
    special tokens first, at ids 0..), lower-casing, Metaspace pre-tokenizer and decoder;
    template: a post-processor ("$A </s>", "[CLS] $A [SEP]") or None."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE(unk_token=specials[-1]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted(set("".join(CORPUS)) | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                         initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS * 20, trainer)
    extra = vocab_size - tok.get_vocab_size()
    if extra > 0:  # every id the model can produce has a token
        tok.add_tokens([f"<x{i}>" for i in range(extra)])
    assert tok.get_vocab_size() == vocab_size
    if template is not None:
        names = [t for t in template.split() if t != "$A"]
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, tok.token_to_id(t)) for t in names])
    tok.save(str(path / "tokenizer.json"))


def _write_json(path, value):
    import json
    path.write_text(json.dumps(value))


def build_models(root):
    """{"gpt2": dir, "marian": dir, "bert": dir, "gpt2-long": dir} of tiny random models with
    tokenizers; gpt2-long: a wider GPT-2 of 1024 positions whose requests run long enough
    (a second or more) to be interrupted."""
    import test_bert as bert
    import test_decoder as dec
    import test_seq2seq as s2s

    rng = np.random.default_rng(2020)
    dirs = {name: root / name for name in ("gpt2", "marian", "bert", "gpt2-long")}
    dec._save(dirs["gpt2"], rng, "gpt2", dict(dec.GPT2_CONFIGS[0], n_positions=128))
    write_tokenizer(dirs["gpt2"], 97, ["<unk>", "<s>", "</s>"])
    _write_json(dirs["gpt2"] / "tokenizer_config.json",
                {"chat_template": CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"})
    dec._save(dirs["gpt2-long"], rng, "gpt2", dict(vocab_size=97, n_embd=256, n_head=4,
                                                    n_layer=4, n_positions=1024))
    write_tokenizer(dirs["gpt2-long"], 97, ["<unk>", "<s>", "</s>"])
    s2s._save(dirs["marian"], rng, "marian")
    write_tokenizer(dirs["marian"], 67, ["<s>", "<pad>", "</s>", "<go>", "<unk>"], "$A </s>")
    _write_json(dirs["marian"] / "tokenizer_config.json",
                {"source_lang": "en", "target_lang": "de"})
    bert._tiny_hf(dirs["bert"], rng)
    write_tokenizer(dirs["bert"], 99, ["[PAD]", "[CLS]", "[SEP]", "[UNK]"], "[CLS] $A [SEP]")
    return dirs


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("server-models"))


@pytest.fixture(scope="session")
def reference(model_dirs):
    """reference(name): the model of that directory loaded in this process as the server
    loads it (2 threads, batch-invariant products: the engine's own reference)."""
    cache = {}

    def load(name):
        if name not in cache:
            model = transformer.load(model_dirs[name], threads=2)
            model.batch_invariant = True
            cache[name] = model
        return cache[name]
    return load


class Server:
    """A `transformer serve` process: url, its Popen, its log file; stop() sends SIGTERM and
    returns the exit status."""

    def __init__(self, model_dir, *options):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "transformer", "serve", "--model", str(model_dir),
             "--port", "0", "--threads", "2", *options],
            stdout=self.log, stderr=self.log, env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        self.url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            for line in self.output().splitlines():
                if line.startswith("transformer serve:") and " on http://" in line:
                    self.url = line.rsplit(" on ", 1)[1].strip()
            if self.url:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"the server did not start:\n{self.output()}")

    def output(self):
        with open(self.log.name) as f:
            return f.read()

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])


@pytest.fixture(scope="session")
def servers(model_dirs):
    """servers(name, *options): a running server of that model directory with those options,
    started once a session (stopped at its end)."""
    running = {}

    def get(name, *options):
        key = (name, options)
        if key not in running or running[key].proc.poll() is not None:
            running[key] = Server(model_dirs[name], *options)
        return running[key]
    yield get
    for server in running.values():
        server.stop()
