"""Sequence-classification heads of Hugging Face's encoder task models (cross-encoders, the
rerankers of text-embeddings-inference's /rerank), read with the encoder from one directory.

Both heads are the same computation on the first token's last hidden state x (B, C) ([CLS] /
<s>): logits = out(tanh(dense(x))), dense (C, C), out (num_labels, C). HF modeling_bert.py
BertForSequenceClassification: dense = bert.pooler.dense (BertPooler), out = classifier;
modeling_roberta.py / modeling_xlm_roberta.py RobertaClassificationHead: dense =
classifier.dense, out = classifier.out_proj (dropout is the identity at inference).

Our tensor names: classifier.dense.weight (C, C) / .bias (C), classifier.out.weight
(num_labels, C) / .bias (num_labels): linear layers of the model's compute type (packed for a CPU
int8 / bfloat16 model), the tanh in float32."""
import numpy as np

# config.json `architectures` -> {our name: HF name (without the "bert." / "roberta." prefix)}
HEADS = {"BertForSequenceClassification": {"classifier.dense": "pooler.dense",
                                           "classifier.out": "classifier"}}
HEADS.update({arch: {"classifier.dense": "classifier.dense",
                     "classifier.out": "classifier.out_proj"}
              for arch in ("RobertaForSequenceClassification",
                           "XLMRobertaForSequenceClassification")})


def head_layout(config_dict):
    """The head layout ({our name: HF name}) of a config dict whose `architectures` names a
    sequence classifier of HEADS, else None (a plain encoder: its heads are ignored)."""
    archs = config_dict.get("architectures")
    for arch in archs if isinstance(archs, list) else ():
        if arch in HEADS:
            return HEADS[arch]
    return None


def labels(config_dict, source="config.json"):
    """The class names (tuple of num_labels strings, index = logit column) of an HF config
    dict: `id2label` ({"0": name, ...}, HF PretrainedConfig), else `num_labels` names
    "LABEL_i" (HF's default), else 2 of them (HF's default num_labels). Raises ValueError naming
    the field for keys that are not 0..n-1 or a bad num_labels."""
    id2label = config_dict.get("id2label")
    if id2label is not None:
        try:
            pairs = {int(k): str(v) for k, v in dict(id2label).items()}
        except (TypeError, ValueError):
            raise ValueError(f"{source}: id2label must map integers to names, got {id2label!r}")
        if sorted(pairs) != list(range(len(pairs))) or not pairs:
            raise ValueError(f"{source}: id2label keys must be 0..n-1, got {sorted(pairs)}")
        return tuple(pairs[i] for i in range(len(pairs)))
    n = config_dict.get("num_labels", 2)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{source}: num_labels must be a positive integer, got {n!r}")
    return tuple(f"LABEL_{i}" for i in range(n))


def head_shapes(layout, d_model, num_labels):
    """{HF name: shape} of a head layout's four tensors (what weights_from_hf checks)."""
    dense, out = layout["classifier.dense"], layout["classifier.out"]
    return {dense + ".weight": (d_model, d_model), dense + ".bias": (d_model,),
            out + ".weight": (num_labels, d_model), out + ".bias": (num_labels,)}


def head_weights(weights, layout):
    """Rename a head's tensors in `weights` (under their HF names) to ours, in place."""
    for ours, theirs in layout.items():
        for s in (".weight", ".bias"):
            weights[ours + s] = weights.pop(theirs + s)
    return weights


def run_head(k, w, x):
    """Logits (B, num_labels) of first-token rows x (B, C) of the backend k's activations:
    out(tanh(dense(x))) with the weights w, through k.linear (batch-invariant products when
    k.row_invariant); the tanh in float32 NumPy / CuPy, back to the activations' dtype."""
    x = k.linear(x, w["classifier.dense.weight"], w["classifier.dense.bias"])
    x = k.place(k.xp.tanh(k.output(x).astype(np.float32)))
    return k.output(k.linear(x, w["classifier.out.weight"],
                             w["classifier.out.bias"])).astype(np.float32)
