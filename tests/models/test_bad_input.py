"""Bad input gets a clear exception naming the argument; bad files a clear error."""
import json
import shutil

import numpy as np
import pytest

import transformer
from transformer.weights import WeightsError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random BERT directory written with safetensors (no torch needed)."""
    from safetensors.numpy import save_file

    from transformer.models.bert import _hf_names, config_from_hf

    path = tmp_path_factory.mktemp("tiny_bert")
    cfg = dict(model_type="bert", architectures=["BertModel"], vocab_size=30, hidden_size=16,
               num_attention_heads=2, num_hidden_layers=1, intermediate_size=20,
               max_position_embeddings=12, type_vocab_size=2, hidden_act="gelu")
    (path / "config.json").write_text(json.dumps(cfg))
    config = config_from_hf(cfg)
    rng = np.random.default_rng(0)
    shapes = {"embeddings.word_embeddings.weight": (30, 16),
              "embeddings.position_embeddings.weight": (12, 16),
              "embeddings.token_type_embeddings.weight": (2, 16)}
    for hf_name in _hf_names(config).values():
        shapes.setdefault(hf_name, (16,) if hf_name.endswith(("bias", "LayerNorm.weight"))
                          else (20, 16) if "intermediate" in hf_name
                          else (16, 20) if "output.dense" in hf_name and "attention" not in hf_name
                          else (16, 16))
    for part in ("query", "key", "value"):
        shapes[f"encoder.layer.0.attention.self.{part}.weight"] = (16, 16)
        shapes[f"encoder.layer.0.attention.self.{part}.bias"] = (16,)
    shapes["encoder.layer.0.intermediate.dense.bias"] = (20,)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    tensors["embeddings.position_ids"] = np.arange(12, dtype=np.int64)[None]
    save_file(tensors, str(path / "model.safetensors"))
    return path


def _copy(tiny_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_tiny_loads_and_runs(tiny_dir):
    model = transformer.load(tiny_dir, threads=1)
    out = model(np.array([[1, 2, 3]]))
    assert out.shape == (1, 3, 16) and np.isfinite(out).all()


def test_input_errors(tiny_dir):
    model = transformer.load(tiny_dir, threads=1)
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, T\)"):
        model(ids[0])
    with pytest.raises(TypeError, match="input_ids must be an integer array"):
        model(ids.astype(np.float32))
    with pytest.raises(IndexError, match="input_ids must lie in"):
        model(np.array([[1, 30]]))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(ids, np.ones((1, 4), int))
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        model(ids, np.array([[1, 2, 1]]))
    with pytest.raises(ValueError, match="attention_mask row 0 has no real token"):
        model(ids, np.zeros((1, 3), int))
    with pytest.raises(IndexError, match="token_type_ids"):
        model(ids, None, np.array([[0, 2, 0]]))
    with pytest.raises(ValueError, match="pooling"):
        model.embed(ids, pooling="median")
    with pytest.raises(ValueError, match="no tokenizer"):
        model.embed_texts(["hi"])


def test_too_long_errors_or_truncates(tiny_dir):
    model = transformer.load(tiny_dir, threads=1)
    ids = np.ones((2, 13), np.int64)
    with pytest.raises(ValueError, match="max_position_embeddings=12"):
        model(ids)
    out = model(ids, np.ones_like(ids), truncate=True)
    assert out.shape == (2, 12, 16)
    np.testing.assert_array_equal(out, model(ids[:, :12]))


def test_missing_files(tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        transformer.load(tmp_path / "nope")
    d = _copy(tiny_dir, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        transformer.load(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        transformer.load(d)


def test_truncated_weights(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:len(data) - 100])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        transformer.load(d)
    (d / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        transformer.load(d)


def test_mismatched_weights_listed(tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(tiny_dir, tmp_path)
    t = load_file(str(d / "model.safetensors"))
    del t["encoder.layer.0.output.dense.bias"]
    t["encoder.layer.0.intermediate.dense.weight"] = np.zeros((21, 16), np.float32)
    t["encoder.layer.0.surprise"] = np.zeros(3, np.float32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(WeightsError) as e:
        transformer.load(d)
    msg = str(e.value)
    assert "missing (1): encoder.layer.0.output.dense.bias" in msg
    assert "unexpected (1): encoder.layer.0.surprise" in msg
    assert "encoder.layer.0.intermediate.dense.weight: expected (20, 16), found (21, 16)" in msg


def test_bad_configs(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / "config.json").write_text(json.dumps({"model_type": "wav2vec2",
                                               "architectures": ["Wav2Vec2Model"]}))
    with pytest.raises(ValueError, match="unknown model family.*wav2vec2"):
        transformer.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        transformer.load(d)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, hidden_act="swish")))
    with pytest.raises(ValueError, match="hidden_act 'swish'"):
        transformer.load(d)
    with pytest.raises(ValueError, match="device"):
        transformer.load(tiny_dir, device="tpu")
    with pytest.raises(ValueError, match="threads"):
        transformer.load(tiny_dir, threads=0)
