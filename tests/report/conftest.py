"""Small real ONNX files for the report tests: a conv + two-linear net exported with
``torch.onnx.export(dynamo=True)``, then pruned / quantized by ONNX Runtime's own passes and
deepshrink's codebook writer, plus ``example_report()``, a 3-step report dict built from them."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

# the net's weights: (node kind, weight elements)
CONV, FC1, FC2 = 8 * 1 * 3 * 3, 64 * 288, 10 * 64


def _export(path: Path) -> Path:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc1, self.fc2 = nn.Conv2d(1, 8, 3), nn.Linear(288, 64), nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))

    torch.manual_seed(0)
    torch.onnx.export(Net().eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=True, verbose=False)
    return path


def prune_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """Zero the smaller half (by magnitude) of every ≥ 2-D float initializer."""
    m = copy.deepcopy(model)
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim >= 2 and a.dtype == np.float32:
            a = np.where(np.abs(a) < np.median(np.abs(a)), 0, a).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return m


class _Reader:
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{"x": rng.standard_normal((1, 1, 8, 8), dtype=np.float32)} for _ in range(4)])

    def get_next(self):  # noqa: ANN201 - ORT's CalibrationDataReader protocol
        return next(self.batches, None)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Paths of: float, pruned (50 % zeros), dynamic int8, QDQ static int8, MatMulNBits 4-bit,
    codebook (16-entry k-means style, shared), codebook per-channel (4 tables of 4), fp16 weights."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from deepshrink.quantize import onnx_backend as ob

    d = tmp_path_factory.mktemp("report-models")
    out = {"float": _export(d / "float.onnx")}
    base = onnx.load(str(out["float"]))
    onnx.save(prune_half(base), str(d / "pruned.onnx"))
    out["pruned"] = d / "pruned.onnx"
    quantize_dynamic(str(out["pruned"]), str(d / "dynamic.onnx"), weight_type=QuantType.QInt8)
    out["dynamic"] = d / "dynamic.onnx"
    quantize_static(str(out["float"]), str(d / "qdq.onnx"), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    out["qdq"] = d / "qdq.onnx"
    mm = copy.deepcopy(base)
    ob.gemm_to_matmul(mm)  # ORT's weight-only pass only sees MatMul
    q = MatMulNBitsQuantizer(mm, block_size=32, is_symmetric=True)
    q.process()
    onnx.save(q.model.model, str(d / "nbits.onnx"))
    out["nbits"] = d / "nbits.onnx"

    for name, tables in (("codebook", 1), ("codebook_pc", 4)):
        cb = copy.deepcopy(base)
        w = numpy_helper.to_array(next(t for t in cb.graph.initializer if t.name == "fc1.weight"))
        w = w[:, :] if tables == 1 else w
        k = 16 // tables
        levels = np.linspace(-0.05, 0.05, k, dtype=np.float32)
        idx = np.abs(w[..., None] - levels).argmin(-1).astype(np.uint8)
        if tables == 1:
            ob.write_codebook(cb, "fc1.weight", levels, idx)
        else:  # 64 rows → a table per row, 4 entries each
            ob.write_codebook(cb, "fc1.weight", np.tile(levels, (64, 1)), idx, axis=0)
        onnx.save(cb, str(d / f"{name}.onnx"))
        out[name] = d / f"{name}.onnx"

    half = copy.deepcopy(base)  # fp16 storage, Cast back to float in front of the layer
    for t in list(half.graph.initializer):
        if t.name == "fc2.weight":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), "fc2.weight_fp16"))
            half.graph.node.insert(0, onnx.helper.make_node("Cast", ["fc2.weight_fp16"], ["fc2.weight"], to=1))
    onnx.save(half, str(d / "fp16.onnx"))
    out["fp16"] = d / "fp16.onnx"
    return out
