"""FLOPs/MACs. Torch: ``torch.utils.flop_counter``. ONNX: counted from inferred shapes for
the ops that dominate compute (Conv, ConvTranspose, Gemm, MatMul and their integer/quantized forms,
RNN/GRU/LSTM) — written here because no maintained library counts ONNX FLOPs for current opsets."""

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
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        args = [torch.from_numpy(inputs[n]) for n in handle.input_names]
        # grad enabled: nn.TransformerEncoderLayer's inference fast path is one fused op the counter
        # cannot see into; the math attention kernel is two matmuls it counts
        with FlopCounterMode(display=False) as counter, torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
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
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits"):
        a = shapes.get(node.input[0])
        if not a:
            return 0
        return int(np.prod(out)) * int(a[-1])
    return 0
