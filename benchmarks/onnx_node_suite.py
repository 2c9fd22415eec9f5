"""Coverage of deepshrink's ONNX → PyTorch importer on the ONNX package's own backend node
tests (every case the installed ``onnx`` defines: a model plus reference inputs/outputs,
written by the ONNX authors), with ONNX Runtime on the same cases as the reference peer.

A case passes when it imports and every output matches the reference (rtol 1e-3, atol
max(case atol, 1e-5)). Results: ``benchmarks/results/onnx_node_suite.md``.

    python benchmarks/onnx_node_suite.py            # all ~1,900 cases, about a minute
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine_line, md_table, this_command, write_result  # noqa: E402

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


def main() -> None:
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = all_cases()
        results, ort_status = [], {}
        for c in cases:
            results.append(run_case(c))
            ort_status[c.name] = ort_case(c)
    elapsed = time.time() - t0
    n = len(results)
    ok = sum(r.status == "pass" for r in results)
    ort_ok = sum(s == "pass" for s in ort_status.values())
    exotic = re.compile(r"float8|float4|int4|int2|bfloat16|string|e4m3|e5m2|e8m0|_expanded", re.I)
    core = [r for r in results if not exotic.search(r.name)]
    core_ok = sum(r.status == "pass" for r in core)
    core_ort = sum(ort_status[r.name] == "pass" for r in core)
    by_op: dict[str, Counter[str]] = defaultdict(Counter)
    ort_by_op: dict[str, int] = Counter()
    for r in results:
        by_op[r.op][r.status] += 1
        ort_by_op[r.op] += ort_status[r.name] == "pass"
    why: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        if r.status != "pass":
            d = re.sub(r"'[^']*_node[^']*'|node '[^']*'", "node …", r.detail)
            why[r.op][d[:90]] += 1

    full_rows = []
    for op, c in sorted(by_op.items()):
        total = sum(c.values())
        fails = "; ".join(f"{k} ×{v}" for k, v in why[op].most_common(2)) if c["pass"] < total else ""
        full_rows.append([op, total, f"{c['pass']}/{total}", f"{ort_by_op[op]}/{total}", fails.replace("|", "/")])
    fully = sum(1 for c in by_op.values() if c["pass"] == sum(c.values()))
    status = Counter(r.status for r in results)
    body = f"""
{machine_line(1)}. onnx {__import__('onnx').__version__}, onnxruntime {__import__('onnxruntime').__version__},
torch {__import__('torch').__version__}; {elapsed:.0f} s for both runners.

Cases come from `onnx.backend.test.case.node.collect_testcases()` — the definitions the
`data/node/*` folders are generated from (the wheel ships the definitions, not the folders).
Peer: ONNX Runtime on the same models and references (a runtime, not an importer: it shows
how much of the suite a mature backend passes). The ready-made `onnx2torch` importer cannot
be measured here: it requires torchvision, which does not import beside this CPU torch.

| | cases | deepshrink ONNX → PyTorch | ONNX Runtime (peer) |
|---|---|---|---|
| all node tests | {n} | **{ok} ({ok / n:.1%})** | {ort_ok} ({ort_ok / n:.1%}) |
| without `_expanded` function bodies and exotic dtypes (float8/4, int4/2, bfloat16, strings) | {len(core)} | **{core_ok} ({core_ok / len(core):.1%})** | {core_ort} ({core_ort / len(core):.1%}) |

deepshrink outcome counts: {dict(status)}. {len(SUPPORTED_OPS)} ONNX ops have a converter;
{fully} of {len(by_op)} operators pass every one of their cases. "unsupported" means a clear
`UnsupportedError` naming the op/variant (no converter, sequence/optional inputs, a dtype torch
lacks); "mismatch"/"error" are wrong values or crashes — the importer's real defects.

### By operator (failures grouped by reason)

{md_table(["operator", "cases", "deepshrink pass", "ORT pass", "why the rest fail (top reasons)"], full_rows)}
"""
    write_result("onnx_node_suite", "ONNX backend node tests through the ONNX → PyTorch importer", this_command(), body)


if __name__ == "__main__":
    main()
