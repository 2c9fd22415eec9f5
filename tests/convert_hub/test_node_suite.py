"""A quick subset of the ONNX package's own backend node tests (cases written by the ONNX
authors, reference outputs computed with NumPy) through the ONNX → PyTorch importer.
The full run is ``benchmarks/onnx_node_suite.py``."""

from __future__ import annotations

import re

import pytest

from deepshrink.convert.onnx2torch.node_suite import all_cases, run_case, summarize

# the ops that torch- and tf2onnx-exported CNNs, MLPs and transformers are made of
_CORE = ("Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Softmax", "Erf", "Sqrt",
         "Pow", "BatchNormalization", "LayerNormalization", "Reshape", "Flatten", "Transpose", "Squeeze",
         "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Shape", "Expand", "Where", "Cast", "ConstantOfShape",
         "Range", "ReduceMean", "ReduceSum", "ReduceMax", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad",
         "Clip", "Identity", "Constant", "Equal", "Not", "Gelu", "LeakyRelu")


# element types no torch/tf2onnx export of a float model produces (torch has no int2/int4/float4 tensors)
_EXOTIC = re.compile(r"float8|float4|int4|int2|bfloat16|string|e4m3|e5m2|e8m0", re.I)


@pytest.fixture(scope="module")
def every_case():
    return all_cases()


@pytest.fixture(scope="module")
def core_results(every_case):
    cases = [c for c in every_case if not c.name.endswith("_expanded") and not _EXOTIC.search(c.name)
             and len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in _CORE]
    return [run_case(c) for c in cases]


def test_core_ops_pass_rate(core_results):
    s = summarize(core_results)
    assert s["cases"] > 300, s["cases"]
    # what fails among them is variant corners (training-mode BN/Dropout, MaxPool's Indices output)
    assert s["rate"] > 0.95, {op: c for op, c in s["by_op"].items() if c.get("pass", 0) < sum(c.values())}


@pytest.mark.parametrize("op", ["Conv", "Gemm", "MatMul", "Softmax", "Reshape", "Slice", "Gather", "Concat",
                                "Transpose", "MaxPool", "Pad", "Where", "Expand", "Split"])
def test_core_op_all_cases_pass(core_results, op):
    mine = [r for r in core_results if r.op == op]
    assert mine, op
    bad = [(r.name, r.status, r.detail[:80]) for r in mine if r.status != "pass"]
    assert not bad


@pytest.mark.parametrize("op,min_pass", [("If", 3), ("Loop", 3), ("Scan", 1), ("LSTM", 6), ("GRU", 6),
                                         ("Attention", 60)])
def test_control_flow_recurrent_and_attention(every_case, op, min_pass):
    cases = [c for c in every_case if not c.name.endswith("_expanded") and len(c.model.graph.node) == 1
             and c.model.graph.node[0].op_type == op]
    results = [run_case(c) for c in cases]
    passed = sum(r.status == "pass" for r in results)
    assert passed >= min_pass, [(r.name, r.status, r.detail[:80]) for r in results if r.status != "pass"]
    assert not [r for r in results if r.status in ("mismatch", "error") and "fp16" not in r.name]
