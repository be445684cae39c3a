"""The benchmark protocol shared by every suite: each engine's output is checked against the
reference before any timing (an engine that disagrees is flagged and not timed), then the
engines that agree are timed in interleaved rounds with a machine-limit probe after each round.

The pieces live by concern: stats.py (statistics, timing, CPU usage), limits.py (the machine and
its limits), peers.py (peer set-up), engines.py (the engine registry shared by the suites).
"""
import time

import numpy as np

from .stats import calibrate, interleaved_rounds, log, summarize

ENGINE = "transformer"


# ---------------------------------------------------------------------------------------------
# Agreement: every engine's output against the reference, before any timing
# ---------------------------------------------------------------------------------------------

def reference_agreement():
    """The agreement record of the reference itself."""
    return {"ok": True, "is_reference": True, "max_abs_diff": 0.0, "text": "reference"}


def compare_arrays(out, ref, rtol=1e-4, atol=1e-4):
    """Elementwise check of an engine's array against the reference (float64 math).

    out, ref: arrays of the same shape (any float dtype). Passes when every element has
    |out - ref| <= atol * scale + rtol * |ref| with scale = max(1, max |ref|), and out has no NaN
    or inf where ref is finite. Returns {"ok", "is_reference": False, "max_abs_diff",
    "max_rel_err" (max |out - ref| / (atol * scale + rtol * |ref|): <= 1 passes), "text"}; a
    shape mismatch gives ok False with the shapes in the text."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return {"ok": False, "is_reference": False, "max_abs_diff": None, "max_rel_err": None,
                "text": f"shape {out.shape}, reference {ref.shape}"}
    if out.size == 0:
        return {"ok": True, "is_reference": False, "max_abs_diff": 0.0, "max_rel_err": 0.0,
                "text": "empty"}
    finite = np.isfinite(ref)
    bad = ~np.isfinite(out) & finite
    diff = np.abs(out - ref)
    diff[~finite] = 0.0
    scale = max(1.0, float(np.abs(ref[finite]).max()) if finite.any() else 1.0)
    bound = atol * scale + rtol * np.abs(np.where(finite, ref, 0.0))
    max_abs = float(diff.max()) if not bad.any() else float("inf")
    rel = float((diff / bound).max()) if not bad.any() else float("inf")
    ok = bool(rel <= 1.0)
    text = f"max|diff| {max_abs:.2e}" + ("" if ok else f" (tolerance {atol:g}*{scale:.3g} + "
                                                       f"{rtol:g}*|ref|)")
    if bad.any():
        text = f"{int(bad.sum())} non-finite values"
    return {"ok": ok, "is_reference": False, "max_abs_diff": max_abs, "max_rel_err": rel,
            "text": text}


def compare_embeddings(emb, ref, min_cosine=0.999):
    """Row-wise check of (N, C) embeddings against the reference's: max |diff| and the mean and
    smallest cosine similarity of matching rows (sentences); ok when the smallest is >=
    min_cosine. Returns {"ok", "is_reference": False, "max_abs_diff", "mean_cosine",
    "min_cosine", "min_cosine_required", "text"}."""
    emb = np.asarray(emb, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if emb.shape != ref.shape:
        return {"ok": False, "is_reference": False, "max_abs_diff": None, "mean_cosine": None,
                "min_cosine": None, "min_cosine_required": min_cosine,
                "text": f"shape {emb.shape}, reference {ref.shape}"}
    norms = np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.nan_to_num((emb * ref).sum(1) / np.maximum(norms, 1e-300), nan=-1.0)
    cos_min = float(cos.min()) if len(cos) else 1.0
    cos_mean = float(cos.mean()) if len(cos) else 1.0
    diff = float(np.abs(emb - ref).max()) if emb.size else 0.0
    ok = cos_min >= min_cosine
    return {"ok": ok, "is_reference": False, "max_abs_diff": diff, "mean_cosine": cos_mean,
            "min_cosine": cos_min, "min_cosine_required": min_cosine,
            "text": f"max|diff| {diff:.2e}, cosine mean {cos_mean:.6f}, min {cos_min:.6f}"
                    + ("" if ok else f" (< {min_cosine})")}


def compare_tokens(tokens, ref):
    """Token-by-token check of (B, N) integer outputs against the reference's: the fraction of
    identical tokens, the sequences identical throughout, and the first position where each
    sequence diverges (None where it does not). ok when the shapes match and every token is
    equal (a caller that can tell a float near-tie from a wrong result may relax it).
    Returns {"ok", "is_reference": False, "equal", "identical_fraction", "identical_sequences",
    "first_divergence" (min over sequences, or None), "first_divergence_per_sequence", "text"}."""
    tokens = np.asarray(tokens)
    ref = np.asarray(ref)
    if tokens.shape != ref.shape:
        return {"ok": False, "is_reference": False, "equal": False, "identical_fraction": None,
                "identical_sequences": 0, "first_divergence": None,
                "first_divergence_per_sequence": [],
                "text": f"shape {tokens.shape}, reference {ref.shape}"}
    same = tokens == ref
    if same.ndim == 1:
        same = same[None]
    first = [None if row.all() else int(np.argmin(row)) for row in same]
    divergent = [p for p in first if p is not None]
    frac = float(same.mean()) if same.size else 1.0
    n_same = sum(p is None for p in first)
    text = f"{100 * frac:.1f}% tokens identical ({n_same}/{len(first)} sequences)"
    if divergent:
        text += f", first divergence at {min(divergent)}"
    return {"ok": not divergent, "is_reference": False, "equal": not divergent,
            "identical_fraction": frac, "identical_sequences": n_same,
            "first_divergence": min(divergent) if divergent else None,
            "first_divergence_per_sequence": first, "text": text}


class NotApplicable(Exception):
    """Raised by an engine's prepare(case) for a case it does not implement (the row is reported
    as "n/a" with the message, not as an error)."""


def compare_engines(engines, cases, compare, rounds, reference=None, reference_engine=None,
                    min_seconds=0.0, pause=0.0, probe=None, time_disagreeing=False,
                    tag="bench", case_label=str):
    """Check every engine against the reference, then time the ones that agree.

    engines: objects with .name and .prepare(case) -> fn, a zero-argument callable running the
    case once and returning its output (prepare does the untimed set-up: converting inputs to
    the engine's own form; it may raise NotApplicable). cases: list of case objects (opaque
    here; `case_label(case)` names one). compare(output, expected, case) -> agreement dict
    with at least "ok" and "text" (e.g. compare_arrays). The expected output of a case comes
    from reference(case) when given, else from the engine named reference_engine (whose row is
    marked as the reference); with neither, from the first engine.

    Phase 1, per case: expected output; each engine's fn() once (its warm-up; the output is
    checked). An engine that raises is reported with the error, one that disagrees is flagged
    and, unless time_disagreeing, not timed. Then the calls per sample are calibrated to
    min_seconds, engine by engine.
    Phase 2: `rounds` interleaved rounds over every (case, engine) that passed: in each round
    every engine runs all its cases back to back, the engines' order rotating from round to
    round, with `pause` seconds of idle before each engine (its predecessor's spinning threads
    go to sleep); probe() after each round (see interleaved_rounds).

    An engine that raises while timed gets status "error" with the traceback in its note (its
    samples before that are kept); the others go on.

    Returns (rows, probes): rows in case-then-engine order, each {"case": case_label(case),
    "case_index", "engine", "status" ("timed", "disagrees", "n/a", "error"), "agreement",
    "seconds" (summarize() of the samples, or None), "inner", "note"}; probes as
    interleaved_rounds returns them."""
    rows, items = [], []
    for ci, case in enumerate(cases):
        label = case_label(case)
        fns, outputs = {}, {}
        for e in engines:
            row = {"case": label, "case_index": ci, "engine": e.name, "status": "n/a",
                   "agreement": None, "seconds": None, "inner": None, "note": None}
            rows.append(row)
            try:
                fns[e.name] = e.prepare(case)
                outputs[e.name] = fns[e.name]()
            except NotApplicable as exc:
                row["note"] = str(exc)
                fns.pop(e.name, None)
            except Exception as exc:  # noqa: BLE001 - a failing engine is reported, not fatal
                row.update(status="error", note=f"{type(exc).__name__}: {exc}")
                fns.pop(e.name, None)
                log(f"{e.name} failed on {label}: {type(exc).__name__}: {exc}", tag)
        case_rows = rows[-len(engines):] if engines else []
        if reference is not None:
            expected, ref_name = reference(case), None
        else:
            ref_name = reference_engine if reference_engine in outputs else \
                next(iter(outputs), None)
            expected = outputs.get(ref_name)
        for row in case_rows:
            name = row["engine"]
            if name not in fns:
                continue
            if name == ref_name:
                agree = reference_agreement()
            else:
                agree = compare(outputs[name], expected, case)
            row["agreement"] = agree
            if agree["ok"] or time_disagreeing:
                row["status"] = "timed"
                items.append(((ci, name), fns[name], None))
            else:
                row["status"] = "disagrees"
                log(f"WARNING: {name} disagrees with the reference on {label}: "
                    f"{agree['text']}; not timed", tag)
            if not agree["ok"] and time_disagreeing:
                row["note"] = "timed although it disagrees (--time-disagreeing)"
        outputs.clear()
    if not items:
        return rows, []
    # Calls per sample, engine by engine (after a pause, as in the timed rounds).
    order = [e.name for e in engines]
    items.sort(key=lambda it: (order.index(it[0][1]), it[0][0]))
    inner = {}
    for i, (key, fn, _) in enumerate(items):
        if pause and (i == 0 or items[i - 1][0][1] != key[1]):
            time.sleep(pause)
        inner[key] = calibrate(fn, min_seconds)
    items = [(key, fn, inner[key]) for key, fn, _ in items]
    for row in rows:
        row["inner"] = inner.get((row["case_index"], row["engine"]))

    def progress(r, times, probe_result):
        log(f"round {r + 1}/{rounds} done ({len(items)} timings)", tag)

    errors = {}
    times, probes = interleaved_rounds(items, rounds, pause=pause, probe=probe,
                                       on_round=progress, group=lambda key: key[1],
                                       errors=errors)
    for row in rows:
        key = (row["case_index"], row["engine"])
        if times.get(key):
            row["seconds"] = summarize(times[key])
        if key in errors:
            row.update(status="error", note=f"raised while timed, {errors[key]}")
            log(f"ERROR: {row['engine']} raised while timed on {row['case']} "
                f"({errors[key].strip().splitlines()[-1]})", tag)
    return rows, probes

