"""Coverage check of the importer against the ONNX package's own backend node tests.

The ``onnx`` wheel ships the node-test *case definitions* (``onnx.backend.test.case.node``:
a model plus reference inputs/outputs per operator case, computed with NumPy by the ONNX
authors), but not the generated ``data/node/*`` folders; ``collect_testcases`` builds the same
models and data in memory. Each case is imported with ``onnx_to_torch`` and run on its
inputs; it passes when every output matches the reference within the case's own tolerance
(ONNX's defaults: rtol 1e-3, atol 1e-7; we allow atol 1e-5 for float32 summation order).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ...errors import UnsupportedError
from .importer import np_to_torch, onnx_to_torch


@dataclass
class CaseResult:
    name: str
    op: str
    status: str  # "pass" | "unsupported" | "mismatch" | "error"
    detail: str = ""


def _op_of(case: Any) -> str:
    ops = [n.op_type for n in case.model.graph.node]
    if len(set(ops)) == 1:
        return ops[0]
    key = re.sub(r"^test_", "", case.name).replace("_", "").lower()
    best = ""
    for op in set(ops):
        if key.startswith(op.lower()) and len(op) > len(best):
            best = op
    return best or (ops[0] if ops else "?")


def all_cases() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return list(collect_testcases(None))


def _to_torch(a: Any) -> Any:
    if a is None:  # an empty optional
        return None
    if isinstance(a, list):  # a sequence
        return [_to_torch(i) for i in a]
    return np_to_torch(plain_array(a), "input")


def plain_array(a: Any) -> np.ndarray:
    """A node test's input as a numpy array of a dtype the runtimes take (a proto is decoded: cases that
    need an exact element type give protos); raises :class:`UnsupportedError` naming what it is not."""
    if isinstance(a, onnx.TensorProto):
        a = numpy_helper.to_array(a)
    if isinstance(a, np.generic):
        a = np.asarray(a)
    if not isinstance(a, np.ndarray):
        raise UnsupportedError(f"non-tensor input ({type(a).__name__}: sequence/optional/map)")
    if a.dtype.kind in "OSU":
        raise UnsupportedError("string tensor input")
    if a.dtype.name == "bfloat16" or str(a.dtype).startswith("float8") or a.dtype.name in ("int4", "uint4", "float4e2m1"):
        raise UnsupportedError(f"{a.dtype} input")
    return a


def _match(out: Any, ref: Any, rtol: float, atol: float) -> str:
    if isinstance(ref, list):
        if not isinstance(out, list) or len(out) != len(ref):
            return f"sequence of {len(out) if isinstance(out, list) else type(out).__name__} vs {len(ref)} items"
        return next((w for w in (_match(o, r, rtol, atol) for o, r in zip(out, ref, strict=True)) if w), "")
    if ref is None:
        return "" if out is None else "expected an empty optional"
    if isinstance(ref, onnx.TensorProto):
        ref = numpy_helper.to_array(ref)
    if isinstance(ref, np.generic):
        ref = np.asarray(ref)
    if not isinstance(ref, np.ndarray):
        return f"reference output is a {type(ref).__name__}"
    if isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16:
        out = out.float()
        ref = ref.astype(np.float32)
    got = out.detach().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    if tuple(got.shape) != tuple(ref.shape):
        return f"shape {tuple(got.shape)} vs reference {tuple(ref.shape)}"
    if ref.dtype.kind in "fc":
        ok = np.allclose(got.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=max(atol, 1e-5), equal_nan=True)
        if not ok:
            err = np.nanmax(np.abs(got.astype(np.float64) - ref.astype(np.float64))) if ref.size else 0.0
            return f"max-abs {err:.3g}"
        return ""
    if not np.array_equal(got.astype(ref.dtype), ref):
        return "integer/bool values differ"
    return ""


def run_case(case: Any) -> CaseResult:
    op = _op_of(case)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = onnx_to_torch(case.model)
    except UnsupportedError as exc:
        return CaseResult(case.name, op, "unsupported", str(exc)[:200])
    except Exception as exc:  # an importer bug: count it, keep going
        return CaseResult(case.name, op, "error", f"import: {type(exc).__name__}: {exc}"[:200])
    n_graph_inputs = len(gm.onnx_input_names)
    for inputs, refs in case.data_sets:
        try:
            args = [_to_torch(a) for a in list(inputs)[:n_graph_inputs]]
            if len(args) < n_graph_inputs:  # optional trailing inputs omitted by the case
                return CaseResult(case.name, op, "unsupported", "omitted optional graph inputs")
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = gm(*args)
        except (UnsupportedError, NotImplementedError) as exc:
            return CaseResult(case.name, op, "unsupported", str(exc)[:200])
        except Exception as exc:
            return CaseResult(case.name, op, "error", f"run: {type(exc).__name__}: {exc}"[:200])
        outs = list(out) if isinstance(out, tuple) else [out]
        for o, r in zip(outs, refs, strict=False):
            why = _match(o, r, case.rtol, case.atol)
            if why:
                return CaseResult(case.name, op, "mismatch", why)
    return CaseResult(case.name, op, "pass")


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    by_op: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        by_op[r.op][r.status] += 1
    passed = sum(1 for r in results if r.status == "pass")
    return {"cases": len(results), "passed": passed, "rate": passed / max(1, len(results)),
            "ops": len(by_op), "ops_all_pass": sum(1 for c in by_op.values() if c["pass"] == sum(c.values())),
            "by_op": {k: dict(v) for k, v in sorted(by_op.items())}}


__all__ = ["CaseResult", "all_cases", "run_case", "summarize"]
