"""The ONNX → TFLite side of ``onnx_node_suite.py``: each ONNX backend node case through
deepshrink's TFLite route (``ds.load`` of the case's model, then
``deepshrink.convert.tflite.onnx_to_tflite``, float32, no parity hop), the ``.tflite`` run in
TensorFlow's TFLite interpreter (``tf.lite.Interpreter``, one thread) on the case's inputs,
and compared with the case's reference outputs by the same rule as the PyTorch side
(``node_suite._match``: rtol 1e-3, atol max(case atol, 1e-5)).

TensorFlow's converter takes about a second per case and can hang or abort the process, so the
cases run in one worker process (spawned, never forked) with a per-case timeout; a case that
times out or kills the worker is counted as such and the worker is restarted. Cases whose
graph holds an op without a TFLite converter are settled in the parent without TensorFlow
(the route refuses them the same way, before TensorFlow is imported). Nothing is cached:
every ``.tflite`` goes to a temporary folder that is removed.

Statuses: ``pass``; ``unsupported`` (a clear ``UnsupportedError`` from the route: no
converter, or a variant the converter refuses); ``tflite-converter`` (TensorFlow's TFLite
converter refused the traced graph); ``error`` (the route or the interpreter crashed with
another exception: a defect); ``mismatch`` (wrong values, shape or dtype); ``timeout``;
``crash`` (the worker process died).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

TIMEOUT_S = 60.0


def _feed_value(a: Any) -> np.ndarray:
    from deepshrink.convert.onnx2torch.node_suite import plain_array

    return plain_array(a)


def run_tflite_case(case: Any, folder: str) -> tuple[str, str]:
    """One case through the route and the interpreter: ``(status, detail)``."""
    import warnings
    from pathlib import Path

    import deepshrink as ds
    from deepshrink.backends.tflite_rt import make_runner
    from deepshrink.convert.onnx2torch.node_suite import _match
    from deepshrink.convert.tflite import onnx_to_tflite
    from deepshrink.errors import UnsupportedError

    dst = Path(folder) / "case.tflite"
    dst.unlink(missing_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = ds.load(case.model)
            onnx_to_tflite(h, dst)
    except UnsupportedError as exc:
        msg = str(exc)
        return ("tflite-converter" if "TFLite converter failed" in msg else "unsupported"), msg[:240]
    except Exception as exc:  # the route's defect: count it, keep going
        return "error", f"convert: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:240]
    names = h.input_names
    try:
        run = make_runner(dst, threads=1)
    except Exception as exc:
        return "error", f"interpreter load: {type(exc).__name__}: {exc}"[:240]
    for inputs, refs in case.data_sets:
        try:
            vals = [_feed_value(a) for a in list(inputs)[:len(names)]]
            if len(vals) < len(names):
                return "unsupported", "omitted optional graph inputs"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs = run(dict(zip(names, vals, strict=True)))
        except UnsupportedError as exc:
            return "unsupported", str(exc)[:240]
        except Exception as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            return "error", f"run: {type(exc).__name__}: {last}"[:240]
        if len(outs) < len(refs):
            return "mismatch", f"{len(outs)} outputs vs {len(refs)}"
        for o, r in zip(outs, refs, strict=False):
            why = _match(o, r, case.rtol, case.atol)
            if why:
                return "mismatch", why
    return "pass", ""


def _worker(conn: Any) -> None:
    import tempfile

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import tensorflow as tf  # noqa: F401  (imported once, before the first case's clock starts)

    conn.send("ready")
    with tempfile.TemporaryDirectory(prefix="ds-node-tflite.") as folder:
        while True:
            case = conn.recv()
            if case is None:
                return
            try:
                res = run_tflite_case(case, folder)
            except BaseException as exc:  # noqa: BLE001  (report anything; the parent decides)
                res = ("error", f"worker: {type(exc).__name__}: {exc}"[:240])
            conn.send(res)


class _Worker:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("the TFLite worker did not start")

    def ask(self, case: Any, timeout: float) -> tuple[str, str] | None:
        self.conn.send(case)
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                return None
        return None

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


def tflite_statuses(cases: list[Any], *, timeout: float = TIMEOUT_S, log: Any = print) -> dict[str, tuple[str, str]]:
    """``{case name: (status, detail)}`` for ``cases`` (see the module docstring)."""
    from deepshrink.convert.tflite import _TFGraph
    from deepshrink.errors import UnsupportedError

    out: dict[str, tuple[str, str]] = {}
    todo = []
    for c in cases:
        try:
            _TFGraph(c.model)  # refuses an op without a converter, before TensorFlow
            todo.append(c)
        except UnsupportedError as exc:
            out[c.name] = ("unsupported", str(exc)[:240])
    log(f"TFLite: {len(cases) - len(todo)} cases refused up front (no converter), {len(todo)} to convert")
    worker = _Worker()
    t0 = time.time()
    try:
        for i, c in enumerate(todo):  # one at a time: the machine's other jobs share its 2 cores
            res = worker.ask(c, timeout)
            if res is None:
                alive = worker.proc.is_alive()
                out[c.name] = ("timeout", f"over {timeout:.0f} s") if alive else (
                    "crash", f"the worker died (exit {worker.proc.exitcode})")
                worker.stop()
                worker = _Worker()
            else:
                out[c.name] = res
            if (i + 1) % 50 == 0:
                log(f"  {i + 1}/{len(todo)} in {time.time() - t0:.0f} s")
    finally:
        worker.conn.send(None)
        worker.proc.join(10)
        worker.stop()
    return out


# Input slots that exporters write as constants (weights; shapes, axes, sizes, scales, bounds,
# pads), by op; the node cases feed them as graph inputs because the generator feeds everything.
PARAM_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2, 3, 4),
    "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2), "GroupNormalization": (1, 2), "PRelu": (1,),
    "Dropout": (1, 2),
    "Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Slice": (1, 2, 3, 4), "Split": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "Expand": (1,), "Tile": (1,), "Pad": (1, 2, 3), "TopK": (1,),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,), "Clip": (1, 2), "OneHot": (1, 2), "ConstantOfShape": (0,), "CumSum": (1,),
    "CenterCropPad": (1,), "Col2Im": (1, 2), "DFT": (1, 2), "Range": (0, 1, 2),
}


def params_as_constants(case: Any) -> Any | None:
    """A copy of ``case`` whose weight and parameter inputs (``PARAM_SLOTS``) are initializers holding
    the case's first data set's values, or ``None`` when the case has none or several data sets."""
    import copy

    from onnx import numpy_helper

    if len(case.data_sets) != 1:
        return None
    g = case.model.graph
    inits = {i.name for i in g.initializer}
    names = [i.name for i in g.input if i.name not in inits]
    uses: dict[str, list[bool]] = {}
    for n in g.node:
        for k, v in enumerate(n.input):
            if v in names:
                uses.setdefault(v, []).append(k in PARAM_SLOTS.get(n.op_type, ()))
    params = {v for v, u in uses.items() if u and all(u)}
    if not params:
        return None
    inputs, refs = case.data_sets[0]
    values = dict(zip(names, list(inputs), strict=False))
    if not all(isinstance(values.get(p), (np.ndarray, np.generic)) for p in params):
        return None
    model = copy.deepcopy(case.model)
    keep = [i for i in model.graph.input if i.name not in params]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(values[p]), p) for p in params)
    new = copy.copy(case)
    new.model = model
    new.data_sets = [([values[n] for n in names if n not in params], refs)]
    return new
