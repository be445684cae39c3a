"""The benchmark protocol shared by every suite (bench/README.md, "Protocol"): a check round in
which every engine's output is compared with the reference (an engine that disagrees is flagged
and not timed) and its calls per sample are calibrated, then interleaved timed rounds, each
engine in a fresh process of its own per round (engines.Isolated), a machine-limit probe after
each round.
"""
import time
import traceback

import numpy as np

from .stats import calibrate, cpu_sample, cpu_usage, log, summarize, time_call

ENGINE = "transformer"


# ---------------------------------------------------------------------------------------------
# Agreement: every engine's output against the reference, before any timing
# ---------------------------------------------------------------------------------------------

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


class Unsupported(Exception):
    """Raised by an engine's constructor for a task, device or compute type it does not have:
    the peer is skipped with the message, not reported as an error."""


def skip_reason(exc):
    """Why a peer that raised `exc` while loading is skipped: "not installed (...)" for an
    ImportError, the Unsupported text, else "setup failed: <kind>: <message>"."""
    if isinstance(exc, ImportError):
        return f"not installed ({exc})"
    if isinstance(exc, Unsupported):
        return str(exc)
    kind = getattr(exc, "kind", type(exc).__name__)          # process.WorkerError: its kind
    text = str(exc).split(": ", 1)[-1] if hasattr(exc, "kind") else str(exc)
    return f"setup failed: {kind}: {text}"


def run_cases(engine, cases, inner=None, min_seconds=0.0, check=False):
    """In this process, for each (index, case) of `cases`: fn = engine.prepare(case) (untimed
    set-up), fn() once (the warm-up), then with check: the output kept (through
    engine.host(output, case) when the engine has it: device arrays to NumPy) and the calls per
    sample calibrated to min_seconds (stats.calibrate); without: one timed sample of inner[index]
    calls (stats.time_call). Returns {"meta": {"version", "notes", "compute_type"}, "cases":
    {index: {"output", "inner"} or {"seconds"} or {"na": text} or {"error": text}}}."""
    out = {}
    for i, case in cases:
        try:
            fn = engine.prepare(case)
            value = fn()
            if check:
                host = getattr(engine, "host", None)
                out[i] = {"output": host(value, case) if host else value,
                          "inner": calibrate(fn, min_seconds)}
            else:
                out[i] = {"seconds": time_call(fn, inner[i])}
        except NotApplicable as e:
            out[i] = {"na": str(e)}
        except Exception as e:  # noqa: BLE001 - a failing engine is reported, not fatal
            out[i] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    meta = {k: getattr(engine, k, None) for k in ("version", "notes", "compute_type")}
    return {"meta": meta, "cases": out}


def _run(engine, cases, inner, min_seconds, check, keep=False):
    """engine.run_cases(...) for an engine that has it (engines.Isolated: in its own process,
    kept alive with keep), else run_cases(engine, ...) in this process."""
    if hasattr(engine, "run_cases"):
        return engine.run_cases(cases, inner, min_seconds, check, keep)
    return run_cases(engine, cases, inner, min_seconds, check)


def compare_engines(engines, cases, compare, rounds, reference=None, reference_engine=None,
                    min_seconds=0.0, pause=0.0, probe=None, time_disagreeing=False,
                    tag="bench", case_label=str):
    """Check every engine against the reference, then time the ones that agree.

    engines: objects with .name and .prepare(case) -> fn (a zero-argument run of the case,
    returning its output; may raise NotApplicable), or with .run_cases (engines.Isolated: each
    call in a fresh process). cases: list (case_label(case) names one). compare(output,
    expected, case) -> {"ok", "text", ...}. The expected output: reference(case) when reference
    is a callable; when it is an engine (the float32 reference that is not timed), its output
    in a process of its own, kept alive through the check (the compare function may call it)
    and ended before the timing; else reference_engine's output (that row is the reference),
    else the first engine's.

    Check round: every engine once per case, engine after engine, `pause` seconds before each;
    an engine that raises is reported ("error"), one that disagrees is flagged and, unless
    time_disagreeing, not timed; an isolated peer that cannot load is left out with its reason
    in its .skipped (harness.skip_reason); the calls per sample are calibrated to min_seconds.
    Timed rounds: `rounds` times, every engine runs all its cases (warm-up call, then one
    sample each), the engines' order rotated from round to round, `pause` before each; then
    probe(), if given, with the round's stats.cpu_usage added. An engine that raises while timed
    gets status "error" and "raised while timed, round r: ..." in its note; the others go on.

    Returns (rows, probes): rows in case-then-engine order, {"case", "case_index", "engine",
    "status" ("timed", "disagrees", "n/a", "error"), "agreement", "seconds" (summarize()), 
    "inner", "note", "output" (the check round's)}; probes: the probe results per round."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    indexed = list(enumerate(cases))
    results, live, engines = {}, [], list(engines)
    ref_out = None
    if reference is not None and not callable(reference):
        try:
            ref_out = _run(reference, indexed, None, 0.0, True, keep=True)["cases"]
            live.append(reference)
        except Exception as exc:  # noqa: BLE001 - without the reference, ours is compared
            reference.skipped = skip_reason(exc)
            log(f"reference {reference.name} unavailable: {reference.skipped}", tag)
            reference = None
    for e in list(engines):
        if pause:
            time.sleep(pause)
        log(f"check: {e.name}", tag)
        try:
            results[e.name] = _run(e, indexed, None, min_seconds, True,
                                   keep=e.name == reference_engine)
            if e.name == reference_engine and hasattr(e, "close"):
                live.append(e)
        except Exception as exc:  # noqa: BLE001 - an isolated engine that cannot load
            if hasattr(e, "run_cases") and e.name != engines[0].name:
                e.skipped = skip_reason(exc)
                log(f"skipping {e.name}: {e.skipped}", tag)
                engines.remove(e)
                continue
            msg = f"failed to load: {type(exc).__name__}: {exc}"
            results[e.name] = {"meta": {}, "cases": {i: {"error": msg} for i, _ in indexed}}
        for k, v in results[e.name]["meta"].items():      # an Isolated learns its engine's
            if v is not None and hasattr(e, "run_cases"):
                setattr(e, k, list(e.notes) + [n for n in v if n not in e.notes]
                        if k == "notes" else v)
    rows, timed, inner = [], {}, {}
    for ci, case in indexed:
        label = case_label(case)
        got = {e.name: results[e.name]["cases"][ci] for e in engines}
        if callable(reference):
            expected, ref_name = reference(case), None
        elif ref_out is not None:
            expected, ref_name = ref_out[ci].get("output"), None
        else:
            ok = [n for n, r in got.items() if "output" in r]
            ref_name = reference_engine if reference_engine in ok else (ok[0] if ok else None)
            expected = got[ref_name]["output"] if ref_name else None
        for e in engines:
            r = got[e.name]
            row = {"case": label, "case_index": ci, "engine": e.name, "status": "n/a",
                   "agreement": None, "seconds": None, "inner": r.get("inner"),
                   "note": r.get("na"), "output": r.get("output")}
            rows.append(row)
            if "error" in r:
                row.update(status="error", note=r["error"])
                log(f"{e.name} failed on {label}: {r['error']}", tag)
            if "output" not in r:
                continue
            agree = {"ok": True, "is_reference": True, "max_abs_diff": 0.0,
                     "text": "reference"} if e.name == ref_name else \
                compare(r["output"], expected, case)
            row["agreement"] = agree
            if agree["ok"] or time_disagreeing:
                row["status"] = "timed"
                timed.setdefault(e.name, []).append(ci)
                inner.setdefault(e.name, {})[ci] = r["inner"]
            else:
                row["status"] = "disagrees"
                log(f"WARNING: {e.name} disagrees with the reference on {label}: "
                    f"{agree['text']}; not timed", tag)
            if not agree["ok"] and time_disagreeing:
                row["note"] = "timed although it disagrees (--time-disagreeing)"
    for e in live:
        e.close()
    times, errors, probes = {}, {}, []
    names = [e.name for e in engines if e.name in timed]
    by_name = {e.name: e for e in engines}
    for r in range(rounds if names else 0):
        ticks = cpu_sample()
        for name in names[r % len(names):] + names[:r % len(names)]:
            todo = [(ci, cases[ci]) for ci in timed[name] if (ci, name) not in errors]
            if not todo:
                continue
            if pause:
                time.sleep(pause)
            try:
                got = _run(by_name[name], todo, inner[name], min_seconds, False)["cases"]
            except Exception as exc:  # noqa: BLE001 - its process died: reported
                got = {ci: {"error": f"{type(exc).__name__}: {exc}"} for ci, _ in todo}
            for ci, res in got.items():
                if "seconds" in res:
                    times.setdefault((ci, name), []).append(res["seconds"])
                else:
                    errors[(ci, name)] = f"round {r + 1}: " + res.get("traceback",
                                                                      res.get("error", "?"))
        if probe is not None:
            if pause:
                time.sleep(pause)
            result = dict(probe())
            result.update({"cpu_steal": None, "cpu_others": None},
                          **cpu_usage(ticks, cpu_sample()))
            probes.append(result)
        log(f"round {r + 1}/{rounds} done", tag)
    for row in rows:
        key = (row["case_index"], row["engine"])
        if times.get(key):
            row["seconds"] = summarize(times[key])
        if key in errors:
            row.update(status="error", note=f"raised while timed, {errors[key]}")
            log(f"ERROR: {row['engine']} raised while timed on {row['case']} "
                f"({errors[key].strip().splitlines()[-1]})", tag)
    return rows, probes


def report_rows(rows, engines, group, figures, limit=None, accuracy=None):
    """The report's ROWs (report.py) of compare_engines' rows: figures(row, median seconds) ->
    ([{"value", "unit"}], work per call in the limit's units or None); limit: (units/s,
    label) or None, giving "fraction_of_limit" = work / median / limit; or, a limit per case,
    figures -> (figures, fraction_of_limit, limit label) and limit None; "ratio" = our first
    figure over the engine's on the same case (> 1: ours is faster); group: the rows' group,
    or a function of the row; accuracy(agreement) -> the accuracy cell (at a compute type other
    than float32), or None."""
    by_name, out = {e.name: e for e in engines}, []
    for r in rows:
        row = {"case": r["case"], "group": group(r) if callable(group) else group,
               "engine": r["engine"],
               "compute_type": getattr(by_name.get(r["engine"]), "compute_type", None),
               "status": r["status"], "figures": [], "seconds": r["seconds"], "ratio": None,
               "fraction_of_limit": None, "limit": None, "agreement": r["agreement"],
               "accuracy": accuracy(r["agreement"]) if accuracy else None, "note": r["note"]}
        if r["seconds"]:
            row["figures"], *rest = figures(r, r["seconds"]["median"])
            if len(rest) == 2:                              # a limit per case
                row["fraction_of_limit"], row["limit"] = rest
            elif limit and limit[0] and rest[0] is not None:
                row["fraction_of_limit"] = rest[0] / r["seconds"]["median"] / limit[0]
                row["limit"] = limit[1]
        out.append(row)
    ours = {r["case"]: r["figures"][0]["value"] for r in out
            if r["engine"] == engines[0].name and r["figures"]}
    for row in out:
        if row["figures"] and ours.get(row["case"]):
            row["ratio"] = ours[row["case"]] / row["figures"][0]["value"]
    return out


def target_notes(rows, goals, dtype):
    """"target >= 1.3x torch (float32) at batch 1: ratio 1.52 -> met" for each row of an engine
    with a goal (goals: {engine: ratio}) that has a ratio."""
    return [f"target >= {goals[r['engine']]}x {r['engine']} ({dtype}) at {r['case']}: ratio "
            f"{r['ratio']:.2f} -> " + ("met" if r["ratio"] >= goals[r["engine"]] else
                                       "**not met**")
            for r in rows if r["engine"] in goals and r["ratio"] is not None]
