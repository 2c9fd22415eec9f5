"""layer_table / weight_histograms on real files: float, pruned, ORT dynamic int8, ORT QDQ
static int8, ORT MatMulNBits 4-bit, deepshrink codebooks and fp16 storage."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from deepshrink.report import layer_table, weight_histograms
from deepshrink.report.inspect import weighted_nodes

from .conftest import CONV, FC1, FC2


def _float_weights(path) -> dict[int, np.ndarray]:
    """The float model's weights keyed by element count (the three layers differ in size)."""
    m = onnx.load(str(path))
    return {t.dims[0] * int(np.prod(t.dims[1:])): numpy_helper.to_array(t) for t in m.graph.initializer
            if len(t.dims) >= 2}


def _summary(rows: list[dict]) -> list[tuple]:
    return [(r["op"], r["params"], r["bits"]) for r in rows]


def test_float_and_pruned(models):
    rows = layer_table(models["float"])
    assert _summary(rows) == [("Conv", CONV, 32), ("Gemm", FC1, 32), ("Gemm", FC2, 32)]
    assert [r["name"] for r in rows] == ["node_conv2d", "node_linear", "node_linear_1"]
    assert rows[1]["shape"] == [64, 288]
    assert all(r["sparsity"] == 0.0 for r in rows)
    pruned = layer_table(onnx.load(str(models["pruned"])))  # a ModelProto works as well as a path
    assert _summary(pruned) == _summary(rows)
    assert [r["sparsity"] for r in pruned] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(("name", "ref", "ops", "per_channel"), [
    ("dynamic", "pruned", ("ConvInteger", "MatMulInteger", "MatMulInteger"), False),
    ("ort_fused", "pruned", ("ConvInteger", "DynamicQuantizeMatMul", "DynamicQuantizeMatMul"), False),
    ("qdq", "float", ("Conv", "Gemm", "Gemm"), True),
    ("qop", "float", ("QLinearConv", "QGemm", "QGemm"), True),
    ("qop_matmul", "float", ("QLinearConv", "QLinearMatMul", "QLinearMatMul"), True),
])
def test_int8(models, name, ref, ops, per_channel):
    rows = layer_table(str(models[name]))
    assert _summary(rows) == [(op, n, 8) for op, n in zip(ops, (CONV, FC1, FC2), strict=True)]
    if ref == "pruned":  # symmetric int8: a zero stays zero
        assert [r["sparsity"] for r in rows] == [0.5, 0.5, 0.5]
    else:  # only weights that round to zero
        assert all(r["sparsity"] < 0.02 for r in rows)
    floats = _float_weights(models[ref])
    for _, _, w, _ in weighted_nodes(onnx.load(str(models[name]))):
        orig = floats[w.size]
        w = w if w.shape == orig.shape else w.T  # ORT stores a MatMul weight as (in, out)
        rows_abs = np.abs(orig).reshape(orig.shape[0], -1)
        # the scale was found and applied: per output channel, or one per tensor
        step = (rows_abs.max(1) if per_channel else np.full(len(rows_abs), rows_abs.max())) / 127
        assert np.all(np.abs(w - orig).reshape(orig.shape[0], -1).max(1) <= step * 0.51 + 1e-7)


def test_matmulnbits_4bit(models):
    rows = layer_table(models["nbits"])
    assert _summary(rows) == [("Conv", CONV, 32), ("MatMulNBits", FC1, 4), ("MatMulNBits", FC2, 4)]
    ref = _float_weights(models["float"])
    for node, _, w, _ in weighted_nodes(onnx.load(str(models["nbits"]))):
        if node.op_type != "MatMulNBits":
            continue
        orig = ref[w.size].T  # (K, N) as MatMul sees it
        assert w.shape == orig.shape
        # blocks of 32 along K share a scale absmax / 8 (levels -8..7, so +absmax clips to 7):
        # every error is within one step, and the values track the originals
        blocks = np.abs(orig).reshape(-1, 32, orig.shape[1]).max(1, keepdims=True)
        err = np.abs(w - orig).reshape(-1, 32, orig.shape[1])
        assert np.all(err <= blocks / 8 * 1.001 + 1e-7)
        assert np.corrcoef(w.ravel(), orig.ravel())[0, 1] > 0.99


@pytest.mark.parametrize(("name", "bits", "levels"), [("codebook", 4, 16), ("codebook_pc", 2, 4)])
def test_codebook(models, name, bits, levels):
    rows = layer_table(models[name])
    assert _summary(rows) == [("Conv", CONV, 32), ("Gemm", FC1, bits), ("Gemm", FC2, 32)]
    assert rows[1]["shape"] == [64, 288]
    w = next(w for _, n, w, _ in weighted_nodes(onnx.load(str(models[name]))) if n == "node_linear")
    table = np.linspace(-0.05, 0.05, levels, dtype=np.float32)
    assert set(np.unique(w)) <= set(table)  # every weight is a codebook entry, in the weight's layout


def test_fp16_storage(models):
    assert _summary(layer_table(models["fp16"])) == [("Conv", CONV, 32), ("Gemm", FC1, 32), ("Gemm", FC2, 16)]


def test_weight_histograms(models):
    hists = weight_histograms(models["pruned"], layers=2, bins=21)
    assert [h["layer"] for h in hists] == ["node_linear", "node_linear_1"]  # the two largest, graph order
    for h, n in zip(hists, (FC1, FC2), strict=True):
        assert len(h["edges"]) == 22 and len(h["counts"]) == 21
        assert sum(h["counts"]) == n
        zero_bin = np.searchsorted(h["edges"], 0.0, side="right") - 1
        assert h["counts"][zero_bin] >= n // 2  # the pruned half sits in the bin holding 0
    dyn = weight_histograms(models["dynamic"], layers=1)
    assert [h["layer"] for h in dyn] == ["node_linear_MatMul_quant"] and sum(dyn[0]["counts"]) == FC1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matmulnbits_asymmetric_exact(bits):
    """deepshrink's GPTQ writer packs codes and zero points itself: read them back exactly."""
    from onnx import TensorProto, helper

    from deepshrink.quantize.onnx.backend import write_matmul_nbits

    k, n, group = 64, 8, 32
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 2**bits, (k, n))
    scales = rng.uniform(0.01, 0.1, (k // group, n)).astype(np.float32)
    zeros = rng.integers(0, 2**bits, (k // group, n))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(np.zeros((k, n), np.float32), "w")])
    model = helper.make_model(graph)
    write_matmul_nbits(model, "mm", q, scales, zeros, bits, group)
    [(node, name, w, stored)] = list(weighted_nodes(model))
    expected = (q - np.repeat(zeros, group, axis=0)) * np.repeat(scales, group, axis=0)
    assert (node.op_type, name, stored) == ("MatMulNBits", "mm", bits)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert layer_table(model)[0]["sparsity"] == pytest.approx(np.mean(expected == 0))


def test_qdq_int4_blocked():
    """A hand-built QDQ graph: int4 weight, one scale per block of 16 rows (DequantizeLinear-21)."""
    from onnx import TensorProto, helper

    k, n, block = 64, 8, 16
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (k, n)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, (k // block, n)).astype(np.float32)
    wq = helper.make_tensor("w_q", TensorProto.INT4, [k, n], q.ravel().tolist())
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], axis=0, block_size=block),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [wq, numpy_helper.from_array(scale, "w_s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    [row] = layer_table(model)
    assert (row["op"], row["params"], row["bits"], row["shape"]) == ("MatMul", k * n, 4, [k, n])
    assert row["sparsity"] == pytest.approx(np.mean(q == 0))
    [(_, _, w, _)] = list(weighted_nodes(model))
    np.testing.assert_allclose(w, q * np.repeat(scale, block, axis=0), rtol=1e-6)
