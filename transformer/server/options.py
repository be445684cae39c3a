"""The options of `transformer serve` (argparse), importable without the server's packages: the
CLI builds its parser from here and imports the rest of transformer.server only to serve."""
import importlib.util

# module -> the distribution that provides it (the `server` extra of pyproject.toml)
REQUIRED = {"starlette": "starlette", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client",
            "jinja2": "jinja2", "pydantic": "pydantic"}
MISSING_HINT = 'pip install "transformer[server]"'


def missing_packages():
    """The distributions of the `server` extra that are not installed (a list, [] when none)."""
    return [dist for mod, dist in REQUIRED.items() if importlib.util.find_spec(mod) is None]


def add_arguments(sp):
    """Add the serve options to the argparse (sub)parser `sp`."""
    sp.add_argument("--model", required=True, help="model directory (or llama2.c checkpoint)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                    "127.0.0.1; 0.0.0.0 for every interface)")
    sp.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any "
                    "free port, printed at start)")
    sp.add_argument("--served-model-name", default=None,
                    help="the model's name in the APIs (default: the directory's name)")
    sp.add_argument("--api-key", default=None,
                    help="require this key (Authorization: Bearer KEY; LibreTranslate's "
                    "api_key field); default: the TRANSFORMER_API_KEY variable, else no key")
    sp.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    sp.add_argument("--dtype", default=None, help="float32 (default); int8 or bfloat16 on cpu; "
                    "float16 or bfloat16 on cuda")
    sp.add_argument("--threads", type=int, default=None,
                    help="kernel threads (default: OMP_NUM_THREADS, else all cores)")
    sp.add_argument("--tokenizer", default=None, help="tokenizer file of a llama2.c checkpoint")
    g = sp.add_argument_group("engine (transformer.serving.Engine)")
    g.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for admission at most; beyond it 429 at once "
                   "(default 256)")
    g.add_argument("--kv-budget-tokens", type=int, default=None,
                   help="KV pool in tokens (default 64 x the model's positions)")
    g.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="real tokens of one embedding batch (default 8192)")
    g.add_argument("--max-prefill-tokens", type=int, default=None,
                   help="prompt tokens prefilled per scheduler iteration (default 512)")
    g = sp.add_argument_group("limits")
    g.add_argument("--max-input-tokens", type=int, default=None,
                   help="tokens of one input at most (default: what the model takes)")
    g.add_argument("--max-batch-inputs", type=int, default=512,
                   help="inputs of one embedding / tokenize / translate request at most "
                   "(default 512; TEI's max_client_batch_size)")
    g.add_argument("--max-body-bytes", type=int, default=8 << 20,
                   help="request body size at most (default 8 MiB): 413 beyond")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM: seconds for running requests to finish (default 30)")
    g = sp.add_argument_group("translation (encoder-decoder models)")
    g.add_argument("--source-lang", default=None, help="the model's source language code "
                   "(default: tokenizer_config.json's source_lang)")
    g.add_argument("--target-lang", default=None, help="the model's target language code "
                   "(default: tokenizer_config.json's target_lang)")
    g.add_argument("--num-beams", type=int, default=4, help="beam size of /translate "
                   "(default 4)")
    g.add_argument("--log-level", default="warning", choices=("debug", "info", "warning",
                                                              "error"))
