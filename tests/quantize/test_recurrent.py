"""int8-dynamic reaches recurrent layers: ``LSTM`` becomes ONNX Runtime's ``DynamicQuantizeLSTM``
(before: "1 layers quantized" and the LSTM weights, most of the model, left fp32)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds
from deepshrink.quantize import Int8DynamicConfig
from deepshrink.quantize.onnx.backend import integer_op_counts
from deepshrink.quantize.onnx.sensitivity import run_outputs

IN, H, SEQ = 16, 32, 10


def _lstm_model(direction: str) -> onnx.ModelProto:
    """x [seq, batch, 16] -> LSTM(hidden 32) -> last step, all directions -> MatMul -> y [batch, 4]."""
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((dirs, 4 * H, IN)) / 4).astype(np.float32)
    r = (rng.standard_normal((dirs, 4 * H, H)) / 6).astype(np.float32)
    b = (rng.standard_normal((dirs, 8 * H)) / 10).astype(np.float32)
    fc = (rng.standard_normal((dirs * H, 4)) / 5).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"), (fc, "fc.weight"))]
    inits.append(numpy_helper.from_array(np.array([-1, dirs * H], np.int64), "flat"))
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h_last"], hidden_size=H, direction=direction,
                              name="lstm"),  # h_last [dirs, batch, H]
             helper.make_node("Transpose", ["h_last"], ["h_t"], perm=[1, 0, 2], name="to_batch"),
             helper.make_node("Reshape", ["h_t", "flat"], ["h"], name="flatten"),
             helper.make_node("MatMul", ["h", "fc.weight"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, "b", IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("per_channel", ["auto", True, False])
def test_lstm_runs_as_dynamic_quantize_lstm(direction, per_channel):
    model = _lstm_model(direction)
    q = ds.quantize(ds.load(model), Int8DynamicConfig(per_channel=per_channel))
    rep = q.report.details
    assert rep["quantized_layers"] == 2 and rep["float_weights"]["share"] == 0.0
    assert integer_op_counts(q.model.model).get("DynamicQuantizeLSTM") == 1
    x = {"x": np.random.default_rng(2024).standard_normal((SEQ, 16, IN)).astype(np.float32)}
    ref, got = run_outputs(model, x), run_outputs(q.model.model, x)
    assert np.abs(got - ref).max() <= 0.03 * np.abs(ref).max()  # 0.004-0.011 seen over the six cases


def test_a_torch_lstm_reaches_onnx_as_lstm_nodes_and_is_quantized(tmp_path):
    """The default exporter is torchscript for a module with recurrent layers: dynamo spread a new user's LSTM
    speaker encoder over Slice/Concat nodes around a loop, where no quantizer found its weights (95 % stayed
    float). Torchscript writes ONNX LSTM nodes with initializer weights, which int8-dynamic quantizes."""
    import torch

    from deepshrink.convert.export import export_onnx, resolve_exporter

    class Speaker(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(IN, H, num_layers=2, batch_first=True)
            self.proj = torch.nn.Linear(H, 8)

        def forward(self, x):
            return self.proj(self.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    model = Speaker().eval()
    assert resolve_exporter("auto", model) == "torchscript" and resolve_exporter("auto", torch.nn.Linear(2, 2)) == "dynamo"
    h = ds.load(model, input_shapes=[f"x:1x{SEQ}x{IN}"])
    exported = export_onnx(h)
    assert exported.metadata["deepshrink.exporter"] == "torchscript"
    assert [n.op_type for n in exported.model.graph.node].count("LSTM") == 2
    q = ds.quantize(h, Int8DynamicConfig())
    assert integer_op_counts(q.model.model).get("DynamicQuantizeLSTM", 0) == 2
    x = np.random.default_rng(0).standard_normal((4, SEQ, IN)).astype(np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    got = run_outputs(q.model.model, {"x": x})
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.999  # int8 LSTM weights, deterministic (seeded weights and inputs): 0.99998 seen


def test_the_search_space_offers_int8_for_lstm_layers():
    """auto / search chose only among MatMul/Gemm/Conv layers: an LSTM speaker encoder (98 % of its weights in
    its LSTMs) came out float, 5.2 MB at 1.01x, beside int8-dynamic's 1.4 MB at 0.75x. Its LSTMs are choices now."""
    from deepshrink.search import SearchConfig
    from deepshrink.search.space import build_space, int8_forms

    h = ds.load(_lstm_model("forward"))
    x = np.random.default_rng(0).standard_normal((SEQ, 8, IN)).astype(np.float32)
    label, _cfg = int8_forms(h)[0]
    assert "most weights are in LSTM layers" in label
    space = build_space(h, {"x": x}, SearchConfig(target_cos=0.99, choices=("float", "int8")))
    assert {lay.op_type: lay.options for lay in space.layers} == {"LSTM": ("float", "int8"), "MatMul": ("float", "int8")}
    # and the per-layer config the search builds its candidates with quantizes them (it left them float before)
    from deepshrink.quantize import MixedPrecisionConfig

    q = ds.quantize(h, MixedPrecisionConfig(default=Int8DynamicConfig()), data={"x": x})
    assert integer_op_counts(q.model.model).get("DynamicQuantizeLSTM", 0) == 1
