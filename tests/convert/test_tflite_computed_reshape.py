"""ONNX → TFLite: a Conv fed by a Reshape whose target is computed at run time (Shape → Gather →
Unsqueeze → Concat, as exported under dynamic axes — YOLOv8's DFL head: ``(N, 64, A)`` reshaped to
``(N, 4, 16, A)``, transposed, softmaxed, then a 1x1 Conv of constant weights). TensorFlow knows the
channel count while the graph is built, but TFLite's converter re-infers shapes from the Reshape's
operands alone; without the known sizes put back into the shape operand it saw a Conv2D /
DepthwiseConv2D with unknown input channels and refused it ("'tf.Conv2D' op is neither a custom op
nor a flex op")."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds

pytest.importorskip("tensorflow")


def _dfl_like(group: int) -> object:
    """x (N, 8, A) → Reshape to [N, 2, 4, A] (target from Shape) → Transpose → Softmax → 1x1 Conv."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 4, 1, 1) if group == 1 else (4, 1, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0, np.int64), "i0"),
             numpy_helper.from_array(np.array(2, np.int64), "i2"), numpy_helper.from_array(np.array([0], np.int64), "ax"),
             numpy_helper.from_array(np.array([2, 4], np.int64), "mid")]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Gather", ["s", "i2"], ["a"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Unsqueeze", ["a", "ax"], ["a1"]),
        helper.make_node("Concat", ["n1", "mid", "a1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["t"], ["p"], axis=1),
        helper.make_node("Conv", ["p", "w"], ["y"], kernel_shape=[1, 1], group=group),
    ]
    g = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, "A"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("group", [1, 4], ids=["conv", "depthwise"])
def test_conv_after_reshape_to_computed_shape(group, tmp_path):
    import onnxruntime as ort

    from deepshrink.backends.tflite_rt import make_runner
    from deepshrink.convert.tflite import onnx_to_tflite

    model = _dfl_like(group)
    onnx_to_tflite(ds.load(model), tmp_path / "m.tflite")  # refused by TF's converter before the fix
    run = make_runner(tmp_path / "m.tflite", threads=1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(1, 8, 5), (2, 8, 7)]:  # the dynamic axes still vary in the .tflite
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        got, ref = run({"x": x})[0], sess.run(None, {"x": x})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
