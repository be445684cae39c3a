"""Beam search with the semantics of Hugging Face transformers' vectorised beam search
(GenerationMixin._beam_search, transformers 4.50+/5.x): at each step the top
max(2, 1 + n_eos) * num_beams continuations of all beams, the best num_beams unfinished ones keep
running, candidates among the top num_beams that end (eos or length) join the finished
hypotheses with score sum_logprobs / new_length ** length_penalty, and the search stops when no
running beam can beat the worst finished one (the early_stopping heuristics).

Unlike HF, a prompt whose result can no longer change (no running beam can beat its worst
finished hypothesis, or early_stopping=True and its num_beams hypotheses are done) leaves the
batch at once: its rows are dropped from the cache and later steps decode only the others
(CTranslate2 does the same), with the same results."""
import numpy as np

from .. import ops
from .sampling import log_softmax

NEG = -1.0e9


def _top(scores, k):
    """Indices (B, k) of the k largest scores per row, best first (ties: lower index first).
    A partial selection (argpartition) then a sort of the k winners: O(n + k log k) a row."""
    n = scores.shape[-1]
    if k < n:  # the k-th largest value; ties at it go to the lowest indices
        kth = -np.partition(-scores, k - 1, axis=-1)[:, k - 1:k]
        above = scores > kth
        tied = scores == kth
        need = k - above.sum(-1, keepdims=True)
        chosen = above | (tied & (np.cumsum(tied, -1) <= need))
        idx = np.nonzero(chosen)[1].reshape(len(scores), k)
    else:
        idx = np.broadcast_to(np.arange(n), scores.shape)
    vals = np.take_along_axis(scores, idx, -1)
    return np.take_along_axis(idx, np.lexsort((idx, -vals), axis=-1), -1)


def _gather(a, idx):
    """a (B, n, ...) gathered along axis 1 by idx (B, k)."""
    return a[np.arange(a.shape[0])[:, None], idx]


def beam_search(decoding, cfg, processors, warpers=(), rng=None, want_scores=False,
                want_attention=False):
    """Beam search over `decoding` (the search contract, transformer.generation.contract):
    each prompt of decoding.sequences (B, T) is prefilled once (start), and its num_beams beams
    start from that cache row (the first reorder maps each beam to its prompt's row).
    cfg: a validated GenerationConfig (num_beams, length_penalty, early_stopping, eos / pad,
    max_new_tokens, num_return_sequences); processors / warpers: LogitsProcessorLists applied
    to the float32 log-softmax of each beam, then (beam sampling) the warpers, as HF; rng: a
    numpy Generator for beam sampling (candidates drawn without replacement), else None.
    Returns (sequences (B * n, T + n_new) int64, best first per prompt, and with want_scores
    a dict: "sequences_scores" (B * n,) float32 (HF's: sum log p / new_len ** length_penalty),
    "cumulative" (B * n, n_new) float32: the running sum of the search's log-probabilities
    after each new token (0 after the hypothesis ended), "lengths" (B * n,) int64: the new
    tokens of each hypothesis), with want_attention also "attention" (B * n, n_new, S)
    float32: each new token's cross-attention weights (decoding.attention; the caller has
    called decoding.record_attention), else None. All accumulated during the search."""
    ids = decoding.sequences
    B, T = ids.shape
    nb, max_new_tokens = cfg.num_beams, cfg.max_new_tokens
    eos, pad_token_id = cfg.eos_token_id, cfg.pad_token_id
    V = decoding.vocab_size
    keep = max(2, 1 + len(eos)) * nb
    top_mask = np.arange(keep) < nb
    fill = (pad_token_id or eos[0]) if eos else -1  # HF's output_fill_value
    eos_arr = np.array(eos, np.int64)
    max_length = T + max_new_tokens
    neg = np.float32(NEG)

    # the state of the prompts still searching (alive: their indices in the batch)
    alive = np.arange(B)
    running = np.full((B, nb, max_length), fill, np.int64)
    running[:, :, :T] = ids[:, None]
    sequences = running.copy()
    running_scores = np.zeros((B, nb), np.float32)  # float32 throughout, as HF
    running_scores[:, 1:] = NEG
    beam_scores = np.full((B, nb), NEG, np.float32)
    finished = np.zeros((B, nb), bool)
    improvable = np.ones((B, 1), bool)
    running_idx = np.full((B, nb, max_new_tokens), -1, np.int64)
    beam_idx = running_idx.copy()
    if want_scores:  # cumulative log-probabilities after each new token
        running_cum = np.zeros((B, nb, max_new_tokens), np.float32)
        cum = running_cum.copy()
        out_cum, out_scores = cum.copy(), beam_scores.copy()
    # the results, written when a prompt leaves the search
    out_sequences, out_beam_idx = sequences.copy(), beam_idx.copy()

    # logits stay where the model computed them: the fused selection runs there (on a GPU only
    # (B, k) candidates come back); the other paths bring them to the host as float32
    logits = decoding.start(B * nb, max_new_tokens)  # (B, V): one row a prompt
    logits = decoding.backend.xp.repeat(logits, nb, 0)  # beams start from their prompt
    if want_attention:
        att = np.repeat(decoding.attention, nb, 0)
        S = att.shape[1]
        running_att = np.zeros((B, nb, max_new_tokens, S), np.float32)
        hyp_att, out_att = running_att.copy(), running_att.copy()
    cur = T
    while True:
        A = len(alive)
        rows = np.arange(A)[:, None]
        processed = processors.applies(cur)
        bans = processors.bans(cur) if processed else np.zeros(0, np.int64)
        wide = None if bans is None else keep + nb * len(bans)
        if rng is None and wide is not None and wide <= V:
            # log_softmax + running scores + top-k fused in one pass over the logits; tokens
            # a processor bans (-inf) are dropped from enough extra candidates: the same
            # selection as HF's over the processed scores
            cand_logp, cand = ops.beam_topk(logits, running_scores.ravel(), nb, wide,
                                            threads=decoding.threads)
            if len(bans):
                kept = np.argsort(np.isin(cand % V, bans), axis=1, kind="stable")[:, :keep]
                cand_logp = np.take_along_axis(cand_logp, kept, 1)
                cand = np.take_along_axis(cand, kept, 1)
        else:
            logits = decoding.backend.to_host(logits)
            logp = log_softmax(logits, np.float32)
            if processed or warpers:
                flat_running = running[:, :, :cur].reshape(A * nb, cur)
                logp = processors(flat_running, logp, np.repeat(alive, nb))
                if rng is not None and warpers:
                    logp = warpers(flat_running, logp)
            logp = logp.reshape(A, nb, V) + running_scores[:, :, None]
            flat = logp.reshape(A, nb * V)
            if rng is not None:
                p = np.exp(log_softmax(flat))  # float64 for the draw
                cand = np.stack([rng.choice(nb * V, keep, replace=False, p=p[b])
                                 for b in range(A)])
            else:
                cand = _top(flat, keep)
            cand_logp = np.take_along_axis(flat, cand, -1)
        parent, token = cand // V, cand % V
        cand_seq = _gather(running, parent)
        cand_seq[:, :, cur] = token
        cand_idx = _gather(running_idx, parent)
        cand_idx[:, :, cur - T] = parent + rows * nb
        hits = np.isin(token, eos_arr) | (cur + 1 >= max_length)
        if want_scores:
            cand_cum = _gather(running_cum, parent)
            cand_cum[:, :, cur - T] = cand_logp
        if want_attention:
            cand_att = _gather(running_att, parent)
            cand_att[:, :, cur - T] = _gather(att.reshape(A, nb, S), parent)

        # the best num_beams continuations that did not end keep running
        run_logp = cand_logp + hits * neg
        nxt = _top(run_logp, nb)
        running = _gather(cand_seq, nxt)
        running_scores = _gather(run_logp, nxt)
        running_idx = _gather(cand_idx, nxt)

        # ended candidates among the top num_beams join the finished hypotheses
        just_done = hits & top_mask[None]
        done_scores = cand_logp / np.float32(float(cur + 1 - T) ** cfg.length_penalty)
        all_done = finished.all(1, keepdims=True) & (cfg.early_stopping is True)
        done_scores = done_scores + all_done * neg
        done_scores = done_scores + (~improvable) * neg + (~just_done) * neg
        merged = np.concatenate([beam_scores, done_scores], 1)
        best = _top(merged, nb)
        sequences = _gather(np.concatenate([sequences, cand_seq], 1), best)
        beam_scores = _gather(merged, best)
        beam_idx = _gather(np.concatenate([beam_idx, cand_idx], 1), best)
        finished = _gather(np.concatenate([finished, just_done], 1), best)
        if want_scores:
            running_cum = _gather(cand_cum, nxt)
            cum = _gather(np.concatenate([cum, cand_cum], 1), best)
        if want_attention:
            running_att = _gather(cand_att, nxt)
            hyp_att = _gather(np.concatenate([hyp_att, cand_att], 1), best)

        cur += 1
        if cfg.early_stopping == "never" and cfg.length_penalty > 0:
            best_len = max_length - T
        else:
            best_len = cur - T
        best_possible = running_scores[:, :1] / np.float32(float(best_len) ** cfg.length_penalty)
        worst_done = np.where(finished, beam_scores.min(1, keepdims=True), neg)
        improvable &= np.any(best_possible > worst_done, axis=1, keepdims=True)
        # HF stops when every prompt is settled (or every candidate ended: the length cap)
        settled = ~improvable[:, 0] | (finished.all(1) & (cfg.early_stopping is True))
        if settled.all() or hits.all():
            settled[:] = True
        if settled.any():
            out_sequences[alive[settled]] = sequences[settled]
            out_beam_idx[alive[settled]] = beam_idx[settled]
            if want_scores:
                out_cum[alive[settled]] = cum[settled]
                out_scores[alive[settled]] = beam_scores[settled]
            if want_attention:
                out_att[alive[settled]] = hyp_att[settled]
            go = ~settled
            alive = alive[go]
            running, running_scores, running_idx = running[go], running_scores[go], running_idx[go]
            sequences, beam_scores, beam_idx = sequences[go], beam_scores[go], beam_idx[go]
            finished, improvable = finished[go], improvable[go]
            if want_scores:
                running_cum, cum = running_cum[go], cum[go]
            if want_attention:
                running_att, hyp_att = running_att[go], hyp_att[go]
            if not len(alive):
                break
        # the cache rows of the kept beams (also drops the settled prompts); after the first
        # step the cache holds one row a prompt, which the beams of that prompt share
        index = running_idx[:, :, cur - 1 - T].ravel()
        decoding.reorder(index // nb if cur - 1 == T else index)
        logits = decoding.step(running[:, :, cur - 1].ravel())
        if want_attention:
            att = decoding.attention

    n = cfg.num_return_sequences
    sequences = out_sequences[:, :n].reshape(B * n, -1)
    beam_idx = out_beam_idx[:, :n].reshape(B * n, -1)
    lengths = (beam_idx >= 0).sum(1)
    n_new = int(lengths.max())
    extra = {"lengths": lengths} if want_scores or want_attention else None
    if want_scores:
        extra["sequences_scores"] = out_scores[:, :n].ravel()
        extra["cumulative"] = out_cum[:, :n].reshape(B * n, -1)[:, :n_new]
    if want_attention:
        extra["attention"] = out_att[:, :n].reshape(B * n, max_new_tokens, S)[:, :n_new]
    return sequences[:, :T + n_new], extra
