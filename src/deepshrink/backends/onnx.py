"""ONNX / ONNX Runtime adapter: sessions with recorded thread settings, runs, IO specs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.handle import TensorSpec
from ..errors import InputError, first_line

_ONNX_TO_NP = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool",
}


def value_info_specs(values: Any, exclude: set[str] | None = None) -> list[TensorSpec]:
    specs = []
    for v in values:
        if exclude and v.name in exclude:
            continue
        t = v.type.tensor_type
        dims: list[int | str] = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "?")
        specs.append(TensorSpec(v.name, tuple(dims), _ONNX_TO_NP.get(t.elem_type, "float32")))
    return specs


def index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs used as ``Gather`` indices into a constant table: input name -> the table's rows.

    Follows the indices back through shape-preserving ops (Cast, Identity, Unsqueeze, Squeeze,
    Reshape, Flatten) to a graph input; the smallest table wins when one input indexes several.
    """
    g = model.graph
    inputs = {i.name for i in g.input} - {t.name for t in g.initializer}
    rows = {t.name: int(t.dims[0]) for t in g.initializer if len(t.dims) >= 1}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and len(a.t.dims) >= 1:
                    rows[n.output[0]] = int(a.t.dims[0])
    producer = {o: n for n in g.node for o in n.output}
    out: dict[str, int] = {}
    for n in g.node:
        if n.op_type != "Gather" or len(n.input) < 2 or n.input[0] not in rows:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if axis != 0:
            continue
        name = n.input[1]
        while name not in inputs and name in producer and producer[name].op_type in (
                "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten"):
            name = producer[name].input[0]
        if name in inputs:
            out[name] = min(out.get(name, rows[n.input[0]]), rows[n.input[0]])
    return out


def io_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inits = {i.name for i in model.graph.initializer}
    return value_info_specs(model.graph.input, inits), value_info_specs(model.graph.output)


def make_session(model: str | os.PathLike[str] | onnx.ModelProto | bytes, *, threads: int = 2,
                 optimize: bool = True, optimized_path: str | None = None, spin: bool = False) -> Any:
    """An ORT CPU session with ``threads`` intra-op threads and thread spinning off.

    Spinning is off by default: two sessions in one process otherwise steal the same
    cores from each other while idle, which distorts side-by-side timings.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # errors come back as exceptions, reported in one line; ORT's own log would repeat them
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    try:
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot load the model: {first_line(exc, 300)}") from None


def run_onnx(session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a session on a dict of arrays; extra keys are ignored, missing ones are an error."""
    feed = {}
    for i in session.get_inputs():
        if i.name not in inputs:
            raise InputError(f"input {i.name!r} missing; the data provides {sorted(inputs)}")
        feed[i.name] = inputs[i.name]
    try:
        return list(session.run(None, feed))
    except Exception as exc:
        raise InputError(f"ONNX Runtime failed to run the model: {first_line(exc, 300)}") from None


def load_onnx(path: str | os.PathLike[str], *, load_external: bool = True) -> onnx.ModelProto:
    """Load an ONNX file; external data must stay inside the model's folder."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"model file {p} does not exist")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{p} is not a readable ONNX model (empty graph)")
    base = p.resolve().parent
    for tensor in _external_tensors(model):
        loc = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if loc is None:
            continue
        target = (base / loc).resolve()
        if base != target and base not in target.parents:
            raise InputError(f"{p}: external data location {loc!r} of tensor {tensor.name!r} escapes the model's folder")
        if not target.is_file():
            raise InputError(f"{p}: external data file {loc!r} (tensor {tensor.name!r}) is missing")
    if load_external:
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise InputError(f"{p}: external data cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None
    return model


def normalize_onnx(model: onnx.ModelProto) -> list[str]:
    """Normalise a graph written by another toolchain, in place; returns what was changed, as words.

    1. Floating-point ``Constant`` nodes of the main graph (how Paddle2ONNX and others store
       weights) become initializers, so parameter counts, quantizers and pruners see them as
       weights; the computation is unchanged (ONNX IR: a Constant and an initializer are the same
       value). Below IR version 4 each new initializer is also declared a graph input, as that IR
       requires.
    2. Then (only when step 1 changed something) ONNX shape inference
       (``onnx.shape_inference.infer_shapes``) fills ``value_info`` where it can; a graph it
       rejects, or one past protobuf's 2 GB, is kept as it was.

    ORT's offline graph optimisations (constant folding, Conv+BN fusion) are not applied here:
    they change what ``info`` reports as the file's parameters; quantization runs them in its own
    pre-processing.
    """
    notes: list[str] = []
    g = model.graph
    graph_outputs = {o.name for o in g.output}
    keep, moved = [], []
    for n in g.node:
        val = next((a.t for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if (n.op_type == "Constant" and n.domain in ("", "ai.onnx") and not n.input and len(n.output) == 1
                and val is not None and n.output[0] not in graph_outputs
                and val.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                                      onnx.TensorProto.BFLOAT16)):
            t = onnx.TensorProto()
            t.CopyFrom(val)
            t.name = n.output[0]
            moved.append(t)
        else:
            keep.append(n)
    if moved:
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(moved)
        if model.ir_version < 4:
            g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
        elems = sum(int(np.prod(t.dims)) for t in moved)
        notes.append(f"{len(moved)} Constant nodes holding weights ({elems:,} elements) read as initializers")
    if moved and model.ByteSize() < 1_800_000_000:  # a graph that needed no change is left as it is (and fast)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:
            inferred = None
        if inferred is not None:
            model.graph.CopyFrom(inferred.graph)
    return notes


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in onnx.external_data_helper._get_all_tensors(model)
            if t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL]


def external_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external-data files an ONNX file on disk refers to."""
    p = Path(path)
    model = onnx.load(str(p), load_external_data=False)
    locs = set()
    for t in _external_tensors(model):
        for e in t.external_data:
            if e.key == "location":
                locs.add(e.value)
    return [p.parent / loc for loc in sorted(locs)]


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write a self-contained ONNX file atomically (external data only past protobuf's 2 GB)."""
    from ..core.fileio import atomic_path

    target = Path(path)
    big = model.ByteSize() > 1_800_000_000
    if big:
        from ..core.fileio import atomic_dir

        with atomic_dir(target.parent) as tmp:
            onnx.save_model(model, str(tmp / target.name), save_as_external_data=True,
                            location=target.name + ".data")
        return
    with atomic_path(target) as tmp:
        onnx.save_model(model, str(tmp))
