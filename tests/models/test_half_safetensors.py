"""Safetensors checkpoints stored in bfloat16 or float16 (the form most Llama, BLOOM and Flan-T5
checkpoints ship in): every family reads them, widened to float32 as each tensor streams in,
and matches HF transformers running the same half-precision weights in float32 (one encoder,
two decoders, two encoder-decoders); packed at int8 as they stream in too."""
import numpy as np
import pytest

import transformer
from conftest import perturb

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")


def _model(kind):
    if kind == "bert":
        return hf.BertModel(hf.BertConfig(vocab_size=99, hidden_size=32, num_attention_heads=4,
                                          num_hidden_layers=2, intermediate_size=37,
                                          max_position_embeddings=64))
    if kind == "gpt2":
        return hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=97, n_embd=48, n_head=4, n_layer=2,
                                                n_positions=64))
    if kind == "llama":
        return hf.LlamaForCausalLM(hf.LlamaConfig(
            vocab_size=97, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
            num_hidden_layers=2, intermediate_size=70, max_position_embeddings=64))
    if kind == "bart":
        return hf.BartForConditionalGeneration(hf.BartConfig(
            vocab_size=67, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=40,
            decoder_ffn_dim=40, max_position_embeddings=64))
    return hf.T5ForConditionalGeneration(hf.T5Config(
        vocab_size=67, d_model=40, d_kv=12, d_ff=56, num_layers=2, num_decoder_layers=2,
        num_heads=3, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        decoder_start_token_id=0, eos_token_id=1, pad_token_id=0))


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "bart", "t5"])
def test_half_precision_checkpoints_match_hf(tmp_path, rng, kind, half):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = perturb(_model(kind), 0.05).to(getattr(torch, half))
    model.save_pretrained(tmp_path, safe_serialization=True)
    model = model.float().eval()  # the same half-precision values, run in float32
    from safetensors import safe_open
    stored = safe_open(str(tmp_path / "model.safetensors"), "numpy")
    assert {"bfloat16": "BF16", "float16": "F16"}[half] in \
        {stored.get_slice(n).get_dtype() for n in stored.keys()}
    ids = rng.integers(3, 60, (2, 11))
    args = dict(input_ids=torch.tensor(ids))
    if kind in ("bart", "t5"):
        tgt = rng.integers(3, 60, (2, 7))
        args["decoder_input_ids"] = torch.tensor(tgt)
    with torch.no_grad():
        out = model(**args)
    want = (out.last_hidden_state if kind == "bert" else out.logits).numpy()
    for dtype, atol in (("float32", 1e-4), ("int8", 0.1)):
        ours = transformer.load(tmp_path, dtype=dtype, threads=2)
        got = ours(ids, None, tgt) if kind in ("bart", "t5") else ours(ids)
        err = np.abs(got - want).max()
        assert err <= atol * max(1.0, np.abs(want).max()), (dtype, err)
