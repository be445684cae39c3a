"""CPU compute type int4 on every family (tiny HF models of test_compute_types): logits (hidden
states for encoders) close to the float32 model's and, tighter, to the float32 model on the same
dequantized weights (only the int8 activations differ); a batch generates what its rows do
alone; every linear and word table packed."""
import numpy as np
import pytest

import transformer
from transformer.ops.packed import PackedWeight

pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_compute_types import _batch_generates_its_rows, _tiny  # noqa: E402 - after the skips


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bloom", "bart", "t5", "mpnet",
                                  "xlm-roberta"])
def test_tiny_families_int4(tmp_path, rng, kind):
    """Max error <= 0.3 x max|value| against float32 (4-bit weights in groups of 32 of a C = 64
    model: measured 0.03..0.21) and <= 0.05 (int8's tolerance) against float32 on the
    dequantized int4 weights (measured 0.0003..0.010)."""
    path = _tiny(tmp_path, kind)
    f32, q = transformer.load(path, threads=2), transformer.load(path, dtype="int4", threads=2)
    same_weights = transformer.load(path, dtype="int4", threads=2).to("cpu", "float32")
    assert all(isinstance(v, PackedWeight) for k, v in q.weights.items()
               if k.endswith((".weight", "embeddings.word")) and v.ndim == 2)
    ids = rng.integers(3, 60, (3, 9))
    args = (ids, None, ids[:, :5]) if kind in ("bart", "t5") else (ids,)
    want, got = f32(*args), q(*args)
    assert np.abs(got - want).max() <= 0.3 * np.abs(want).max()
    want = same_weights(*args)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    if kind not in ("mpnet", "xlm-roberta"):
        _batch_generates_its_rows(q, ids)
