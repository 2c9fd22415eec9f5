"""GPTQ for ONNX ``MatMul`` layers, written as ORT ``MatMulNBits``.

ORT's own GPTQ path (``GPTQWeightOnlyQuantConfig``) needs Intel Neural Compressor, which
does not install beside this stack, so we run part A's GPTQ solver
(:func:`deepshrink.quantize.weight_only.gptq_quantize_weight`) on each MatMul weight with
the Hessian ``2·XᵀX/n`` of that layer's float inputs collected by running the ONNX model
on the calibration data, and pack the codes into ``MatMulNBits`` ourselves
(:func:`deepshrink.quantize.onnx.backend.write_matmul_nbits`). The Hessians come from the
float model in one pass (not layer-by-layer sequential as in the paper): one ORT run
instead of one per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from . import backend as ob


def gptq_matmul_nbits(model: onnx.ModelProto, nodes: Sequence[str], calibration: dict[str, np.ndarray], *,
                      bits: int, group_size: int, symmetric: bool = False, damp: float = 0.01,
                      act_order: bool = True) -> onnx.ModelProto:
    from ..weight_only import gptq_quantize_weight, rtn_quantize_weight

    ob.check_group_size(model, nodes, group_size)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_name = {n.name: n for n in m.graph.node}
    inits = ob.initializer_map(m)
    tensors = sorted({by_name[n].input[0] for n in nodes})
    acts = ob.collect_tensors(model, tensors, ob.split_feeds(calibration, 8))
    for name in nodes:
        node = by_name[name]
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # (K, N)
        x = np.concatenate([a.reshape(-1, w.shape[0]) for a in acts[node.input[0]]]).astype(np.float64)
        weight = torch.from_numpy(np.ascontiguousarray(w.T))
        if len(x) == 0:
            layer = rtn_quantize_weight(weight, bits, group_size, symmetric=symmetric, name=name)
        else:
            h = torch.from_numpy(2.0 * x.T @ x / len(x)).to(torch.float32)
            layer = gptq_quantize_weight(weight, h, bits, group_size, damp=damp, symmetric=symmetric,
                                         act_order=act_order, name=name)
        ob.write_matmul_nbits(m, name, layer.q.numpy().T, layer.scales.numpy().T, layer.zeros.numpy().T,
                              bits, group_size)
    return m
