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
    onnx.save(onnx.load(str(path)), str(path))  # the exporter keeps weights in a .data file; inline them
    path.with_name(path.name + ".data").unlink(missing_ok=True)
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
    """Paths of: float, pruned (50 % zeros), dynamic int8 (of pruned), QDQ static int8, QOperator
    static int8 (Gemm and MatMul flavours), ORT's optimized dynamic graph, MatMulNBits 4-bit,
    codebook (16-entry k-means style, shared), codebook per-channel (4 tables of 4), fp16 weights."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from deepshrink.quantize.onnx import backend as ob

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
    onnx.save(mm, str(d / "matmul.onnx"))
    for name, src in (("qop", out["float"]), ("qop_matmul", d / "matmul.onnx")):  # QLinearConv, QGemm / QLinearMatMul
        quantize_static(str(src), str(d / f"{name}.onnx"), _Reader(), quant_format=QuantFormat.QOperator,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        out[name] = d / f"{name}.onnx"
    onnx.save(ob.optimized_graph(out["dynamic"]), str(d / "ort_fused.onnx"))  # what ORT runs: DynamicQuantizeMatMul
    out["ort_fused"] = d / "ort_fused.onnx"
    q = MatMulNBitsQuantizer(mm, block_size=32, is_symmetric=True)
    q.process()
    onnx.save(q.model.model, str(d / "nbits.onnx"))
    out["nbits"] = d / "nbits.onnx"

    for name, tables in (("codebook", 1), ("codebook_pc", 4)):
        cb = copy.deepcopy(base)
        w = numpy_helper.to_array(next(t for t in cb.graph.initializer if t.name == "fc1.weight"))
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


def build_example_report(models: dict[str, Path]) -> dict:
    """A ``deepshrink.report/1`` dict of 3 steps (original / pruned 50 % / dynamic int8) whose
    sizes, params, layer rows and histograms are measured on the real files; latency, accuracy
    and fidelity are fixed plausible figures so the tests can assert exact strings."""
    from deepshrink.report import layer_table, weight_histograms

    files = [("original", None, models["float"], "exported from torch"),
             ("pruned", "prune", models["pruned"], "unstructured magnitude pruning, 50 % of weights zeroed"),
             ("int8", "quantize", models["dynamic"], "dynamic int8 (ORT quantize_dynamic), per-tensor")]
    figures = [  # median, p10, p90 (ms), accuracy, cos mean, cos min, top-1 agreement
        (0.210, 0.200, 0.240, 0.9750, 1.0, 1.0, 1.0),
        (0.205, 0.196, 0.231, 0.9722, 0.9981, 0.9890, 0.9944),
        (0.262, 0.251, 0.290, 0.9722, 0.9975, 0.9861, 0.9917)]
    steps = []
    for i, ((name, verb, path, summary), (med, p10, p90, acc, cmean, cmin, top1)) in enumerate(zip(files, figures, strict=True)):
        rows = layer_table(path)
        steps.append({
            "index": i, "name": name, "verb": verb, "summary": summary, "file": f"steps/{i:02d}-{name}/model.onnx",
            "format": "onnx", "runtime": "onnxruntime", "size_bytes": path.stat().st_size,
            "params": sum(r["params"] for r in rows),
            "latency_ms": {"median": med, "p10": p10, "p90": p90}, "latency_ratio": med / figures[0][0],
            "latency_ratio_spread": 0.08, "accuracy": acc, "cos_mean": cmean, "cos_min": cmin, "top1_agreement": top1,
            "layers": rows, "histograms": weight_histograms(path, layers=2), "sensitivity": None,
            "details": {}, "flags": []})
    steps[1]["details"] = {"amount": 0.5, "method": "magnitude"}
    steps[1]["sensitivity"] = {"node_linear": 0.0083, "node_linear_1": 0.0028, "node_conv2d": 0.0139}
    steps[1]["flags"] = [{"kind": "less-accurate",
                          "message": "accuracy 97.22 % < 97.50 % of step 0: pruned without fine-tuning"}]
    steps[2]["details"] = {"per_channel": False, "weight_type": "int8"}
    steps[2]["flags"] = [{"kind": "slower", "message": "1.28× slower than step 1: ConvInteger/MatMulInteger on "
                          "layers this small spend more time quantizing activations than they save"}]
    return {
        "schema": "deepshrink.report/1", "title": "Compress digits CNN", "source": "cnn.onnx",
        "created": "2026-11-30T08:00:00+00:00",
        "recipe": {"steps": [{"prune": {"amount": 0.5}}, {"quantize": {"scheme": "dynamic"}}]},
        "environment": {"deepshrink": "0.9.0", "python": "3.12.3", "platform": "Linux-x86_64",
                        "cpu": "AMD EPYC [avx2 avx512_vnni avx512f]", "threads": 2,
                        "packages": {"torch": "2.13.0+cpu", "onnxruntime": "1.32.0", "onnx": "1.20.0"}},
        "data": {"source": "digits:test", "samples": 360, "labels": True},
        "steps": steps,
        "final": {"file": "model.onnx", "size_ratio": steps[2]["size_bytes"] / steps[0]["size_bytes"],
                  "latency_ratio": steps[2]["latency_ratio"], "accuracy_drop": 0.9750 - 0.9722},
    }


@pytest.fixture(scope="session")
def _example(models) -> dict:
    return build_example_report(models)


@pytest.fixture
def example_report(_example) -> dict:
    """A fresh copy of the 3-step example report (tests may edit it)."""
    return copy.deepcopy(_example)
