"""Fuzz of the JSON files a model directory is configured by, for every family: config.json
fields (those the file holds and those its parser reads), generation_config.json's decoding
options and T5's tokenizer_config.json, set to hostile values (wrong types, nulls, lists, NaN,
infinities, zero, negative and huge numbers). Each case loads and runs (a forward, or two new
tokens) with finite outputs of the right shape, or raises one clear error (ValueError,
IndexError, or a TypeError that is not an accident of the code such as "NoneType"), within a
few seconds and bounded memory (tracemalloc, as tests/test_loader_fuzz.py): nothing is sized
from a field before it is checked."""
import json
import math
import shutil
import sys
import time
import tracemalloc

import numpy as np
import pytest

import transformer

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent / "models"))
from test_bad_input import tiny_dir  # noqa: E402,F401
from test_hostile_input import _hf_tiny  # noqa: E402

# what a traceback of the code (not a clear error) says
ACCIDENTS = ("NoneType", "unsupported operand", "not subscriptable", "has no attribute",
             "object is not", "must be real number", "argument must be", "not supported between")
PEAK = 64 << 20  # bytes traced per case (the tiny models' files are under 200 KB)
SECONDS = 5.0    # per case

# the keys each family's parser reads beyond those HF writes into config.json
EXTRA_KEYS = {
    "gpt2": ("n_inner", "scale_attn_weights", "tie_word_embeddings", "pad_token_id"),
    "bloom": ("seq_length", "tie_word_embeddings", "pretraining_tp", "slow_but_exact"),
    "llama": ("head_dim", "rope_parameters", "rope_scaling", "rope_theta", "mlp_bias",
              "tie_word_embeddings"),
    "t5": ("n_positions", "scale_decoder_outputs", "num_decoder_layers"),
    "bart": ("decoder_vocab_size", "forced_bos_token_id", "forced_eos_token_id",
             "normalize_before"),
    "marian": ("decoder_vocab_size", "scale_embedding", "share_encoder_decoder_embeddings"),
    "mpnet": ("relative_attention_num_buckets",),
    "xlm-roberta": ("position_embedding_type", "type_vocab_size"),
    "bert": ("position_embedding_type", "type_vocab_size", "pad_token_id"),
}

HOSTILE = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, 1, 2, 3, -1, -7, 10 ** 9, 2 ** 63, 2 ** 31 - 1]),
    st.integers(-3, 130),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.5, 1e-30]),
    st.sampled_from(["", "1e-5", "false", "gelu", "relu", "silu", "default", "linear"]),
    st.lists(st.one_of(st.integers(-2, 70), st.none()), max_size=3),
    st.dictionaries(st.sampled_from(["rope_type", "type", "rope_theta", "factor"]),
                    st.one_of(st.sampled_from(["default", "linear", "yarn"]),
                              st.integers(-1, 10), st.none()), max_size=2),
)

FAMILIES = list(EXTRA_KEYS)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tiny_dir):
    """One tiny model directory per family (built once for the module)."""
    pytest.importorskip("torch")
    dirs = {}
    for kind in FAMILIES:
        path = tmp_path_factory.mktemp(kind.replace("-", "_"))
        if kind == "bert":
            shutil.copytree(tiny_dir, path, dirs_exist_ok=True)
        else:
            _hf_tiny(path, kind)
        dirs[kind] = path
    return dirs


def _run(model):
    """A forward (encoders) or two new tokens (the others); the outputs checked."""
    ids = np.array([[3, 4, 5, 6], [5, 6, 7, 3]])
    if model.kind == "encoder":
        out = transformer.device.to_numpy(model(ids))
        assert out.shape == (2, 4, model.config.d_model) and np.isfinite(out).all()
        return
    out = transformer.device.to_numpy(model.generate(ids, max_new_tokens=2))
    assert out.ndim == 2 and out.shape[0] == 2 and 0 <= out.min() and \
        out.max() < model.config.vocab_size


def _check_case(path, file, changes):
    """Write `changes` into path/file, load and run; restore the file after."""
    target = path / file
    original = target.read_bytes() if target.exists() else None
    data = json.loads(original) if original else {}
    data.update(changes)
    target.write_text(json.dumps(data, allow_nan=True))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        _run(transformer.load(path, threads=1))
    except (ValueError, IndexError, TypeError) as e:
        message = str(e)
        assert message and not any(a in message for a in ACCIDENTS), \
            f"{file} {changes}: unclear {type(e).__name__}: {message}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if original is None:
            target.unlink()
        else:
            target.write_bytes(original)
    assert peak < PEAK, f"{file} {changes}: peak {peak} bytes"
    assert time.perf_counter() - t0 < SECONDS, f"{file} {changes}: too slow"


FUZZ = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("kind", FAMILIES)
def test_fuzz_config_json(family_dirs, kind):
    path = family_dirs[kind]
    keys = sorted(set(json.loads((path / "config.json").read_text())) - {"architectures",
                                                                           "model_type"}
                  | set(EXTRA_KEYS[kind]))

    @FUZZ
    @given(st.dictionaries(st.sampled_from(keys), HOSTILE, min_size=1, max_size=3))
    def case(changes):
        _check_case(path, "config.json", changes)

    case()


GENERATION_KEYS = ("max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample",
                   "temperature", "top_k", "top_p", "num_beams", "length_penalty",
                   "early_stopping", "num_return_sequences", "repetition_penalty",
                   "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
                   "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                   "eos_token_id", "pad_token_id", "decoder_start_token_id")


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bloom", "t5", "bart", "marian"])
def test_fuzz_generation_config_json(family_dirs, kind):
    path = family_dirs[kind]

    @FUZZ
    @given(st.dictionaries(st.sampled_from(GENERATION_KEYS), HOSTILE, min_size=1, max_size=3))
    def case(changes):
        _check_case(path, "generation_config.json", changes)

    case()


def test_fuzz_t5_tokenizer_config_json(tmp_path):
    pytest.importorskip("sentencepiece")
    from test_tokenizers import train_t5_spiece
    _hf_tiny(tmp_path, "t5", vocab_size=250)
    train_t5_spiece(tmp_path)
    keys = ("extra_ids", "clean_up_tokenization_spaces", "model_max_length", "eos_token")

    @FUZZ
    @given(st.dictionaries(st.sampled_from(keys), HOSTILE, min_size=1, max_size=2))
    def case(changes):
        _check_case(tmp_path, "tokenizer_config.json", changes)

    case()


def test_hostile_values_cover_the_edges():
    """The strategy reaches the values the issue found (NaN, infinity, null, lists, 0)."""
    seen = []

    @settings(max_examples=300, derandomize=True, deadline=None)
    @given(HOSTILE)
    def draw(v):
        seen.append(v)

    draw()
    assert any(v is None for v in seen) and any(isinstance(v, list) for v in seen)
    assert any(isinstance(v, float) and math.isnan(v) for v in seen)
    assert any(isinstance(v, float) and math.isinf(v) for v in seen)
    assert 0 in seen and any(isinstance(v, str) for v in seen)
