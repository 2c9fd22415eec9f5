"""Loading ONNX graphs other toolchains write (issue 12): weights held by ``Constant`` nodes
(Paddle2ONNX) read as initializers; dynamic dims written as ``-1`` or left unnamed accept any
``--input-shape``; dynamic image sizes get the metadata size or 224, not 1 × 1."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds
from deepshrink.backends.onnx import make_session, normalize_onnx, run_onnx
from deepshrink.core.handle import TensorSpec
from deepshrink.core.shapes import assumed_shape, metadata_image_size
from deepshrink.errors import InputError


def _const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name))


def _constant_weights_model(ir_version: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((4, 5)).astype(np.float32)
    shape = np.array([1, -1], np.int64)  # an int64 shape constant: not a weight
    nodes = [_const("w", w), _const("fc", fc), _const("shape", shape),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = ir_version
    return m


@pytest.mark.parametrize("ir_version", [3, 8])
def test_constant_weights_become_initializers_same_outputs(ir_version):
    m = _constant_weights_model(ir_version)
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    before = run_onnx(make_session(m, threads=1), x)[0]
    notes = normalize_onnx(m)
    assert sorted(i.name for i in m.graph.initializer) == ["fc", "w"]  # the int64 shape stays a Constant
    assert [n.op_type for n in m.graph.node].count("Constant") == 1
    assert notes == ["2 Constant nodes holding weights (128 elements) read as initializers"]
    if ir_version < 4:  # IR 3 wants every initializer declared as a graph input
        assert {"w", "fc"} <= {i.name for i in m.graph.input}
    after = run_onnx(make_session(m, threads=1), x)[0]
    np.testing.assert_array_equal(before, after)


def test_info_counts_constant_weights(tmp_path):
    path = tmp_path / "paddle_like.onnx"
    onnx.save(_constant_weights_model(), path)
    res = ds.info(path)
    assert res["parameters"] == 4 * 3 * 3 * 3 + 4 * 5  # 128; 0 before the normalisation
    assert res["weight_bytes"] == 128 * 4
    assert res["inputs"] == ["x: float32[1x3x8x8]"]  # io spec unchanged (initializers are not inputs)


def _dyn_model(dims: list) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_minus_one_and_unnamed_dims_accept_any_size():
    m = _dyn_model([-1, 3, None, None])  # float32[-1x3x?x?], how Paddle2ONNX declares inputs
    h = ds.load(m, input_shapes=["x:1x3x48x192"])
    assert h.example_inputs["x"].shape == (1, 3, 48, 192)
    with pytest.raises(InputError, match=r"does not fit the model's x: float32\[-1x3x\?x\?\]"):
        ds.load(m, input_shapes=["x:1x4x48x192"])  # the fixed channel dim still has to match
    with pytest.raises(InputError, match="does not fit"):
        ds.load(m, input_shapes=["x:1x3x48"])


def test_assumed_image_size_from_metadata_or_224():
    spec = TensorSpec("images", ("batch", 3, "h", "w"))
    assert assumed_shape(spec, {"imgsz": "[320, 256]"}) == ((1, 3, 320, 256), "images at 1x3x320x256 (the model's metadata)")
    assert assumed_shape(spec, {}, batch=2)[0] == (2, 3, 224, 224)
    assert assumed_shape(TensorSpec("x", ("n", "h", "w", 3)), None)[0] == (1, 224, 224, 3)  # NHWC
    # a text line (ddddocr declares [1, 1, 64, image_width]): the fixed height stays, the width gets 224
    assert assumed_shape(TensorSpec("input1", (1, 1, 64, "image_width")), None) == \
        ((1, 1, 64, 224), "input1 at 1x1x64x224 (the default for image inputs)")
    assert assumed_shape(TensorSpec("x", ("n", "h", 32, 3)), None)[0] == (1, 224, 32, 3)
    # not an image: a token sequence, and a 4-D tensor with a dynamic channel dim
    assert assumed_shape(TensorSpec("ids", ("b", "seq"), "int64"), None, default=7) == ((1, 7), None)
    assert assumed_shape(TensorSpec("f", ("b", "c", "h", "w")), None)[0] == (1, 1, 1, 1)
    assert metadata_image_size({"imgsz": "640"}) == (640, 640)
    assert metadata_image_size({"imgsz": "not a size"}) is None


def test_sample_inputs_of_dynamic_image_model_are_image_sized():
    h = ds.load(_dyn_model(["batch", 3, "h", "w"]))
    assert h.sample_inputs(batch=2)["x"].shape == (2, 3, 224, 224)
