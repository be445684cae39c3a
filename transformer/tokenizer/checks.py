"""The checks every tokenizer makes at its boundary (text in, ids out) and batch padding."""
import numpy as np

__all__ = ["check_text", "check_ids", "text_list", "pad_batch", "positive_int", "cut_text",
           "BYTES_PER_TOKEN"]

# UTF-8 bytes a token may cover, for bounding a text before it is tokenized (cut_text): GPT-2's
# longest pieces are 128 bytes, but nearly all are under 16, so a text cut to 64 bytes a token
# still holds its first n tokens unless it is made of the very longest pieces
BYTES_PER_TOKEN = 64


def check_text(text, name="text"):
    """text itself when it is a str that can be encoded as UTF-8; else TypeError / ValueError
    naming `name` (bytes, None, or lone surrogates from undecodable input)."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text ({e.reason} at character "
                         f"{e.start}; undecodable input bytes?)")
    return text


def check_ids(ids, vocab_size, name="ids"):
    """ids as a list of int in [0, vocab_size), or an IndexError / TypeError naming `name`."""
    a = np.asarray(ids)
    if a.size == 0:
        return []
    if not np.issubdtype(a.dtype, np.integer) or a.ndim != 1:
        raise TypeError(f"{name} must be a 1-D sequence of integers, got {a.dtype} {a.shape}")
    if a.min() < 0 or a.max() >= vocab_size:
        raise IndexError(f"{name} must lie in [0, {vocab_size}), got values in "
                         f"[{a.min()}, {a.max()}]")
    return a.tolist()


def text_list(texts, name="texts"):
    """texts as a list of str (one str: a list of it), each checked by check_text; TypeError
    naming `name` for anything else (None, bytes, a number)."""
    if isinstance(texts, str):
        return [check_text(texts, name)]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"{name} must be a str or a sequence of str, got {type(texts).__name__}")
    return [check_text(t, f"{name}[{i}]") for i, t in enumerate(texts)]


def pad_batch(rows, pad_id):
    """{"input_ids", "attention_mask"}, each (B, T) int64, of B token-id lists right-padded
    with pad_id to the longest (T = 0 for no rows or only empty ones)."""
    T = max(map(len, rows), default=0)
    ids = np.full((len(rows), T), pad_id, np.int64)
    mask = np.zeros((len(rows), T), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask}


def positive_int(value, name):
    """value as an int >= 1 (bool refused), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)




def cut_text(tokenizer, text, n_tokens):
    """(text, was_cut): `text` cut at a character boundary to the UTF-8 bytes that its first
    n_tokens tokens can cover, so that tokenizing it is bounded work whatever the length of the
    input (one 200 MB line otherwise aborts the tokenizer). The bound: the tokenizer's
    text_bytes(n_tokens) when it has one (llama2.c: what its max_length check accepts), else
    n_tokens * BYTES_PER_TOKEN. The caller still cuts the token ids to n_tokens."""
    limit = tokenizer.text_bytes(n_tokens) if hasattr(tokenizer, "text_bytes") \
        else n_tokens * BYTES_PER_TOKEN
    if len(text) <= limit // 4:  # at most 4 bytes a character: no need to encode
        return text, False
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True
