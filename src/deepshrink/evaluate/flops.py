"""FLOPs/MACs. Torch: ``torch.utils.flop_counter``, plus ``nn.LSTM``/``nn.GRU``/``nn.RNN`` counted here (the
counter sees their fused kernel as no matmul at all: a 3-layer LSTM speaker encoder read as its final Linear
alone). ONNX: counted from inferred shapes for the ops that dominate compute (Conv, ConvTranspose, Gemm, MatMul
and their integer/quantized forms, RNN/GRU/LSTM) — written here because no maintained library counts ONNX
FLOPs for current opsets."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..core.handle import ModelHandle


def flops(handle: ModelHandle, batch: int = 1) -> int:
    """Floating-point operations (2 × MACs) of one forward pass at ``batch``."""
    return flops_at(handle, batch)[0]


def flops_at(handle: ModelHandle, batch: int = 1) -> tuple[int, list[str]]:
    """FLOPs (2 × MACs) of one forward pass and, for each input whose size was assumed, which size.

    Sizes: the handle's example inputs (``--input-shape``, ``--data``) when it has them; else
    dynamic image height/width take the model's metadata size or 224 × 224
    (:func:`deepshrink.core.shapes.assumed_shape`) and other dynamic dims 1."""
    if handle.kind == "torch":
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        inputs = handle.sample_inputs(batch=batch)
        args = [torch.from_numpy(inputs[n]) for n in handle.input_names]
        # grad enabled: nn.TransformerEncoderLayer's inference fast path is one fused op the counter
        # cannot see into; the math attention kernel is two matmuls it counts
        rnn_macs: dict[str, int] = {}
        hooks = [m.register_forward_hook(lambda mod, a, _o, n=name: rnn_macs.__setitem__(n, _rnn_macs(mod, a[0])))
                 for name, m in handle.model.named_modules() if isinstance(m, torch.nn.RNNBase)]
        try:
            with FlopCounterMode(display=False) as counter, torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
                handle.model(*args)
        finally:
            for h in hooks:
                h.remove()
        seen = {k.split(".", 1)[1]: sum(v.values()) for k, v in counter.get_flop_counts().items() if "." in k}
        extra = sum(2 * macs for name, macs in rnn_macs.items() if not seen.get(name))  # unless torch counted it
        return int(counter.get_total_flops()) + extra, []
    notes: list[str] = []
    if handle.example_inputs is not None:
        inputs = handle.sample_inputs(batch=batch)
    else:
        from ..core.shapes import assumed_shape

        inputs = {}
        for spec in handle.inputs:
            shape, why = assumed_shape(spec, handle.metadata, batch=batch)
            inputs[spec.name] = np.zeros(shape, spec.np_dtype)
            if why:
                notes.append(why)
    return 2 * onnx_macs(handle.model, inputs), notes


def _rnn_macs(mod: Any, x: Any) -> int:
    """Multiply-accumulates of one ``nn.LSTM``/``nn.GRU``/``nn.RNN`` call on input ``x``: per step, layer and
    direction, ``gates × hidden × (layer input + recurrent width)``, plus the projection of an LSTM with
    ``proj_size``. 0 for a packed sequence (its lengths vary)."""
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        return 0
    gates = {"LSTM": 4, "GRU": 3}.get(mod.mode, 1)
    seq = x.shape[1] if mod.batch_first and x.dim() == 3 else x.shape[0]
    batch = (x.shape[0] if mod.batch_first else x.shape[1]) if x.dim() == 3 else 1
    dirs = 2 if mod.bidirectional else 1
    h = mod.hidden_size
    hr = getattr(mod, "proj_size", 0) or h  # the width fed back (and on to the next layer)
    total, width = 0, mod.input_size
    for _ in range(mod.num_layers):
        total += dirs * (gates * h * (width + hr) + (h * hr if hr != h else 0))
        width = hr * dirs
    return int(seq * batch * total)


def _infer(m: onnx.ModelProto) -> onnx.ModelProto | None:
    from ..backends.onnx import symbolic_shapes

    return symbolic_shapes(m)


def _subgraphs(node: Any) -> list[tuple[str, onnx.GraphProto]]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append((a.name, a.g))
        out.extend((a.name, g) for g in a.graphs)
    return out


def _collect_shapes(g: onnx.GraphProto, shapes: dict[str, list[int]], consts: dict[str, Any]) -> None:
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        dims = [max(d.dim_value, 0) if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes.setdefault(vi.name, dims)
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
        if len(init.dims) == 0 and init.data_type == onnx.TensorProto.INT64:
            consts[init.name] = int(onnx.numpy_helper.to_array(init))
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            t = next((a.t for a in n.attribute if a.name == "value"), None)
            if t is not None and len(t.dims) == 0 and t.data_type == onnx.TensorProto.INT64:
                consts[n.output[0]] = int(onnx.numpy_helper.to_array(t))
        for _, sg in _subgraphs(n):
            _collect_shapes(sg, shapes, consts)


def onnx_macs(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of one run at the shapes of ``inputs``, counted inside control flow:
    an ``If`` costs its dearer branch (one runs), a ``Loop`` its body times a constant trip count
    (once when the count is computed at run time)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in inputs:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, inputs[vi.name].shape, strict=False):
                d.ClearField("dim_param")
                d.dim_value = int(size)
    # declared shapes with -1 dims (Paddle2ONNX writes [-1, C, 1, 1]) would stay as they are and count
    # negative MACs: make those dims unknown so inference recomputes them at the sizes given
    for vi in list(m.graph.value_info) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.ClearField("dim_value")
    inferred = _infer(m)
    if inferred is None:
        return 0
    shapes: dict[str, list[int]] = {}
    consts: dict[str, Any] = {}
    _collect_shapes(inferred.graph, shapes, consts)
    unknown = _unknown_shapes(inferred.graph, shapes)
    if unknown:
        shapes.update(_shapes_by_running(m, inputs, unknown))
    return int(_graph_macs(inferred.graph, shapes, consts))


_COUNTED = ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger",
            "QLinearMatMul", "FusedMatMul", "MatMulNBits")


def _unknown_shapes(g: onnx.GraphProto, shapes: dict[str, list[int]]) -> list[str]:
    """Tensors of the main graph that a counted op reads or writes and whose shape inference left
    (partly) unknown. Static inference loses them where a dynamic dim is 1: a MiniLM at one token
    came out at 1.8 M FLOPs, its MatMuls' ``[1, ?, 384]`` counted as nothing."""
    names: list[str] = []
    for node in g.node:
        if node.op_type in _COUNTED and node.output:
            for name in (node.input[0], node.output[0]):
                shape = shapes.get(name)
                if name and (not shape or 0 in shape) and name not in names:
                    names.append(name)
    return names


def _shapes_by_running(m: onnx.ModelProto, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, list[int]]:
    """The shapes of ``names`` in one ONNX Runtime run of ``m`` on ``inputs``
    (:func:`deepshrink.backends.onnx.intermediate_values`); {} when the model does not run (a custom op,
    inputs it refuses)."""
    from ..backends.onnx import intermediate_values

    try:
        values = intermediate_values(m, names, [inputs], threads=1)
    except Exception:  # counting is informative: keep what inference gave
        return {}
    return {n: list(np.shape(v[0])) for n, v in values.items()}


def _graph_macs(g: onnx.GraphProto, shapes: dict[str, list[int]], consts: dict[str, Any]) -> int:
    total = 0
    for node in g.node:
        subs = _subgraphs(node)
        if node.op_type == "If" and subs:
            total += max(_graph_macs(sg, shapes, consts) for _, sg in subs)
        elif node.op_type == "Loop" and subs:
            trips = consts.get(node.input[0]) if node.input and node.input[0] else None
            total += _graph_macs(subs[0][1], shapes, consts) * (trips if isinstance(trips, int) and trips > 0 else 1)
        elif subs:  # Scan and custom ops with a body: once per body
            total += sum(_graph_macs(sg, shapes, consts) for _, sg in subs)
        else:
            total += _node_macs(node, shapes)
    return total


_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _node_macs(node: Any, shapes: dict[str, list[int]]) -> int:
    op = node.op_type
    if op in _GATES:  # X [seq, batch, input] (layout 0), W [dirs, gates*hidden, input], R [dirs, gates*hidden, hidden]
        x, w, r = (shapes.get(node.input[i]) if len(node.input) > i else None for i in range(3))
        if not (x and w and r) or 0 in x:
            return 0
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        seq, batch = (x[0], x[1]) if layout == 0 else (x[1], x[0])
        return int(seq * batch * w[0] * (w[1] * w[2] + r[1] * r[2]))
    out = shapes.get(node.output[0]) if node.output else None
    if not out or 0 in out:
        return 0
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shapes.get(node.input[3 if op == "QLinearConv" else 1])
        if not w:
            return 0
        return int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose":  # every input element scatters its group's W[c_in] of [C_out/group, *kernel]
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not x or not w or 0 in x:
            return 0
        return int(np.prod(x)) * int(np.prod(w[1:]))
    if op in _COUNTED[4:]:
        a = shapes.get(node.input[0])
        if not a:
            return 0
        return int(np.prod(out)) * int(a[-1])
    return 0
