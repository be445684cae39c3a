"""Models on the GPU (device="cuda"): the real all-MiniLM-L6-v2 against HF transformers in
PyTorch on CUDA, fp32 and fp16 (and bf16 against fp32 HF), and a tiny pre-LN encoder against our
CPU run. Marked `gpu`, skipped without CuPy and a device; without them, device="cuda" must fail
with a clear error."""
import numpy as np
import pytest

import transformer
from transformer.device import to_numpy
from transformer.ops import cuda

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")

SENTENCES = ["Hello world", "The quick brown fox jumps over the lazy dog.", "Ok",
             "Sentence embeddings map text to vectors so that similar meanings land close."]


def test_cuda_without_gpu_is_a_clear_error(minilm_path):
    if cuda.available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        transformer.load(minilm_path, device="cuda")
    with pytest.raises(ValueError, match="float32 only"):
        transformer.load(minilm_path, dtype="float16")


@pytest.fixture(scope="module")
def gpu():
    if not cuda.available() or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU visible to CuPy and PyTorch")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2), ("bfloat16", 8e-2)])
def test_minilm_on_gpu_matches_hf(gpu, minilm_path, dtype, tol):
    ours = transformer.load(minilm_path, device="cuda", dtype=dtype)
    batch = ours.tokenizer(SENTENCES)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.float32}[dtype]
    model = hf.BertModel.from_pretrained(str(minilm_path), torch_dtype=torch_dtype).cuda().eval()
    with torch.no_grad():
        want = model(input_ids=torch.tensor(batch["input_ids"]).cuda(),
                     attention_mask=torch.tensor(batch["attention_mask"]).cuda(),
                     token_type_ids=torch.tensor(batch["token_type_ids"]).cuda())
    want = want.last_hidden_state.float().cpu().numpy()
    got = to_numpy(ours(**batch))
    real = batch["attention_mask"].astype(bool)
    assert np.abs(got[real] - want[real]).max() <= tol * max(1.0, np.abs(want).max())
    emb = to_numpy(ours.embed(**batch))
    cpu = transformer.load(minilm_path, threads=2).embed(**batch)
    assert np.sum(emb * cpu, axis=1).min() >= (0.99999 if dtype == "float32" else 0.999)


@pytest.mark.gpu
def test_pre_ln_encoder_on_gpu_matches_cpu(gpu, rng):
    from transformer.models.config import EncoderConfig
    from transformer.models.encoder import EncoderModel, encoder_shapes
    cfg = EncoderConfig(vocab_size=50, d_model=64, n_heads=4, n_layers=2, d_ff=96,
                        max_position_embeddings=40, pre_norm=True, activation="gelu")
    w = {k: (rng.standard_normal(s) * 0.2).astype(np.float32)
         for k, s in encoder_shapes(cfg).items()}
    ids = rng.integers(0, 50, (3, 17))
    mask = (np.arange(17)[None] < np.array([[17], [5], [11]])).astype(np.int64)
    want = EncoderModel(cfg, w, threads=2)(ids, mask)
    got = to_numpy(EncoderModel(cfg, w).to("cuda")(ids, mask))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
