"""The converter re-check of issue 12 item 4: ``litert-torch`` (Google's maintained PyTorch →
LiteRT converter) fed by deepshrink's own ONNX → PyTorch importer, on the ONNX backend node
cases of the operators detectors and segmenters use, side by side with deepshrink's
hand-written ONNX → TFLite route on the same cases.

litert-torch is not part of deepshrink's stack (it adds jax, jaxlib, torchao, kagglehub and
pins pydantic 2.11 / typing_extensions 4.12 / anyio 4.14 below our lock), so this script runs in
a side virtual environment layered on the project's one, never in it::

    python -m venv /tmp/lt && echo "$(python -c 'import site; print(site.getsitepackages()[0])')" \\
        > /tmp/lt/lib/python3.11/site-packages/zz_project.pth
    /tmp/lt/bin/pip install litert-torch==0.10.0        # torch 2.13 and TF 2.21 stay as they are
    PYTHONPATH=src nice -n 10 /tmp/lt/bin/python benchmarks/onnx_node_litert.py --per-op=4

Per case (weights and shape/axes/scale inputs as initializers, ``onnx_node_tflite.params_as_constants``,
as for the second TFLite column): ``onnx_to_torch`` → ``litert_torch.convert(module, inputs)``
→ the converted model run on the case's inputs (LiteRT's interpreter), compared with the
reference by ``node_suite._match`` (rtol 1e-3, atol max(case atol, 1e-5)). The deepshrink route
runs on the same cases through ``onnx_node_tflite.run_tflite_case``. Prints a markdown table;
the figures are quoted in ``notes/issue-12-session-d-tflite.md`` and the TFLite route's docstring.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

OPS = ["Concat", "Conv", "ConvTranspose", "MaxPool", "AveragePool", "Resize", "Upsample", "Sigmoid", "Mul", "Slice",
       "Softmax", "Split", "LayerNormalization"]


def litert_case(case) -> tuple[str, str]:  # noqa: ANN001
    import litert_torch
    import torch
    from onnx_node_tflite import _feed_value

    from deepshrink.convert.onnx2torch import onnx_to_torch
    from deepshrink.convert.onnx2torch.node_suite import _match
    from deepshrink.errors import UnsupportedError

    try:
        gm = onnx_to_torch(case.model).eval()
    except UnsupportedError as exc:
        return "importer", str(exc)[:160]
    n_in = len(gm.onnx_input_names)
    inputs, refs = case.data_sets[0]
    try:
        vals = [_feed_value(a) for a in list(inputs)[:n_in]]
    except UnsupportedError as exc:
        return "unsupported", str(exc)[:160]
    try:
        em = litert_torch.convert(gm, tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in vals))
    except Exception as exc:  # noqa: BLE001
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        return "convert", f"{type(exc).__name__}: {last}"[:160]
    for inputs, refs in case.data_sets:
        vals = [np.ascontiguousarray(_feed_value(a)) for a in list(inputs)[:n_in]]
        try:
            out = em(*vals)
        except Exception as exc:  # noqa: BLE001
            return "run", f"{type(exc).__name__}: {str(exc)[:120]}"
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        for o, r in zip(outs, refs, strict=False):
            why = _match(np.asarray(o), r, case.rtol, case.atol)
            if why:
                return "mismatch", why
    return "pass", ""


def _worker(conn) -> None:  # noqa: ANN001
    import warnings

    import litert_torch  # noqa: F401

    conn.send("ready")
    while True:
        case = conn.recv()
        if case is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = litert_case(case)
            except BaseException as exc:  # noqa: BLE001
                res = ("error", f"{type(exc).__name__}: {exc}"[:160])
        conn.send(res)


class _Worker:
    """litert-torch in a spawned process: its converter can abort the interpreter (seen on a
    3-D ConvTranspose), which then counts as a crash of that case only."""

    def __init__(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError("the litert-torch worker did not start")

    def ask(self, case, timeout: float) -> tuple[str, str]:  # noqa: ANN001
        self.conn.send(case)
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        alive = self.proc.is_alive()
        if alive:
            self.proc.kill()
        self.proc.join(5)
        return ("timeout", f"over {timeout:.0f} s") if alive else ("crash", f"the process died (exit {self.proc.exitcode})")


def main() -> None:
    import litert_torch  # noqa: F401  (fails here, not per case, outside the side environment)
    from onnx_node_tflite import params_as_constants, run_tflite_case

    from deepshrink.convert.onnx2torch.node_suite import _op_of, all_cases

    cases = [c for c in all_cases() if _op_of(c) in OPS and "_expanded" not in c.name]
    cases = [params_as_constants(c) or c for c in cases]
    per_op = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--per-op=")), "0"))
    if per_op:  # the first N cases of each operator (litert-torch takes seconds per case)
        seen: Counter[str] = Counter()
        keep = []
        for c in cases:
            seen[_op_of(c)] += 1
            if seen[_op_of(c)] <= per_op:
                keep.append(c)
        cases = keep
    lt: dict[str, tuple[str, str]] = {}
    ds_: dict[str, tuple[str, str]] = {}
    t_lt = t_ds = 0.0
    worker = _Worker()
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")
        for i, c in enumerate(cases):
            t0 = time.time()
            lt[c.name] = worker.ask(c, 180)
            if lt[c.name][0] in ("timeout", "crash"):
                worker = _Worker()
            t_lt += time.time() - t0
            t0 = time.time()
            ds_[c.name] = run_tflite_case(c, folder)
            t_ds += time.time() - t0
            print(f"{i + 1}/{len(cases)} {c.name}: litert {lt[c.name][0]}, deepshrink {ds_[c.name][0]}", flush=True)
    worker.conn.send(None)
    worker.proc.join(10)
    by_op: dict[str, Counter[str]] = defaultdict(Counter)
    why: dict[str, Counter[str]] = defaultdict(Counter)
    for c in cases:
        op = _op_of(c)
        by_op[op]["n"] += 1
        by_op[op]["lt"] += lt[c.name][0] == "pass"
        by_op[op]["ds"] += ds_[c.name][0] == "pass"
        if lt[c.name][0] != "pass":
            why[op][f"{lt[c.name][0]}: {lt[c.name][1][:70]}"] += 1
    print(f"\nlitert-torch 0.10 via deepshrink's importer: {t_lt:.0f} s; deepshrink's TFLite route: {t_ds:.0f} s; "
          f"{len(cases)} cases{f' (the first {per_op} of each operator)' if per_op else ''}\n")
    print("| operator | cases | litert-torch (via importer) | deepshrink TFLite route | why litert-torch fails (top) |")
    print("|---|---|---|---|---|")
    for op in sorted(by_op):
        c = by_op[op]
        top = "; ".join(f"{k} ×{v}" for k, v in why[op].most_common(2)).replace("|", "/")
        print(f"| {op} | {c['n']} | {c['lt']}/{c['n']} | {c['ds']}/{c['n']} | {top} |")
    tot = {k: sum(c[k] for c in by_op.values()) for k in ("n", "lt", "ds")}
    print(f"| **all** | {tot['n']} | **{tot['lt']}/{tot['n']}** | **{tot['ds']}/{tot['n']}** | |")


if __name__ == "__main__":
    main()
