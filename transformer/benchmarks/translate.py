"""Translate suite: encoder-decoder translation against the peers, by running the source tree's
`bench/translate.py` as a subprocess and recording its results.

Why a subprocess: bench/translate.py is a script of its own (with its own options and checks,
written beside this package); running it as a user would keeps the two independent: this suite
needs only its command line and its JSON output, not its functions.

How it is run: `python bench/translate.py --help` is read first, and only the options the script
has are passed: --json FILE (required: the figures come from it), --threads N, --rounds R (when
--rounds is given, or 3 below the full size level), --quick (below the full level), or else
--max-sentences (16 at the quick level, 4 at tiny), --peers (the requested peers that the
script's --help names; the others are reported as skipped), --workdir DIR, --seed N. If the
script still rejects the options (exit status 2), it is run again with only --json and
--threads. The subprocess gets this package on PYTHONPATH and OMP_NUM_THREADS=n; its progress
goes to stderr as it comes, its stdout (the script's own Markdown table) is kept verbatim in the
report. A time limit applies (--timeout, default 240 s below the full level, 3600 s at it).
Without the script the suite is skipped with a note.

Reading the JSON: either this package's results schema (report.py; its first suite is taken), or
the {"meta": ..., "results": [...]} form of the bench/ scripts: each result becomes a row with
engine (r["engine"]), case (r["case"], else "batch B" from r["batch"] or meta's "batch_size",
else "all"), timing
(seconds / seconds_min / seconds_max / seconds_all), figures (every "<unit>_per_s" number, as
"<unit>/s", and "gflops" as GFLOP/s), ratio (r["ratio"]), fraction of limit (the first number
whose key contains "fraction"; the limit itself from meta's roofline_gflops or
bandwidth_limit_gbs), and agreement (r["agrees"] or r["ok"], with r["agreement"] (its text, or
its identical-sequence/token fields) or the max |diff| / min cosine as its text).
"""
import collections
import json
import os
import re
import subprocess
import sys
import threading
import time

from . import harness
from .harness import log

TAG = "translate"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = {"tiny": 120, "quick": 240, "full": 3600}
MAX_SENTENCES = {"tiny": 4, "quick": 16, "full": None}
PEERS = ("torch", "onnxruntime", "ctranslate2")


def find_script():
    """bench/translate.py of the source tree (beside the package), else of the current
    directory; None when neither exists."""
    for root in (REPO, os.getcwd()):
        path = os.path.join(root, "bench", "translate.py")
        if os.path.isfile(path):
            return path
    return None


def _env(threads):
    """The subprocess environment: this package first on PYTHONPATH, OMP_NUM_THREADS=n."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def script_help(script, threads=1):
    """(options, peers): the set of long options ("--json", ...) that `script --help` lists, and
    the peers of PEERS named in its --peers help (None when it names none). Raises RuntimeError
    when --help fails."""
    p = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                       timeout=120, env=_env(threads))
    if p.returncode != 0:
        raise RuntimeError(f"{script} --help exited {p.returncode}: {p.stderr[-1000:]}")
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", p.stdout))
    m = re.search(r"^\s*--peers\b(.*?)(?=^\s*-|\Z)", p.stdout, re.S | re.M)
    named = [x for x in PEERS if m and re.search(rf"\b{x}\b", m.group(1))]
    return options, (named or None)


def build_command(script, options, script_peers, cfg, json_path, minimal=False):
    """The argument list for the script: only options it has (see the module docstring)."""
    cmd = [sys.executable, script, "--json", json_path]
    if "--threads" in options:
        cmd += ["--threads", str(cfg.threads)]
    if minimal:
        return cmd
    rounds = cfg.rounds or (3 if cfg.quick else None)
    if rounds and "--rounds" in options:
        cmd += ["--rounds", str(rounds)]
    if cfg.quick and "--quick" in options:
        cmd.append("--quick")
    elif MAX_SENTENCES[cfg.sizes] and "--max-sentences" in options:
        cmd += ["--max-sentences", str(MAX_SENTENCES[cfg.sizes])]
    if "--peers" in options:
        cmd += ["--peers", ",".join(p for p in cfg.peers
                                    if script_peers is None or p in script_peers)]
    if "--workdir" in options:
        cmd += ["--workdir", os.path.abspath(cfg.workdir)]
    if "--seed" in options:
        cmd += ["--seed", str(cfg.seed)]
    return cmd


def run_streaming(cmd, timeout, env):
    """Run cmd: stderr forwarded line by line to ours as it comes (progress), stdout collected.
    Returns (returncode, stdout, last stderr lines). Raises subprocess.TimeoutExpired (after
    killing it) when it runs past `timeout` seconds."""
    import tempfile
    tail = collections.deque(maxlen=40)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)

        def pump():
            for line in proc.stderr:
                sys.stderr.write(line)
                sys.stderr.flush()
                tail.append(line)
        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            t.join(timeout=5)
        out.seek(0)
        return proc.returncode, out.read(), "".join(tail)


def _stats(r):
    """A harness.summarize()-like record from a legacy result's seconds fields, or None."""
    s = r.get("seconds")
    if not isinstance(s, (int, float)):
        return None
    samples = r.get("seconds_all")
    if isinstance(samples, list) and samples:
        out = harness.summarize(samples)
        out["median"] = float(s)
        return out
    lo, hi = r.get("seconds_min", s), r.get("seconds_max", s)
    return {"median": float(s), "min": float(lo), "max": float(hi), "q1": float(s),
            "q3": float(s), "iqr": 0.0, "n": 1, "all": [float(s)]}


def _agreement_text(a):
    """Text of an agreement dict of a bench/ script: its "text", or the known token-check
    fields (identical sequences and tokens, near-ties, score gap), or its scalar fields."""
    if a.get("text"):
        return str(a["text"])
    parts = []
    if isinstance(a.get("identical_sequences"), int) and a.get("n_sequences"):
        parts.append(f"{a['identical_sequences']}/{a['n_sequences']} sequences identical")
    frac = a.get("identical_token_fraction", a.get("identical_fraction"))
    if isinstance(frac, (int, float)):
        parts.append(f"{100 * frac:.1f}% tokens")
    if a.get("first_divergence") is not None:
        parts.append(f"first divergence {a['first_divergence']}")
    if isinstance(a.get("near_ties"), int) and a.get("scored"):
        parts.append(f"{a['near_ties']}/{a['scored']} divergences are near-ties")
    if isinstance(a.get("max_score_gap"), (int, float)):
        parts.append(f"max score gap {a['max_score_gap']:.1e}")
    if parts:
        return ", ".join(parts)
    return ", ".join(f"{k} {v}" for k, v in a.items()
                     if isinstance(v, (int, float, str)))[:200] or "-"


LIMITS = {"roofline_fraction": ("roofline_gflops", "sgemm {:.0f} GFLOP/s"),
          "bandwidth_fraction": ("bandwidth_limit_gbs", "read {:.1f} GB/s")}


def convert_result(r, meta=None):
    """One {"meta", "results"}-style result dict as a report ROW (see the module docstring);
    meta: the document's "meta", for the limit behind a fraction (roofline_gflops,
    bandwidth_limit_gbs)."""
    meta = meta or {}
    batch = r.get("batch", meta.get("batch_size"))
    case = r.get("case") or (f"batch {batch}" if batch is not None else "all")
    figures = [{"value": float(v), "unit": k[:-len("_per_s")].replace("_", " ") + "/s"}
               for k, v in r.items() if k.endswith("_per_s") and isinstance(v, (int, float))]
    if isinstance(r.get("gflops"), (int, float)):
        figures.append({"value": float(r["gflops"]), "unit": "GFLOP/s"})
    frac_key = next((k for k, v in r.items() if "fraction" in k
                     and isinstance(v, (int, float))), None)
    frac = float(r[frac_key]) if frac_key else None
    limit = None
    if frac_key in LIMITS and isinstance(meta.get(LIMITS[frac_key][0]), (int, float)):
        limit = LIMITS[frac_key][1].format(meta[LIMITS[frac_key][0]])
    ok = r.get("agrees", r.get("ok", True))
    agree = r.get("agreement")
    if r.get("is_reference") or (isinstance(agree, dict) and agree.get("is_reference")):
        text, is_ref = "reference", True
    elif isinstance(agree, dict):
        text, is_ref = _agreement_text(agree), False
    elif isinstance(agree, str):
        text, is_ref = agree, False
    else:
        parts = []
        if isinstance(r.get("max_abs_diff"), (int, float)):
            parts.append(f"max|diff| {r['max_abs_diff']:.2e}")
        if isinstance(r.get("min_cosine"), (int, float)):
            parts.append(f"min cosine {r['min_cosine']:.6f}")
        for k in ("identical_fraction", "exact_match", "bleu"):
            if isinstance(r.get(k), (int, float)):
                parts.append(f"{k} {r[k]:.3g}")
        text, is_ref = ", ".join(parts) or "-", False
    stats = _stats(r)
    return {"case": str(case), "group": "translate", "engine": str(r.get("engine", "?")),
            "status": "timed" if stats else ("disagrees" if not ok else "not timed"),
            "figures": figures, "seconds": stats,
            "ratio": r.get("ratio") if isinstance(r.get("ratio"), (int, float)) else None,
            "fraction_of_limit": frac, "limit": limit,
            "agreement": {"ok": bool(ok), "is_reference": is_ref, "text": text},
            "note": r.get("problem") or r.get("note")}


def convert(doc):
    """The script's JSON document as (rows, meta, extra): rows in report form; meta the script's
    own "meta" (or the suite record of a results.json); extra: a SUITE record to merge (for a
    document in this package's schema). Raises ValueError for an unknown layout."""
    from .report import SCHEMA
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
        suites = list(doc.get("suites", {}).values())
        if not suites:
            raise ValueError("results document without suites")
        return suites[0].get("rows", []), {}, suites[0]
    if isinstance(doc, dict) and isinstance(doc.get("results"), list):
        meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
        return [convert_result(r, meta) for r in doc["results"] if isinstance(r, dict)], meta, {}
    raise ValueError("unknown JSON layout (expected {'meta', 'results'} or a transformer bench "
                     "results.json)")


def run_script(script, cfg, out_dir):
    """Run `script` (see the module docstring) writing its JSON into out_dir; returns the SUITE
    record. Raises RuntimeError when it fails or gives no JSON, subprocess.TimeoutExpired when
    it runs past the time limit."""
    from . import SuiteSkipped
    options, script_peers = script_help(script, cfg.threads)
    if "--json" not in options:
        raise SuiteSkipped(f"{script} has no --json option: nothing to record")
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.abspath(os.path.join(out_dir, "translate-script.json"))
    if os.path.exists(json_path):
        os.remove(json_path)
    timeout = cfg.timeout or TIMEOUT[cfg.sizes]
    deadline = time.monotonic() + timeout       # for both attempts together
    cmd = build_command(script, options, script_peers, cfg, json_path)
    log("running " + " ".join(cmd[1:]), TAG)
    ticks = harness.cpu_sample()
    rc, stdout, err = run_streaming(cmd, timeout, _env(cfg.threads))
    if rc == 2:
        cmd = build_command(script, options, script_peers, cfg, json_path, minimal=True)
        log("options rejected (exit status 2); again with only --json and --threads", TAG)
        rc, stdout, err = run_streaming(cmd, max(1.0, deadline - time.monotonic()),
                                        _env(cfg.threads))
    if rc != 0:
        raise RuntimeError(f"{os.path.basename(script)} exited with status {rc}: "
                           f"{err.strip().splitlines()[-1] if err.strip() else '(no stderr)'}")
    if not os.path.exists(json_path):
        raise RuntimeError(f"{os.path.basename(script)} wrote no JSON to {json_path}")
    usage = harness.cpu_usage(ticks, harness.cpu_sample())   # the script's time is a child's
    warning = harness.busy_warning(usage, "the script ran")
    if warning:
        log(warning, TAG)
    with open(json_path, encoding="utf-8") as f:
        doc = json.load(f)
    rows, meta, extra = convert(doc)
    suite = {"title": "Translate: encoder-decoder models (bench/translate.py)", "status": "ok",
             "warnings": [warning] if warning else [], "cpu": usage,
             "summary": [(f"Run as a subprocess: `{' '.join(['python'] + cmd[1:])}`; its JSON "
                          f"is kept as {os.path.basename(json_path)}, its own table follows the "
                          "rows.")],
             "rows": rows, "tables": [], "scaling": [], "skipped": {}, "notes": [],
             "markdown": stdout.strip(), "script_meta": meta,
             "config": {"script": script, "command": cmd[1:], "timeout_s": timeout}}
    for k in ("summary", "tables", "scaling", "notes"):
        suite[k] = suite[k] + list(extra.get(k, []))
    if extra.get("skipped"):
        suite["skipped"] = dict(extra["skipped"])
    if isinstance(meta, dict) and isinstance(meta.get("skipped"), dict):
        suite["skipped"].update(meta["skipped"])
    for p in cfg.peers:
        if script_peers is not None and p not in script_peers:
            suite["skipped"][p] = f"not supported by {os.path.basename(script)}"
    return suite


def run(cfg):
    """The translate suite for a BenchConfig. Skipped (with the reason) when bench/translate.py
    is not there."""
    from . import SuiteSkipped
    script = find_script()
    if script is None:
        raise SuiteSkipped("bench/translate.py not found (the translate suite runs that script "
                           "of the source tree; run from the repository root)")
    try:
        return run_script(script, cfg, cfg.output)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{os.path.basename(script)} ran past the time limit of "
                           f"{e.timeout:.0f} s (--timeout)") from e
