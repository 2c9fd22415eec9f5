"""FLOPs/MACs. Torch: ``torch.utils.flop_counter``. ONNX: counted from inferred shapes for
the ops that dominate compute (Conv, Gemm, MatMul and their integer/quantized forms) —
written here because no maintained library counts ONNX FLOPs for current opsets."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..core.handle import ModelHandle


def flops(handle: ModelHandle, batch: int = 1) -> int:
    """Floating-point operations (2 × MACs) of one forward pass at ``batch``."""
    inputs = handle.sample_inputs(batch=batch)
    if handle.kind == "torch":
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        args = [torch.from_numpy(inputs[n]) for n in handle.input_names]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            handle.model(*args)
        return int(counter.get_total_flops())
    return 2 * onnx_macs(handle.model, inputs)


def onnx_macs(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> int:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in inputs:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, inputs[vi.name].shape, strict=False):
                d.ClearField("dim_param")
                d.dim_value = int(size)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return 0
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in m.graph.node:
        total += _node_macs(node, shapes)
    return int(total)


def _node_macs(node: Any, shapes: dict[str, list[int]]) -> int:
    op = node.op_type
    out = shapes.get(node.output[0]) if node.output else None
    if not out or 0 in out:
        return 0
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shapes.get(node.input[3 if op == "QLinearConv" else 1])
        if not w:
            return 0
        return int(np.prod(out)) * int(np.prod(w[1:]))
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits"):
        a = shapes.get(node.input[0])
        if not a:
            return 0
        return int(np.prod(out)) * int(a[-1])
    return 0
