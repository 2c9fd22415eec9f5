"""Render a ``deepshrink compress`` report dict as report.md and one self-contained report.html.

Hand-written HTML/Markdown rather than a templating or notebook tool (Jinja2, nbconvert,
plotly): the pages are a few tables and four kinds of figure, and a string builder keeps the
output dependency-free and offline. The HTML inlines its CSS and embeds the
matplotlib figures (Agg, PNG, base64 ``data:`` URIs), so the one file can be mailed or archived
and shows the same without network or JavaScript. The Markdown holds the same tables and flags
but no plots (it references nothing outside itself); the figures live only in the HTML.

Every field of the report may be missing or None (no labels → no accuracy, no sensitivity,
no layer rows...): a missing number prints as "–" and a figure without data is left out.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.fileio import write_text_atomic

__all__ = ["write_reports", "figures", "render_markdown", "render_html"]

DASH = "–"
_FLAG_COLOR = "#c62828"
_BEFORE, _AFTER = "#90a4ae", "#1565c0"


# ---------------------------------------------------------------------------------------------
# formatting


def _steps(report: dict) -> list[dict]:
    return [s for s in (report.get("steps") or []) if isinstance(s, dict)]


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    return DASH if x is None else fmt.format(x)


def _bytes(n: Any) -> str:
    if n is None:
        return DASH
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _pct(x: Any, digits: int = 1) -> str:
    return DASH if x is None else f"{100 * x:.{digits}f} %"


def _label(step: dict) -> str:
    return f"{step.get('index', '?')} {step.get('name') or step.get('verb') or ''}".strip()


def _latency(step: dict) -> str:
    lat = step.get("latency_ms") or {}
    if lat.get("median") is None:
        return DASH
    spread = f" ({lat['p10']:.3g}–{lat['p90']:.3g})" if lat.get("p10") is not None and lat.get("p90") is not None else ""
    return f"{lat['median']:.3g}{spread}"


def _ratio(step: dict) -> str:
    r = step.get("latency_ratio")
    if r is None:
        return DASH
    s = step.get("latency_ratio_spread")
    return f"{r:.2f}×" + (f" ± {s:.2f}" if s is not None else "")


def _fidelity(step: dict) -> str:
    if step.get("cos_mean") is None:
        return DASH
    return f"{step['cos_mean']:.4f} / {_num(step.get('cos_min'), '{:.4f}')}"


def _flags(report: dict) -> list[tuple[dict, dict]]:
    return [(s, f) for s in _steps(report) for f in (s.get("flags") or []) if isinstance(f, dict)]


def _runtimes(report: dict) -> str:
    pkgs = (report.get("environment") or {}).get("packages") or {}
    names = dict.fromkeys(s.get("runtime") for s in _steps(report) if s.get("runtime"))
    return ", ".join(f"{n} {pkgs[n]}" if n in pkgs else str(n) for n in names) or DASH


def _env_line(report: dict) -> str:
    """Runtime, threads, CPU and latency spread: the context every figure is printed with."""
    env = report.get("environment") or {}
    spreads = []
    for s in _steps(report):
        lat = s.get("latency_ms") or {}
        if lat.get("p10") is not None and lat.get("p90") is not None:
            spreads.append(f"{_label(s)} {lat['p10']:.3g}–{lat['p90']:.3g}")
    return (f"runtime: {_runtimes(report)} · threads: {env.get('threads', DASH)} · CPU: {env.get('cpu') or DASH}"
            f" · latency p10–p90 ms: {'; '.join(spreads) or DASH}")


def _op_family(op: Any) -> str:
    """Ops that hold the same layer's weight before and after a quantizer (Gemm becomes MatMul for dynamic int8,
    Conv becomes ConvInteger / QLinearConv)."""
    op = str(op or "")
    return "dense" if "MatMul" in op or op == "Gemm" else "conv" if "Conv" in op else op


def _match_layers(before: Sequence[dict], after: Sequence[dict]) -> list[tuple[dict | None, dict]]:
    """Pair each final layer with its original: same name; else the next unused one of the same kind (dense,
    conv, ...) with the same element count (quantizers rename and transpose weights but keep their order); else,
    when both hold as many layers of that kind, the next unused one of the kind in graph
    order (renamed and resized: pruned through an import, whose exported graph may list dense layers before conv
    ones); else, when both lists are as long, the next unused one in graph order."""
    match: dict[int, int] = {}
    by_name = {r.get("name"): i for i, r in enumerate(before)}
    for k, row in enumerate(after):
        if (i := by_name.get(row.get("name"))) is not None and i not in match.values():
            match[k] = i

    before_counts, after_counts = (collections.Counter(_op_family(r.get("op")) for r in rows) for rows in (before, after))
    rules = [lambda a, b: _op_family(a.get("op")) == _op_family(b.get("op")) and a.get("params") == b.get("params"),
             lambda a, b: (_op_family(a.get("op")) == _op_family(b.get("op"))
                           and before_counts.get(_op_family(a.get("op"))) == after_counts.get(_op_family(b.get("op"))))]
    if len(before) == len(after):
        rules.append(lambda a, b: True)
    for same in rules:
        for k, row in enumerate(after):
            if k not in match:
                free = (j for j, r in enumerate(before) if j not in match.values() and same(r, row))
                if (i := next(free, None)) is not None:
                    match[k] = i
    return [(before[match[k]] if k in match else None, row) for k, row in enumerate(after)]


# ---------------------------------------------------------------------------------------------
# figures


def _figure(report: dict, title: str, width: float, height: float, panels: int = 1):  # noqa: ANN202
    """A Figure (no pyplot: no global state, Agg) with ``panels`` axes in a row, the title
    and, as its footer, the runtime / threads / CPU / latency-spread line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    fig.suptitle(title, fontsize=12, fontweight="bold", x=0.01, ha="left")
    footer = "\n".join(textwrap.wrap(_env_line(report), width=int(width * 17)))
    fig.supxlabel(footer, fontsize=7, color="#555555", x=0.01, ha="left")
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _flagged(step: dict, kind: str) -> bool:
    return any(isinstance(f, dict) and f.get("kind") == kind for f in step.get("flags") or [])


def _fig_steps(report: dict) -> bytes | None:
    steps = _steps(report)
    if not steps:
        return None
    fig, (ax_size, ax_lat, ax_q) = _figure(report, "Size, latency and quality per step", 12, 4.2, 3)
    x = list(range(len(steps)))
    labels = [_label(s) for s in steps]
    top = max((s.get("size_bytes") or 0) for s in steps)
    unit, scale = next(((u, f) for u, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if top >= f), ("B", 1))
    size = [(s.get("size_bytes") or 0) / scale for s in steps]
    bars = ax_size.bar(x, size, color=[_FLAG_COLOR if _flagged(s, "bigger") else _AFTER for s in steps])
    ax_size.bar_label(bars, labels=[_bytes(s.get("size_bytes")) for s in steps], fontsize=8)
    ax_size.margins(y=0.12)
    ax_size.set_ylabel(f"file size ({unit})")
    ax_size.set_title("size", fontsize=10)

    lats = [s.get("latency_ms") or {} for s in steps]
    med = [lat.get("median") for lat in lats]
    lo = [m - lat["p10"] if m is not None and lat.get("p10") is not None else 0 for m, lat in zip(med, lats, strict=True)]
    hi = [lat["p90"] - m if m is not None and lat.get("p90") is not None else 0 for m, lat in zip(med, lats, strict=True)]
    ax_lat.bar(x, [m or 0 for m in med], yerr=[[max(0, v) for v in lo], [max(0, v) for v in hi]], capsize=4,
                      ecolor="#333333", color=[_FLAG_COLOR if _flagged(s, "slower") else _AFTER for s in steps])
    ax_lat.set_ylabel("latency median (ms), whiskers p10–p90")
    ax_lat.set_title("latency (× step 0 under each step)", fontsize=10)

    acc = [s.get("accuracy") for s in steps]
    if any(a is not None for a in acc):
        ys, name, fmt = acc, "accuracy", "{:.2%}"
        from matplotlib.ticker import PercentFormatter

        ax_q.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=2))
    else:
        ys, name, fmt = [s.get("cos_mean") for s in steps], "cosine to original (mean, ▽ min)", "{:.4g}"
        ax_q.scatter(x, [s.get("cos_min") if s.get("cos_min") is not None else float("nan") for s in steps],
                     marker="v", color=_BEFORE, zorder=3)
    pts = [(i, y) for i, y in zip(x, ys, strict=True) if y is not None]
    if pts:
        ax_q.plot([p[0] for p in pts], [p[1] for p in pts], color=_AFTER, zorder=2)
        ax_q.scatter([p[0] for p in pts], [p[1] for p in pts], s=40, zorder=4,
                     color=[_FLAG_COLOR if _flagged(steps[i], "less-accurate") else _AFTER for i, _ in pts])
        for i, y in pts:
            ax_q.annotate(fmt.format(y), (i, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        ax_q.margins(y=0.25)
    else:
        ax_q.text(0.5, 0.5, "no accuracy or fidelity measured", ha="center", va="center", transform=ax_q.transAxes)
    ax_q.set_ylabel(name)
    ax_q.set_title(name.split(" (")[0], fontsize=10)
    ratios = [f"{lab}\n{_num(s.get('latency_ratio'), '{:.2f}×')}" for lab, s in zip(labels, steps, strict=True)]
    for ax in (ax_size, ax_lat, ax_q):
        ax.set_xticks(x, ratios if ax is ax_lat else labels, rotation=0 if ax is ax_lat else 20,
                      ha="center" if ax is ax_lat else "right", fontsize=8)
        ax.set_xlim(-0.6, len(steps) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _layer_pairs(report: dict) -> tuple[dict, dict, list[tuple[dict | None, dict]]] | None:
    steps = [s for s in _steps(report) if s.get("layers")]
    if not steps:
        return None
    first, last = steps[0], steps[-1]
    return first, last, _match_layers(first["layers"], last["layers"])


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _fig_layers(report: dict) -> bytes | None:
    got = _layer_pairs(report)
    if got is None:
        return None
    first, last, pairs = got
    fig, (ax_b, ax_s) = _figure(
        report, f"Per-layer bits and sparsity: {_label(last)} vs {_label(first)}", 12, 4.2, 2)
    x = list(range(len(pairs)))
    w = 0.4
    names = [_short((b or a).get("name", "?")) for b, a in pairs]
    for ax, key, scale, unit in ((ax_b, "bits", 1, "bits per weight"), (ax_s, "sparsity", 100, "zeros (%)")):
        before = [(b.get(key) or 0) * scale if b else 0 for b, _ in pairs]
        after = [(a.get(key) or 0) * scale for _, a in pairs]
        ax.bar([i - w / 2 for i in x], before, w, color=_BEFORE, label=_label(first))
        bars = ax.bar([i + w / 2 for i in x], after, w, color=_AFTER, label=_label(last))
        ax.set_ylabel(unit)
        if len(pairs) <= 30:
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in after], fontsize=7)
            ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
        else:  # too many names to print: the Layers table lists them in the same order
            ax.set_xlabel("layer (graph order, as in the Layers table)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax_b.set_title("stored bits", fontsize=10)
    ax_s.set_title("sparsity (exact zeros after dequantization)", fontsize=10)
    ax_s.set_ylim(0, 105)
    return _png(fig)


def _fig_histograms(report: dict) -> bytes | None:
    steps = [s for s in _steps(report) if s.get("histograms")]
    if not steps:
        return None
    first, last = steps[0], steps[-1]
    params = {id(s): {r.get("name"): r.get("params") for r in s.get("layers") or []} for s in (first, last)}
    before_rows = [dict(h, name=h.get("layer"), params=params[id(first)].get(h.get("layer"))) for h in first["histograms"]]
    after_rows = [dict(h, name=h.get("layer"), params=params[id(last)].get(h.get("layer"))) for h in last["histograms"]]
    pairs = _match_layers(before_rows, after_rows) if last is not first else [(None, h) for h in after_rows]
    pairs = pairs[:4]
    fig, axes = _figure(report, f"Weight histograms, largest layers: {_label(last)} vs {_label(first)}",
                               12, 3.8, len(pairs))
    for ax, (before, after) in zip(axes, pairs, strict=True):
        for h, color, label in ((before, _BEFORE, _label(first)), (after, _AFTER, _label(last))):
            if h and h.get("edges") and h.get("counts"):
                ax.stairs(h["counts"], h["edges"], color=color, fill=color == _BEFORE, alpha=0.6 if color == _BEFORE else 1,
                          label=label, linewidth=1.5)
        ax.set_yscale("symlog", linthresh=1)
        name, old = after.get("layer", "?"), (before or {}).get("layer")
        ax.set_title(_short(name, 30) + (f"\n(was {_short(old, 30)})" if old and old != name else ""), fontsize=9)
        ax.set_xlabel("weight value")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("count (symlog)")
    return _png(fig)


def _fig_sensitivity(report: dict, step: dict, top: int = 20) -> bytes:
    sens = sorted(step["sensitivity"].items(), key=lambda kv: -(kv[1] or 0))[:top]
    fig, (ax,) = _figure(report, f"Per-layer sensitivity: {_label(step)}", 12, 1.6 + 0.28 * len(sens))
    names = [_short(k, 40) for k, _ in sens][::-1]
    vals = [v or 0 for _, v in sens][::-1]
    bars = ax.barh(names, vals, color=_AFTER)
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=7, padding=2)
    ax.set_xlabel("sensitivity as measured by the step (higher: the layer tolerates compression less)")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def figures(report: dict) -> list[tuple[str, bytes]]:
    """The report's plots as ``(caption, PNG bytes)``: steps overview, per-layer bits/sparsity,
    weight histograms, then one sensitivity chart per step that has sensitivity; figures
    without data are left out."""
    out = []
    for caption, png in (
            ("File size, latency (bars: median, whiskers: p10–p90, under each step: ratio to step 0) and accuracy, or cosine "
             "fidelity to the original when there are no labels. Red: the flagged step.", _fig_steps(report)),
            ("Stored bits per weight and fraction of exact zeros per layer, last step with layer data vs the first; "
             "layers are paired by name, else by weight count, else by graph order.", _fig_layers(report)),
            ("Distribution of the dequantized weights of the largest layers (count on a symmetric log scale).",
             _fig_histograms(report))):
        if png is not None:
            out.append((caption, png))
    for s in _steps(report):
        if s.get("sensitivity"):
            out.append((f"Per-layer sensitivity measured by step {_label(s)}, most sensitive first (top 20).",
                        _fig_sensitivity(report, s)))
    return out


# ---------------------------------------------------------------------------------------------
# tables shared by both formats: (header, rows of cell strings)


def _step_table(report: dict) -> tuple[list[str], list[list[str]]]:
    head = ["#", "step", "what it did", "size", "params", "latency ms median (p10–p90)", "× step 0",
            "accuracy", "cosine mean / min", "top-1 agree", "flags", "file"]
    rows = []
    for s in _steps(report):
        flags = ", ".join(f.get("kind", "?") for f in s.get("flags") or [] if isinstance(f, dict))
        rows.append([str(s.get("index", "")), str(s.get("name") or s.get("verb") or ""), str(s.get("summary") or ""),
                     _bytes(s.get("size_bytes")), _num(s.get("params"), "{:,}"), _latency(s), _ratio(s),
                     _pct(s.get("accuracy"), 2), _fidelity(s), _pct(s.get("top1_agreement")),
                     f"⚠ {flags}" if flags else "", str(s.get("file") or "")])
    return head, rows


def _layer_rows(report: dict) -> tuple[str, list[str], list[list[str]]] | None:
    got = _layer_pairs(report)
    if got is None:
        return None
    first, last, pairs = got
    head = ["layer", "op", "params", "bits", "sparsity"]
    rows = []
    for b, a in pairs:
        def both(key: str, fmt: Any, b: dict | None = b, a: dict = a) -> str:
            old, new = fmt(b.get(key)) if b else DASH, fmt(a.get(key))
            return new if old == new or last is first else f"{old} → {new}"
        rows.append([str(a.get("name", "")), both("op", str), _num(a.get("params"), "{:,}"),
                     both("bits", lambda v: _num(v, "{}")), both("sparsity", _pct)])
    return f"{_label(last)} vs {_label(first)}", head, rows


def _summary(report: dict) -> list[tuple[str, str]]:
    final = report.get("final") or {}
    data = report.get("data") or {}
    size_r, lat_r, drop = final.get("size_ratio"), final.get("latency_ratio"), final.get("accuracy_drop")
    return [("source", str(report.get("source") or DASH)), ("created", str(report.get("created") or DASH)),
            ("data", f"{data.get('source') or DASH}, {_num(data.get('samples'), '{}')} samples"
                     f"{', labelled' if data.get('labels') else ', no labels (fidelity only)'}"),
            ("final model", str(final.get("file") or DASH)),
            ("size", DASH if not size_r else f"{size_r:.3g}× the original ("
             + (f"{1 / size_r:.3g}× smaller)" if size_r <= 1 else "bigger)")),
            ("latency", DASH if lat_r is None else f"{lat_r:.3g}× the original"),
            ("accuracy drop", DASH if drop is None else f"{100 * drop:.2f} points")]


def _env_rows(report: dict) -> list[tuple[str, str]]:
    env = report.get("environment") or {}
    rows = [(k, str(env[k])) for k in ("deepshrink", "python", "platform", "cpu", "threads") if env.get(k) is not None]
    rows += [(k, str(v)) for k, v in sorted((env.get("packages") or {}).items())]
    return rows


def _recipe(report: dict) -> str:
    """One line per recipe step (``- verb: {options}``), else the recipe as JSON."""
    recipe = report.get("recipe")
    steps = recipe.get("steps") if isinstance(recipe, dict) else None
    if isinstance(steps, list) and all(isinstance(s, dict) for s in steps):
        return "\n".join(f"- {k}: {json.dumps(v, default=str)}" for s in steps for k, v in s.items())
    return json.dumps(recipe, indent=2, default=str)


def _sensitivity_rows(step: dict, top: int = 10) -> list[list[str]]:
    items = sorted(step["sensitivity"].items(), key=lambda kv: -(kv[1] or 0))[:top]
    return [[k, _num(v, "{:.4g}")] for k, v in items]


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    """report.md: summary, flags, steps table, per-layer table, sensitivity, recipe, environment."""
    out = [f"# {report.get('title') or 'deepshrink report'}", ""]
    flags = _flags(report)
    if flags:
        out += ["> [!WARNING]", f"> **{len(flags)} flag{'s' if len(flags) > 1 else ''}:**"]
        out += [f"> - **step {_label(s)}: {f.get('kind', '?')}**: {f.get('message') or ''}" for s, f in flags]
        out.append("")
    else:
        out += ["No step is slower, less accurate or bigger than the one before it.", ""]
    out += [_md_table(["", ""], [[k, v] for k, v in _summary(report)]), "", "## Steps", ""]
    out += [_md_table(*_step_table(report)), ""]
    for s in _steps(report):
        if s.get("details"):
            out.append(f"- step {_label(s)} details: `{json.dumps(s['details'], sort_keys=True, default=str)}`")
    layers = _layer_rows(report)
    if layers:
        title, head, rows = layers
        out += ["", f"## Layers: {title}", "", _md_table(head, rows)]
    for s in _steps(report):
        if s.get("sensitivity"):
            out += ["", f"## Sensitivity: step {_label(s)} (most sensitive first)", "",
                    _md_table(["layer", "sensitivity"], _sensitivity_rows(s))]
    if report.get("recipe"):
        out += ["", "## Recipe", "", "```", _recipe(report), "```"]
    out += ["", "## Environment", "", _md_table(["", ""], _env_rows(report)) if _env_rows(report) else DASH, "",
            f"_Latency context: {_env_line(report)}._", "",
            "_Plots are in report.html (one self-contained file, same folder)._", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;max-width:1240px;margin:24px auto;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.flagged td{background:#fff3f3}
.flags{border:2px solid #c62828;background:#fdecea;border-radius:6px;padding:10px 16px;margin:16px 0}
.flags h2{margin:0 0 6px;border:0;color:#c62828}.flags li{margin:3px 0}
.ok{border:1px solid #2e7d32;background:#edf7ed;border-radius:6px;padding:8px 16px;margin:16px 0}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #e0e0e0}figcaption{color:#555;font-size:12px}
.kv td:first-child{color:#555}code,pre{background:#f6f8fa;font-size:12px}pre{padding:8px;overflow:auto}
.env{color:#555;font-size:12px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _html_table(head: Sequence[str] | None, rows: Sequence[Sequence[str]], cls: str = "",
                numeric: Sequence[int] = (), row_cls: Sequence[str] = ()) -> str:
    parts = [f'<table class="{cls}">' if cls else "<table>"]
    if head:
        parts.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for i, r in enumerate(rows):
        rc = f' class="{row_cls[i]}"' if i < len(row_cls) and row_cls[i] else ""
        parts.append(f"<tr{rc}>" + "".join(f'<td class="n">{_e(c)}</td>' if j in numeric else f"<td>{_e(c)}</td>"
                                            for j, c in enumerate(r)) + "</tr>")
    return "".join(parts) + "</table>"


def render_html(report: dict, figs: Sequence[tuple[str, bytes]] | None = None) -> str:
    """report.html: the Markdown's content plus the figures, embedded as base64 PNGs."""
    figs = figures(report) if figs is None else figs
    title = report.get("title") or "deepshrink report"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    flags = _flags(report)
    if flags:
        out.append(f'<div class="flags"><h2>⚠ {len(flags)} flag{"s" if len(flags) > 1 else ""}</h2><ul>')
        out += [f"<li><b>step {_e(_label(s))}: {_e(f.get('kind', '?'))}</b>: {_e(f.get('message') or '')}</li>"
                for s, f in flags]
        out.append("</ul></div>")
    else:
        out.append('<div class="ok">No step is slower, less accurate or bigger than the one before it.</div>')
    out.append(_html_table(None, [[k, v] for k, v in _summary(report)], cls="kv"))
    head, rows = _step_table(report)
    out += ["<h2>Steps</h2>", _html_table(head, rows, numeric=(3, 4, 5, 6, 7, 8, 9),
                                         row_cls=["flagged" if s.get("flags") else "" for s in _steps(report)])]
    details = [(s, s["details"]) for s in _steps(report) if s.get("details")]
    if details:
        out.append("<details><summary>step details</summary>")
        out += [f"<p>step {_e(_label(s))}: <code>{_e(json.dumps(d, sort_keys=True, default=str))}</code></p>"
                for s, d in details]
        out.append("</details>")
    if figs:
        out.append("<h2>Plots</h2>")
    for caption, png in figs:
        data = base64.b64encode(png).decode("ascii")
        out.append(f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{_e(caption)}</figcaption></figure>")
    layers = _layer_rows(report)
    if layers:
        ltitle, lhead, lrows = layers
        out += [f"<h2>Layers: {_e(ltitle)}</h2>", _html_table(lhead, lrows, numeric=(2, 3, 4))]
    for s in _steps(report):
        if s.get("sensitivity"):
            out += [f"<h2>Sensitivity: step {_e(_label(s))}</h2>",
                    _html_table(["layer", "sensitivity"], _sensitivity_rows(s), numeric=(1,))]
    if report.get("recipe"):
        out += ["<h2>Recipe</h2>", f"<pre>{_e(_recipe(report))}</pre>"]
    out += ["<h2>Environment</h2>", _html_table(None, _env_rows(report), cls="kv"),
            f'<p class="env">{_e(_env_line(report))}</p>', "</body></html>", ""]
    return "\n".join(out)


def write_reports(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir`` (created), each atomically.

    ``report`` is the ``deepshrink.report/1`` dict of ``deepshrink compress``; any field may be
    missing. Returns ``{"md": path, "html": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "html": out / "report.html"}
    write_text_atomic(paths["md"], render_markdown(report))
    write_text_atomic(paths["html"], render_html(report))
    return paths
