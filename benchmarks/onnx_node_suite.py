"""Coverage of deepshrink's ONNX → PyTorch importer and of its ONNX → TFLite route on the
ONNX package's own backend node tests (every case the installed ``onnx`` defines: a model
plus reference inputs/outputs, written by the ONNX authors), with ONNX Runtime on the same
cases as the reference peer.

A case passes when it converts and every output matches the reference (rtol 1e-3, atol
max(case atol, 1e-5)), for both routes. The TFLite side (``onnx_node_tflite.py``) runs each
case through TensorFlow's converter in a worker process with a per-case timeout and runs the
``.tflite`` in TensorFlow's interpreter; it is run twice: on the cases as written, and with
the inputs exporters write as constants (weights, shapes, axes, sizes, scales: ``PARAM_SLOTS``)
turned into initializers, since TFLite needs most of those static. Results:
``benchmarks/results/onnx_node_suite.md``.

    nice -n 10 python benchmarks/onnx_node_suite.py              # all ~1,900 cases, ~15 min
    python benchmarks/onnx_node_suite.py --no-tflite             # PyTorch and ORT only, ~1 min
    python benchmarks/onnx_node_suite.py --only=resize,split     # those cases' rows, printed only
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine_line, md_table, this_command, write_result  # noqa: E402
from onnx_node_tflite import TIMEOUT_S  # noqa: E402

from deepshrink.convert.onnx2torch import SUPPORTED_OPS  # noqa: E402
from deepshrink.convert.onnx2torch.node_suite import _match, all_cases, run_case  # noqa: E402


def ort_case(case) -> str:
    """ONNX Runtime on the same case: 'pass', 'fail' (wrong values) or 'error' (cannot load/run)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(case.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for inputs, refs in case.data_sets:
            feed = {n: (np.asarray(a) if isinstance(a, np.generic) else a) for n, a in zip(names, inputs, strict=False)}
            outs = sess.run(None, feed)
            for o, r in zip(outs, refs, strict=False):
                if _match(o, r, case.rtol, case.atol):
                    return "fail"
    except Exception:
        return "error"
    return "pass"


def _short(detail: str) -> str:
    d = re.sub(r"'[^']*_node[^']*'|node '[^']*'", "node …", detail)
    d = re.sub(r"ONNX op '(\w+)'(?: \(domain '[^']*'\))? in node … has no TFLite converter.*", r"no converter", d)
    return d.strip().splitlines()[0][:90] if d.strip() else ""


def main() -> None:
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = all_cases()
        only = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")), "")
        if only:  # a few operators' rows, printed, results file untouched (e.g. --only=resize,split)
            cases = [c for c in cases if any(c.name.startswith(f"test_{p}") for p in only.split(","))]
        results, ort_status = [], {}
        for c in cases:
            results.append(run_case(c))
            ort_status[c.name] = ort_case(c)
    elapsed = time.time() - t0
    tfl: dict[str, tuple[str, str]] = {}
    tfl_c: dict[str, tuple[str, str]] = {}
    t_tfl = 0.0
    if "--no-tflite" not in sys.argv:
        from onnx_node_tflite import params_as_constants, tflite_statuses

        t1 = time.time()
        tfl = tflite_statuses(cases)
        folded = {c.name: f for c in cases if (f := params_as_constants(c)) is not None}
        print(f"{len(folded)} cases have parameter inputs; rerunning them as constants", flush=True)
        tfl_c = dict(tfl)
        tfl_c.update(tflite_statuses(list(folded.values())))
        n_folded = len(folded)
        t_tfl = time.time() - t1
    n = len(results)
    ort_ok = sum(s == "pass" for s in ort_status.values())
    exotic = re.compile(r"float8|float4|int4|int2|bfloat16|string|e4m3|e5m2|e8m0|_expanded", re.I)
    core = [r for r in results if not exotic.search(r.name)]
    with_tfl = bool(tfl)

    def rate(names: list[str], status: dict[str, Any]) -> str:
        k = sum(status[x] == "pass" or (isinstance(status[x], tuple) and status[x][0] == "pass") for x in names)
        return f"{k} ({k / max(1, len(names)):.1%})"

    pt = {r.name: r.status for r in results}
    by_op: dict[str, Counter[str]] = defaultdict(Counter)
    ort_by_op: dict[str, int] = Counter()
    tfl_by_op: dict[str, int] = Counter()
    tflc_by_op: dict[str, int] = Counter()
    why: dict[str, Counter[str]] = defaultdict(Counter)
    why_tfl: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        by_op[r.op][r.status] += 1
        ort_by_op[r.op] += ort_status[r.name] == "pass"
        if r.status != "pass":
            why[r.op][_short(r.detail)] += 1
        if with_tfl:
            tfl_by_op[r.op] += tfl[r.name][0] == "pass"
            tflc_by_op[r.op] += tfl_c[r.name][0] == "pass"
            if tfl_c[r.name][0] != "pass":
                why_tfl[r.op][f"{tfl_c[r.name][0]}: {_short(tfl_c[r.name][1])}"] += 1

    def top(c: Counter[str]) -> str:
        return "; ".join(f"{k} ×{v}" for k, v in c.most_common(2)).replace("|", "/")

    full_rows = []
    for op, c in sorted(by_op.items()):
        total = sum(c.values())
        row: list[object] = [op, total, f"{c['pass']}/{total}"]
        if with_tfl:
            row += [f"{tfl_by_op[op]}/{total}", f"{tflc_by_op[op]}/{total}"]
        row += [f"{ort_by_op[op]}/{total}", top(why[op]) if c["pass"] < total else ""]
        if with_tfl:
            row.append(top(why_tfl[op]) if tflc_by_op[op] < total else "")
        full_rows.append(row)
    fully = sum(1 for c in by_op.values() if c["pass"] == sum(c.values()))
    status = Counter(r.status for r in results)
    names_all = [r.name for r in results]
    names_core = [r.name for r in core]
    if with_tfl:
        from deepshrink.convert.tflite import _TF_OPS

        tf_ver = __import__("tensorflow").__version__
        tfl_head = " | deepshrink ONNX → TFLite | TFLite, weight/parameter inputs as constants"
        tfl_cells = [f" | **{rate(names_all, tfl)}** | {rate(names_all, tfl_c)}",
                     f" | **{rate(names_core, tfl)}** | {rate(names_core, tfl_c)}"]
        tfl_status = Counter(v[0] for v in tfl.values())
        tflc_status = Counter(v[0] for v in tfl_c.values())
        tfl_ops_full = sum(1 for op in by_op if tflc_by_op[op] == sum(by_op[op].values()))
        tfl_text = f"""
TFLite side: tensorflow-cpu {tf_ver} (its `tf.lite.TFLiteConverter` and `tf.lite.Interpreter`, one thread);
{t_tfl:.0f} s for both TFLite passes, one case at a time under `nice -n 10`, {TIMEOUT_S:.0f} s timeout per case.
Each case: `ds.load(model)` → `deepshrink.convert.tflite.onnx_to_tflite` (float32) → the interpreter on the
case's inputs, same tolerance as the PyTorch side. {len(_TF_OPS)} ONNX ops have a TFLite converter. The second
TFLite column reruns the {n_folded} cases that feed weights or shapes/axes/sizes/scales/bounds as graph inputs
(`PARAM_SLOTS` in `onnx_node_tflite.py`) with those inputs as initializers — how real exporters write
them, and what a static TFLite graph needs; the other cases keep their first result.
TFLite outcome counts, as written: {dict(tfl_status)}; weight/parameter inputs as constants: {dict(tflc_status)}.
{tfl_ops_full} of {len(by_op)} operators pass every case through TFLite (weight/parameter inputs as constants).
"unsupported" is a clear `UnsupportedError` (no converter, or a variant refused by name);
"tflite-converter" is TensorFlow's converter refusing the traced graph; "error"/"mismatch" are
crashes and wrong values — the route's real defects.
"""
    else:
        tfl_head, tfl_cells, tfl_text = "", ["", ""], ""
    header = ["operator", "cases", "PyTorch pass"]
    if with_tfl:
        header += ["TFLite pass", "TFLite, params const"]
    header += ["ORT pass", "why PyTorch fails (top reasons)"]
    if with_tfl:
        header.append("why TFLite fails (params const; top reasons)")
    body = f"""
{machine_line(1)}. onnx {__import__('onnx').__version__}, onnxruntime {__import__('onnxruntime').__version__},
torch {__import__('torch').__version__}; {elapsed:.0f} s for the PyTorch and ORT runners.

Cases come from `onnx.backend.test.case.node.collect_testcases()` — the definitions the
`data/node/*` folders are generated from (the wheel ships the definitions, not the folders).
Peer: ONNX Runtime on the same models and references (a runtime, not an importer: it shows
how much of the suite a mature backend passes). The ready-made `onnx2torch` importer cannot
be measured here: it requires torchvision, which does not import beside this CPU torch.

| | cases | deepshrink ONNX → PyTorch{tfl_head} | ONNX Runtime (peer) |
|---|---|---|{"---|---|" if with_tfl else ""}---|
| all node tests | {n} | **{rate(names_all, pt)}**{tfl_cells[0]} | {ort_ok} ({ort_ok / n:.1%}) |
| without `_expanded` function bodies and exotic dtypes (float8/4, int4/2, bfloat16, strings) | {len(core)} | **{rate(names_core, pt)}**{tfl_cells[1]} | {rate(names_core, ort_status)} |

PyTorch outcome counts: {dict(status)}. {len(SUPPORTED_OPS)} ONNX ops have a PyTorch converter;
{fully} of {len(by_op)} operators pass every one of their cases. "unsupported" means a clear
`UnsupportedError` naming the op/variant (no converter, sequence/optional inputs, a dtype torch
lacks); "mismatch"/"error" are wrong values or crashes — the importer's real defects.
{tfl_text}
### By operator (failures grouped by reason)

{md_table(header, full_rows)}
"""
    title = "ONNX backend node tests through the ONNX → PyTorch importer" + (" and the ONNX → TFLite route" if with_tfl else "")
    if only:
        print(body)
    else:
        write_result("onnx_node_suite", title, this_command(), body)


if __name__ == "__main__":
    main()
