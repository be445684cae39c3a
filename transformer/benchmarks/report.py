"""results.json (the record of one run) and report.md (its tables; no plots: the tables and
results.json are the record). The schema of results.json ("schema": "transformer-bench/1": the
run, the machine, its limits, and per suite its rows, one per engine and case) is described in
bench/README.md.
"""
import datetime
import json
import math
import os

SCHEMA = "transformer-bench/1"
ENGINE = "transformer"


# ---------------------------------------------------------------------------------------------
# results.json
# ---------------------------------------------------------------------------------------------

def new_results(command, options, machine):
    """An empty results document (see the module docstring) for one run."""
    return {"schema": SCHEMA, "created": datetime.datetime.now().astimezone().isoformat(
        timespec="seconds"), "command": command, "options": options, "machine": machine,
        "limits": {}, "suites": {}, "wall_s": None}


def jsonable(obj):
    """obj with NumPy scalars and arrays, tuples, sets and non-finite floats made JSON-safe."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_results(results, out_dir):
    """Write results.json into out_dir (created if needed; _io.atomic_output: no half-written
    file); returns its path."""
    from .._io import atomic_output
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    with atomic_output(path) as f:
        json.dump(jsonable(results), f, indent=2)
    return path


def load_results(path):
    """Read a results.json (a file, or a directory holding one). Raises FileNotFoundError, or
    ValueError when it is not JSON or not this schema."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a transformer bench results file (schema "
                         f"{results.get('schema') if isinstance(results, dict) else None!r}, "
                         f"expected {SCHEMA!r})")
    return results


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------

def fmt_num(v, digits=3):
    """A number with about `digits` significant digits, no exponent for 0.01 <= |v| < 1e6."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6 or a < 1e-4:
        return f"{v:.2e}"
    if a >= 10 ** (digits - 1):
        return f"{v:.0f}"
    decimals = digits - 1 - math.floor(math.log10(a))
    return f"{v:.{max(0, decimals)}f}"


def fmt_time(stats):
    """Timing cell: median (min-max, IQR) in one unit, "-" when not timed."""
    if not stats:
        return "-"
    med = stats["median"]
    scale, unit = (1e6, "us") if med < 1e-3 else (1e3, "ms") if med < 1 else (1, "s")
    return (f"{fmt_num(med * scale)} {unit} ({fmt_num(stats['min'] * scale)}-"
            f"{fmt_num(stats['max'] * scale)}, IQR {fmt_num(stats['iqr'] * scale)})")


def fmt_figures(figures):
    """Figures cell: "217 sentences/s; 4517 tokens/s"."""
    if not figures:
        return "-"
    return "; ".join(f"{fmt_num(f['value'])} {f['unit']}" for f in figures
                     if f.get("value") is not None) or "-"


def fmt_pct(x):
    """A fraction as a percentage, "-" for None."""
    return "-" if x is None else f"{100 * x:.1f}%"


def _esc(text):
    """Escape a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header, rows, align=None):
    """A Markdown table: header [str], rows [[cell]], align per column ("l" or "r")."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(_esc(h) for h in header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(_esc(c) for c in r) + " |")
    return lines


def engine_cell(row):
    """Engine name, with the flag when it disagrees with the reference or failed."""
    name = row["engine"]
    agree = row.get("agreement") or {}
    if row.get("status") == "disagrees" or (agree and not agree.get("ok", True)):
        name += " **(disagrees with the reference)**"
    elif row.get("status") == "error":
        name += " **(failed)**"
    return name


def check_cell(row):
    """Agreement cell: "reference", the comparison's text, or the note."""
    agree = row.get("agreement")
    if agree:
        return "reference" if agree.get("is_reference") else agree.get("text", "-")
    return row.get("note") or "-"


def render_suite(name, suite):
    """Markdown section of one suite: title, setup lines, the rows table, its own tables if
    any, skipped peers and notes."""
    lines = [f"## {suite.get('title', name)}", ""]
    status = suite.get("status", "ok")
    if status != "ok":
        lines += [f"**{status}**: {suite.get('error', '')}", ""]
    for w in suite.get("warnings", []):
        lines += [f"**{w}**", ""]
    for s in suite.get("summary", []):
        lines.append(s)
    if suite.get("summary"):
        lines.append("")
    rows = suite.get("rows", [])
    if rows:
        # Optional columns: the compute type of each engine, its accuracy against float32.
        typed = any(r.get("compute_type") for r in rows)
        accuracy = any(r.get("accuracy") for r in rows)
        lines += table(["case", "engine"] + (["compute type"] if typed else [])
                       + ["figure", "time median (min-max, IQR)",
                          "ratio (transformer / engine)", "fraction of limit", "limit"]
                       + (["accuracy against float32"] if accuracy else [])
                       + ["check against the reference"],
                       [[r["case"], engine_cell(r)] + ([r.get("compute_type") or "-"]
                                                       if typed else [])
                        + [fmt_figures(r.get("figures")) if r.get("seconds") else
                           (r.get("status") or "not timed"),
                           fmt_time(r.get("seconds")), fmt_num(r.get("ratio")),
                           fmt_pct(r.get("fraction_of_limit")), r.get("limit") or "-"]
                        + ([r.get("accuracy") or "-"] if accuracy else [])
                        + [check_cell(r)] for r in rows],
                       align=["l", "l"] + ["l"] * typed + ["r"] * 4 + ["l"] * (2 + accuracy))
        lines.append("")
    for t in suite.get("tables", []):
        if t.get("title"):
            lines += [f"**{t['title']}**", ""]
        lines += table(t["header"], [[fmt_num(c) if isinstance(c, float) else c for c in r]
                                     for r in t["rows"]], t.get("align"))
        lines.append("")
    for peer, why in suite.get("skipped", {}).items():
        lines.append(f"- skipped {peer}: {why}")
    for note in suite.get("notes", []):
        lines.append(f"- {note}")
    if suite.get("skipped") or suite.get("notes"):
        lines.append("")
    if suite.get("wall_s") is not None:
        lines += [f"_{name}: {suite['wall_s']:.1f} s wall time._", ""]
    return "\n".join(lines)


def headline(results):
    """The summary table: per suite and case, transformer's main figure, its fraction of the
    machine's limit, and its throughput ratio to each engine that ran that case."""
    peers = []
    for suite in results.get("suites", {}).values():
        for r in suite.get("rows", []):
            if r["engine"] != ENGINE and r["engine"] not in peers:
                peers.append(r["engine"])
    out = []
    for name, suite in results.get("suites", {}).items():
        by_case = {}
        for r in suite.get("rows", []):
            by_case.setdefault(r["case"], {})[r["engine"]] = r
        dtype = suite.get("config", {}).get("dtype", "float32")
        label = name if dtype == "float32" else f"{name} ({dtype})"
        for case, engines in by_case.items():
            ours = engines.get(ENGINE)
            if ours is None:
                continue
            cells = [label, case, fmt_figures(ours.get("figures")[:1]) if ours.get("seconds")
                     and ours.get("figures") else ours.get("status", "-"),
                     fmt_pct(ours.get("fraction_of_limit"))]
            for p in peers:
                r = engines.get(p)
                if r is None:
                    cells.append("")
                elif r.get("status") == "disagrees":
                    cells.append("disagrees")
                elif r.get("ratio") is None:
                    cells.append(r.get("status") if r.get("status") != "timed" else "-")
                else:
                    cells.append(f"{fmt_num(r['ratio'])}x")
            out.append(cells)
    if not out:
        return []
    return table(["suite", "case", "transformer", "fraction of limit"]
                 + [f"vs {p}" for p in peers], out)


def render_markdown(results):
    """The whole report.md: the run, the machine and its limits, the summary table (ratios:
    transformer's throughput over each peer's, > 1 means transformer is faster), then one
    section per suite."""
    m = results.get("machine", {})
    opts = results.get("options", {})
    lim = results.get("limits", {})
    mem = m.get("memory", {})
    lines = ["# transformer bench", "",
             f"`{results.get('command', '')}` on {results.get('created', '?')}"
             + (f", {results['wall_s']:.0f} s in all." if results.get("wall_s") else "."), "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores"
             + (f", {mem['total_gib']:.1f} GiB memory" if mem.get("total_gib") else "")
             + f"; {m.get('platform', '')}; Python {m.get('python', '?')}. "
             f"Threads for every engine: {opts.get('threads', m.get('threads', '?'))}."
             + (" Sizes: " + str(opts.get("sizes")) + "." if opts.get("sizes") else ""), ""]
    vers = m.get("versions", {})
    if vers:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v)
                     + (". Not installed: " + ", ".join(k for k, v in vers.items() if not v)
                        if any(not v for v in vers.values()) else "") + ".")
    if m.get("blas"):
        lines.append("BLAS: " + "; ".join(m["blas"]) + ".")
    lines.append("")
    if lim:
        probe = lim.get("probe", {})
        lines += [f"Machine limits (measured in this run, median of {lim.get('rounds', '?')}): "
                  f"sgemm {fmt_num(lim.get('sgemm_gflops'))} GFLOP/s "
                  f"(numpy {fmt_num(lim.get('sgemm_numpy'))}, scipy "
                  f"{fmt_num(lim.get('sgemm_scipy'))}; {probe.get('sgemm', '')}); "
                  f"copy {fmt_num(lim.get('copy_gbs'))} GB/s (1 thread "
                  f"{fmt_num(lim.get('copy_1thread'))}, all threads "
                  f"{fmt_num(lim.get('copy_threads'))}; {probe.get('copy', '')})"
                  + ("" if lim.get("cpu_steal") is None else
                     f"; hypervisor CPU steal {100 * lim['cpu_steal']:.0f}%") + ".", ""]
    if m.get("load_before") is not None:
        lines += [f"Load average before the run: {m['load_before']:.2f} on "
                  f"{m.get('cores', '?')} cores.", ""]
    busy = [n for n, s in results.get("suites", {}).items() if s.get("warnings")]
    if busy:
        lines += [f"**The machine was busy during {', '.join(busy)}: see the warnings there; "
                  "those numbers are disturbed.**", ""]
    head = headline(results)
    if head:
        lines += ["## Summary", "",
                  ("transformer's main figure, its fraction of the machine's limit, and its "
                   "throughput ratio to each engine on the same case (> 1: transformer is "
                   "faster; 'disagrees': that engine's output failed the check against the "
                   "reference and was not timed)."), ""] + head + [""]
    for name, suite in results.get("suites", {}).items():
        lines.append(render_suite(name, suite))
    return "\n".join(lines).rstrip() + "\n"


def write_report(results, out_dir):
    """Write report.md into out_dir; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_markdown(results))
    return path
