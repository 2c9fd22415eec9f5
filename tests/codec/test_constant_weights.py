"""A graph whose weights are Constant nodes (Paddle2ONNX / TF exports): loading turns them into
initializers (issue 12), so pack compresses them and the unpacked graph computes the same."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deepshrink.cli._app import run_app


def test_constant_node_weights_are_packed_after_normalisation(tmp_path, capsys):
    import onnxruntime as ort

    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2) / 7, "w")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])])
    src = tmp_path / "const.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert run_app(["pack", str(src), "-o", str(tmp_path / "c.dsz"), "--lossless"]) == 0
    assert run_app(["unpack", str(tmp_path / "c.dsz"), "-o", str(tmp_path / "u.onnx")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    assert np.array_equal(run(src), run(tmp_path / "u.onnx"))  # lossless: bit for bit
