"""CTranslate2 model directories (model.bin + source_vocabulary.txt + target_vocabulary.txt) of
the TransformerBase / TransformerBig specs (OpenNMT/CTranslate2, python/ctranslate2/specs/
transformer_spec.py): pre-norm encoder and decoder with final LayerNorms (eps 1e-6), ReLU,
embeddings x sqrt(d_model), sinusoidal positions [sin | cos] with tensor2tensor timescales and
positions counted from 1, fused QKV (self-attention) and KV (cross-attention) projections,
output projection with bias. float32, int8 and int16 weights (dequantized on load)."""
import os

from ..tokenizer.vocabulary import VocabularyTokenizer, read_vocabulary
from ..weights import WeightsError
from ..weights.ctranslate2 import read_ctranslate2
from . import register_family
from .seq2seq import Seq2SeqConfig, Seq2SeqModel, seq2seq_shapes

HEADS = {"TransformerBase": 8, "TransformerBig": 16}


def _names(side, i):
    """{our name: CTranslate2 name} for layer i of `side`, without the weight/bias suffix."""
    p, q = f"{side}.layers.{i}.", f"{side}/layer_{i}/"
    names = {p + "norm1": q + "self_attention/layer_norm", p + "qkv": q + "self_attention/linear_0",
             p + "out": q + "self_attention/linear_1", p + "norm2": q + "ffn/layer_norm",
             p + "ff1": q + "ffn/linear_0", p + "ff2": q + "ffn/linear_1"}
    if side == "decoder":
        names.update({p + "norm_cross": q + "attention/layer_norm",
                      p + "cross_q": q + "attention/linear_0",
                      p + "cross_kv": q + "attention/linear_1",
                      p + "cross_out": q + "attention/linear_2"})
    return names


def is_ctranslate2_directory(path):
    """True for a directory with a CTranslate2 model.bin and no model.safetensors."""
    return os.path.isfile(os.path.join(path, "model.bin")) and not os.path.isfile(
        os.path.join(path, "model.safetensors"))


@register_family(layout="CTranslate2 directory", detect=is_ctranslate2_directory)
class CTranslate2Model(Seq2SeqModel):
    """A CTranslate2 TransformerBase/Big model as a Seq2SeqModel (see it for the API)."""

    @classmethod
    def load(cls, path, threads=None, tokenizer=None, dtype="float32"):
        """transformer.load's entry: from_directory (its vocabularies are the tokenizer)."""
        return cls.from_directory(path, threads=threads, dtype=dtype)

    @classmethod
    def from_directory(cls, path, threads=None, dtype="float32"):
        """Load model.bin and the vocabularies of `path`. dtype "int8" keeps the quantized
        weights of an int8 (or int16) model as stored (see read_ctranslate2), any other dtype
        dequantizes them to float32 (transformer.load then packs for the compute type).
        Raises FileNotFoundError, or WeightsError for an unsupported spec or weights that do
        not fit it."""
        spec, revision, v = read_ctranslate2(os.path.join(path, "model.bin"),
                                             int8=dtype == "int8")
        if spec not in HEADS:
            raise WeightsError(f"{path}/model.bin: CTranslate2 spec {spec!r} is not supported "
                               f"(supported: {sorted(HEADS)})")
        src = read_vocabulary(os.path.join(path, "source_vocabulary.txt"))
        tgt_path = os.path.join(path, "target_vocabulary.txt")
        tgt = read_vocabulary(tgt_path)
        for special in ("<s>", "</s>"):
            if special not in tgt:
                raise ValueError(f"{tgt_path}: no {special} token (the decoder's start and end)")
        try:
            C = v["encoder/embeddings/weight"].shape[1]
            F = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        except KeyError as e:
            raise WeightsError(f"{path}: model.bin has no {e.args[0]}")
        except IndexError:
            raise WeightsError(f"{path}: model.bin's embeddings / ffn weights are not matrices")
        count = lambda side: sum(1 for n in v if n.startswith(f"{side}/layer_")
                                 and n.endswith("ffn/linear_0/weight"))
        try:
            config = Seq2SeqConfig(
                src_vocab_size=len(src), tgt_vocab_size=len(tgt), d_model=C, n_heads=HEADS[spec],
                encoder_layers=count("encoder"), decoder_layers=count("decoder"), d_ff=F,
                activation="relu", pre_norm=True, encoder_final_norm=True, decoder_final_norm=True,
                positions="sinusoidal", sinusoids="t2t", position_offset=1,
                max_position_embeddings=1024,
                scale_embedding=True, norm_eps=1e-6, decoder_start_token_id=tgt.index("<s>"),
                eos_token_id=tgt.index("</s>"),
                pad_token_id=tgt.index("<blank>") if "<blank>" in tgt else 0)
        except ValueError as e:
            raise WeightsError(f"{path}/model.bin: {e}")
        names = {"encoder.embeddings.word": "encoder/embeddings/weight",
                 "decoder.embeddings.word": "decoder/embeddings/weight",
                 "lm_head": "decoder/projection", "encoder.final_norm": "encoder/layer_norm",
                 "decoder.final_norm": "decoder/layer_norm"}
        for side, L in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
            for i in range(L):
                names.update(_names(side, i))
        shapes = seq2seq_shapes(config, lm_head_bias=True)
        w, missing, mismatched, used = {}, [], [], set()
        for ours in shapes:
            base, _, suffix = ours.rpartition(".")
            if ours in names:
                theirs = names[ours]
            else:
                suffix = {"weight": "gamma", "bias": "beta"}[suffix] if "norm" in base else suffix
                theirs = f"{names[base]}/{suffix}"
            used.add(theirs)
            if theirs not in v:
                missing.append(theirs)
            elif v[theirs].shape != shapes[ours]:
                mismatched.append(f"{theirs}: expected {shapes[ours]}, found {v[theirs].shape}")
            else:
                w[ours] = v[theirs]
        unexpected = sorted(set(v) - used)
        if missing or mismatched or unexpected:
            raise WeightsError(f"{path}/model.bin does not match spec {spec} revision {revision}: "
                               f"missing {missing[:10]}, unexpected {unexpected[:10]}, "
                               f"mismatched {mismatched[:10]}")
        model = cls(config, w, VocabularyTokenizer(src, tgt), threads, src, tgt)
        model.spec = (spec, revision)
        return model
